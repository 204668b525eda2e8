"""More training text for a student (a teacher-labelled transfer set and augmented copies of the labelled text),
and batches of similar length that pad little (`ShuffledLengthGroupedSampler`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_names

# Names are imported when first used, so that reading a student's training-data record
# (`hf_bigsmall.data.record`, which the model card does) imports no tokenizer or dataset code.
_LAZY_IMPORTS = {
    "ROTTEN_TOMATOES_FULL": ".transfer",
    "ShuffledLengthGroupedSampler": ".sampling",
    "augment_texts": ".augment",
    "cached_augmentation": ".augment",
    "embedding_neighbours": ".augment",
    "length_grouped_batches": ".sampling",
    "load_transfer_texts": ".transfer",
    "mix_with_labelled": ".transfer",
    "normalise_text": ".transfer",
    "unlabelled_dataset": ".transfer",
}

__all__ = list(_LAZY_IMPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .augment import augment_texts, cached_augmentation, embedding_neighbours
    from .sampling import ShuffledLengthGroupedSampler, length_grouped_batches
    from .transfer import (
        ROTTEN_TOMATOES_FULL,
        load_transfer_texts,
        mix_with_labelled,
        normalise_text,
        unlabelled_dataset,
    )


__getattr__ = lazy_names(__name__, _LAZY_IMPORTS, globals())
