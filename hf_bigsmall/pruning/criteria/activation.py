"""Activation importance (Minitron, Sreenivas et al. 2024): FFN neurons and attention heads ranked by
their activations on calibration data (`compute_importance`)."""

from __future__ import annotations

import torch
from torch import nn

from ..importance import Importance
from .base import PruningCriterion, register_pruning_criterion


def activation_unit_scores(model: nn.Module, structure: str, importance: Importance) -> list[torch.Tensor]:
    table = importance.neurons if structure == "neurons" else importance.heads
    return list(table)


ACTIVATION = register_pruning_criterion(PruningCriterion(
    name="activation",
    description="activation importance on calibration data (Minitron, Sreenivas et al., 2024)",
    needs="unit_activations",
    granularities=("neurons", "heads"),
    unit_scores=activation_unit_scores,
))
