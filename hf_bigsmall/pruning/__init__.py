"""Magnitude pruning that survives training, saving, resuming and distributed runs; `compact` for speed."""

from .callback import MagnitudePruningCallback
from .compact import compact
from .config import PruningConfig
from .importance import Importance, compute_importance
from .masks import SparsityReport, sparsity_report
from .vocabulary import trim_vocabulary
from .width import importance_masks, prune_width

__all__ = [
    "Importance", "MagnitudePruningCallback", "PruningConfig", "SparsityReport", "compact", "compute_importance",
    "importance_masks", "prune_width", "sparsity_report", "trim_vocabulary",
]
