"""Masks from any criterion's scores (`pruning/criteria/`): per output row, per layer, globally, or N:M.

Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models") scores
weight `W_ij` (output `i`, input `j`) by `|W_ij| * ||X_j||_2`, where `||X_j||_2` is the L2 norm of
input channel `j` over the calibration tokens, and compares scores *within each output row*: every
row loses the same fraction of its weights. Large LLM activations concentrate in a few input
channels, so a small weight on such a channel still matters; magnitude alone prunes it.

N:M semi-structured sparsity (as in NVIDIA's 2:4 sparse tensor cores; Mishra et al. 2021) prunes
exactly `N` of every `M` consecutive input weights of a row. This kit reads `"N:M"` as *N pruned
of M* (so `"2:4"` is the usual half), matching the Wanda reference code's `prune_n`/`prune_m`.

Everything here works on `(out, in)` score matrices; GPT-2's `Conv1D` stores its weight as
`(in, out)`, so its scores and masks are transposed on the way in and out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .masks import _lowest_k, _pruned_count
from .patterns import parse_pattern

ONE_SHOT_SCOPES = ("row", "layer", "global")
ScoreFunction = Callable[[torch.Tensor, Any], torch.Tensor]


def _is_transposed(module: nn.Module) -> bool:
    """GPT-2 `Conv1D` keeps `(in, out)`; `nn.Linear` keeps `(out, in)`."""
    return not isinstance(module, nn.Linear)


def in_features(module: nn.Module) -> int:
    return module.weight.shape[0] if _is_transposed(module) else module.weight.shape[1]


def check_pattern_fits(modules: dict[str, nn.Module], pattern: str) -> None:
    """`ValueError` naming the first layer whose input width M does not divide."""
    _, m = parse_pattern(pattern)
    for name, module in modules.items():
        if in_features(module) % m:
            raise ValueError(
                f"pattern={pattern!r}: layer {name!r} has {in_features(module)} inputs, not a multiple of M={m}. "
                "Choose an M that divides every targeted layer's input width, or leave that layer out of "
                "target_modules."
            )


def row_scores(module: nn.Module, statistic: Any = None, previous: torch.Tensor | None = None,
               score: ScoreFunction | None = None) -> torch.Tensor:
    """`(out, in)` float32 scores: `score(|W| as (out, in) float32, statistic)`, `|W_ij|` without a `score`.

    Entries already pruned (`previous`, in the weight's own layout) score -inf, so they stay pruned and count
    toward the target whatever the sign of a criterion's scores.
    """
    weight = module.weight.detach().float()
    if _is_transposed(module):
        weight = weight.t()
    if score is None:
        scores = weight.abs()
    else:
        scores = score(weight, statistic)
        if not isinstance(scores, torch.Tensor) or scores.shape != weight.shape:
            raise ValueError(f"A pruning criterion's score must return a tensor shaped like the weight (out, in) = "
                             f"{tuple(weight.shape)}, got {getattr(scores, 'shape', type(scores).__name__)}.")
        scores = scores.float()
    if previous is not None:
        scores = scores.masked_fill(previous.t() if _is_transposed(module) else previous, -math.inf)
    return scores


def lowest_per_row(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask of the `round(sparsity * in)` lowest scores of every row (Wanda's comparison group)."""
    count = _pruned_count(scores.shape[1], sparsity)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if count:
        mask.scatter_(1, torch.topk(scores, count, dim=1, largest=False).indices, True)
    return mask


def lowest_n_of_m(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Mask of the `n` lowest scores in every block of `m` consecutive inputs of every row."""
    rows, columns = scores.shape
    blocks = scores.reshape(rows, columns // m, m)
    mask = torch.zeros_like(blocks, dtype=torch.bool)
    if n:
        mask.scatter_(2, torch.topk(blocks, n, dim=2, largest=False).indices, True)
    return mask.reshape(rows, columns)


def _to_weight_layout(module: nn.Module, mask: torch.Tensor) -> torch.Tensor:
    return mask.t().contiguous() if _is_transposed(module) else mask


@torch.no_grad()
def criterion_masks(
    modules: dict[str, nn.Module],
    sparsity: float,
    scope: str = "row",
    statistics: Mapping[str, Any] | None = None,
    pattern: str | None = None,
    previous: dict[str, torch.Tensor] | None = None,
    pattern_n: int | None = None,
    score: ScoreFunction | None = None,
) -> dict[str, torch.Tensor]:
    """Masks (`True` = pruned) of the targeted layers, keyed by parameter name (`"<module>.weight"`).

    Args:
        modules: `{module name: Linear or Conv1D}`.
        sparsity: fraction pruned, in [0, 1) (ignored with a `pattern`).
        scope: `"row"` (every output row loses the same fraction, Wanda's choice), `"layer"` (one
            threshold per layer, the magnitude baseline of the Wanda paper) or `"global"` (one
            threshold over all layers). Ignored with a `pattern`.
        statistics: `{module name: statistic}` that `score` reads (e.g. Wanda's `sum_t x_tj^2` from
            `collect_input_statistics`), or None for a criterion that needs nothing.
        pattern: `"N:M"`: `N` pruned of every `M` consecutive inputs of a row.
        previous: masks already in force (same keys); they stay pruned.
        pattern_n: prune this many per block instead of `N` (a gradual schedule's intermediate step).
        score: the criterion's `score(weight, statistic)` (see `PruningCriterion`); None: `|W_ij|`.
    """
    previous = previous or {}
    if statistics is not None:
        missing = [name for name in modules if name not in statistics]
        if missing:
            raise ValueError(f"No calibration statistics for layers {missing[:3]}: collect them for the same targets.")
    scores = {
        name: row_scores(module, None if statistics is None else statistics[name], previous.get(f"{name}.weight"), score)
        for name, module in modules.items()
    }
    # NaN ranks above every number: those weights would be kept silently, whatever the criterion meant
    broken = [name for name, values in scores.items() if bool(values.isnan().any())]
    if broken:
        raise ValueError(f"The pruning criterion's scores hold NaN for layers {broken[:3]} (a NaN statistic, or a score "
                         "such as sqrt or log of a negative value): make the score finite.")
    if pattern is not None:
        n, m = parse_pattern(pattern)
        n = n if pattern_n is None else pattern_n
        masks = {name: lowest_n_of_m(score, n, m) for name, score in scores.items()}
    elif scope == "row":
        masks = {name: lowest_per_row(score, sparsity) for name, score in scores.items()}
    elif scope == "layer":
        masks = {name: _lowest_k(score.flatten(), _pruned_count(score.numel(), sparsity)).view_as(score)
                 for name, score in scores.items()}
    elif scope == "global":
        flat = torch.cat([score.flatten() for score in scores.values()])
        chosen, masks, start = _lowest_k(flat, _pruned_count(flat.numel(), sparsity)), {}, 0
        for name, score in scores.items():
            masks[name] = chosen[start : start + score.numel()].view_as(score)
            start += score.numel()
    else:
        raise ValueError(f"scope={scope!r} is not supported: choose one of {ONE_SHOT_SCOPES}.")
    result = {}
    for name, module in modules.items():
        mask = _to_weight_layout(module, masks[name])
        old = previous.get(f"{name}.weight")
        result[f"{name}.weight"] = mask | old.to(mask.device) if old is not None else mask
    return result
