"""Magnitude pruning that survives training, saving, resuming and distributed runs; `compact` for speed."""

from .callback import MagnitudePruningCallback
from .compact import compact
from .config import PruningConfig
from .masks import SparsityReport, sparsity_report
from .vocabulary import trim_vocabulary

__all__ = ["MagnitudePruningCallback", "PruningConfig", "SparsityReport", "compact", "sparsity_report", "trim_vocabulary"]
