"""`prune_one_shot`: post-training pruning of a whole model at once, by SparseGPT, Wanda, magnitude or any
registered criterion that prunes weights."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from .calibration import (
    DEFAULT_NUM_SAMPLES,
    CalibrationData,
    InputStatistics,
    check_layers_reached,
    prepare_calibration,
)
from .criteria import MULTI_PROCESS_FIX, PruningCriterion, get_pruning_criterion, pruning_criterion_names
from .io import apply_masks
from .sequential import blocks_with_targets, calibrate_block_by_block, sequential_mode
from .sparsegpt import DEFAULT_BLOCK_SIZE, DEFAULT_DAMPENING, HESSIAN_DTYPES
from .state import PruningState, attach_pruning_state, get_pruning_state
from .statistics import INPUT_STATISTICS, InputStatisticCollector, collect_statistics
from .targets import find_target_modules
from .wanda import ONE_SHOT_SCOPES, check_pattern_fits, criterion_masks, parse_pattern

logger = logging.get_logger(__name__)


def check_sparsity(sparsity: Any, pattern: str | None) -> float:
    """The fraction to prune, checked: in [0, 1), and equal to N/M with a pattern (or None there)."""
    if sparsity is not None and (isinstance(sparsity, bool) or not isinstance(sparsity, (int, float))):
        raise TypeError(f"sparsity must be a float in [0, 1), got {sparsity!r}.")
    if sparsity is not None and not math.isfinite(sparsity):
        raise ValueError(f"sparsity={sparsity} is not a number: pass the fraction to prune, e.g. 0.5 for half"
                         f"{' (or None with a pattern)' if pattern is not None else ''}.")
    if pattern is not None:
        n, m = parse_pattern(pattern)
        if sparsity is not None and abs(float(sparsity) - n / m) > 1e-9:
            raise ValueError(
                f"pattern={pattern!r} prunes {n}/{m} = {n / m:g} of the weights, but sparsity={sparsity}: pass "
                f"sparsity={n / m:g} (or None), or a pattern whose N/M is {sparsity}."
            )
        return n / m
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"sparsity must be a float in [0, 1), got {sparsity!r}.")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity} is outside [0, 1): pass the fraction to prune, e.g. 0.5 for half.")
    return float(sparsity)


def _targets(model: nn.Module, target_modules: list[str] | str | None) -> dict[str, nn.Module]:
    try:
        return find_target_modules(model, target_modules)
    except ValueError as error:
        raise ValueError(
            f"{error}. prune_one_shot prunes Linear/Conv1D layers: pass target_modules= naming some of the "
            "candidates above."
        ) from None


def one_shot_criterion(method: Any, pattern: str | None) -> PruningCriterion:
    """The registered criterion `method` names, checked to prune weights (unstructured or N:M) at once."""
    if method not in pruning_criterion_names():
        raise ValueError(f"method={method!r} is not supported: choose one of {one_shot_method_names()}, or register "
                         f"it with register_pruning_criterion(...) first; {MULTI_PROCESS_FIX}.")
    criterion = get_pruning_criterion(method)
    if not criterion.supports("unstructured", parse_pattern(pattern) if pattern is not None else None):
        granularity = "N:M patterns" if pattern is not None else "unstructured weights"
        raise ValueError(f"method={method!r} prunes {', '.join(criterion.granularities)}, not {granularity}: "
                         f"prune_one_shot takes one of {one_shot_method_names()}"
                         + ("; prune whole units with MagnitudePruningCallback(structure=...) or prune_width."
                            if set(criterion.granularities) & {"neurons", "heads"} else "."))
    return criterion


def one_shot_method_names() -> tuple[str, ...]:
    """Registered criteria that prune single weights, the methods `prune_one_shot` takes."""
    return tuple(name for name in pruning_criterion_names()
                 if set(get_pruning_criterion(name).granularities) & {"unstructured", "n:m"})


def _check_options(criterion: PruningCriterion, sequential: Any, dampening: Any, hessian_dtype: Any,
                   block_size: Any) -> str | None:
    """Checks the options; returns the sequential mode (`None`, `"block"` or `"layer"`)."""
    sequential = sequential_mode(sequential)
    if sequential and criterion.needs not in INPUT_STATISTICS:
        calibrated = tuple(name for name in one_shot_method_names()
                           if get_pruning_criterion(name).needs in INPUT_STATISTICS)
        uses = "uses no calibration" if not criterion.calibrated else f"needs {criterion.needs}, which a block alone cannot give"
        raise ValueError(f"sequential={sequential!r} calibrates block by block, but method={criterion.name!r} {uses}: "
                         f"pass sequential=False, or a method calibrated on layer inputs {calibrated}.")
    if isinstance(dampening, bool) or not isinstance(dampening, (int, float)) or not 0 < dampening < math.inf:
        raise ValueError(f"dampening={dampening!r} must be a positive number (the fraction of the Hessian's mean "
                         "diagonal added to it), e.g. 0.01.")
    if hessian_dtype not in HESSIAN_DTYPES:
        raise ValueError(f"hessian_dtype={hessian_dtype!r} is not supported: choose one of {tuple(HESSIAN_DTYPES)}.")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}.")
    return sequential


def prune_one_shot(
    model: nn.Module,
    calibration_dataset: CalibrationData | Any = None,
    sparsity: float | None = 0.5,
    method: str = "wanda",
    pattern: str | None = None,
    *,
    scope: str | None = None,
    target_modules: list[str] | str | None = None,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seq_len: int | None = None,
    batch_size: int = 8,
    tokenizer: Any = None,
    sequential: bool | str = False,
    dampening: float = DEFAULT_DAMPENING,
    hessian_dtype: str = "float64",
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> nn.Module:
    """Prune a trained model once, with no training: SparseGPT or Wanda (calibrated) or magnitude, unstructured or N:M.

    `method="sparsegpt"` (Frantar & Alistarh 2023) prunes each layer by the Optimal Brain Surgeon
    cost `w_j^2 / [H^-1]_jj`, with `H = X X^T` the Hessian of the layer's calibration inputs, and
    updates the weights it keeps to compensate, so the layer's output on the calibration tokens
    changes as little as possible (see `hf_bigsmall.pruning.sparsegpt`). `method="wanda"` scores
    each weight by `|W_ij| * ||X_j||_2` over the calibration tokens and prunes the lowest fraction of
    every output row (Sun et al. 2023), changing no other weight; `method="magnitude"` scores by
    `|W_ij|` alone and, by default, compares within each layer, the baseline of that paper.
    With `pattern="N:M"` exactly `N` of every `M` consecutive input weights of each row are pruned
    (`"2:4"`: half, in the layout sparse kernels accelerate).

    The targets are those of `MagnitudePruningCallback` (Linear/Conv1D layers inside the
    transformer blocks, or `target_modules`). The pruned model carries the callback's masks, so
    `save_pruned_model(model, folder)` writes the zeros, a `sparsity` block in `config.json` and
    `sparsity_masks.safetensors` (as a Trainer with the callback does), and a healing fine-tune with
    `MagnitudePruningCallback(target_sparsity=None)` keeps exactly these zeros. Masks the model
    already carries stay pruned.

    Calibration: by default Wanda's statistics come from one pass of the dense model, holding one
    batch's activations and a vector per layer. SparseGPT always runs block by block (see
    `hf_bigsmall.pruning.sequential`), holding the calibration activations of one block and the
    Hessians (`in_features^2` each) of that block's layers only, never the whole model's; layers that
    read the same tensor (q/k/v, gate/up) share one, and each is freed once its layers are pruned.
    With `sequential` (either method) each layer is calibrated on inputs from layers already pruned,
    so it is fitted to the inputs the pruned model will give it:

    - `sequential="layer"` (or `True`): layer by layer, also within a block. The layers of a block are
      pruned group by group in the order the block calls them (a group: the layers that read the same
      tensor): in a Llama block q/k/v on the block's input, then o_proj on the attention computed by
      the pruned q/k/v, then gate/up on the pruned attention's output, then down_proj. This is the
      reference code's `--true-sequential` (GPTQ, SparseGPT for LLaMA); it runs a block once per
      group (each run stops at its group), plus once to give the next block its inputs.
    - `sequential="block"`: block by block: a block's layers are calibrated together in one run, on the
      pruned outputs of the blocks before it but the dense outputs of the layers before them in the
      block (the default of the SparseGPT and Wanda reference scripts and of llm-compressor's
      sequential pipeline); two runs of each block.

    Both hold one block's activations at a time.

    Args:
        model: a `PreTrainedModel` (Llama, GPT-2, BERT, ...), pruned in place.
        calibration_dataset: tokenized rows (e.g. `load_causal_lm_dataset(tokenizer, assets.NEWS)["train"]`),
            raw text with `tokenizer=`, a [`~hf_bigsmall.pruning.calibration.CalibrationData`], or (Wanda
            without `sequential` only) the [`~hf_bigsmall.pruning.calibration.InputStatistics`] of an
            earlier `collect_input_statistics` on this dense model (one calibration pass for several
            sparsities or patterns). Needed by SparseGPT and Wanda; magnitude ignores it.
        sparsity: fraction pruned, in [0, 1); with a pattern, `N/M` or `None`.
        method: `"sparsegpt"`, `"wanda"`, `"magnitude"`, or any criterion registered with
            [`~hf_bigsmall.pruning.criteria.register_pruning_criterion`] that prunes weights; the
            calibration pass collects what it declares (`needs`): nothing, input norms, the input
            Hessian (block by block, as SparseGPT) or gradients of the model's loss.
        pattern: `None` (unstructured) or `"N:M"`, N pruned of every M, `0 < N < M`, M dividing every
            targeted layer's input width.
        scope: unstructured comparison group of Wanda and magnitude: `"row"` (default for Wanda),
            `"layer"` (default for magnitude) or `"global"`. SparseGPT compares within each block of
            `block_size` columns of a layer, across its rows (the paper's adaptive mask selection),
            and takes no scope.
        target_modules: module-name suffixes or a full-match regex, as in `MagnitudePruningCallback`.
        num_samples, seq_len, batch_size: calibration windows (defaults 128 x 512, or the model's
            maximum positions if shorter); fewer are used, with a warning, when the data is short.
        tokenizer: tokenizes a raw text calibration set.
        sequential: `False` (default: every layer calibrated on the dense model's inputs), `True` or `"layer"`
            (calibrate each layer on the outputs of the already-pruned layers before it, within its
            block too), or `"block"` (each block on the already-pruned blocks before it). A block whose
            layers are not each called once per forward (a shared or skipped layer) is calibrated by
            block even with `"layer"`: a warning names such blocks, and the record lists them
            (`sequential_fallback_blocks`), or says `"block"` when every block fell back.
        dampening: SparseGPT only: `lambda / mean(diag H)` added to the Hessian's diagonal (default
            0.01, the paper's); raised tenfold, with a warning, while the Hessian is not positive definite.
        hessian_dtype: SparseGPT only: `"float64"` (default) or `"float32"`, the dtype the Hessian is
            accumulated across batches and inverted in (each batch's `X X^T` is a float32 matmul).
        block_size: SparseGPT only: columns whose masks are chosen together (default 128, the paper's).

    Returns:
        the same model, pruned, with its masks attached.

    Raises:
        ValueError: a bad method, sparsity, pattern, scope or option; no matching layer; a missing, empty or
            foreign-tokenizer calibration set; a targeted layer the first calibration batch never reaches
            (cross-attention without encoder states). All are checked before any weight changes.
            One thing cannot be: a SparseGPT Hessian that stays singular after the dampening is raised
            10,000-fold (degenerate calibration inputs) stops the run at that layer, with the blocks
            before it already pruned; prune a fresh copy with more varied calibration data.

    Example:

    ```python
    >>> from hf_bigsmall import assets, prune_one_shot, save_pruned_model, sparsity_report
    >>> from hf_bigsmall.tasks.causal_lm import load_causal_lm_dataset
    >>> calibration = load_causal_lm_dataset(tokenizer, assets.NEWS, block_size=512)["train"]
    >>> prune_one_shot(model, calibration, sparsity=0.5, method="sparsegpt", sequential=True)
    >>> sparsity_report(model).global_sparsity
    0.5
    >>> save_pruned_model(model, "out/sparsegpt-50")  # zeros + "sparsity" block + sparsity_masks.safetensors
    ```
    """
    criterion = one_shot_criterion(method, pattern)
    sparsity = check_sparsity(sparsity, pattern)
    sequential = _check_options(criterion, sequential, dampening, hessian_dtype, block_size)
    scope = _one_shot_scope(criterion, scope, sequential, pattern)
    targets = _targets(model, target_modules)
    if pattern is not None:
        check_pattern_fits(targets, pattern)
    calibration, statistics = _calibration_for(criterion, calibration_dataset, targets, sequential, model,
                                               num_samples, seq_len, batch_size, tokenizer)

    started = time.perf_counter()
    params = dict(model.named_parameters())
    state = get_pruning_state(model)
    previous = {name: mask.to(params[name].device) for name, mask in (state.masks if state else {}).items()
                if name in params}
    targeted_previous = {name: previous[name] for name in previous if name.removesuffix(".weight") in targets}
    options = {"block_size": block_size, "dampening": dampening}
    masks, fallback = _prune_targets(model, calibration, statistics, targets, criterion, sparsity, scope, pattern,
                                     targeted_previous, sequential, HESSIAN_DTYPES[hessian_dtype], options)
    if fallback and fallback == blocks_with_targets(model, targets):
        sequential = "block"  # every block was calibrated whole: "layer" happened nowhere, so it is not recorded
    pruning_seconds = time.perf_counter() - started
    for name, mask in previous.items():  # masks of other layers stay in force as they are
        masks.setdefault(name, mask)
    info = _one_shot_record(criterion, sparsity, pattern, scope, target_modules, sequential, fallback, hessian_dtype,
                            options,
                            calibration.describe() if calibration is not None else (
                                calibration_dataset.calibration if isinstance(calibration_dataset, InputStatistics)
                                else None))
    with torch.no_grad():
        attach_pruning_state(model, PruningState(masks=masks, record=info))
        apply_masks(model, masks)
    pruned = sum(int(mask.sum()) for mask in masks.values())
    total = sum(mask.numel() for mask in masks.values())
    logger.info(
        f"prune_one_shot({method}, {pattern or f'{sparsity:.0%}'}"
        f"{f', sequential={sequential}' if sequential else ''}): "
        f"{pruned / total:.1%} of {total:,} weights pruned in {pruning_seconds:.1f} s (calibration included)."
    )
    return model


def _prune_targets(
    model: nn.Module,
    calibration: CalibrationData | None,
    statistics: dict[str, torch.Tensor] | None,
    targets: dict[str, nn.Module],
    criterion: PruningCriterion,
    sparsity: float,
    scope: str | None,
    pattern: str | None,
    previous: dict[str, torch.Tensor],
    sequential: str | None,
    hessian_dtype: torch.dtype,
    options: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The new masks of the targets (weight layout), pruned by the criterion's score or its own step, and the
    blocks that `sequential="layer"` calibrated by block (see `calibrate_block_by_block`)."""
    # criteria that read a layer's Hessian (in_features^2 each) hold one block's at a time
    if sequential or criterion.needs == "input_hessian":
        return _prune_block_by_block(model, calibration, targets, criterion, sparsity, scope, pattern, previous,
                                     sequential, hessian_dtype, options)
    if statistics is None and calibration is not None:
        statistics = collect_statistics(model, calibration, targets, criterion)
    if criterion.rewrites_weights:
        n_of_m = parse_pattern(pattern) if pattern is not None else None
        return {f"{name}.weight": _prune_layer(criterion, name, module, statistics, sparsity, n_of_m, previous, options)
                for name, module in targets.items()}, []
    return criterion_masks(targets, sparsity, scope, statistics, pattern, previous=previous, score=criterion.score), []


def _one_shot_record(
    criterion: PruningCriterion, sparsity: float, pattern: str | None, scope: str | None,
    target_modules: list[str] | str | None, sequential: str | None, fallback_blocks: list[int], hessian_dtype: str,
    options: dict[str, Any], calibration: dict | None,
) -> dict[str, Any]:
    """How the masks were made: the `sparsity` block of `config.json` before measurement."""
    record = {
        "method": criterion.name,
        "schedule": "one_shot",
        "structure": pattern or "unstructured",
        "scope": None if pattern else scope,
        "target": sparsity,
        "target_modules": target_modules,
        "pruned_at_step": None,
        "calibration": calibration,
    }
    if criterion.calibrated:
        record["sequential"] = sequential or False
        if sequential == "layer" and fallback_blocks:  # calibrated by block there: the card says so
            record["sequential_fallback_blocks"] = fallback_blocks
    if criterion.rewrites_weights:
        record.update(dampening=options["dampening"], hessian_dtype=hessian_dtype, block_size=options["block_size"])
    elif criterion.needs == "input_hessian":
        record["hessian_dtype"] = hessian_dtype
    return record


def _one_shot_scope(
    criterion: PruningCriterion, scope: str | None, sequential: str | None, pattern: str | None
) -> str | None:
    if criterion.rewrites_weights:
        if scope is not None:
            raise ValueError(f"scope={scope!r}: {criterion.name} chooses its masks itself (SparseGPT: within each "
                             "block of block_size columns of a layer) and takes no scope: leave scope=None.")
        return None
    if scope is None:
        scope = criterion.default_scope or "layer"
    if scope not in ONE_SHOT_SCOPES:
        raise ValueError(f"scope={scope!r} is not supported: choose one of {ONE_SHOT_SCOPES}.")
    if sequential and scope == "global" and pattern is None:
        raise ValueError(f"scope='global' compares every layer's scores at once, but sequential={sequential!r} prunes "
                         "some layers before calibrating the next: pass scope='row' or 'layer', or sequential=False.")
    return scope


def _calibration_for(
    criterion: PruningCriterion, calibration_dataset: Any, targets: dict[str, nn.Module], sequential: str | None,
    model: nn.Module, num_samples: int, seq_len: int | None, batch_size: int, tokenizer: Any,
) -> tuple[CalibrationData | None, dict[str, torch.Tensor] | None]:
    """The prepared windows, or the squared norms of an earlier `collect_input_statistics` (checked)."""
    if not criterion.calibrated:
        if calibration_dataset is not None:
            logger.info(f"method={criterion.name!r} needs no calibration: the calibration dataset is not used.")
        return None, None
    if isinstance(calibration_dataset, InputStatistics):
        if criterion.needs != "input_norms" or criterion.rewrites_weights or sequential:
            raise ValueError(
                f"method={criterion.name!r}{f' with sequential={sequential!r}' if sequential else ''} calibrates "
                f"{'block by block' if sequential or criterion.needs == 'input_hessian' else criterion.needs} and "
                "cannot use statistics collected earlier: pass the calibration dataset itself."
            )
        missing = sorted(set(targets) - set(calibration_dataset.squared_norms))
        if missing:
            raise ValueError(f"The statistics given cover no layer {missing[:3]}: collect them with the same "
                             "target_modules.")
        return None, calibration_dataset.squared_norms
    if calibration_dataset is None:
        raise ValueError(
            f"method={criterion.name!r} needs calibration_dataset: a few hundred tokenized rows of text like the model's "
            "use, e.g. load_causal_lm_dataset(tokenizer, assets.NEWS, block_size=512)['train']; or use "
            "method='magnitude', which needs none."
        )
    calibration = prepare_calibration(calibration_dataset, num_samples, seq_len, batch_size, model=model,
                                      tokenizer=tokenizer)
    check_layers_reached(model, calibration, targets)
    return calibration, None


def _prune_layer(
    criterion: PruningCriterion,
    name: str,
    module: nn.Module,
    statistics: dict[str, torch.Tensor] | None,
    sparsity: float,
    pattern: tuple[int, int] | None,
    previous: dict[str, torch.Tensor],
    options: dict[str, Any],
) -> torch.Tensor:
    """One layer pruned by the criterion's own step (which may rewrite its kept weights); its mask, checked."""
    old = previous.get(f"{name}.weight")
    mask = criterion.prune(module, None if statistics is None else statistics[name], sparsity, pattern, old,
                           name=name, **options)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != module.weight.shape:
        raise ValueError(f"The prune step of criterion {criterion.name!r} must return a bool mask shaped like "
                         f"{name}.weight {tuple(module.weight.shape)}, got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}.")
    return mask | old.to(mask.device) if old is not None else mask


def _prune_block_by_block(
    model: nn.Module,
    calibration: CalibrationData,
    targets: dict[str, nn.Module],
    criterion: PruningCriterion,
    sparsity: float,
    scope: str | None,
    pattern: str | None,
    previous: dict[str, torch.Tensor],
    sequential: str | None,
    hessian_dtype: torch.dtype,
    options: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Calibrate and prune one transformer block at a time; returns the new masks (weight layout) and the blocks
    that `sequential="layer"` calibrated by block.

    A criterion with a `prune` step (SparseGPT) prunes each layer itself from its statistic, freed
    as soon as it is used; one with a `score` scores the block's layers together.
    """
    n_of_m = parse_pattern(pattern) if pattern is not None else None
    masks: dict[str, torch.Tensor] = {}
    collector = InputStatisticCollector(criterion.needs, {}, hessian_dtype)

    def hooks_for(names: list[str]) -> dict:
        nonlocal collector
        collector = InputStatisticCollector(criterion.needs, {name: targets[name] for name in names}, hessian_dtype)
        return collector.hooks()

    def prune(names: list[str]) -> None:
        if criterion.rewrites_weights:
            for name in names:  # each statistic freed once the layers that share it are done
                masks[f"{name}.weight"] = _prune_layer(criterion, name, targets[name], {name: collector.pop(name)},
                                                       sparsity, n_of_m, previous, options)
        else:
            modules = {name: targets[name] for name in names}
            block_previous = {key: previous[key] for key in (f"{name}.weight" for name in names) if key in previous}
            block_masks = criterion_masks(modules, sparsity, scope, {name: collector.pop(name) for name in names},
                                          pattern, previous=block_previous, score=criterion.score)
            apply_masks(model, block_masks)  # the next block must read this one's pruned outputs
            masks.update(block_masks)

    fallback = calibrate_block_by_block(model, calibration, targets, hooks_for, prune, sequential=sequential or False)
    return masks, fallback
