"""Pruning that survives training, saving, resuming and distributed runs: magnitude while training,
SparseGPT, Wanda or magnitude one-shot after it (`prune_one_shot`), N:M patterns; `compact` for speed.
Criteria are a registry (`register_pruning_criterion`) that both take by name."""

from .callback import MagnitudePruningCallback
from .compact import compact
from .config import PruningConfig
from .criteria import PruningCriterion, get_pruning_criterion, pruning_criterion_names, register_pruning_criterion
from .importance import Importance, compute_importance
from .masks import SparsityReport, sparsity_report
from .one_shot import prune_one_shot
from .state import PruningState, get_pruning_state
from .vocabulary import trim_vocabulary
from .width import importance_masks, prune_width

__all__ = [
    "Importance", "MagnitudePruningCallback", "PruningConfig", "PruningCriterion", "PruningState", "SparsityReport",
    "compact", "compute_importance", "get_pruning_criterion", "get_pruning_state", "importance_masks",
    "prune_one_shot", "prune_width", "pruning_criterion_names", "register_pruning_criterion", "sparsity_report",
    "trim_vocabulary",
]
