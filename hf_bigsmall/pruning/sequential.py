"""Calibration block by block: each transformer block runs alone on the outputs of the one before it.

A one-shot pruner that calibrates on the dense model scores every layer on inputs the pruned model
will never see: once the layers before it are pruned, a layer's inputs drift. Running the model
one block at a time fixes that: the first block's inputs are captured once, then each block runs
over the calibration windows with hooks on its layers, its layers are pruned, and the block runs
again to give the next block its inputs, now from the pruned layers. Two depths of that
(`sequential=`):

- `"block"`: every layer of a block is calibrated in one run of the block, on the pruned outputs
  of the blocks before it but the dense outputs of the layers before it in the same block (the
  default of the SparseGPT and Wanda reference scripts, and llm-compressor's sequential pipeline).
- `"layer"` (what `True` means): the block's layers are calibrated and pruned group by group in the
  order the block calls them, each group on the outputs of the groups before it *as pruned*: in a
  Llama block q/k/v first, then o_proj on the attention computed with the pruned q/k/v, then
  gate/up, then down_proj (the `--true-sequential` option of the GPTQ and SparseGPT LLaMA scripts). A group
  is the run of layers that read the very same tensor, found by one run of the block on the first
  batch; a block whose layers are not each called once there (shared or skipped layers) falls back
  to `"block"`, with a warning that names it (`prune_one_shot` records such blocks).

Each calibrating run stops, batch by batch, once the last layer it hooks has read its input (in a
Llama block the `"block"` run skips the down projection and the last residual, the q/k/v run
everything after the input norm). With `sequential=False` the next block's inputs are the dense
outputs of the same run (no second run), which equals calibrating the dense model but still holds
one block's statistics at a time.

Memory: the inputs and outputs of one block for every calibration window (`num_samples x seq_len x
hidden` each; 75 MB for 64 x 512 windows of SmolLM2-135M in float32), plus whatever the hooks
accumulate for the layers being calibrated (with `"layer"`, one group's).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from .calibration import CalibrationData, HookFunction, _forward_module, _model_device, run_calibration

logger = logging.get_logger(__name__)

SEQUENTIAL_MODES = ("block", "layer")


def sequential_mode(sequential: bool | str) -> str | None:
    """`sequential=` as a mode: `None` (dense calibration, `False`), `"block"` or `"layer"` (`True`).

    Raises:
        TypeError / ValueError: anything else (`None` included: say False), naming the values accepted.
    """
    if sequential is False:
        return None
    if sequential is True:
        return "layer"
    if not isinstance(sequential, str):
        raise TypeError(f"sequential must be False, True, 'block' or 'layer', got {sequential!r}.")
    if sequential not in SEQUENTIAL_MODES:
        raise ValueError(f"sequential={sequential!r} is not supported: pass 'layer' (each layer calibrated on the "
                         "pruned layers before it, also within its block; what True means), 'block' (each block on "
                         "the pruned blocks before it) or False.")
    return sequential


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


def blocks_with_targets(model: nn.Module, targets: Mapping[str, nn.Module]) -> list[int]:
    """Indices of the transformer blocks (`find_blocks`) that hold a targeted layer, in order."""
    found = find_blocks(model, targets)
    if found is None:
        return []
    prefix, blocks = found
    return sorted({index for name in targets if (index := _block_of(name, prefix, len(blocks))) is not None})


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


def _collect_only(block: nn.Module, inputs: list[tuple[tuple, dict]], hooked: list[nn.Module],
                  calls_per_batch: int | None = None) -> None:
    """Run `block` over every batch only as far as its hooked layers read their inputs.

    With sequential calibration the outputs of this run are thrown away (the block runs again once
    pruned), so what follows the last hooked layer's input (in a Llama block the down projection and
    the residual: a quarter of its matmuls) need not run. Each batch stops after `calls_per_batch`
    hooked calls; when not known, the first batch runs whole and counts them, so a layer called twice
    is still seen twice.
    """
    calls = 0
    expected = calls_per_batch

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
            if position == 0 and expected is None:
                expected = calls or None
    finally:
        for handle in handles:
            handle.remove()


def layer_groups(block: nn.Module, first_inputs: tuple[tuple, dict], names: list[str],
                 targets: Mapping[str, nn.Module]) -> list[list[str]] | None:
    """The block's targeted layers in the order one run of the block calls them, grouped by the tensor they read.

    Consecutive layers called with the very same tensor (q/k/v; gate/up) form one group: they are
    calibrated together, and each later group reads what the groups before it compute. `None` when
    some layer is not called exactly once (shared or skipped layers): then the block is one group.
    """
    calls: list[tuple[str, torch.Tensor]] = []

    def record(name: str) -> HookFunction:
        return lambda module, args: calls.append((name, args[0]))

    handles = [targets[name].register_forward_pre_hook(record(name)) for name in names]
    try:
        args, kwargs = first_inputs
        block(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    if sorted(name for name, _ in calls) != sorted(names):
        return None
    groups: list[list[str]] = []
    previous = None
    for name, tensor in calls:
        if groups and tensor is previous:
            groups[-1].append(name)
        else:
            groups.append([name])
        previous = tensor
    return groups


@torch.no_grad()
def calibrate_block_by_block(
    model: nn.Module,
    calibration: CalibrationData,
    targets: Mapping[str, nn.Module],
    hooks_for: Callable[[list[str]], dict[str, HookFunction]],
    prune: Callable[[list[str]], None],
    sequential: bool | str = True,
) -> list[int]:
    """Run the model one block at a time, calling `prune(names)` once those layers are calibrated.

    Args:
        model: the (unwrapped) model.
        calibration: the prepared windows.
        targets: `{module name: layer}` to calibrate and prune.
        hooks_for: `names -> {name: forward pre-hook}` that accumulate the statistics of those layers
            (called once per block, or once per group of layers with `sequential="layer"`).
        prune: `names -> None`, prunes those layers (in place) from the statistics just accumulated.
        sequential: `"layer"` (or `True`): each group of a block's layers reads the pruned layers
            before it, in this block and the ones before; `"block"`: each block reads the pruned
            blocks before it; `False`: the dense outputs throughout.

    Layers outside the transformer blocks (say, a targeted LM head) are calibrated at the end, by a
    pass of the whole model, already pruned.

    Returns:
        with `"layer"`, the indices of the blocks calibrated by block instead, since their layers are
        not each called once per forward (a warning names them); otherwise `[]`.
    """
    mode = sequential_mode(sequential)
    found = find_blocks(model, targets)
    groups: dict[int, list[str]] = {}
    leftover = list(targets)
    fallback: list[int] = []
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
                if mode is None or not names:
                    outputs = _calibrate_dense(block, inputs, names, targets, hooks_for, prune)
                else:
                    layer_order = layer_groups(block, inputs[0], names, targets) if mode == "layer" else None
                    if mode == "layer" and layer_order is None:
                        fallback.append(index)
                    for group in layer_order or [names]:
                        handles = [targets[name].register_forward_pre_hook(hook)
                                   for name, hook in hooks_for(group).items()]
                        try:
                            modules = list(dict.fromkeys(targets[name] for name in group))
                            # each layer of a discovered group is called once per batch
                            _collect_only(block, inputs, modules, len(modules) if layer_order else None)
                        finally:
                            for handle in handles:
                                handle.remove()
                        prune(group)
                    outputs = [_hidden_states(block(*args, **kwargs)) for args, kwargs in inputs]
                inputs = [_with_hidden_states(args, kwargs, hidden) for (args, kwargs), hidden in zip(inputs, outputs)]
                del outputs
            del inputs
            if fallback:
                logger.warning(f"sequential='layer': the layers of block(s) {fallback} are not each called once per "
                               "forward (a layer shared or skipped), so each of these blocks was calibrated whole, on "
                               "the pruned blocks before it (as sequential='block'); the pruning record names them.")
        if leftover:
            logger.info(f"Calibrating {len(leftover)} layer(s) outside the transformer blocks with a full pass.")
            run_calibration(model, calibration, forward_pre_hooks=hooks_for(leftover))
            prune(leftover)
    finally:
        model.train(was_training)
    return fallback


def _calibrate_dense(
    block: nn.Module,
    inputs: list[tuple[tuple, dict]],
    names: list[str],
    targets: Mapping[str, nn.Module],
    hooks_for: Callable[[list[str]], dict[str, HookFunction]],
    prune: Callable[[list[str]], None],
) -> list[torch.Tensor]:
    """One run of `block` that calibrates its layers and gives the next block the dense outputs."""
    handles = [targets[name].register_forward_pre_hook(hook) for name, hook in hooks_for(names).items()]
    try:
        outputs = [_hidden_states(block(*args, **kwargs)) for args, kwargs in inputs]
    finally:
        for handle in handles:
            handle.remove()
    if names:
        prune(names)
    return outputs
