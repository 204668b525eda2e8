"""The extra rows a student is distilled on beside the labelled set: a transfer set and augmented copies."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .augment import cached_augmentation
from .transfer import load_transfer_texts, unlabelled_dataset

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def extra_training_rows(
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    splits: DatasetDict,
    augment_path: str | os.PathLike,
    transfer_set: str | None = None,
    transfer_samples: int | None = None,
    augment_ratio: float = 0.0,
    augment_probability: float = 0.4,
    seed: int = 42,
    max_length: int = 128,
    text_column: str = "text",
    train_texts: list[str] | None = None,
) -> tuple[list[Dataset], dict[str, Any]]:
    """Unlabelled rows for the teacher to label: transfer-set texts and augmented training texts.

    Args:
        teacher: the teacher; its input embeddings give the augmentation's word neighbours.
        tokenizer: the tokenizer of the teacher and the student.
        splits: the labelled dataset, untokenised, every split: none of its texts enters the
            transfer set, and no augmented copy equals a text of a split other than `train`.
        augment_path: the JSON file the augmented copies are kept in (`cached_augmentation`).
        transfer_set: where the transfer set comes from (`load_transfer_texts`); None for none.
        transfer_samples: transfer-set texts kept (None: all).
        augment_ratio: augmented copies per training text (0: none).
        augment_probability: chance that a word of a copy is replaced.
        seed: seed of the transfer subset and of the copies.
        max_length: tokens kept per text.
        text_column: the column holding the text in `splits` (and in a tabular transfer set).
        train_texts: the texts augmented (default: every text of the `train` split), e.g. only the
            rows a sample limit kept.

    Returns:
        `(datasets, record)`: tokenised rows with `labels = -100` (`mix_with_labelled` puts them
        beside the labelled rows), and `{"transfer_set": ..., "augmentation": ...}` for what was
        made, which the model card states.
    """
    extras: list[Dataset] = []
    record: dict[str, Any] = {}
    if transfer_set:
        everything = [text for split in splits.values() for text in split[text_column]]
        texts, record["transfer_set"] = load_transfer_texts(transfer_set, exclude=everything,
                                                            max_samples=transfer_samples, seed=seed,
                                                            text_column=text_column)
        extras.append(unlabelled_dataset(texts, tokenizer, max_length=max_length))
    if augment_ratio:
        if train_texts is None and "train" not in splits:
            raise ValueError(f"augmentation copies the 'train' split, which this dataset lacks (splits: {list(splits)}).")
        if train_texts is None:
            train_texts = [text for text in splits["train"][text_column] if isinstance(text, str)]
        held_out = [text for name, split in splits.items() if name != "train" for text in split[text_column]
                    if isinstance(text, str)]
        copies, record["augmentation"] = cached_augmentation(
            Path(augment_path), train_texts, tokenizer, teacher.get_input_embeddings().weight, ratio=augment_ratio,
            replace_probability=augment_probability, seed=seed, exclude=held_out)
        extras.append(unlabelled_dataset(copies, tokenizer, max_length=max_length))
    return extras, record
