"""More training text for a student: a teacher-labelled transfer set and augmented copies of the labelled text."""

from .augment import augment_texts, cached_augmentation, embedding_neighbours
from .transfer import (
    ROTTEN_TOMATOES_FULL,
    load_transfer_texts,
    mix_with_labelled,
    normalise_text,
    unlabelled_dataset,
)

__all__ = [
    "ROTTEN_TOMATOES_FULL",
    "augment_texts",
    "cached_augmentation",
    "embedding_neighbours",
    "load_transfer_texts",
    "mix_with_labelled",
    "normalise_text",
    "unlabelled_dataset",
]
