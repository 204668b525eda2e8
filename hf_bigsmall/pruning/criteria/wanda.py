"""Wanda (Sun et al. 2023): `|W_ij| * ||X_j||_2`, a weight's magnitude times the L2 norm of its input
channel over the calibration tokens, compared within each output row by default."""

from __future__ import annotations

import torch

from .base import PruningCriterion, register_pruning_criterion


def wanda_score(weight: torch.Tensor, squared_norm: torch.Tensor) -> torch.Tensor:
    # squared_norm is sum_t x_tj^2 in float64; its root in float32 scales column j
    return weight.abs() * squared_norm.to(device=weight.device, dtype=torch.float32).sqrt().unsqueeze(0)


WANDA = register_pruning_criterion(PruningCriterion(
    name="wanda",
    description="Wanda (Sun et al., 2024: |weight| x the norm of its input on calibration data, compared within "
                "each output row)",
    needs="input_norms",
    granularities=("unstructured", "n:m"),
    score=wanda_score,
    default_scope="row",
))
