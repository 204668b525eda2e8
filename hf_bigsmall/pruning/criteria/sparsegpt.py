"""SparseGPT (Frantar & Alistarh 2023): the Optimal Brain Surgeon cost `w_j^2 / [H^-1]_jj` under the
Hessian `H = X X^T` of the layer's calibration inputs, the kept weights updated to compensate. The
algorithm lives in `hf_bigsmall.pruning.sparsegpt`; this entry registers its per-layer step."""

from __future__ import annotations

import torch
from torch import nn

from ..sparsegpt import DEFAULT_BLOCK_SIZE, DEFAULT_DAMPENING, sparsegpt_prune_module
from .base import PruningCriterion, register_pruning_criterion


def sparsegpt_prune(
    module: nn.Module,
    hessian: torch.Tensor,
    sparsity: float,
    pattern: tuple[int, int] | None,
    previous: torch.Tensor | None,
    *,
    name: str = "layer",
    block_size: int = DEFAULT_BLOCK_SIZE,
    dampening: float = DEFAULT_DAMPENING,
) -> torch.Tensor:
    return sparsegpt_prune_module(module, hessian, sparsity, pattern, previous, block_size, dampening, name)


SPARSEGPT = register_pruning_criterion(PruningCriterion(
    name="sparsegpt",
    description="SparseGPT (Frantar & Alistarh, 2023: the Optimal Brain Surgeon cost of each weight under the "
                "Hessian of its layer's calibration inputs, the kept weights updated to compensate)",
    needs="input_hessian",
    granularities=("unstructured", "n:m"),
    prune=sparsegpt_prune,
))
