"""Checks of a distillation run's datasets, made before training so a bad one fails with a clear message.

Without them an empty dataset, a sequence longer than the position embeddings or a batch without
labels while `alpha_ce > 0` fails inside the first step, with an error from torch or the
dataloader that names neither the dataset nor the fix.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel

LABEL_COLUMNS = ("labels", "label", "label_ids")


def learned_positions(model: PreTrainedModel) -> int | None:
    """How many positions `model` has embeddings for, or None when it has no such limit.

    Only learned absolute position embeddings (BERT, GPT-2) make a longer sequence fail; rotary
    positions (Llama) have no table to index out of.
    """
    config = model.config.get_text_config()
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return None
    has_table = any(name.endswith(("position_embeddings", "wpe")) for name, _ in model.named_modules())
    return limit if has_table else None


def _longest_sequence(dataset: Any) -> int | None:
    """The longest `input_ids` of a `datasets.Dataset`, read from its Arrow table without decoding rows."""
    if "input_ids" not in (getattr(dataset, "column_names", None) or []):
        return None
    try:
        import pyarrow.compute as pc

        column = dataset.with_format(None).data.column("input_ids")
        if getattr(dataset, "_indices", None) is not None:  # a select/shuffle view of a larger table
            column = dataset.with_format("arrow")[:]["input_ids"]
        longest = pc.max(pc.list_value_length(column)).as_py()
    except Exception:  # noqa: BLE001 - an unusual storage is checked by the model at run time
        return None
    return int(longest) if longest is not None else None


def _collator_adds_labels(collator, dataset: Any) -> bool:
    """Whether `collator` makes `labels` from the inputs alone (as `DataCollatorForLanguageModeling` does)."""
    if collator is None or len(dataset) == 0:
        return False
    row = dataset[0]
    inputs = {key: row[key] for key in ("input_ids", "attention_mask") if key in row}
    if "input_ids" not in inputs:
        return False
    try:
        return "labels" in collator([inputs])
    except Exception:  # noqa: BLE001 - a collator that needs more than the inputs makes no labels of its own
        return False


def check_dataset(dataset: Any, split: str, student: PreTrainedModel, teacher: PreTrainedModel | None,
                  alpha_ce: float, collator=None) -> None:
    """Raise a `ValueError` saying what to do if `dataset` cannot be trained or evaluated on.

    Args:
        dataset: a `datasets.Dataset` or any sized dataset; an iterable one is not checked.
        split: `"train_dataset"` or `"eval_dataset"`, as the user passed it.
        student, teacher: both read every batch, so the shorter position table counts.
        alpha_ce: the weight of the task loss, which needs labels.
        collator: the Trainer's data collator (it may add the labels).
    """
    if dataset is None or not hasattr(dataset, "__len__"):
        return
    if len(dataset) == 0:
        raise ValueError(f"{split} is empty: pass a dataset with at least one example.")
    limits = {name: learned_positions(model) for name, model in (("student", student), ("teacher", teacher))
              if model is not None}  # no teacher when distilling from cached logits
    limits = {name: limit for name, limit in limits.items() if limit is not None}
    longest = _longest_sequence(dataset)
    if limits and longest is not None:
        name, limit = min(limits.items(), key=lambda item: item[1])
        if longest > limit:
            raise ValueError(
                f"{split} holds sequences of up to {longest} tokens but the {name} has position embeddings for "
                f"{limit}: tokenize with truncation=True, max_length={limit} (or cut blocks of at most {limit} tokens)."
            )
    columns = getattr(dataset, "column_names", None)
    if alpha_ce > 0 and columns is not None and not any(column in columns for column in LABEL_COLUMNS):
        if not _collator_adds_labels(collator, dataset):
            raise ValueError(
                f"{split} has no labels (columns: {columns}) but alpha_ce={alpha_ce} trains on them: add a "
                "`labels` column, use a collator that makes them (DataCollatorForLanguageModeling(mlm=False) "
                "for causal LM), or set alpha_ce=0 to distil from the teacher alone."
            )
