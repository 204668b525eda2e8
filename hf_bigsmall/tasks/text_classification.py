"""Sequence classification: tokenised datasets, accuracy, and a teacher fine-tuned when it has no head.

Embedded offline defaults: `assets.ROTTEN_TOMATOES` (4,866 labelled review snippets) and
`assets.MINILM` (all-MiniLM-L6-v2, a BERT with no classification head). Hub names
(`"rotten_tomatoes"`, `"bert-base-uncased"`) work where a network exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from transformers.utils import logging

from .. import assets
from ..utils.class_labels import dataset_class_names, dataset_to_model_ids, model_class_names
from ..utils.distributed import needs_cpu_process_group
from ..utils.files import atomic_write_json, atomic_write_text, fresh_partial_dir, publish_dir, restore_moved_aside
from ..utils.heads import evaluation_split
from ..utils.writers import release_writer

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
    if not isinstance(splits["train"].features[label_column], ClassLabel):
        # one numbering for both splits, from every label either holds: encoding each split alone (what
        # `DatasetDict.class_encode_column` does) numbered an eval split that lacks a class differently
        names = sorted({str(value) for split in splits.values() for value in split.unique(label_column)
                        if value is not None})
        classes = ClassLabel(names=names)
        splits = splits.map(lambda batch: {label_column: [None if value is None else classes.str2int(str(value))
                                                          for value in batch[label_column]]}, batched=True)
        splits = splits.cast_column(label_column, classes)
    for name, limit in (("train", max_train_samples), ("eval", max_eval_samples)):
        if limit is not None and limit < len(splits[name]):
            splits[name] = splits[name].shuffle(seed=seed).select(range(limit))
        if len(splits[name]) == 0:
            raise ValueError(f"the {name} split of {dataset_name!r} is empty: a classifier needs examples to train "
                             "and evaluate on (check max_train_samples / max_eval_samples).")

    def tokenize(batch):
        return tokenizer(batch[text_column], truncation=True, max_length=max_length)

    columns = splits["train"].column_names
    tokenized = splits.map(tokenize, batched=True, remove_columns=[c for c in columns if c != label_column])
    return tokenized.rename_column(label_column, "labels") if label_column != "labels" else tokenized


def label_names(dataset: DatasetDict) -> list[str]:
    """Class names of the `labels` column, in id order."""
    return list(dataset["train"].features["labels"].names)


def align_labels(dataset: DatasetDict, config) -> DatasetDict:
    """`dataset` with its `labels` renumbered to a trained classifier's ids (`config.id2label`).

    A `ClassLabel` names its classes in the dataset's order (sorted, for labels given as strings); a model
    fine-tuned elsewhere numbers the same classes in its own. Training or scoring the model on the
    dataset's ids as they stand would teach or count every example as another class. The result's
    `labels` are the model's ids, and its `ClassLabel` carries the model's names in the model's order.
    Names that are no names (a fresh head's `LABEL_0`, a `ClassLabel` of ids "0", "1") are left alone.

    Raises:
        ValueError: the dataset's class names are not the model's (other than for case and spaces); the
            message names both lists. Or the dataset has more classes than the model's head.

    Example:
    ```python
    >>> dataset = align_labels(load_classification_dataset(tokenizer, "rotten_tomatoes"), teacher.config)
    ```
    """
    from datasets import ClassLabel

    id2label = model_class_names(config)
    mapping = _dataset_to_teacher_ids(dataset, config)
    if mapping is None:
        return dataset
    features = dataset["train"].features.copy()
    features["labels"] = ClassLabel(names=[id2label[index] for index in range(len(id2label))])
    return dataset.map(lambda batch: {"labels": [mapping.get(value, value) for value in batch["labels"]]},
                       batched=True, features=features)


def _dataset_to_teacher_ids(dataset: DatasetDict, config) -> dict[int, int] | None:
    """`dataset_to_model_ids` for a trained classifier's `config`; labels without a `ClassLabel` are its ids already.

    Raises:
        ValueError: the dataset has more classes than the classifier's head, or other class names.
    """
    from datasets import ClassLabel

    feature = dataset["train"].features["labels"]
    if not isinstance(feature, ClassLabel):  # plain ids: no names to put in the model's order
        return None
    if feature.num_classes > int(config.num_labels):  # no renumbering fits them in: refused before anything trains
        raise ValueError(f"The dataset's labels have {feature.num_classes} classes {list(feature.names)} and the "
                         f"model's classification head {config.num_labels}: the labels beyond its ids cannot be "
                         "learnt or scored. Use a teacher without a classification head (it is fine-tuned on these "
                         "classes) or one trained on them.")
    return dataset_to_model_ids(feature.names, model_class_names(config), what="the dataset's labels")


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


TEACHER_INPUTS_NAME = "teacher_inputs.json"
# TrainingArguments that change how a run looks, not what it trains
_PRESENTATION_ONLY = {"disable_tqdm", "logging_steps", "report_to", "log_level", "output_dir"}


def _file_digest(*chunks: bytes) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()[:16]


def teacher_fingerprint(model_name_or_path: str | os.PathLike, dataset: DatasetDict, **training: Any) -> dict[str, Any]:
    """What a fine-tuned teacher was made from, small enough to store beside it (`teacher_inputs.json`).

    The backbone (its name, and for a local folder a digest of its absolute path, `config.json` and
    the weight files' sizes and modification times), the label names, a digest of the tokenised training split (so the dataset, the sample
    limit, the shuffle seed, `max_length` and the tokenizer all count) and the training arguments
    that shape the weights.
    """
    name = str(model_name_or_path)
    backbone: dict[str, Any] = {"name": name}
    folder = Path(assets.resolve_model(name))
    if folder.is_dir():
        if not assets.is_embedded(name):
            backbone["name"] = folder.resolve().name  # the full path only enters the digest: the record may be shared
        config = folder / "config.json"
        # sizes alone miss new weights of the same shape saved over the old ones; the modification time
        # catches them without reading gigabytes (a copy elsewhere differs by its path already)
        weights = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()
                         if p.suffix in (".safetensors", ".bin"))
        where = b"" if assets.is_embedded(name) else str(folder.resolve()).encode()
        backbone["files"] = _file_digest(where, config.read_bytes() if config.is_file() else b"",
                                         json.dumps(weights).encode())
    train = dataset["train"].select_columns(["input_ids", "labels"])[:]
    fingerprint = {
        "backbone": backbone,
        "labels": label_names(dataset),
        "train_samples": len(dataset["train"]),
        "train_data": _file_digest(json.dumps(train["input_ids"]).encode(), json.dumps(train["labels"]).encode()),
        "training": {key: training[key] for key in sorted(training) if key not in _PRESENTATION_ONLY},
    }
    return json.loads(json.dumps(fingerprint, default=str))  # as it reads back from the file


def teacher_differences(output_dir: str | os.PathLike, fingerprint: dict[str, Any]) -> list[str] | None:
    """Why the teacher saved in `output_dir` was not made from `fingerprint`'s inputs.

    Returns None when there is no saved teacher, `[]` when it may be reused, else one line per
    input that differs (or a line saying the folder has no record of its inputs).
    """
    output_dir = Path(output_dir)
    if not (output_dir / "config.json").is_file():
        return None
    record_path = output_dir / TEACHER_INPUTS_NAME
    if not record_path.is_file():
        return [f"{output_dir} has no {TEACHER_INPUTS_NAME}, so what made that teacher is unknown"]
    try:
        saved = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # truncated or damaged: as good as no record, never a crash
        saved = None
    if not isinstance(saved, dict):
        return [(f"{record_path} cannot be read as a record of inputs (damaged or truncated), so what made that "
                 "teacher is unknown")]
    return [f"{key}: {saved.get(key)!r} then, {value!r} now" for key, value in fingerprint.items() if saved.get(key) != value]


def train_teacher(
    model_name_or_path: str | os.PathLike,
    dataset: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | os.PathLike,
    num_train_epochs: float = 1.0,
    learning_rate: float = 1e-4,
    per_device_train_batch_size: int = 16,
    seed: int = 42,
    callbacks: list | None = None,
    **training_kwargs,
) -> Path:
    """Fine-tune a classification teacher from a checkpoint without a task head, or train a classifier further; save it.

    A backbone gets a new head named after the dataset's classes. A checkpoint that has a classification head keeps
    its `id2label`: the dataset is renumbered to the head's ids when it names the same classes in another order
    (`align_labels`), and refused when it names other ones; names that are no names (`LABEL_0`, `"0"`) on either
    side renumber nothing, and a head of such names with one row per class takes the dataset's names.

    A second call with the same `output_dir` finds the saved teacher and returns at once if it was
    made from the same inputs (`teacher_fingerprint`, stored as `teacher_inputs.json`): another
    backbone, dataset, sample limit, `max_length` or training argument is reported as a warning
    naming what differs, and the teacher is trained again in its place. The checkpoint is written to `<output_dir>.<writer>.partial` (this run's
    own) and renamed when complete, so an interrupted run never leaves a half-written teacher that a later run would trust. Under several processes
    every rank trains (DDP) and the main process saves.

    Args:
        model_name_or_path: a backbone (e.g. `assets.MINILM`, `"bert-base-uncased"`).
        dataset: the output of `load_classification_dataset` (`train`, `eval`, `labels`).
        tokenizer: the teacher's tokenizer (saved with it).
        output_dir: where the fine-tuned teacher goes.
        callbacks: `TrainerCallback`s for the fine-tuning, e.g. an `EnergyCallback` (its `energy.json`
            is saved with the teacher, so the emissions of making it stay known when it is reused).
        **training_kwargs: more `TrainingArguments` (e.g. `max_steps`, `bf16`).

    Returns:
        `Path` of the fine-tuned teacher.

    Raises:
        ValueError: the checkpoint's classification head names other classes than the dataset, or fewer; the
            message names both lists. Nothing is written.
    """
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        TrainingArguments,
    )

    # the kit's callbacks passed in log through it and measure its evaluate()
    from ..trainer import BigSmallTrainer

    output_dir = Path(output_dir)
    names = label_names(dataset)
    new_head = dict(num_labels=len(names), id2label=dict(enumerate(names)),
                    label2id={name: index for index, name in enumerate(names)})
    if has_classification_head(model_name_or_path):
        # a classifier trained further: its head's rows mean its own classes, so the dataset takes its ids (or is
        # refused, naming both lists) and the config keeps its id2label; the dataset's names are never written over it
        head = AutoConfig.from_pretrained(assets.resolve_model(model_name_or_path))
        dataset = align_labels(dataset, head)
        # but a head without names (`LABEL_0`, "0") takes the dataset's when they fit its rows: trained on them, its
        # rows mean them, and a later dataset ordering them otherwise can only be renumbered (`align_labels`) by name
        if not (model_class_names(head) is None and dataset_class_names(names) and len(names) == head.num_labels):
            new_head = {}
    fingerprint = teacher_fingerprint(
        model_name_or_path, dataset, num_train_epochs=num_train_epochs, learning_rate=learning_rate,
        per_device_train_batch_size=per_device_train_batch_size, seed=seed, **training_kwargs)
    restore_moved_aside(output_dir)  # a run killed while replacing the teacher left the old one aside: reuse it
    differences = teacher_differences(output_dir, fingerprint)
    if differences == []:
        logger.info("Reusing the fine-tuned teacher in %s", output_dir)
        return output_dir
    if differences:
        logger.warning("The teacher in %s was not made from these inputs, so it is trained again in its place: %s",
                       output_dir, "; ".join(differences))

    model = AutoModelForSequenceClassification.from_pretrained(
        assets.resolve_model(model_name_or_path), **new_head,
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
    trainer = BigSmallTrainer(
        model=model, args=TrainingArguments(**defaults), train_dataset=dataset["train"],
        eval_dataset=dataset["eval"], data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer, compute_metrics=accuracy, callbacks=callbacks,
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(str(partial))
    if trainer.is_world_process_zero():
        atomic_write_json(partial / "teacher_eval_results.json", metrics)
        atomic_write_text(partial / TEACHER_INPUTS_NAME, json.dumps(fingerprint, indent=2))
        publish_dir(partial, output_dir)
    else:  # every process made a `.partial` of its own; the main process's is the one saved and published
        shutil.rmtree(partial, ignore_errors=True)
        release_writer(partial)
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
    else the one `train_teacher` fine-tunes (or already fine-tuned) in `output_dir`.

    Raises:
        ValueError: the checkpoint has a classification head whose `id2label` names other classes than the
            dataset's labels, or the same ones numbered otherwise (then pass `align_labels(dataset, config)`,
            which renumbers the dataset to the checkpoint's ids), or fewer classes than the dataset's.
    """
    if has_classification_head(model_name_or_path):
        from transformers import AutoConfig

        path = assets.resolve_model(model_name_or_path)
        config = AutoConfig.from_pretrained(path)
        id2label = model_class_names(config)
        if _dataset_to_teacher_ids(dataset, config) is not None:
            raise ValueError(f"{model_name_or_path} numbers the classes {label_names(dataset)} of the dataset in "
                             f"another order ({id2label}): a student distilled on "
                             "the dataset's ids would learn permuted labels. Renumber the dataset first with "
                             "align_labels(dataset, config) from hf_bigsmall.tasks.text_classification.")
        return path
    return str(train_teacher(model_name_or_path, dataset, tokenizer, output_dir, **train_kwargs))
