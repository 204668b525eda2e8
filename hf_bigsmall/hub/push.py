"""Upload a saved model folder (weights, tokenizer, card, masks, report) to the Hub in one commit."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from ..utils.files import atomic_write_text

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

# Never part of a shared model: Trainer checkpoints and logs, the model of each IMP round, and what a
# write in progress or an interrupted one leaves (`*.tmp` of atomic writes, `*.partial*` files and
# folders published by rename). Matched with fnmatch on paths relative to the folder, where `*`
# also crosses `/`.
IGNORE_PATTERNS = ["checkpoint-*", "*/checkpoint-*", "imp-round-*", "*/imp-round-*", "runs/*", "*.partial", "*.partial.*",
                   "*.partial/*", "*.tmp", "*.tmp/*", ".*", "*/.*", "__pycache__/*", "*/__pycache__/*"]


# what describes a model in a repository: a file of these left there from an earlier push that this upload does not
# hold would be loaded (older weights, another tokenizer), armed (masks) or read (report, energy) as this model's
MODEL_FILE_PATTERNS = ["*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.onnx", "*.onnx.data",
                       "*.gguf", "*.pt", "sparsity_*", "report.md", "report.json", "*.png", "energy.json",
                       "emissions.json", "config.json", "generation_config.json", "genai_config.json",
                       "chat_template.jinja", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                       "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
                       "sentencepiece.bpe.model"]


def _stale_model_files(api, repo_id: str, revision: str | None, uploading: set[str]) -> list[str]:
    """Files of an earlier push in the repository that this upload replaces by not holding them (`MODEL_FILE_PATTERNS`);
    files of other kinds (a user's own additions) stay."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import filter_repo_objects

    try:
        existing = [sibling.rfilename for sibling in api.model_info(repo_id, revision=revision).siblings or []]
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return []
    stale = [path for path in existing if path not in uploading]
    return sorted(filter_repo_objects(stale, allow_patterns=MODEL_FILE_PATTERNS))


def retry_command(folder: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool | None = None,
                  revision: str | None = None, commit_message: str | None = None, endpoint: str | None = None,
                  write_card: bool = True) -> str:
    """The `hf-bigsmall push` command line that repeats an upload with the same options (never the token itself)."""
    words = ["hf-bigsmall", "push", os.fspath(folder), repo_id]
    if private:
        words.append("--private")
    if revision is not None:
        words += ["--revision", revision]
    if commit_message is not None:
        words += ["--commit_message", commit_message]
    if not write_card:
        words.append("--no_card")
    line = shlex.join(words)
    if token is not None:
        line += ' --token "$HF_TOKEN"'  # the token given, which an error message must not print
    if endpoint is not None:
        line = f"HF_ENDPOINT={shlex.quote(endpoint)} {line}"
    return line


def _files_to_upload(folder: Path) -> list[str]:
    from huggingface_hub.utils import filter_repo_objects

    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return list(filter_repo_objects(paths, ignore_patterns=IGNORE_PATTERNS))


class HubUploadError(RuntimeError):
    """Raised when an upload fails; the local folder is left exactly as it was."""


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    endpoint: str | None = None,
    write_card: bool = True,
) -> CommitInfo:
    """Upload everything a saved model folder holds to `repo_id`, as a single commit.

    Weights, tokenizer, `sparsity_masks.safetensors`, `energy.json`, `report.md`/`report.json` and
    plots go up as they are; checkpoints, IMP round folders, logs and leftovers of interrupted
    writes (`*.tmp`, `*.partial*`) stay local (`IGNORE_PATTERNS`). If the folder has no `README.md`,
    a model card is built with [`build_model_card`] (from the folder's `distillation`/`sparsity`
    config blocks, `energy.json` and `report.json`), uploaded, and written into the folder once the
    commit has landed, so what is uploaded is also what stays on disk.

    A model file an earlier push left in the repository that this folder does not hold (`MODEL_FILE_PATTERNS`:
    weights in another format or sharding, masks, a report, tokenizer files) is deleted in the same commit, so
    `from_pretrained` on the repository never loads the earlier model's weights beside the new card; other files
    stay. The upload is one commit: it lands whole or not at all. On failure nothing in `folder` is
    changed, added or removed and a [`HubUploadError`] gives the command that retries it with the
    same options (`--revision`, `--private`, ...).

    Args:
        folder: a folder written by `save_pretrained` (it must hold `config.json`).
        repo_id: `namespace/name` of the model repository, created if it does not exist.
        token: a Hub token with write access (defaults to the logged-in one / `HF_TOKEN`).
        private: create the repository as private.
        revision: branch to commit to (defaults to the repository's default branch).
        commit_message: defaults to "Upload <folder name> with hf_bigsmall".
        endpoint: Hub URL (defaults to `HF_ENDPOINT` / https://huggingface.co).
        write_card: build and write `README.md` when the folder has none.

    Example:

    ```python
    from hf_bigsmall import push_folder

    commit = push_folder("bigsmall_output/student-pruned", "me/minilm-rt-student-pruned")
    print(commit.commit_url)
    ```
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"{folder} is not a saved model folder (no config.json): pass the folder written by "
            "`save_pretrained` / `trainer.save_model`."
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"{repo_id!r} is not a valid Hub repository id ('namespace/name'): {error}") from error
    card_text = None
    if write_card and not (folder / "README.md").is_file():
        from .card import build_model_card

        # kept in memory until the commit has landed: a failed upload leaves the folder as it was
        card_text = str(build_model_card(folder, repo_id=repo_id))

    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    api = HfApi(endpoint=endpoint, token=token)
    retry = retry_command(folder, repo_id, token=token, private=private, revision=revision,
                          commit_message=commit_message, endpoint=endpoint, write_card=write_card)
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=folder / path) for path in _files_to_upload(folder)]
    if card_text is not None:
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card_text.encode("utf-8")))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        # the same commit deletes what an earlier push left that this one does not replace
        uploading = {operation.path_in_repo for operation in operations}
        operations += [CommitOperationDelete(path_in_repo=path)
                       for path in _stale_model_files(api, repo_id, revision, uploading)]
        commit = api.create_commit(
            repo_id=repo_id,
            operations=operations,
            revision=revision,
            commit_message=commit_message or f"Upload {folder.name} with hf_bigsmall",
        )
    except Exception as error:  # any transport or Hub error: the local folder was only read
        raise HubUploadError(
            f"Uploading {folder} to {repo_id} failed: {error}\n"
            f"Nothing in {folder} was changed and no partial commit was made. Check the token has write "
            f"access to {repo_id.split('/')[0]!r} and the Hub is reachable, then run `{retry}` again."
        ) from error
    if card_text is not None:
        # what was uploaded is also what stays on disk
        atomic_write_text(folder / "README.md", card_text)
    return commit
