"""Upload a saved model folder (weights, tokenizer, card, masks, report) to the Hub in one commit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

# Intermediate Trainer checkpoints, logs and half-written files are never part of a shared model.
IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "runs/**", "*.partial", "*.partial/**", ".*", ".*/**",
                   "__pycache__/**"]


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
    plots go up as they are. If the folder has no `README.md`, a model card is built first with
    [`build_model_card`] (from the folder's `distillation`/`sparsity` config blocks, `energy.json`
    and `report.json`) and written into the folder, so what is uploaded is also what stays on disk.

    The upload is one commit: it lands whole or not at all. On failure nothing in `folder` is
    changed or removed and a [`HubUploadError`] says what to retry.

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
    if write_card and not (folder / "README.md").is_file():
        from .card import build_model_card

        build_model_card(folder, repo_id=repo_id).save(folder / "README.md")

    api = HfApi(endpoint=endpoint, token=token)
    retry = f"`hf-bigsmall push {folder} {repo_id}`"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            commit_message=commit_message or f"Upload {folder.name} with hf_bigsmall",
            ignore_patterns=IGNORE_PATTERNS,
        )
    except Exception as error:  # any transport or Hub error: the local folder was only read
        raise HubUploadError(
            f"Uploading {folder} to {repo_id} failed: {error}\n"
            f"Nothing in {folder} was changed and no partial commit was made. Check the token has write "
            f"access to {repo_id.split('/')[0]!r} and the Hub is reachable, then run {retry} again."
        ) from error
