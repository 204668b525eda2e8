"""A teacher-logit cache: run the teacher once, distil many times without it.

`cache_teacher_logits` writes the teacher's soft targets for every row of a tokenised dataset as a
`datasets` dataset on disk, in shards; `load_teacher_logits` checks a cache against the dataset it
is meant for and returns that dataset with the cached columns added, ready for a
`DistillationTrainer(teacher_model=None, ...)`.

What is stored, per row of the dataset:

- sequence classification: `teacher_logits`, all the teacher's logits (float32);
- causal LM: for every target token (a position `hf_bigsmall.losses.target_mask` keeps, the rule
  the trainer trains by: its next label is not -100 and, by the attention mask, neither it nor
  the token it predicts is padding, even where labels were left on the padding), the top-k log-probabilities at temperature 1
  (`teacher_topk_logprobs`, float16 by default), their token ids (`teacher_topk_ids`, uint16 when
  the vocabulary fits, else int32), and the log of the probability mass outside the top-k
  (`teacher_tail_logprob`, float32, summed from the excluded logits so that it stays finite however
  small; -inf when k covers the vocabulary). With `tail_samples=s`
  the k entries are followed by s tokens drawn from the rest of the distribution, with their
  log-probabilities, and the tail is the mass outside all k + s. Temperature is applied at
  training time (`hf_bigsmall.distillation.cached_loss`).
- `teacher_row_hash`: a 64-bit hash of the row's `input_ids` and `labels`, so a dataset whose rows
  changed (other order, text, length or max_length) is refused.

Layout of `output_dir`:

```
shard-00000/  shard-00001/ ...   one `save_to_disk` folder per `shard_size` rows, with shard.json
manifest.json                    written last: a cache without it is an unfinished run
```

A shard appears only once complete (written as `shard-NNNNN.<writer>.partial`, then renamed); a rerun
with the same `output_dir` keeps the finished shards and computes only the missing ones. Under
`accelerate launch` every process caches the shards `index % num_processes == process_index`
into the same folder, and the main process writes the manifest once all are there.

Each writer's `.partial` names are its own (`<writer>` is a tag of the machine, the process id and a
random suffix), so two runs started into the same folder (two runs, or processes launched apart by
mistake) never delete or rename each other's half-written files, and neither replaces a shard or a
manifest the other finished: one of another teacher, rows or storage is refused, one of the same run
is kept. A `.partial` left by an interrupted run is removed by a later run only once its writer is
gone: a process of this machine that no longer runs, or (another machine's, a container's with its own
process ids, a folder named without a writer, or one whose process id a later process took) after
`hf_bigsmall.utils.writers.STALE_PARTIAL_SECONDS` without a change; a file named without a writer is kept.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from transformers.utils import logging

from ..losses import (  # target_mask: one rule for the cache, losses and trainer
    invalid_logit_rows,
    target_mask,
)
from ..utils.distributed import needs_cpu_process_group
from ..utils.files import KIT_MARKER
from ..utils.writers import WRITER_TAG_PATTERN, folder_clock, may_be_leftover, writer_is_gone, writer_partial
from .teacher import head_kind

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from transformers import PreTrainedModel

logger = logging.get_logger(__name__)

# 2: positions chosen by target_mask (no padding that kept its labels), tails from the excluded logits
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
SHARD_META_NAME = "shard.json"
ROW_HASH_COLUMN = "teacher_row_hash"
CLASSIFICATION_COLUMNS = ("teacher_logits",)
CAUSAL_LM_COLUMNS = ("teacher_topk_ids", "teacher_topk_logprobs", "teacher_tail_logprob")
CACHE_COLUMNS = CLASSIFICATION_COLUMNS + CAUSAL_LM_COLUMNS
# added to a token-level batch by `TeacherLogitsCollator`: each row's number of cached targets, so the
# trainer checks the targets line up row by row, not only in total
TARGET_COUNTS = "teacher_target_counts"
LOGPROB_DTYPES = ("float16", "bfloat16", "float32", "uint8")
# "uint8" log-probabilities are steps of 1/16 nat below the token's top-1 (kept in float32), so the
# quantisation moves a probability by at most 3%; 255 steps reach 16 nats (a ratio of 1e-7) below it
QUANTISATION_STEPS_PER_NAT = 16
# logits per chunk when the tail mass is summed over the excluded logits: 16 MB of float32
_TAIL_CHUNK_LOGITS = 2**22
# marks the cache record carried in a loaded dataset's `info.description`
_RECORD_PREFIX = "hf_bigsmall teacher-logit cache: "
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")
# what a cache folder holds: shards (finished or not), the manifest, and the labelling pass's energy record
_CACHE_ENTRY = re.compile(r"(shard-\d{5,}|manifest\.json|energy\.json)((\.[0-9a-f]{8}-\d+-[0-9a-f]{8})?\.partial)?")
# a writer's half-written entry: `<name>.<machine>-<pid>-<random>.partial` (or `<name>.partial` of older versions)
_PARTIAL_ENTRY = re.compile(rf"(?P<name>shard-\d{{5,}}|manifest\.json)(\.{WRITER_TAG_PATTERN})?\.partial")


def is_teacher_logit_cache(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds nothing but what `cache_teacher_logits` and the labelling's energy record write.

    A teacher-logit cache carries no marker file of its own: it is recognised by its entries (shards,
    finished or not, its manifest and `energy.json`) and by what only the kit writes there: a manifest with
    the cache format's own fields, or, in an unfinished run, at least one shard folder. A file named
    `manifest.json`, `energy.json` or `manifest.json.partial` alone says nothing: a user's folder with one is
    not a cache (and is never removed as one).
    """
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return False
    entries = list(folder.iterdir())
    if not entries or any(not _CACHE_ENTRY.fullmatch(entry.name) and entry.name != KIT_MARKER for entry in entries):
        return False
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():  # an unfinished run: its shards, finished or not, are folders
        return any(entry.name.startswith("shard-") and entry.is_dir() and not entry.is_symlink() for entry in entries)
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"format_version", "teacher_fingerprint", "rows_digest"} <= record.keys()


