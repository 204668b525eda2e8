"""Pruning that survives training, saving, resuming and distributed runs: magnitude while training,
SparseGPT, Wanda or magnitude one-shot after it (`prune_one_shot`), N:M patterns; `compact` for speed."""

from .callback import MagnitudePruningCallback
from .compact import compact
from .config import PruningConfig
from .importance import Importance, compute_importance
from .masks import SparsityReport, sparsity_report
from .one_shot import prune_one_shot
from .vocabulary import trim_vocabulary
from .width import importance_masks, prune_width

__all__ = [
    "Importance", "MagnitudePruningCallback", "PruningConfig", "SparsityReport", "compact", "compute_importance",
    "importance_masks", "prune_one_shot", "prune_width", "sparsity_report", "trim_vocabulary",
]
