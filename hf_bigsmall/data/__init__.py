"""More training text for a student: a teacher-labelled transfer set and augmented copies of the labelled text."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names are imported when first used, so that reading a student's training-data record
# (`hf_bigsmall.data.record`, which the model card does) imports no tokenizer or dataset code.
_LAZY_IMPORTS = {
    "ROTTEN_TOMATOES_FULL": ".transfer",
    "augment_texts": ".augment",
    "cached_augmentation": ".augment",
    "embedding_neighbours": ".augment",
    "load_transfer_texts": ".transfer",
    "mix_with_labelled": ".transfer",
    "normalise_text": ".transfer",
    "unlabelled_dataset": ".transfer",
}

__all__ = list(_LAZY_IMPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .augment import augment_texts, cached_augmentation, embedding_neighbours
    from .transfer import (
        ROTTEN_TOMATOES_FULL,
        load_transfer_texts,
        mix_with_labelled,
        normalise_text,
        unlabelled_dataset,
    )


def __getattr__(name: str) -> Any:
    module_name = _LAZY_IMPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value
    return value
