"""Recipe options to distil on more text than the labelled set: a transfer set and augmented copies."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..assets import load_text_dataset
from ..data import mix_with_labelled
from ..data.mixture import extra_training_rows
from ..distillation.record import DistillationRecord

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class TransferArguments:
    """`--transfer_set`, `--transfer_samples`, `--augment_ratio`, `--augment_probability` (all off by default).

    The extra texts carry no label: the teacher labels them (online, or once through
    `--cache_teacher_logits`) and the student learns them from its soft targets alone, while the
    labelled rows keep both losses (`hf_bigsmall.data`).
    """

    transfer_set: str | None = field(default=None, metadata={
        "help": "Unlabelled text the teacher labels, distilled on beside the labelled set: 'embedded/rotten_tomatoes_full' "
                "(the labelled dataset's reviews removed), a folder of .txt files (one text per line), a "
                ".txt/.csv/.json/.parquet file or a dataset name. Texts of any split of the labelled dataset are "
                "removed by their normalised text."})
    transfer_samples: int | None = field(default=None, metadata={
        "help": "Transfer-set texts used, a seeded random subset (default: all)."})
    augment_ratio: float = field(default=0.0, metadata={
        "help": "Augmented copies per labelled training text (TinyBERT word replacement with neighbours from the "
                "teacher's input embeddings), labelled by the teacher; 0: none."})
    augment_probability: float = field(default=0.4, metadata={
        "help": "Chance that a word of an augmented copy is replaced by one of its neighbours."})

    def __post_init__(self):
        # a recipe's arguments mix this class with others (CompressionArguments): their checks run too, since
        # the dataclass calls this one alone
        checks = getattr(super(), "__post_init__", None)
        if checks is not None:
            checks()
        if self.transfer_samples is not None and (isinstance(self.transfer_samples, bool) or self.transfer_samples < 1):
            raise ValueError(f"--transfer_samples must be a positive number, got {self.transfer_samples}.")
        if not (isinstance(self.augment_ratio, (int, float)) and math.isfinite(self.augment_ratio)
                and self.augment_ratio >= 0):
            raise ValueError(f"--augment_ratio must be a finite number >= 0 (copies per text), got {self.augment_ratio!r}.")
        if not (isinstance(self.augment_probability, (int, float)) and 0 < self.augment_probability <= 1):
            raise ValueError(f"--augment_probability must be in (0, 1], got {self.augment_probability!r}.")

    def mixed_train_dataset(self, teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, student: PreTrainedModel,
                            train_dataset: Dataset, dataset_name: str, output_dir: str, seed: int,
                            max_length: int, text_column: str = "text") -> Dataset:
        """`train_dataset` followed by the extra rows these options ask for (itself when none), and the
        student's `config.distillation["training_data"]` saying what it saw, for its card."""
        if not self.transfer_set and not self.augment_ratio:
            return train_dataset

        # the texts of the labelled rows in use (a sample limit may have kept some), as the tokenizer reads them
        train_texts = tokenizer.batch_decode([list(ids) for ids in train_dataset["input_ids"]], skip_special_tokens=True)
        extras, record = extra_training_rows(
            teacher, tokenizer, load_text_dataset(dataset_name), Path(output_dir) / "augmented.json",
            transfer_set=self.transfer_set, transfer_samples=self.transfer_samples, augment_ratio=self.augment_ratio,
            augment_probability=self.augment_probability, seed=seed, max_length=max_length, text_column=text_column,
            train_texts=train_texts)
        training_data: dict[str, Any] = {"labelled": len(train_dataset), **record}
        (DistillationRecord.from_config(student.config) or DistillationRecord()).update(
            {"training_data": training_data}).write(student.config)
        return mix_with_labelled(train_dataset, *extras)
