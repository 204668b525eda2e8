"""Calibration block by block: each transformer block runs alone on the outputs of the one before it.

A one-shot pruner that calibrates on the dense model scores every layer on inputs the pruned model
will never see: once the blocks before it are pruned, a layer's inputs drift. Running the model
one block at a time (as SparseGPT and the Wanda reference code do) fixes that: the first block's
inputs are captured once, then each block runs over the calibration windows with hooks on its
layers, its layers are pruned, and the block runs again to give the next block its inputs, now
from the pruned layers (`sequential=True`). The first of those two runs only feeds the hooks, so it
stops, from the second batch on, once the last hooked layer has read its input (in a Llama block the
down projection and the last residual are skipped). With `sequential=False` the next block's inputs
are the dense outputs of the same pass (no second run), which equals calibrating the dense model but
still holds one block's statistics at a time.

Memory: the inputs and outputs of one block for every calibration window (`num_samples x seq_len x
hidden` each; 75 MB for 64 x 512 windows of SmolLM2-135M in float32), plus whatever the hooks
accumulate for that block's layers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from .calibration import CalibrationData, HookFunction, _forward_module, _model_device, run_calibration

logger = logging.get_logger(__name__)


class _InputsCaptured(Exception):
    """Stops the model's forward once the first block's inputs are stored."""


def find_blocks(model: nn.Module, targets: Mapping[str, nn.Module]) -> tuple[str, nn.ModuleList] | None:
    """The `nn.ModuleList` of transformer blocks that holds the most targeted layers, with its name."""
    best, best_count = None, 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or not name:
            continue
        count = sum(target.startswith(f"{name}.") for target in targets)
        if count > best_count:
            best, best_count = (name, module), count
    return best


def _block_of(target: str, prefix: str, size: int) -> int | None:
    if not target.startswith(f"{prefix}."):
        return None
    index = target[len(prefix) + 1:].split(".", 1)[0]
    return int(index) if index.isdigit() and int(index) < size else None


def _hidden_states(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def _with_hidden_states(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _capture_first_inputs(model: nn.Module, first: nn.Module, calibration: CalibrationData) -> list[tuple[tuple, dict]]:
    """`(args, kwargs)` of the first block's forward, one per calibration batch (masks, positions included)."""
    stored: list[tuple[tuple, dict]] = []

    def capture(module, args, kwargs):
        stored.append((args, kwargs))
        raise _InputsCaptured

    runner = _forward_module(model, [first])
    extra = {"use_cache": False} if getattr(getattr(runner, "config", None), "use_cache", None) is not None else {}
    handle = first.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        for batch in calibration.batches(_model_device(model)):
            try:
                runner(**batch, **extra)
            except _InputsCaptured:
                pass
    finally:
        handle.remove()
    return stored


class _StatisticsCollected(Exception):
    """Stops a block's forward once its last hooked layer has read its input."""


def _collect_only(block: nn.Module, inputs: list[tuple[tuple, dict]], hooked: list[nn.Module]) -> None:
    """Run `block` over every batch only as far as its hooked layers read their inputs.

    With sequential calibration the outputs of this pass are thrown away (the block runs again once
    pruned), so what follows the last hooked layer's input (in a Llama block the down projection and
    the residual: a quarter of its matmuls) need not run. The first batch runs whole and counts the
    hooked calls; later batches stop after that many, so a layer called twice is still seen twice.
    """
    calls = 0
    expected: int | None = None

    def count(module, args):
        nonlocal calls
        calls += 1
        if expected is not None and calls == expected:
            raise _StatisticsCollected

    # registered after the statistics' hooks, so they run first on the last call too
    handles = [module.register_forward_pre_hook(count) for module in dict.fromkeys(hooked)]
    try:
        for position, (args, kwargs) in enumerate(inputs):
            calls = 0
            try:
                block(*args, **kwargs)
            except _StatisticsCollected:
                pass
            if position == 0:
                expected = calls or None
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def calibrate_block_by_block(
    model: nn.Module,
    calibration: CalibrationData,
    targets: Mapping[str, nn.Module],
    hooks_for: Callable[[list[str]], dict[str, HookFunction]],
    prune: Callable[[list[str]], None],
    sequential: bool = True,
) -> None:
    """Run the model one block at a time, calling `prune(names)` once each block's layers are calibrated.

    Args:
        model: the (unwrapped) model.
        calibration: the prepared windows.
        targets: `{module name: layer}` to calibrate and prune.
        hooks_for: `names -> {name: forward pre-hook}` that accumulate the statistics of those layers.
        prune: `names -> None`, prunes those layers (in place) from the statistics just accumulated.
        sequential: the next block reads the pruned block's outputs (`True`) or the dense ones.

    Layers outside the transformer blocks (say, a targeted LM head) are calibrated at the end, by a
    pass of the whole model, already pruned.
    """
    found = find_blocks(model, targets)
    groups: dict[int, list[str]] = {}
    leftover = list(targets)
    if found is not None:
        prefix, blocks = found
        for name in targets:
            index = _block_of(name, prefix, len(blocks))
            if index is not None:
                groups.setdefault(index, []).append(name)
        leftover = [name for name in targets if _block_of(name, prefix, len(blocks)) is None]
    was_training = model.training
    model.eval()
    try:
        if groups:
            inputs = _capture_first_inputs(model, blocks[0], calibration)
            for index in range(max(groups) + 1):
                block, names = blocks[index], groups.get(index, [])
                handles = [targets[name].register_forward_pre_hook(hook) for name, hook in hooks_for(names).items()]
                try:
                    if sequential and names:
                        _collect_only(block, inputs, [targets[name] for name in names])
                    else:
                        outputs = [_hidden_states(block(*args, **kwargs)) for args, kwargs in inputs]
                finally:
                    for handle in handles:
                        handle.remove()
                if names:
                    prune(names)
                    if sequential:
                        outputs = [_hidden_states(block(*args, **kwargs)) for args, kwargs in inputs]
                inputs = [_with_hidden_states(args, kwargs, hidden) for (args, kwargs), hidden in zip(inputs, outputs)]
                del outputs
            del inputs
        if leftover:
            logger.info(f"Calibrating {len(leftover)} layer(s) outside the transformer blocks with a full pass.")
            run_calibration(model, calibration, forward_pre_hooks=hooks_for(leftover))
            prune(leftover)
    finally:
        model.train(was_training)
