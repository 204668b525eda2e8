"""Saving and loading masks beside the weights, and the `sparsity` block of `config.json`.

A pruned checkpoint is a plain transformers checkpoint whose weights hold exact zeros, so
`from_pretrained` without hf_bigsmall loads a dense model with identical outputs. Next to it:

- `config.json` gains a `sparsity` block (method, schedule, structure, scope, target, measured
  sparsity global and per layer, IMP round), read by model cards and by hf_bigsmall;
- `sparsity_masks.safetensors` holds the boolean masks (`True` = pruned), keyed by parameter name,
  so continued training with hf_bigsmall re-arms exactly the same masks;
- in an IMP checkpoint, `sparsity_rewind.safetensors` holds the weights each round rewinds to.

Together they are the saved form of a [`~hf_bigsmall.pruning.state.PruningState`]: [`write_pruning_state`]
writes one, [`load_pruning_state`] reads it back from a folder.

Inside a Trainer the pruning callback writes both (`on_save` for checkpoints, the end of training
and `BigSmallTrainerMixin.save_model` for `output_dir`); outside one, [`save_pruned_model`] does.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..utils.distributed import shard_like
from ..utils.files import atomic_write
from .masks import sparsity_report
from .record import SparsityRecord
from .state import PruningState, attach_pruning_state, detach_pruning_state, get_pruning_state

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


def _read_tensors(path: Path, what: str, fix: str) -> dict[str, torch.Tensor]:
    """A safetensors file of the pruning state, or a `ValueError` naming it and `fix` when it cannot be read."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise ValueError(f"Cannot read {what} {path} ({error}): the file is truncated or corrupted. {fix}") from error


