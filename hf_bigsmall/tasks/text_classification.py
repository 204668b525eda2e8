"""Sequence classification: tokenised datasets, accuracy, and a teacher fine-tuned when it has no head.

Embedded offline defaults: `assets.ROTTEN_TOMATOES` (4,866 labelled review snippets) and
`assets.MINILM` (all-MiniLM-L6-v2, a BERT with no classification head). Hub names
(`"rotten_tomatoes"`, `"bert-base-uncased"`) work where a network exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from transformers.utils import logging

from .. import assets
from ..utils.distributed import needs_cpu_process_group
from ..utils.files import atomic_write_json, fresh_partial_dir, publish_dir
from ..utils.heads import evaluation_split

if TYPE_CHECKING:
    from datasets import DatasetDict
    from transformers import EvalPrediction, PreTrainedTokenizerBase

logger = logging.get_logger(__name__)


def load_classification_dataset(
    tokenizer: PreTrainedTokenizerBase,
    dataset_name: str = assets.ROTTEN_TOMATOES,
    text_column: str = "text",
    label_column: str = "label",
    max_length: int = 128,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 42,
) -> DatasetDict:
    """Load and tokenise a classification dataset into `train` and `eval` splits.

    Columns of the result: `input_ids`, `attention_mask` (and `token_type_ids` for BERT) and
    `labels`, a `ClassLabel` whose names become the models' `id2label`. The eval split is the
    dataset's `validation` split, else `test`, else 10% of `train`. Samples are taken after a
    shuffle with `seed`, so a small `max_train_samples` still covers every class. Padding is left
    to the collator (`DataCollatorWithPadding`); a tokenizer without a padding token (GPT-2, Llama)
    is given its end-of-text token as one.
    """
    from datasets import ClassLabel, DatasetDict

    if tokenizer.pad_token is None:  # GPT-2 / Llama tokenizers: batches are padded with end-of-text
        tokenizer.pad_token = tokenizer.eos_token
    raw = assets.load_text_dataset(dataset_name)
    if "train" not in raw:
        raise ValueError(f"dataset {dataset_name!r} has no 'train' split (splits: {list(raw)}).")
    eval_split = evaluation_split(raw)
    if eval_split is None:
        raw = raw["train"].train_test_split(test_size=0.1, seed=seed)
        eval_split = "test"
    splits = DatasetDict(train=raw["train"], eval=raw[eval_split])
    for column in (text_column, label_column):
        if column not in splits["train"].column_names:
            raise ValueError(
                f"dataset {dataset_name!r} has no column {column!r} (columns: {splits['train'].column_names}): "
                "pass text_column/label_column."
            )
    for name, limit in (("train", max_train_samples), ("eval", max_eval_samples)):
        if limit is not None and limit < len(splits[name]):
            splits[name] = splits[name].shuffle(seed=seed).select(range(limit))
        if len(splits[name]) == 0:
            raise ValueError(f"the {name} split of {dataset_name!r} is empty: a classifier needs examples to train "
                             "and evaluate on (check max_train_samples / max_eval_samples).")
    if not isinstance(splits["train"].features[label_column], ClassLabel):
        splits = splits.class_encode_column(label_column)

    def tokenize(batch):
        return tokenizer(batch[text_column], truncation=True, max_length=max_length)

    columns = splits["train"].column_names
    tokenized = splits.map(tokenize, batched=True, remove_columns=[c for c in columns if c != label_column])
    return tokenized.rename_column(label_column, "labels") if label_column != "labels" else tokenized


def label_names(dataset: DatasetDict) -> list[str]:
    """Class names of the `labels` column, in id order."""
    return list(dataset["train"].features["labels"].names)


def accuracy(eval_prediction: EvalPrediction) -> dict[str, float]:
    """`compute_metrics` for the Trainer: share of argmax predictions equal to the label."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def has_classification_head(name_or_path: str | os.PathLike) -> bool:
    """True if the checkpoint was saved with a sequence-classification head (no fine-tuning needed)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(assets.resolve_model(name_or_path))
    return any(name.endswith("ForSequenceClassification") for name in (config.architectures or []))


def train_teacher(
    model_name_or_path: str | os.PathLike,
    dataset: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | os.PathLike,
    num_train_epochs: float = 1.0,
    learning_rate: float = 1e-4,
    per_device_train_batch_size: int = 16,
    seed: int = 42,
    **training_kwargs,
) -> Path:
    """Fine-tune a classification teacher from a checkpoint without a task head, and save it.

    A second call with the same `output_dir` finds the saved teacher and returns at once, as long
    as it was trained on the same labels (otherwise a `ValueError` says to pick another folder). The
    checkpoint is written to `<output_dir>.partial` and renamed when complete, so an interrupted
    run never leaves a half-written teacher that a later run would trust. Under several processes
    every rank trains (DDP) and the main process saves.

    Args:
        model_name_or_path: a backbone (e.g. `assets.MINILM`, `"bert-base-uncased"`).
        dataset: the output of `load_classification_dataset` (`train`, `eval`, `labels`).
        tokenizer: the teacher's tokenizer (saved with it).
        output_dir: where the fine-tuned teacher goes.
        **training_kwargs: more `TrainingArguments` (e.g. `max_steps`, `bf16`).

    Returns:
        `Path` of the fine-tuned teacher.
    """
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    output_dir = Path(output_dir)
    names = label_names(dataset)
    id2label = dict(enumerate(names))
    if (output_dir / "config.json").is_file():
        saved = json.loads((output_dir / "config.json").read_text())
        if {int(k): v for k, v in saved.get("id2label", {}).items()} != id2label:
            raise ValueError(
                f"{output_dir} holds a teacher trained on labels {saved.get('id2label')}, not {id2label}: "
                "choose another teacher_output_dir or delete that folder."
            )
        logger.info("Reusing the fine-tuned teacher in %s", output_dir)
        return output_dir

    model = AutoModelForSequenceClassification.from_pretrained(
        assets.resolve_model(model_name_or_path),
        num_labels=len(names), id2label=id2label, label2id={name: i for i, name in id2label.items()},
        # decoder classifiers (GPT-2, Llama) read the last non-padding token, so they need the id
        pad_token_id=tokenizer.pad_token_id,
    )
    partial = fresh_partial_dir(output_dir)
    defaults = dict(
        output_dir=str(partial), num_train_epochs=num_train_epochs, learning_rate=learning_rate,
        per_device_train_batch_size=per_device_train_batch_size, per_device_eval_batch_size=64,
        warmup_steps=0.1, logging_steps=10, save_strategy="no", report_to="none", seed=seed,
    )
    defaults.update(training_kwargs)
    if needs_cpu_process_group(defaults.get("use_cpu", False)):
        defaults["use_cpu"] = True
    trainer = Trainer(
        model=model, args=TrainingArguments(**defaults), train_dataset=dataset["train"],
        eval_dataset=dataset["eval"], data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer, compute_metrics=accuracy,
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(str(partial))
    if trainer.is_world_process_zero():
        atomic_write_json(partial / "teacher_eval_results.json", metrics)
        publish_dir(partial, output_dir)
    trainer.accelerator.wait_for_everyone()
    return output_dir


def classification_teacher(
    model_name_or_path: str | os.PathLike,
    dataset: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | os.PathLike,
    **train_kwargs,
) -> str:
    """A teacher ready to distil from: the checkpoint itself if it has a classification head,
    else the one `train_teacher` fine-tunes (or already fine-tuned) in `output_dir`."""
    if has_classification_head(model_name_or_path):
        return assets.resolve_model(model_name_or_path)
    return str(train_teacher(model_name_or_path, dataset, tokenizer, output_dir, **train_kwargs))
