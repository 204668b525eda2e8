"""Magnitude: the smallest weights go (`|W_ij|`); for neurons and heads, the L1 norm of a unit's weights
(Li et al. 2017). Needs no calibration."""

from __future__ import annotations

import torch

from .base import PruningCriterion, register_pruning_criterion


def magnitude_score(weight: torch.Tensor, statistic: None) -> torch.Tensor:
    return weight.abs()


def l1_unit_scores(model, structure: str, statistic: None) -> None:
    return None  # structured_masks ranks units by the L1 norm of their weights


MAGNITUDE = register_pruning_criterion(PruningCriterion(
    name="magnitude",
    description="magnitude (the smallest weights go)",
    needs="nothing",
    granularities=("unstructured", "n:m", "neurons", "heads"),
    score=magnitude_score,
    unit_scores=l1_unit_scores,
))
