"""Saving and loading masks beside the weights, and the `sparsity` block of `config.json`.

A pruned checkpoint is a plain transformers checkpoint whose weights hold exact zeros, so
`from_pretrained` without hf_bigsmall loads a dense model with identical outputs. Next to it:

- `config.json` gains a `sparsity` block (method, schedule, structure, scope, target, measured
  sparsity global and per layer, IMP round), read by model cards and by hf_bigsmall;
- `sparsity_masks.safetensors` holds the boolean masks (`True` = pruned), keyed by parameter name,
  so continued training with hf_bigsmall re-arms exactly the same masks.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..utils.files import atomic_write
from .masks import sparsity_report

SPARSITY_MASKS_NAME = "sparsity_masks.safetensors"
SPARSITY_REWIND_NAME = "sparsity_rewind.safetensors"


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    # Write to a temporary name then rename, so a crash never leaves a truncated file in place.
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda partial: save_file(tensors, str(partial), metadata=metadata))


def save_masks(masks: dict[str, torch.Tensor], save_directory: str | os.PathLike) -> Path:
    path = Path(save_directory) / SPARSITY_MASKS_NAME
    _atomic_save(masks, path, metadata={"format": "pt", "content": "pruning masks, True = pruned"})
    return path


def load_masks(directory: str | os.PathLike, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Load `sparsity_masks.safetensors` from a checkpoint folder (`{}` if there is none)."""
    path = Path(directory) / SPARSITY_MASKS_NAME
    if not path.is_file():
        return {}
    masks = load_file(str(path))
    return {name: mask.to(device) if device is not None else mask for name, mask in masks.items()}


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    _atomic_save(tensors, Path(path), metadata={"format": "pt"})


def sparsity_block(model: nn.Module) -> dict:
    """The `sparsity` block of `config.json`, with sparsity measured on the weights now."""
    report = sparsity_report(model)
    info = dict(getattr(model, "_sparsity_info", None) or {})
    info.update(
        global_sparsity=round(report.global_sparsity, 6),
        model_sparsity=round(report.model_sparsity, 6),
        total_params=report.total_params,
        zero_params=report.zero_params,
        per_layer={name: round(value, 6) for name, value in report.per_layer.items()},
        masks_file=SPARSITY_MASKS_NAME if getattr(model, "_sparsity_masks", None) else None,
    )
    return info


def _save_pretrained_with_sparsity(self, save_directory, *args, is_main_process: bool = True, **kwargs):
    """`save_pretrained`, plus the `sparsity` block in config.json and the masks file beside the weights."""
    self.config.sparsity = sparsity_block(self)
    type(self).save_pretrained(self, save_directory, *args, is_main_process=is_main_process, **kwargs)
    if is_main_process and self._sparsity_masks:
        save_masks(self._sparsity_masks, save_directory)


def attach_masks(model: nn.Module, masks: dict[str, torch.Tensor], info: dict | None = None) -> None:
    """Attach masks and pruning metadata to a model so every save writes them.

    The masks are plain attributes (not buffers), so the weights file keeps exactly the keys of the
    original architecture. `save_pretrained` is bound on the instance (as accelerate binds a
    wrapped `forward`), which covers Trainer checkpoints, `trainer.save_model()` and direct calls.
    """
    model._sparsity_masks = masks
    if info is not None:
        model._sparsity_info = info
    if not isinstance(model.__dict__.get("save_pretrained"), types.MethodType):
        model.save_pretrained = types.MethodType(_save_pretrained_with_sparsity, model)


def detach_masks(model: nn.Module) -> None:
    """Forget the masks and restore the class's `save_pretrained`."""
    model.__dict__.pop("save_pretrained", None)
    model.__dict__.pop("_sparsity_masks", None)
    model.__dict__.pop("_sparsity_info", None)


def masks_from_zeros(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Masks read back from the weights' exact zeros (for checkpoints saved without a masks file)."""
    return {name: weight.detach() == 0 for name, weight in weights.items()}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].masked_fill_(mask, 0)