def load_masks(directory: str | os.PathLike, device: torch.device | str | None = None,
               model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Load `sparsity_masks.safetensors` from a checkpoint folder (`{}` if there is none).

    With `model`, the masks are checked against it: every name must be one of its parameters, with
    the same shape, and every mask boolean. A file that cannot be read (truncated, corrupted) or
    does not fit raises a `ValueError` that names it and says what to do, before anything changes.
    """
    path = Path(directory) / SPARSITY_MASKS_NAME
    if not path.is_file():
        return {}
    fix = (f"Delete {path} to read the masks back from the exact zeros of the saved weights, or resume from "
           "another checkpoint.")
    masks = _read_tensors(path, "the pruning masks", fix)
    if model is not None:
        params = dict(model.named_parameters())
        unknown = sorted(set(masks) - set(params))
        if unknown:
            raise ValueError(f"The pruning masks {path} name parameters this model does not have ({unknown[:3]}): "
                             f"they were saved for another model. {fix}")
        wrong = [(name, tuple(mask.shape), tuple(params[name].shape)) for name, mask in masks.items()
                 if mask.shape != params[name].shape]
        if wrong:
            name, saved, now = wrong[0]
            raise ValueError(f"The pruning masks {path} do not fit this model: {name} has shape {saved} in the file and "
                             f"{now} in the model ({len(wrong)} such tensors; was the model compacted and saved without "
                             f"hf_bigsmall.save_pruned_model?). {fix}")
        not_bool = sorted(name for name, mask in masks.items() if mask.dtype != torch.bool)
        if not_bool:
            raise ValueError(f"The pruning masks {path} hold non-boolean tensors ({not_bool[:3]}). {fix}")
    return {name: mask.to(device) if device is not None else mask for name, mask in masks.items()}


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    _atomic_save(tensors, Path(path), metadata={"format": "pt"})


def sparsity_block(model: nn.Module) -> dict:
    """The `sparsity` block of `config.json`, with sparsity measured on the weights now."""
    report = sparsity_report(model)
    state = get_pruning_state(model)
    info = dict(state.record if state is not None else {})
    info.update(
        global_sparsity=round(report.global_sparsity, 6),
        model_sparsity=round(report.model_sparsity, 6),
        total_params=report.total_params,
        zero_params=report.zero_params,
        per_layer={name: round(value, 6) for name, value in report.per_layer.items()},
        masks_file=SPARSITY_MASKS_NAME if state is not None and state.masks else None,
    )
    return info


def record_sparsity(model: nn.Module) -> None:
    """Write the `sparsity` record of `model.config`, measured on the weights now."""
    SparsityRecord.from_dict(sparsity_block(model)).write(model.config)


def save_pruned_model(model: nn.Module, save_directory: str | os.PathLike, **kwargs) -> Path:
    """`model.save_pretrained(save_directory, **kwargs)`, plus the pruning record beside the weights.

    The `sparsity` block of `config.json` is measured on the weights now, and
    `sparsity_masks.safetensors` holds the masks the model carries. A model without masks (a fully
    compacted one) removes a masks file left in the folder by an earlier save, so that re-arming
    never reads masks of other shapes. Use it for models saved outside a Trainer (after `compact`
    or `trim_vocabulary`); Trainer checkpoints and `BigSmallTrainerMixin.save_model` do the same.

    Example:

    ```python
    >>> from hf_bigsmall import compact, save_pruned_model
    >>> save_pruned_model(compact(model), "student-pruned")  # over its pruned folder, masks stay consistent
    ```
    """
    # a torch.compile wrapper forwards save_pretrained, but the pruning state and the parameter names are the
    # wrapped model's: without this its masks were dropped (and a masks file already there removed)
    model = extract_model_from_parallel(model, keep_torch_compile=False)
    record_sparsity(model)
    model.save_pretrained(save_directory, **kwargs)
    if kwargs.get("is_main_process", True):
        write_masks(model, save_directory)
    return Path(save_directory)


def write_masks(model: nn.Module, save_directory: str | os.PathLike) -> None:
    """Write the model's masks into `save_directory`, or remove a stale masks file when it has none."""
    state = get_pruning_state(model)
    if state is not None and state.masks:
        save_masks(state.masks, save_directory)
    else:
        (Path(save_directory) / SPARSITY_MASKS_NAME).unlink(missing_ok=True)


def write_rewind_weights(model: nn.Module, save_directory: str | os.PathLike) -> None:
    """Write the IMP rewind weights of the model's pruning state into `save_directory`, if it has some."""
    state = get_pruning_state(model)
    if state is not None and state.rewind_weights is not None:
        save_tensors(state.rewind_weights, Path(save_directory) / SPARSITY_REWIND_NAME)


def write_pruning_state(model: nn.Module, save_directory: str | os.PathLike) -> None:
    """The files of the model's [`PruningState`] beside its weights: masks (a stale masks file removed when it
    has none) and IMP rewind weights. The record goes into `config.json` as the `sparsity` block
    ([`sparsity_block`]), written by `save_pretrained`."""
    write_masks(model, save_directory)
    write_rewind_weights(model, save_directory)


def read_sparsity_block(directory: str | os.PathLike) -> dict:
    """The `sparsity` block of `directory/config.json` (`{}` when there is none or the file is unreadable)."""
    path = Path(directory) / "config.json"
    try:
        block = json.loads(path.read_text(encoding="utf-8")).get("sparsity") if path.is_file() else None
    except (OSError, ValueError, AttributeError):
        block = None
    return block if isinstance(block, dict) else {}


def load_pruning_state(directory: str | os.PathLike, model: nn.Module | None = None) -> PruningState:
    """The [`PruningState`] saved in a folder: its masks (checked against `model`, see [`load_masks`]),
    the `sparsity` block of its `config.json` as the record, the schedule position that block holds,
    and the IMP rewind weights when the folder has them. Missing files give empty fields."""
    record = read_sparsity_block(directory)
    return PruningState(
        masks=load_masks(directory, model=model),
        record=record,
        last_pruned_step=record.get("pruned_at_step"),
        imp_round=record.get("imp_round") or 0,
        rewind_weights=load_rewind_weights(directory, model=model),
    )


def load_rewind_weights(directory: str | os.PathLike, model: nn.Module | None = None) -> dict[str, torch.Tensor] | None:
    """The IMP rewind weights saved in a folder (`None` if there are none), checked as [`load_masks`] checks masks:
    a file that cannot be read, or (with `model`) names a parameter the model lacks or has another shape, raises a
    `ValueError` naming it before anything changes, not at the next round's rewind."""
    path = Path(directory) / SPARSITY_REWIND_NAME
    if not path.is_file():
        return None
    fix = f"Resume from a checkpoint whose {SPARSITY_REWIND_NAME} is whole, or start the IMP run again."
    weights = _read_tensors(path, "the IMP rewind weights", fix)
    if model is not None:
        params = dict(model.named_parameters())
        wrong = sorted(name for name, weight in weights.items()
                       if name not in params or weight.shape != params[name].shape)
        if wrong:
            name = wrong[0]
            now = tuple(params[name].shape) if name in params else "no such parameter"
            raise ValueError(f"The IMP rewind weights {path} do not fit this model: {name} has shape "
                             f"{tuple(weights[name].shape)} in the file and {now} in the model ({len(wrong)} such "
                             f"tensors): they were saved for another model. {fix}")
    return weights


def attach_masks(model: nn.Module, masks: dict[str, torch.Tensor], info: dict | None = None) -> PruningState:
    """Attach a [`PruningState`] with these masks (and, when given, the record of how they were made) to the model.

    The rest (record, schedule position) is carried over from the state the model had, if any. Nothing of the model's own is
    replaced: saving the masks is the job of the pruning callback or of [`save_pruned_model`].
    """
    # a new object: a callback's state (attached while it trains) is its own, not changed from outside
    state = get_pruning_state(model) or PruningState()
    return attach_pruning_state(model, replace(state, masks=masks, record=state.record if info is None else info))


def detach_masks(model: nn.Module) -> None:
    """Forget the model's pruning state: masks, record and schedule position."""
    detach_pruning_state(model)


def masks_from_zeros(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Masks read back from the weights' exact zeros (for checkpoints saved without a masks file)."""
    return {name: weight.detach() == 0 for name, weight in weights.items()}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].masked_fill_(shard_like(mask, params[name]), 0)  # FSDP2: the mask split as the weight is
