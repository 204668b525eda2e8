"""Parameter counts of a model, and the sparsity its pruning left (one figure for reports, cards and exports)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from .io import SPARSITY_MASKS_NAME
from .masks import sparsity_report

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def count_parameters(model: PreTrainedModel, model_dir: Path | None = None) -> tuple[int, int, float]:
    """(parameters, non-zero parameters, sparsity of the pruned weights).

    Tied weights count once, as `model.parameters()` yields them once. Sparsity is the pruning
    package's figure (`sparsity_report(...).global_sparsity`) over the layers that `model_dir`'s
    `sparsity_masks.safetensors` says were pruned, else over the Linear layers of the transformer
    blocks, so embeddings and biases that are zero by construction never read as pruning.
    """
    import torch
    from safetensors import safe_open

    if hasattr(model, "parameter_counts"):  # a runner without torch parameters reports the model it runs
        return model.parameter_counts()
    with torch.no_grad():
        total = sum(p.numel() for p in model.parameters())
        nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    target_modules = None
    masks_file = model_dir / SPARSITY_MASKS_NAME if model_dir is not None else None
    if masks_file is not None and masks_file.is_file():
        with safe_open(str(masks_file), framework="pt") as masks:
            pruned = [name.removesuffix(".weight") for name in masks.keys()]
        target_modules = "|".join(re.escape(name) for name in pruned) or None
    return total, nonzero, sparsity_report(model, target_modules).global_sparsity
