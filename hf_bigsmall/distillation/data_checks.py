"""Checks of a distillation run's datasets, made before training so a bad one fails with a clear message.

Without them an empty dataset, a sequence longer than the position embeddings or a batch without
labels while `alpha_ce > 0` fails inside the first step, with an error from torch or the
dataloader that names neither the dataset nor the fix.

Every dataset type gets the same check of its first batch, collated as the Trainer will collate it
(a `datasets.Dataset`, a torch map-style `Dataset`, a torch or `datasets` `IterableDataset`); a
`datasets.Dataset` also has all its sequence lengths read from its Arrow table. The checks run in
`DistillationTrainer.__init__` before `Trainer.__init__`, which creates `output_dir`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, default_data_collator
from transformers.data.data_collator import DataCollatorWithPadding
from transformers.utils import logging

from .cache import CACHE_COLUMNS

logger = logging.get_logger(__name__)

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


def trainer_collator(data_collator: Callable | None, processing_class: Any = None) -> Callable:
    """The collator `Trainer.__init__` will use: the one given, else padding with a tokenizer, else the default."""
    if data_collator is not None:
        return data_collator
    if isinstance(processing_class, PreTrainedTokenizerBase):
        return DataCollatorWithPadding(processing_class)
    return default_data_collator


def model_columns(model: PreTrainedModel, label_names: list[str] | None) -> set[str]:
    """The example keys the Trainer keeps with `remove_unused_columns=True`: forward arguments and labels."""
    return set(inspect.signature(model.forward).parameters) | {"label", "label_ids", *(label_names or [])}


def _first_examples(dataset: Any, count: int) -> list | None:
    """The first `count` examples, or None where reading them would use up data that training needs."""
    map_style = hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")
    if map_style and not isinstance(dataset, torch.utils.data.IterableDataset) and not _is_hf_iterable(dataset):
        return [dataset[index] for index in range(min(count, len(dataset)))]
    if not isinstance(dataset, Iterable):
        return None
    # A dataset whose iterator is shared (`__iter__` returns self or one stored stream) would start
    # training after the rows read here; a fresh iterator per call (generators, `datasets`) restarts.
    first, second = iter(dataset), iter(dataset)
    if first is second:
        logger.info("The dataset hands out one shared iterator: its first batch is not checked before training.")
        return None
    return list(islice(first, count))


def _is_hf_iterable(dataset: Any) -> bool:
    try:
        import datasets
    except ImportError:
        return False
    return isinstance(dataset, datasets.IterableDataset)


def collate_first_batch(examples: list, collator: Callable, keep_columns: set[str] | None) -> Any:
    """`examples` collated as the Trainer's dataloader collates them, or None when the collator fails here.

    Args:
        examples: the first examples of a dataset.
        collator: the Trainer's data collator ([`trainer_collator`]).
        keep_columns: the example keys the Trainer keeps ([`model_columns`]); None keeps all
            (`remove_unused_columns=False`). Cached teacher columns never reach the collator.
    """
    rows = [
        {key: value for key, value in example.items()
         if key not in CACHE_COLUMNS and (keep_columns is None or key in keep_columns)}
        if isinstance(example, Mapping) else example
        for example in examples
    ]
    try:
        return collator(rows)
    except Exception as error:  # noqa: BLE001 - training raises the collator's own error at its first batch
        logger.info(f"The first batch could not be collated before training ({error}); it is not checked.")
        return None


def check_dataset(dataset: Any, split: str, student: PreTrainedModel, teacher: PreTrainedModel | None,
                  alpha_ce: float, collator: Callable | None = None, batch_size: int = 8,
                  keep_columns: set[str] | None = None) -> None:
    """Raise a `ValueError` saying what to do if `dataset` cannot be trained or evaluated on.

    Args:
        dataset: a `datasets.Dataset`, a torch map-style `Dataset`, or a torch or `datasets`
            `IterableDataset` (its first rows are read from a fresh iterator, so training still
            starts at its beginning).
        split: `"train_dataset"` or `"eval_dataset"`, as the user passed it.
        student, teacher: both read every batch, so the shorter position table counts.
        alpha_ce: the weight of the task loss, which needs labels.
        collator: the Trainer's data collator ([`trainer_collator`]); it may add the labels.
        batch_size: examples in the batch that is checked.
        keep_columns: the example keys the Trainer passes to the collator ([`model_columns`]).
    """
    if dataset is None:
        return
    if hasattr(dataset, "__len__") and not _is_hf_iterable(dataset) and len(dataset) == 0:
        raise ValueError(f"{split} is empty: pass a dataset with at least one example.")
    limits = {name: learned_positions(model) for name, model in (("student", student), ("teacher", teacher))
              if model is not None}  # no teacher when distilling from cached logits
    limits = {name: limit for name, limit in limits.items() if limit is not None}
    examples = _first_examples(dataset, batch_size)
    if examples == []:
        raise ValueError(f"{split} yields no examples: pass a dataset with at least one example.")
    batch = collate_first_batch(examples, collator or default_data_collator, keep_columns) if examples else None
    longest = _longest_sequence(dataset)
    input_ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
    if isinstance(input_ids, torch.Tensor) and input_ids.dim() >= 1:
        longest = max(longest or 0, input_ids.shape[-1])
    if limits and longest is not None:
        name, limit = min(limits.items(), key=lambda item: item[1])
        if longest > limit:
            raise ValueError(
                f"{split} holds sequences of up to {longest} tokens but the {name} has position embeddings for "
                f"{limit}: tokenize with truncation=True, max_length={limit} (or cut blocks of at most {limit} tokens)."
            )
    if alpha_ce > 0 and isinstance(batch, Mapping) and not any(key in batch for key in LABEL_COLUMNS):
        columns = getattr(dataset, "column_names", None) or sorted(batch)
        raise ValueError(
            f"{split} has no labels (columns: {columns}) but alpha_ce={alpha_ce} trains on them: add a "
            "`labels` column, use a collator that makes them (DataCollatorForLanguageModeling(mlm=False) "
            "for causal LM), or set alpha_ce=0 to distil from the teacher alone."
        )
