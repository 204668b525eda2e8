"""`prune_one_shot`: post-training pruning of a whole model at once, by Wanda or by magnitude."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from .calibration import (
    DEFAULT_NUM_SAMPLES,
    CalibrationData,
    InputStatistics,
    collect_input_statistics,
    prepare_calibration,
)
from .io import apply_masks, attach_masks
from .targets import find_target_modules
from .config import CRITERIA
from .wanda import ONE_SHOT_SCOPES, check_pattern_fits, criterion_masks, parse_pattern

logger = logging.get_logger(__name__)


def check_sparsity(sparsity: Any, pattern: str | None) -> float:
    """The fraction to prune, checked: in [0, 1), and equal to N/M with a pattern (or None there)."""
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
) -> nn.Module:
    """Prune a trained model once, with no training: Wanda (calibrated) or magnitude, unstructured or N:M.

    `method="wanda"` scores each weight by `|W_ij| * ||X_j||_2` over the calibration tokens and
    prunes the lowest fraction of every output row (Sun et al. 2023); `method="magnitude"` scores
    by `|W_ij|` alone and, by default, compares within each layer, the baseline of that paper.
    With `pattern="N:M"` exactly `N` of every `M` consecutive input weights of each row are pruned
    (`"2:4"`: half, in the layout sparse kernels accelerate).

    The targets are those of `MagnitudePruningCallback` (Linear/Conv1D layers inside the
    transformer blocks, or `target_modules`). The pruned model carries the callback's masks, so
    `save_pruned_model(model, folder)` writes the zeros, a `sparsity` block in `config.json` and
    `sparsity_masks.safetensors` (as a Trainer with the callback does), and a healing fine-tune with
    `MagnitudePruningCallback(target_sparsity=None)` keeps exactly these zeros. Masks the model
    already carries stay pruned.

    The statistics come from one pass of the dense model over the calibration set (the Wanda
    reference code instead recomputes each block's inputs after pruning the blocks before it); the
    pass holds one batch's activations and a vector per layer, never the whole set's activations.

    Args:
        model: a `PreTrainedModel` (Llama, GPT-2, BERT, ...), pruned in place.
        calibration_dataset: tokenized rows (e.g. `load_causal_lm_dataset(tokenizer, assets.NEWS)["train"]`),
            raw text with `tokenizer=`, a [`~hf_bigsmall.pruning.calibration.CalibrationData`], or the
            [`~hf_bigsmall.pruning.calibration.InputStatistics`] of an earlier `collect_input_statistics`
            on this dense model (one calibration pass for several sparsities or patterns). Needed by
            Wanda; magnitude ignores it.
        sparsity: fraction pruned, in [0, 1); with a pattern, `N/M` or `None`.
        method: `"wanda"` or `"magnitude"`.
        pattern: `None` (unstructured) or `"N:M"`, N pruned of every M, `0 < N < M`, M dividing every
            targeted layer's input width.
        scope: unstructured comparison group: `"row"` (default for Wanda), `"layer"` (default for
            magnitude) or `"global"`.
        target_modules: module-name suffixes or a full-match regex, as in `MagnitudePruningCallback`.
        num_samples, seq_len, batch_size: calibration windows (defaults 128 x 512, or the model's
            maximum positions if shorter); fewer are used, with a warning, when the data is short.
        tokenizer: tokenizes a raw text calibration set.

    Returns:
        the same model, pruned, with its masks attached.

    Raises:
        ValueError: a bad method, sparsity, pattern or scope; no matching layer; a missing, empty or
            foreign-tokenizer calibration set. All are checked before any weight changes.

    Example:

    ```python
    >>> from hf_bigsmall import assets, prune_one_shot, save_pruned_model, sparsity_report
    >>> from hf_bigsmall.tasks.causal_lm import load_causal_lm_dataset
    >>> calibration = load_causal_lm_dataset(tokenizer, assets.NEWS, block_size=512)["train"]
    >>> prune_one_shot(model, calibration, sparsity=0.5, method="wanda")
    >>> sparsity_report(model).global_sparsity
    0.5
    >>> save_pruned_model(model, "out/wanda-50")  # zeros + "sparsity" block + sparsity_masks.safetensors
    ```
    """
    if method not in CRITERIA:
        raise ValueError(f"method={method!r} is not supported: choose one of {CRITERIA}.")
    sparsity = check_sparsity(sparsity, pattern)
    if scope is None:
        scope = "row" if method == "wanda" else "layer"
    if scope not in ONE_SHOT_SCOPES:
        raise ValueError(f"scope={scope!r} is not supported: choose one of {ONE_SHOT_SCOPES}.")
    targets = _targets(model, target_modules)
    if pattern is not None:
        check_pattern_fits(targets, pattern)
    calibration = statistics = None
    if method == "wanda" and isinstance(calibration_dataset, InputStatistics):
        statistics = calibration_dataset
        missing = sorted(set(targets) - set(statistics.squared_norms))
        if missing:
            raise ValueError(f"The statistics given cover no layer {missing[:3]}: collect them with the same "
                             "target_modules.")
    elif method == "wanda":
        if calibration_dataset is None:
            raise ValueError(
                "method='wanda' needs calibration_dataset: a few hundred tokenized rows of text like the model's use, "
                "e.g. load_causal_lm_dataset(tokenizer, assets.NEWS, block_size=512)['train']; or use "
                "method='magnitude', which needs none."
            )
        calibration = prepare_calibration(calibration_dataset, num_samples, seq_len, batch_size, model=model,
                                          tokenizer=tokenizer)
    elif calibration_dataset is not None:
        logger.info("method='magnitude' scores weights alone: the calibration dataset is not used.")

    started = time.perf_counter()
    if calibration is not None:
        statistics = collect_input_statistics(model, calibration, target_modules)
    calibrated = time.perf_counter()
    params = dict(model.named_parameters())
    previous = {name: mask.to(params[name].device) for name, mask in (getattr(model, "_sparsity_masks", None) or {}).items()
                if name in params}
    masks = criterion_masks(targets, sparsity, scope, statistics.squared_norms if statistics else None, pattern,
                            previous={name: previous[name] for name in previous if name.removesuffix(".weight") in targets})
    for name, mask in previous.items():  # masks of other layers stay in force as they are
        masks.setdefault(name, mask)
    info = {
        "method": method,
        "schedule": "one_shot",
        "structure": pattern or "unstructured",
        "scope": None if pattern else scope,
        "target": sparsity,
        "target_modules": target_modules,
        "pruned_at_step": None,
        "calibration": statistics.calibration if statistics else None,
    }
    with torch.no_grad():
        attach_masks(model, masks, info)
        apply_masks(model, masks)
    pruned = sum(int(mask.sum()) for mask in masks.values())
    total = sum(mask.numel() for mask in masks.values())
    logger.info(
        f"prune_one_shot({method}, {pattern or f'{sparsity:.0%} per {scope}'}): {pruned / total:.1%} of {total:,} "
        f"weights pruned; calibration {calibrated - started:.1f} s, masks {time.perf_counter() - calibrated:.1f} s."
    )
    return model