def check_cache_folder(folder: str | os.PathLike, argument: str = "teacher_logits") -> None:
    """Refuse a `folder` that exists and is not a teacher-logit cache (finished or not) nor empty.

    Such a folder is the user's: neither read as a cache nor written into. Missing or empty is fine
    (`cache_teacher_logits` makes the cache there).
    """
    path = Path(folder)
    if not path.exists() or is_teacher_logit_cache(path) or (path.is_dir() and not any(path.iterdir())):
        return
    names = sorted(entry.name for entry in path.iterdir())[:3] if path.is_dir() else []
    what = f"a folder of other files ({', '.join(names)}, ...)" if path.is_dir() else "a file"
    raise ValueError(
        f"{argument}={str(folder)!r} is {what}, not a teacher-logit cache written by cache_teacher_logits: pass the "
        "folder cache_teacher_logits wrote, or a new or empty folder for it to write the cache to (nothing was "
        "written to this one)."
    )


# ----------------------------------------------------------------------------------------------
# what a cache is made from
# ----------------------------------------------------------------------------------------------
def weights_fingerprint(model: PreTrainedModel) -> str:
    """A sha256 of every parameter and buffer (names, shapes, dtypes and values) of `model`."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        data = tensor.detach().to("cpu").contiguous()
        if data.dtype == torch.bfloat16:
            data = data.view(torch.int16)
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()[:32]


def row_hashes(dataset: Dataset) -> np.ndarray:
    """One 64-bit hash per row of `input_ids` and `labels`: what the cached targets depend on."""
    columns = [name for name in ("input_ids", "labels") if name in dataset.column_names]
    hashes = np.empty(len(dataset), dtype=np.int64)
    view = dataset.select_columns(columns).with_format("numpy")
    for start in range(0, len(dataset), 1024):
        batch = view[start : start + 1024]
        for offset in range(len(batch[columns[0]])):
            digest = hashlib.blake2b(digest_size=8)
            for name in columns:
                value = np.asarray(batch[name][offset], dtype=np.int64)
                digest.update(name.encode() + value.tobytes() + str(value.shape).encode())
            hashes[start + offset] = int.from_bytes(digest.digest(), "little", signed=True)
    return hashes


def _teacher_task(teacher: PreTrainedModel) -> str:
    kind = head_kind(teacher)
    if kind == "AutoModelForSequenceClassification":
        return "classification"
    if kind == "AutoModelForCausalLM" and not getattr(teacher.config, "is_encoder_decoder", False):
        return "causal_lm"
    raise ValueError(
        f"cache_teacher_logits caches sequence classifiers and causal LMs; {type(teacher).__name__} is "
        "neither: load the teacher with AutoModelForSequenceClassification or AutoModelForCausalLM."
    )


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------
def cache_teacher_logits(
    teacher: PreTrainedModel,
    dataset: Dataset,
    output_dir: str | os.PathLike,
    top_k: int | None = 128,
    batch_size: int = 8,
    shard_size: int = 1024,
    logprob_dtype: str = "float16",
    teacher_name: str | None = None,
    tail_samples: int = 0,
    seed: int = 0,
    disable_tqdm: bool | None = None,
) -> Path:
    """Run `teacher` once over `dataset` and write its soft targets to `output_dir` (see the module doc).

    Resumable: rerun with the same arguments after an interruption and only the missing shards are
    computed. Memory is bounded by one shard (`shard_size` rows of targets) plus one batch of
    logits. Under `accelerate launch` each process caches its share of the shards; every process
    returns once the whole cache (its manifest) is written.

    Args:
        teacher (`PreTrainedModel`): a sequence classifier or a causal LM; run in `eval()` under
            `torch.no_grad()` on the accelerate device, in its own dtype.
        dataset (`datasets.Dataset`): tokenised rows (`input_ids`, optional `attention_mask`,
            `labels`), in the order training will use (the trainer shuffles on its own).
        output_dir (`str` or `os.PathLike`): the cache folder.
        top_k (`int`, *optional*): token-level caches keep this many log-probabilities per target
            token, `1 <= top_k <= vocab_size` (the vocabulary keeps the KL exact). Ignored for
            classification, which keeps every logit.
        batch_size (`int`): rows per teacher forward.
        shard_size (`int`): rows per shard (the unit of resuming and of memory).
        logprob_dtype (`str`): `"float16"` (2 bytes), `"bfloat16"` or `"float32"` for the top-k
            log-probabilities, stored as arrays; or `"uint8"`, the compact format: each row's ids and
            log-probabilities quantised to 1/16 nat below the top-1 (exact) are packed and
            zlib-compressed into one binary value per column (about 278 bytes per target token at
            k=128 for SmolLM2, against 516 for float16; see BENCHMARKS.md).
        teacher_name (`str`, *optional*): recorded name of the teacher (default: its
            `config._name_or_path`).
        tail_samples (`int`): token-level caches also keep, per target token, this many distinct
            tokens drawn from the teacher's distribution outside the top-k (without replacement,
            in proportion to their probability: Gumbel-top-s), with their exact log-probabilities.
            The loss treats them like the top-k: their probabilities are supervised exactly, the
            rest of the tail stays one outcome. A fresh draw per token, so over many steps the
            student sees the tail's shape, which a top-k cache never stores (0: top-k only).
        seed (`int`): seed of the tail draws (one generator per shard, so a resumed run redraws
            nothing differently).
        disable_tqdm (`bool`, *optional*): hide the progress bar of the labelling pass (rows labelled, rate
            and time left, drawn by the main process only), as `TrainingArguments.disable_tqdm` does for
            training; it is also hidden after `transformers.utils.logging.disable_progress_bar()`.

    Returns:
        `Path`: `output_dir`.

    Example:
    ```python
    >>> from hf_bigsmall import cache_teacher_logits, load_teacher_logits
    >>> cache_teacher_logits(teacher, dataset["train"], "teacher_logits", top_k=128)
    >>> train_dataset = load_teacher_logits("teacher_logits", dataset["train"])
    ```
    """
    from accelerate import PartialState

    task = _teacher_task(teacher)
    vocab_size = int(teacher.config.get_text_config().vocab_size) if task == "causal_lm" else None
    if task == "causal_lm":
        if top_k is None or isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab_size:
            raise ValueError(f"top_k must be an integer in [1, {vocab_size}] (the teacher's vocabulary), got "
                             f"{top_k!r}: 128 keeps about 300-500 bytes per target token; {vocab_size} is exact.")
        if isinstance(tail_samples, bool) or not isinstance(tail_samples, int) or not 0 <= tail_samples <= vocab_size - top_k:
            raise ValueError(f"tail_samples must be an integer in [0, {vocab_size - top_k}] (the tokens outside the "
                             f"top-{top_k}), got {tail_samples!r}: 0 keeps the top-k alone.")
    else:
        top_k, tail_samples = None, 0
    if logprob_dtype not in LOGPROB_DTYPES:
        raise ValueError(f"logprob_dtype must be one of {LOGPROB_DTYPES}, got {logprob_dtype!r}.")
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}.")
    if "input_ids" not in dataset.column_names or len(dataset) == 0:
        raise ValueError(f"dataset must be tokenised (an `input_ids` column) and not empty; it has "
                         f"{len(dataset)} rows and columns {dataset.column_names}.")

    check_cache_folder(output_dir, "output_dir")  # a folder of the user's is never written into

    # several processes on a machine without a GPU form a (gloo) group only on the CPU, as in DistillationConfig
    state = PartialState(cpu=True) if needs_cpu_process_group(False) else PartialState()
    output_dir = Path(output_dir)
    hashes = row_hashes(dataset)
    record = {
        "format_version": FORMAT_VERSION,
        "task": task,
        "teacher": teacher_name or getattr(teacher.config, "_name_or_path", "") or type(teacher).__name__,
        "teacher_fingerprint": weights_fingerprint(teacher),
        "vocab_size": vocab_size,
        "num_labels": int(teacher.config.num_labels) if task == "classification" else None,
        # what each cached logit means: a student must name its classes alike (checked by the trainer)
        "id2label": {str(int(k)): v for k, v in teacher.config.id2label.items()} if task == "classification" else None,
        "top_k": top_k,
        "logprob_dtype": logprob_dtype if task == "causal_lm" else "float32",
        "id_dtype": ("uint16" if vocab_size <= 2**16 else "int32") if task == "causal_lm" else None,
        "shift_labels": task == "causal_lm",
        "max_length": int(max(len(ids) for ids in dataset["input_ids"])),
        "num_rows": len(dataset),
        "dataset_fingerprint": getattr(dataset, "_fingerprint", None),
        "rows_digest": hashlib.sha256(hashes.tobytes()).hexdigest()[:32],
        "shard_size": shard_size,
    }
    if tail_samples:  # recorded only when used, so top-k caches keep the record they always had
        record.update(tail_samples=tail_samples, tail_seed=int(seed))
    manifest_path = output_dir / MANIFEST_NAME
    if manifest_path.is_file():
        existing = json.loads(manifest_path.read_text())
        if _run_key(existing) == _run_key(record):
            logger.info(f"{output_dir} already holds this cache; nothing to do.")
            return output_dir
        raise ValueError(f"{manifest_path} is a finished cache of another teacher, dataset, top_k or tail_samples: pass another "
                         "output_dir, or delete that folder to replace it.")

    num_shards = math.ceil(len(dataset) / shard_size)
    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    teacher.eval()
    device = state.device
    teacher.to(device)
    # what an interrupted run of this process's share left, once its writer is gone (never a running one's)
    names = [f"shard-{index:05d}" for index in range(state.process_index, num_shards, state.num_processes)]
    _remove_stale_partials(output_dir, names + ([MANIFEST_NAME] if state.is_main_process else []))
    pending = []
    for index in range(state.process_index, num_shards, state.num_processes):
        if _finished_shard(output_dir / f"shard-{index:05d}", record):
            logger.info(f"kept the finished {output_dir / f'shard-{index:05d}'}")
        else:
            pending.append(index)
    # rows this process labels, with a time estimate; the main process alone draws it
    progress = logging.tqdm(total=sum(min(shard_size, len(dataset) - index * shard_size) for index in pending),
                            desc="teacher labelling", unit="rows", dynamic_ncols=True,
                            disable=bool(disable_tqdm) or not state.is_main_process)
    for index in pending:
        shard_dir = output_dir / f"shard-{index:05d}"
        start, stop = index * shard_size, min((index + 1) * shard_size, len(dataset))
        table, num_targets = _shard_table(teacher, dataset.select(range(start, stop)), hashes[start:stop], record,
                                          batch_size, device, index, progress)
        _write_shard(table, shard_dir, index, start, stop, num_targets, record, state.process_index)
        logger.info(f"cached rows {start}-{stop} of {len(dataset)} to {shard_dir}")
        del table
    progress.close()
    state.wait_for_everyone()
    if state.is_main_process:
        shards = []
        for index in range(num_shards):
            shard_dir = output_dir / f"shard-{index:05d}"
            if not _finished_shard(shard_dir, record):
                raise RuntimeError(f"{shard_dir} is missing after every process finished: rerun to resume.")
            shards.append(json.loads((shard_dir / SHARD_META_NAME).read_text()))
        total_bytes = sum(sum(shard["bytes"].values()) for shard in shards)
        targets = sum(shard["num_targets"] for shard in shards)
        record.update(shards=shards, num_target_tokens=targets, bytes=total_bytes,
                      bytes_per_target=total_bytes / max(targets, 1))
        partial = writer_partial(manifest_path)
        try:
            partial.write_text(json.dumps(record, indent=2))
            # last: only now does the cache look complete. This run started from a folder without a manifest:
            # one that appeared since is another run's, and is never replaced
            published = _publish_file_once(partial, manifest_path)
        finally:
            partial.unlink(missing_ok=True)
        if not published:
            existing = json.loads(manifest_path.read_text())
            if _run_key(existing) != _run_key(record):
                raise ValueError(f"{manifest_path} appeared while this run was caching: another run wrote a cache of "
                                 f"another teacher, dataset, top_k or tail_samples into {output_dir} at the same time, "
                                 "and its manifest is kept. Check it with load_teacher_logits, or pass another "
                                 "output_dir; run one caching run per folder.")
            logger.info(f"{manifest_path} of the same cache was written by another run meanwhile; it is kept.")
    state.wait_for_everyone()
    return output_dir


def _run_key(record: dict) -> tuple:
    keys = ("format_version", "task", "teacher_fingerprint", "top_k", "logprob_dtype", "rows_digest", "shard_size",
            "tail_samples", "tail_seed")
    return tuple(record.get(key) for key in keys)


def same_cache(first: dict, second: dict) -> bool:
    """Whether two cache records (manifests, or the record a loaded dataset carries) describe one cache:
    same teacher weights, rows, top_k, tail draws and storage."""
    return _run_key(first) == _run_key(second)


def _finished_shard(shard_dir: Path, record: dict) -> bool:
    meta_path = shard_dir / SHARD_META_NAME
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    if tuple(meta.get("run_key", ())) != _run_key(record):
        raise ValueError(f"{shard_dir} was cached from another teacher, dataset, top_k or tail_samples: pass another "
                         "output_dir, or delete it to cache this run there.")
    return True


def _pad(rows: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of rows (what the teacher sees does not depend on the padding)."""
    import torch

    length = max(len(row["input_ids"]) for row in rows)
    batch: dict[str, torch.Tensor] = {}
    for name, fill in (("input_ids", pad_token_id), ("attention_mask", 0), ("token_type_ids", 0), ("labels", -100)):
        if name not in rows[0]:
            continue
        if np.ndim(rows[0][name]) == 0:
            batch[name] = torch.tensor([row[name] for row in rows])
            continue
        padded = torch.full((len(rows), length), fill, dtype=torch.long)
        for position, row in enumerate(rows):
            padded[position, : len(row[name])] = torch.as_tensor(row[name])
        batch[name] = padded
    if "attention_mask" not in batch:
        batch["attention_mask"] = torch.zeros_like(batch["input_ids"])
        for position, row in enumerate(rows):
            batch["attention_mask"][position, : len(row["input_ids"])] = 1
    return batch


