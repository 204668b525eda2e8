"""A transfer set: unlabelled text that the teacher labels, distilled on beside the labelled set.

DistilBERT (Sanh et al., 2019) and "well-read students" (Turc et al., 2019) show that a student
learns more from a teacher's soft targets on plenty of unlabelled in-domain text than from the
labelled set alone. Here the text comes from a dataset or a folder of text files; rows that are
also in the labelled dataset (any split: the test reviews never leak into training) are dropped
by their normalised text (`normalise_text`), and so are repeats. The rows carry `labels = -100`:
`DistillationTrainer` gives them the soft-target loss alone, the labelled rows both losses, each
row counting once in the mean.

Sources (`load_transfer_texts`):

- `embedded/rotten_tomatoes_full` (`ROTTEN_TOMATOES_FULL`): the 13,905-snippet Rotten Tomatoes
  corpus that ships offline, of which the quickstart's labelled set is a part;
- a folder: every `*.txt` file in it (recursively), one text per non-empty line;
- a `.txt` file (one text per line) or a `.csv`, `.json`, `.jsonl` or `.parquet` file with a text column;
- any other name `datasets.load_dataset` takes (an embedded name, a Hub id where a network exists):
  its `train` split's text column.
"""

from __future__ import annotations

import os
import random
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers.utils import logging

from .. import assets

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

logger = logging.get_logger(__name__)

ROTTEN_TOMATOES_FULL = "embedded/rotten_tomatoes_full"
_FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_SPACES = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """The form two texts are compared in: lowercase, punctuation removed, whitespace collapsed.

    `"The film -- a MESS!"` and `"the film a mess"` are the same text here, so a review that
    differs from a test review only by case, spacing or punctuation is still caught.
    """
    kept = "".join(" " if unicodedata.category(char).startswith("P") else char for char in text.lower())
    return _SPACES.sub(" ", kept).strip()


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]


def _source_texts(source: str, text_column: str) -> list[str]:
    if source == ROTTEN_TOMATOES_FULL:
        from datasets import load_dataset

        # every snippet, the plot summaries too: the teacher labels them, nothing here needs a class
        rows = load_dataset("csv", data_files=str(assets.rotten_tomatoes_path(full=True)), split="train")
        return [text for text in rows["text"] if isinstance(text, str)]  # a few rows have no text
    path = Path(source)
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise ValueError(f"transfer set folder {source!r} holds no .txt file: put the texts in .txt files, one "
                             "per line, or pass a dataset.")
        return [line for file in files for line in _read_lines(file)]
    if path.is_file():
        if path.suffix == ".txt":
            return _read_lines(path)
        if path.suffix not in _FILE_BUILDERS:
            raise ValueError(f"transfer set file {source!r}: expected .txt, {', '.join(_FILE_BUILDERS)}, got "
                             f"{path.suffix!r}.")
        from datasets import load_dataset

        rows = load_dataset(_FILE_BUILDERS[path.suffix], data_files=str(path), split="train")
    else:
        splits = assets.load_text_dataset(source)
        if "train" not in splits:
            raise ValueError(f"transfer set {source!r} has no 'train' split (splits: {list(splits)}).")
        rows = splits["train"]
    if text_column not in rows.column_names:
        raise ValueError(f"transfer set {source!r} has no column {text_column!r} (columns: {rows.column_names}): "
                         "pass the column that holds the text.")
    return [text for text in rows[text_column] if isinstance(text, str)]


def load_transfer_texts(
    source: str | os.PathLike,
    exclude: Iterable[str] = (),
    max_samples: int | None = None,
    seed: int = 42,
    text_column: str = "text",
) -> tuple[list[str], dict[str, Any]]:
    """Unlabelled texts for distillation, none of them in `exclude`, each once.

    Args:
        source: where the text comes from (see the module docstring).
        exclude: texts that must not appear: every split of the labelled dataset (its test and
            evaluation rows above all), compared by `normalise_text`.
        max_samples: keep at most this many, a random subset drawn with `seed` (None: all).
        seed: seed of the shuffle that orders the texts and draws the subset.
        text_column: the column holding the text in a dataset or table file.

    Returns:
        `(texts, record)`: the texts, in a seeded random order, and what was done, for the model card
        (`source`, `available`, `overlapping` rows dropped for being in `exclude`, `repeats` dropped,
        `samples` kept).

    Example:

    ```python
    >>> from hf_bigsmall.data import ROTTEN_TOMATOES_FULL, load_transfer_texts
    >>> texts, record = load_transfer_texts(ROTTEN_TOMATOES_FULL, exclude=["A test review."], max_samples=2000)
    ```
    """
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples (--transfer_samples) must be a positive integer or None for all, got {max_samples!r}.")
    source = str(source)
    texts = _source_texts(source, text_column)
    excluded = {normalise_text(text) for text in exclude if isinstance(text, str)}
    kept, seen, overlapping, repeats = [], set(), 0, 0
    for text in texts:
        key = normalise_text(text)
        if not key:
            continue
        if key in excluded:
            overlapping += 1
        elif key in seen:
            repeats += 1
        else:
            seen.add(key)
            kept.append(text.strip())
    random.Random(seed).shuffle(kept)
    if max_samples is not None:
        kept = kept[:max_samples]
    if not kept:
        raise ValueError(f"transfer set {source!r} has no text left once the labelled dataset's texts and repeats "
                         f"are removed ({len(texts)} read, {overlapping} in the labelled dataset): use other text.")
    record = {"source": source, "available": len(texts), "overlapping": overlapping, "repeats": repeats, "samples": len(kept)}
    logger.info("Transfer set %s: %d texts kept of %d (%d in the labelled dataset, %d repeats dropped)",
                source, len(kept), len(texts), overlapping, repeats)
    return kept, record


def unlabelled_dataset(texts: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int = 128) -> Dataset:
    """Tokenised rows of `texts` with `labels = -100`: distilled on the teacher's soft targets alone."""
    from datasets import Dataset, Features, Sequence, Value

    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    columns = {name: list(values) for name, values in encoded.items()}
    features = {name: Sequence(Value("int8" if name in ("attention_mask", "token_type_ids") else "int32"))
                for name in columns}
    columns["labels"] = [-100] * len(texts)
    features["labels"] = Value("int64")
    return Dataset.from_dict(columns, features=Features(features))


def mix_with_labelled(labelled: Dataset, *unlabelled: Dataset) -> Dataset:
    """The labelled rows followed by the unlabelled ones, as one dataset (the Trainer shuffles it).

    The labels become plain integers (a `ClassLabel` cannot hold -100); the columns are the
    labelled set's model inputs and `labels`.

    Raises:
        ValueError: a dataset lacks a column of the labelled set (another tokenizer made it).
    """
    from datasets import Value, concatenate_datasets

    columns = [name for name in labelled.column_names if name in ("input_ids", "attention_mask", "token_type_ids", "labels")]
    parts = [labelled.select_columns(columns)]
    for extra in unlabelled:
        missing = [name for name in columns if name not in extra.column_names]
        if missing:
            raise ValueError(f"the unlabelled rows lack the columns {missing} of the labelled set: tokenise them with "
                             "the same tokenizer (unlabelled_dataset(texts, tokenizer)).")
        parts.append(extra.select_columns(columns))
    features = parts[0].features.copy()
    features["labels"] = Value("int64")
    return concatenate_datasets([part.cast(features) for part in parts])
