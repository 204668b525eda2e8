"""Pruning that survives training, saving, resuming and distributed runs: magnitude while training,
Wanda or magnitude one-shot after it (`prune_one_shot`), N:M patterns; `compact` for speed."""

from .callback import MagnitudePruningCallback
from .compact import compact
from .config import PruningConfig
from .masks import SparsityReport, sparsity_report
from .one_shot import prune_one_shot
from .vocabulary import trim_vocabulary

__all__ = ["MagnitudePruningCallback", "PruningConfig", "SparsityReport", "compact", "prune_one_shot", "sparsity_report", "trim_vocabulary"]