def entries_per_target(record: dict) -> int | None:
    """Cached tokens per target position of a token-level cache: the top-k plus the tail draws."""
    return None if record.get("top_k") is None else record["top_k"] + (record.get("tail_samples") or 0)


def _shard_table(teacher, rows: Dataset, hashes: np.ndarray, record: dict, batch_size: int, device,
                 shard_index: int = 0, progress=None):
    """The cached columns of one shard as a pyarrow table (built from arrays, never Python lists)."""
    import pyarrow as pa
    import torch

    generator = None
    if record.get("tail_samples"):
        generator = torch.Generator(device=device).manual_seed(record["tail_seed"] * 1_000_003 + shard_index)

    columns = [name for name in _MODEL_INPUTS if name in rows.column_names]
    rows = rows.select_columns(columns)
    pad_token_id = teacher.config.pad_token_id if isinstance(teacher.config.pad_token_id, int) else 0
    causal = record["task"] == "causal_lm"
    per_row: dict[str, list[np.ndarray]] = {name: [] for name in CACHE_COLUMNS}
    lengths: list[int] = []
    bad_rows: list[int] = []
    order = list(range(len(rows)))
    if not causal:  # the teacher reads rows longest first, so a batch pads little; each row's logits keep its place
        row_lengths = [len(ids) for ids in rows["input_ids"]]
        order.sort(key=lambda index: -row_lengths[index])
        logits_by_row: list[np.ndarray | None] = [None] * len(rows)
    for start in range(0, len(rows), batch_size):
        chunk = order[start:start + batch_size]
        batch = _pad([rows[i] for i in chunk], pad_token_id)
        inputs = {name: value.to(device) for name, value in batch.items() if name != "labels"}
        with torch.no_grad():
            logits = teacher(**inputs).logits.float()
        labels = batch.get("labels")
        mask = None if not causal else target_mask(labels.to(device) if labels is not None else None,
                                                   inputs["attention_mask"], shift=True)
        invalid = invalid_logit_rows(logits)
        invalid = invalid if mask is None else (invalid & mask).any(-1)
        if bool(invalid.any()):  # the rest of the shard is still checked, so every such row is named
            first = shard_index * record["shard_size"]
            bad_rows.extend(first + chunk[int(index)] for index in invalid.nonzero().flatten())
        if progress is not None:
            progress.update(len(batch["input_ids"]))
        if bad_rows:
            continue
        if not causal:
            for index, row_logits in zip(chunk, logits.cpu().numpy()):
                logits_by_row[index] = row_logits
            continue
        ids, logprobs, tail = topk_targets(logits[mask], record["top_k"], record.get("tail_samples") or 0, generator)
        counts = mask.sum(1).tolist()
        lengths.extend(counts)
        ids_np = ids.cpu().numpy().astype(record["id_dtype"])
        if record["logprob_dtype"] == "uint8":  # quantised when packed, per row
            logprobs_np = logprobs.cpu().numpy()
        elif record["logprob_dtype"] == "bfloat16":  # numpy has no bfloat16: keep its bits
            logprobs_np = logprobs.to(torch.bfloat16).cpu().view(torch.int16).numpy()
        else:
            logprobs_np = logprobs.to(getattr(torch, record["logprob_dtype"])).cpu().numpy()
        per_row["teacher_topk_ids"].append(ids_np)
        per_row["teacher_topk_logprobs"].append(logprobs_np)
        per_row["teacher_tail_logprob"].append(tail.cpu().numpy().astype(np.float32))
    if bad_rows:
        bad_rows.sort()
        shown = ", ".join(map(str, bad_rows[:20])) + (", ..." if len(bad_rows) > 20 else "")
        raise ValueError(
            f"the teacher's logits are NaN or infinite at the target positions of dataset rows {shown} "
            f"({len(bad_rows)} rows of shard {shard_index}), which have no soft targets; this shard was not written. "
            "Check those rows and the teacher (a float16 teacher can overflow: load it in float32 or bfloat16), "
            "or drop the rows; finished shards are kept for the rerun."
        )
    arrays = {ROW_HASH_COLUMN: pa.array(hashes, pa.int64())}
    if not causal:
        arrays["teacher_logits"] = pa.array([row.astype(np.float32) for row in logits_by_row],
                                            pa.list_(pa.float32()))
        return pa.table(arrays), len(rows)
    k = entries_per_target(record)
    token_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if record["logprob_dtype"] == "uint8":
        ids_all = np.concatenate(per_row["teacher_topk_ids"])
        logprobs_all = np.concatenate(per_row["teacher_topk_logprobs"])
        bounds = list(zip(token_offsets[:-1], token_offsets[1:]))
        arrays["teacher_topk_ids"] = pa.array([zlib.compress(ids_all[a:b].tobytes(), 6) for a, b in bounds],
                                              pa.large_binary())
        arrays["teacher_topk_logprobs"] = pa.array([pack_logprobs(logprobs_all[a:b]) for a, b in bounds],
                                                   pa.large_binary())
        tail = np.concatenate(per_row["teacher_tail_logprob"])
        arrays["teacher_tail_logprob"] = pa.LargeListArray.from_arrays(pa.array(token_offsets, pa.int64()),
                                                                       pa.array(tail))
        return pa.table(arrays), int(token_offsets[-1])
    for name in CAUSAL_LM_COLUMNS:
        values = np.concatenate(per_row[name]).reshape(-1)
        offsets = token_offsets if name == "teacher_tail_logprob" else token_offsets * k
        arrays[name] = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(values))
    return pa.table(arrays), int(token_offsets[-1])


def pack_logprobs(logprobs: np.ndarray) -> bytes:
    """Pack `(n, k)` descending log-probabilities: the top-1 in float32, the rest as uint8 steps below it.

    The steps are stored as differences along the rank (small, mostly 0 or 1) and zlib-compressed.
    """
    top = logprobs[:, :1].astype(np.float32)
    steps = np.clip(np.rint((top - logprobs) * QUANTISATION_STEPS_PER_NAT), 0, 255).astype(np.int16)
    deltas = np.diff(steps, axis=1, prepend=0).astype(np.uint8)
    return zlib.compress(top.tobytes() + deltas.tobytes(), 6)


def unpack_logprobs(blob: bytes, top_k: int) -> np.ndarray:
    """The `(n, k)` float32 log-probabilities that `pack_logprobs` packed."""
    data = zlib.decompress(blob)
    count = len(data) // (4 + top_k)
    top = np.frombuffer(data, dtype=np.float32, count=count)
    deltas = np.frombuffer(data, dtype=np.uint8, offset=4 * count).reshape(count, top_k)
    return top[:, None] - np.cumsum(deltas, axis=1, dtype=np.float32) / QUANTISATION_STEPS_PER_NAT


def topk_targets(rows: torch.Tensor, top_k: int, tail_samples: int = 0,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k log-probabilities of `(N, V)` logits, their ids, and the log of the mass outside them.

    Returns `(ids (N, k + s), logprobs (N, k + s), tail_logprob (N,))`, the log-probabilities at
    temperature 1 in float32, in descending order. With `tail_samples = s`, the last s entries are
    distinct tokens drawn outside the top-k in proportion to their probability, without
    replacement (Gumbel-top-s: the s largest of `logits + Gumbel noise`). The tail is the log of
    the mass outside every entry, taken from the excluded logits themselves, `logsumexp(excluded) -
    logsumexp(all)`: finite however small the mass (a difference `log(1 - sum(exp(logprobs)))` in
    float32 loses every digit below about 1e-7 and reads 0), and -inf only when the entries cover
    the vocabulary or every excluded logit is -inf.
    """
    import torch

    rows = rows.float()
    normaliser = torch.logsumexp(rows, dim=-1)
    values, ids = rows.topk(top_k, dim=-1)
    if tail_samples:
        # logits + Gumbel(0, 1) = rows - log(-log(u)), computed in place in the buffer of u (the same values)
        keys = torch.rand(rows.shape, generator=generator, device=rows.device).clamp_(min=1e-20)
        keys.log_().neg_().log_().neg_().add_(rows)
        keys.scatter_(1, ids, float("-inf"))  # outside the top-k only
        drawn = keys.topk(tail_samples, dim=-1).indices
        del keys
        drawn_values = rows.gather(1, drawn)
        order = drawn_values.argsort(dim=-1, descending=True)  # all below the k-th: the whole row descends
        values = torch.cat([values, drawn_values.gather(1, order)], dim=-1)
        ids = torch.cat([ids, drawn.gather(1, order)], dim=-1)
    logprobs = values - normaliser[:, None]
    if ids.shape[-1] == rows.shape[-1]:
        return ids, logprobs, torch.full_like(normaliser, float("-inf"))
    tail = torch.empty_like(normaliser)
    step = max(1, _TAIL_CHUNK_LOGITS // rows.shape[-1])  # one chunk's copy of the logits at a time
    for start in range(0, rows.shape[0], step):
        chunk = slice(start, start + step)
        excluded = rows[chunk].scatter(1, ids[chunk], float("-inf"))
        tail[chunk] = torch.logsumexp(excluded, dim=-1) - normaliser[chunk]
    return ids, logprobs, tail


def _write_shard(table, shard_dir: Path, index: int, start: int, stop: int, num_targets: int, record: dict,
                 process_index: int = 0) -> None:
    from datasets import Dataset

    partial = writer_partial(shard_dir)  # this writer's own: no other run deletes or renames it
    try:
        Dataset(table).save_to_disk(str(partial))
        files = sorted(path.name for path in partial.iterdir() if path.suffix == ".arrow")
        meta = {
            "name": shard_dir.name, "index": index, "start": start, "stop": stop, "num_targets": num_targets,
            "bytes": {name: (partial / name).stat().st_size for name in files},
            "sha256": {name: _file_sha256(partial / name) for name in files},
            "run_key": list(_run_key(record)), "process_index": process_index,
        }
        (partial / SHARD_META_NAME).write_text(json.dumps(meta, indent=2))
        _publish_shard(partial, shard_dir, record)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _publish_shard(partial: Path, shard_dir: Path, record: dict) -> None:
    """Rename a written `partial` to `shard_dir`, never over a shard another run finished meanwhile.

    Renaming a folder onto a folder with files in it fails (POSIX and Windows alike), so a shard that another
    run finished between the check and the rename is never replaced: one of another teacher or rows is refused
    (`_finished_shard` raises), one of this run is kept and `partial` is left for the caller to remove.
    """
    if _finished_shard(shard_dir, record):
        return
    try:
        partial.rename(shard_dir)
        return
    except OSError:
        if not (shard_dir.exists() or shard_dir.is_symlink()):
            raise  # nothing in the way: the rename failed for its own reason (permissions, a file held open), said as is
    if _finished_shard(shard_dir, record):  # another run's rename came first
        return
    # the kit renames only complete shards: a folder without its shard.json was changed by hand, and is the user's
    raise ValueError(f"{shard_dir} is in the way and is not a finished shard (no {SHARD_META_NAME}: a file, a link or a "
                     "damaged folder): move or delete it, then rerun cache_teacher_logits with the same output_dir.")


def _publish_file_once(partial: Path, target: Path) -> bool:
    """Give the written file `partial` the name `target` unless `target` exists; False (nothing changed) if it does.

    A hard link is made in one step and never replaces a file; where the file system has no hard links, the
    check and the rename are two steps.
    """
    try:
        os.link(partial, target)
        return True
    except FileExistsError:
        return False
    except OSError:
        if target.exists():
            return False
        os.replace(partial, target)
        return True


def _remove_stale_partials(output_dir: Path, names: list[str]) -> None:
    """Remove the `.partial` entries of `names` in `output_dir` whose writers are gone; log the others."""
    wanted = set(names)
    found = [(entry, match) for entry in sorted(output_dir.iterdir())
             if (match := _PARTIAL_ENTRY.fullmatch(entry.name)) and match["name"] in wanted and not entry.is_symlink()]
    now = folder_clock(output_dir, MANIFEST_NAME) if found else 0.0
    for entry, match in found:
        if not may_be_leftover(entry, match["machine"]):
            logger.debug(f"left {entry}: a file with a leftover's name but no writer tag may be anyone's")
            continue
        if not writer_is_gone(entry, match["machine"], match["pid"], now):
            logger.info(f"left {entry}: its writer may still be running (another caching run into this folder?)")
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        logger.info(f"removed {entry}, left by an interrupted caching run")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------
def read_manifest(cache_dir: str | os.PathLike) -> dict:
    """The record of a finished cache; a `ValueError` for an unfinished or foreign folder."""
    cache_dir = Path(cache_dir)
    manifest_path = cache_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        unfinished = cache_dir.is_dir() and any(cache_dir.glob("shard-*"))
        raise ValueError(
            f"{manifest_path} does not exist: "
            + ("the caching run that wrote this folder did not finish; rerun cache_teacher_logits with the same "
               "output_dir to resume it." if unfinished else
               "this is not a teacher-logit cache; make one with cache_teacher_logits (or the recipes' "
               "--cache_teacher_logits).")
        )
    try:
        record = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{manifest_path} is corrupted ({error}): delete it and rerun cache_teacher_logits with "
                         "the same output_dir (finished shards are kept).") from None
    if record.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{manifest_path} has format version {record.get('format_version')}, this hf_bigsmall "
                         f"reads {FORMAT_VERSION}: recreate the cache with cache_teacher_logits.")
    return record


def load_teacher_logits(cache_dir: str | os.PathLike, dataset: Dataset, verify: bool = True) -> Dataset:
    """Return `dataset` with the cached teacher columns of `cache_dir` added, after checking they belong to it.

    Raises a `ValueError` naming the file and the fix when the cache is unfinished, a shard is
    missing, truncated or corrupted (sizes and sha256 against the manifest, with `verify`), or the
    dataset's rows are not those the cache was made from (count, order, tokens, length). The
    result carries the cache's record (read by `DistillationTrainer` to check the student) and
    returns the cached columns as numpy arrays, so batches are collated without Python lists.

    Args:
        cache_dir (`str` or `os.PathLike`): a folder written by `cache_teacher_logits`.
        dataset (`datasets.Dataset`): the tokenised rows the cache was made from.
        verify (`bool`): check every shard file's sha256 (reads the whole cache once).
    """
    from datasets import concatenate_datasets, load_from_disk

    cache_dir = Path(cache_dir)
    record = read_manifest(cache_dir)
    if len(dataset) != record["num_rows"]:
        raise ValueError(
            f"{cache_dir / MANIFEST_NAME} caches {record['num_rows']} rows but the dataset has {len(dataset)}: pass "
            "the dataset the cache was made from (same rows, same order, same max_length), or recreate the cache "
            "for this one with cache_teacher_logits."
        )
    parts = []
    for shard in record["shards"]:
        shard_dir = cache_dir / shard["name"]
        for name, size in shard["bytes"].items():
            path = shard_dir / name
            if not path.is_file() or path.stat().st_size != size:
                found = path.stat().st_size if path.is_file() else "missing"
                raise ValueError(f"{path} is truncated or missing ({found} bytes, the manifest says {size}): delete "
                                 f"{shard_dir} and {cache_dir / MANIFEST_NAME}, then rerun cache_teacher_logits with "
                                 "the same output_dir to recompute that shard.")
            if verify and _file_sha256(path) != shard["sha256"][name]:
                raise ValueError(f"{path} is corrupted (its sha256 differs from the manifest's): delete {shard_dir} "
                                 f"and {cache_dir / MANIFEST_NAME}, then rerun cache_teacher_logits with the same "
                                 "output_dir to recompute that shard.")
        try:
            parts.append(load_from_disk(str(shard_dir)))
        except Exception as error:  # an unreadable arrow file is the same failure as a corrupted one
            raise ValueError(f"{shard_dir} cannot be read ({error}): delete it and {cache_dir / MANIFEST_NAME}, "
                             "then rerun cache_teacher_logits with the same output_dir.") from None
    cached = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    expected = row_hashes(dataset)
    stored = np.asarray(cached[ROW_HASH_COLUMN], dtype=np.int64)
    different = np.flatnonzero(expected != stored)
    if different.size:
        raise ValueError(
            f"row {int(different[0])} of the dataset (and {different.size - 1} more) is not the row the cache in "
            f"{cache_dir} was made from (other order, text, length or max_length): pass the same tokenised rows in "
            "the same order (shuffling is the trainer's job), or recreate the cache for this dataset."
        )
    cached = cached.remove_columns(ROW_HASH_COLUMN)
    clashing = set(cached.column_names) & set(dataset.column_names)
    if clashing:
        dataset = dataset.remove_columns(sorted(clashing))
    combined = concatenate_datasets([dataset, cached], axis=1)
    summary = {key: value for key, value in record.items() if key != "shards"}
    summary["path"] = str(cache_dir)
    combined.info.description = _RECORD_PREFIX + json.dumps(summary)
    # numbers as numpy arrays (no Python lists per value); packed binary values stay `bytes`, since
    # numpy's bytes type would strip trailing zero bytes off a compressed stream
    numeric = [name for name in cached.column_names if getattr(cached.features[name], "dtype", "") != "large_binary"]
    return combined.with_format(None).with_format("numpy", columns=numeric, output_all_columns=True)


def cache_record(dataset: Any) -> dict | None:
    """The cache record a dataset from `load_teacher_logits` carries, or None."""
    info = getattr(dataset, "info", None)
    description = getattr(info, "description", None) or ""
    if not description.startswith(_RECORD_PREFIX):
        return None
    return json.loads(description[len(_RECORD_PREFIX) :])


def cached_columns(dataset: Any) -> list[str]:
    """The cached teacher columns a dataset has."""
    names = getattr(dataset, "column_names", None) or []
    return [name for name in CACHE_COLUMNS if name in names]


class TeacherLogitsCollator:
    """Wraps a data collator so the cached teacher columns travel beside the batch it makes.

    The wrapped collator sees the rows without the cached columns (so a padding collator never
    tries to pad them); the cached columns are then added as tensors: `teacher_logits` `(B, C)`, and
    for a causal LM the targets of every row concatenated in row order, `teacher_topk_ids` and
    `teacher_topk_logprobs` `(N, k)` and `teacher_tail_logprob` `(N,)`, where N is the number of
    target tokens of the batch. Padding adds no target, so they line up with the labels' target
    positions taken in row-major order; `teacher_target_counts` `(B,)` holds each row's number of
    targets, which the trainer checks row by row against the positions it trains on.
    """

    def __init__(self, data_collator, top_k: int | None, logprob_dtype: str = "float16", id_dtype: str | None = None):
        self.data_collator = data_collator
        self.top_k = top_k
        self.logprob_dtype = logprob_dtype
        self.id_dtype = id_dtype

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        names = [name for name in CACHE_COLUMNS if name in features[0]]
        if not names:
            return self.data_collator(features)
        batch = self.data_collator([{k: v for k, v in row.items() if k not in names} for row in features])
        if "teacher_tail_logprob" in names:  # one tail value per target: its length is the row's count
            batch[TARGET_COUNTS] = torch.tensor([len(row["teacher_tail_logprob"]) for row in features], dtype=torch.long)
        for name in names:
            if self.logprob_dtype == "uint8" and name in ("teacher_topk_ids", "teacher_topk_logprobs"):
                batch[name] = self._unpack(name, [row[name] for row in features])
                continue
            values = [np.asarray(row[name]) for row in features]
            if name == "teacher_logits":
                batch[name] = torch.from_numpy(np.stack(values).astype(np.float32))
                continue
            flat = np.concatenate(values) if values else np.zeros(0)
            if name == "teacher_topk_ids":
                tensor = torch.from_numpy(flat.astype(np.int64)).reshape(-1, self.top_k)
            elif name == "teacher_topk_logprobs":
                if self.logprob_dtype == "bfloat16":  # stored as its int16 bits (numpy has no bfloat16)
                    tensor = torch.from_numpy(flat.astype(np.int16)).view(torch.bfloat16)
                else:
                    tensor = torch.from_numpy(flat.astype(np.float32))
                tensor = tensor.reshape(-1, self.top_k)
            else:
                tensor = torch.from_numpy(flat.astype(np.float32))
            batch[name] = tensor
        return batch

    def _unpack(self, name: str, blobs: list) -> torch.Tensor:
        import torch

        blobs = [blob.item() if isinstance(blob, np.ndarray) else blob for blob in blobs]
        if name == "teacher_topk_ids":
            flat = np.concatenate([np.frombuffer(zlib.decompress(blob), dtype=self.id_dtype) for blob in blobs])
            return torch.from_numpy(flat.astype(np.int64)).reshape(-1, self.top_k)
        rows = [unpack_logprobs(blob, self.top_k) for blob in blobs]
        return torch.from_numpy(np.concatenate(rows) if rows else np.zeros((0, self.top_k), np.float32))
