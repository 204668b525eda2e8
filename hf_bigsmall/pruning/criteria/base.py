"""The pruning-criterion registry: `PruningCriterion`, `register_pruning_criterion`, `get_pruning_criterion`.

The package's docstring says what a criterion is; its built-ins register here as user code does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# What the calibration pass collects for a criterion, per targeted layer (in_features = d):
#   "nothing"          no calibration pass; `score` gets None
#   "input_norms"      sum over the calibration tokens of x_j^2, float64 (d,)   (Wanda)
#   "input_hessian"    X X^T over the calibration tokens, (d, d) in hessian_dtype (SparseGPT)
#   "gradients"        sum over calibration batches of (dL/dW)^2 in the score's (out, in) layout, float32;
#                      L is the model's own loss with labels=input_ids (causal or masked LM)
#   "unit_activations" an `Importance` (`compute_importance`: activations of every FFN neuron and head)
NEEDS = ("nothing", "input_norms", "input_hessian", "gradients", "unit_activations")
# "n:m" stands for every "N:M" pattern; "neurons" and "heads" are whole FFN neurons and attention heads
GRANULARITIES = ("unstructured", "n:m", "neurons", "heads")
WEIGHT_GRANULARITIES = ("unstructured", "n:m")
UNIT_GRANULARITIES = ("neurons", "heads")
SCOPES = ("row", "layer", "global")

ScoreFunction = Callable[[torch.Tensor, Any], torch.Tensor]
PruneFunction = Callable[..., torch.Tensor]
UnitScoreFunction = Callable[[nn.Module, str, Any], "list[torch.Tensor] | None"]


@dataclass(frozen=True)
class PruningCriterion:
    """One pruning criterion: what it needs, what it can prune, and how it decides.

    Attributes:
        name: the string `prune_one_shot(method=...)` and `PruningConfig(criterion=...)` take.
        description: one line for the model card's pruning sentence ("Pruned once, on calibration data,
            by <description>, ...").
        needs: what the calibration pass collects for it, one of `NEEDS`: `"nothing"`, `"input_norms"`,
            `"input_hessian"`, `"gradients"` or `"unit_activations"` (see the module's table).
        granularities: what it can prune, a tuple from `GRANULARITIES`: `"unstructured"`, `"n:m"`
            (every N:M pattern), `"neurons"`, `"heads"`.
        score: `score(weight, statistic) -> scores` for weight granularities: `weight` is the layer's
            weight as float32 `(out, in)` (GPT-2's `Conv1D` transposed for you), `statistic` the layer's
            entry of what `needs` declares (None for `"nothing"`); returns `(out, in)` scores, the lowest
            pruned within the comparison group (row, layer, global, or N of every M inputs).
        prune: instead of `score`, a step that prunes one layer itself and may update the weights it
            keeps: `prune(module, statistic, sparsity, pattern, previous, *, name, block_size, dampening)
            -> mask` in the weight's own layout (`True` = pruned); `pattern` is `(N, M)` or None,
            `previous` the mask already in force (keep it pruned). One-shot only: a training schedule
            cannot rewrite the weights it trains.
        unit_scores: for `"neurons"`/`"heads"`: `unit_scores(model, structure, statistic)` returns one
            `(num_units,)` tensor per transformer block (lowest pruned), or None for the L1 norm of each
            unit's weights.
        default_scope: the unstructured comparison group when the caller gives none (`"row"` for Wanda);
            None leaves the caller's default (`"layer"` in `prune_one_shot`, `"global"` in the callback).
            Criteria with a `prune` step choose their own masks and take no scope.

    Example:

    ```python
    >>> PruningCriterion(name="squared", description="squared magnitude",
    ...                  score=lambda weight, statistic: weight.pow(2)).calibrated
    False
    ```
    """

    name: str
    description: str
    needs: str = "nothing"
    granularities: tuple[str, ...] = WEIGHT_GRANULARITIES
    score: ScoreFunction | None = None
    prune: PruneFunction | None = None
    unit_scores: UnitScoreFunction | None = None
    default_scope: str | None = None

    def __post_init__(self):
        for check in (_check_text, _check_needs, _check_granularities, _check_functions, _check_signatures,
                      _check_default_scope):
            check(self)

    @property
    def calibrated(self) -> bool:
        """Whether it needs a calibration pass (any `needs` but `"nothing"`)."""
        return self.needs != "nothing"

    @property
    def rewrites_weights(self) -> bool:
        """Whether it prunes with a `prune` step that may update the weights it keeps (one-shot only)."""
        return self.prune is not None

    def supports(self, structure: str, pattern: tuple[int, int] | None = None) -> bool:
        """Whether it can prune `structure` (`"unstructured"`, `"neurons"`, `"heads"`, or an N:M pattern)."""
        return ("n:m" if pattern is not None else structure) in self.granularities


def _check_text(entry: PruningCriterion) -> None:
    for field_name in ("name", "description"):
        value = getattr(entry, field_name)
        if not isinstance(value, str) or not value.strip():
            raise TypeError(f"PruningCriterion.{field_name} must be a non-empty string, got {value!r}.")


def _check_needs(entry: PruningCriterion) -> None:
    if entry.needs not in NEEDS:
        raise ValueError(f"PruningCriterion {entry.name!r}: needs={entry.needs!r} is not one of {NEEDS}.")


def _check_granularities(entry: PruningCriterion) -> None:
    if isinstance(entry.granularities, list):  # a list reads as naturally; the frozen entry keeps a tuple
        object.__setattr__(entry, "granularities", tuple(entry.granularities))
    granularities = entry.granularities
    if isinstance(granularities, str) or not isinstance(granularities, tuple) or not granularities:
        raise TypeError(f"PruningCriterion {entry.name!r}: granularities must be a non-empty tuple drawn from "
                        f"{GRANULARITIES}, got {granularities!r}.")
    unknown = [value for value in granularities if value not in GRANULARITIES]
    if unknown:
        raise ValueError(f"PruningCriterion {entry.name!r}: granularities {unknown} are not among {GRANULARITIES}.")


def _check_functions(entry: PruningCriterion) -> None:
    for field_name in ("score", "prune", "unit_scores"):
        value = getattr(entry, field_name)
        if value is not None and not callable(value):
            raise TypeError(f"PruningCriterion {entry.name!r}: {field_name} must be callable, got {value!r}.")
    weights = [value for value in entry.granularities if value in WEIGHT_GRANULARITIES]
    if weights and entry.score is None and entry.prune is None:
        raise ValueError(f"PruningCriterion {entry.name!r} prunes {weights}: give it a score(weight, statistic) "
                         "function (or a prune step).")
    if entry.score is not None and entry.prune is not None:
        raise ValueError(f"PruningCriterion {entry.name!r}: give either score or prune, not both.")
    units = [value for value in entry.granularities if value in UNIT_GRANULARITIES]
    if units and entry.unit_scores is None:
        raise ValueError(f"PruningCriterion {entry.name!r} prunes {units}: give it a unit_scores(model, structure, "
                         "statistic) function.")
    if entry.prune is not None and entry.needs in ("gradients", "unit_activations"):
        raise ValueError(f"PruningCriterion {entry.name!r}: a prune step takes the layer's input statistics "
                         f"(needs='nothing', 'input_norms' or 'input_hessian'), not needs={entry.needs!r}.")


# how the kit calls each function: positional arguments, keywords, and the signature the error shows
_CALLS = {
    "score": ((None, None), {}, "score(weight, statistic)"),
    "prune": ((None,) * 5, {"name": "", "block_size": 1, "dampening": 0.01},
              "prune(module, statistic, sparsity, pattern, previous, *, name, block_size, dampening)"),
    "unit_scores": ((None, None, None), {}, "unit_scores(model, structure, statistic)"),
}


def _check_signatures(entry: PruningCriterion) -> None:
    # a function that cannot take what the kit passes would fail mid-pruning, far from where it was written
    for field_name, (args, kwargs, call) in _CALLS.items():
        function = getattr(entry, field_name)
        if function is None:
            continue
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):  # some builtins have none to read: they are called as they are
            continue
        try:
            signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"PruningCriterion {entry.name!r}: {field_name} is called as {call}, which "
                            f"{getattr(function, '__name__', field_name)}{signature} cannot take ({error}): make it "
                            "take those arguments (**options catches the keywords it does not use).") from None


def _check_default_scope(entry: PruningCriterion) -> None:
    if entry.default_scope is not None and entry.default_scope not in SCOPES:
        raise ValueError(f"PruningCriterion {entry.name!r}: default_scope={entry.default_scope!r} is not one of "
                         f"{SCOPES} (or None).")
    if entry.default_scope is not None and entry.prune is not None:
        raise ValueError(f"PruningCriterion {entry.name!r} chooses its masks in its prune step and takes no scope: "
                         "leave default_scope=None.")


_REGISTRY: dict[str, PruningCriterion] = {}
# what an unknown name's error adds: each process of a distributed run has its own registry
MULTI_PROCESS_FIX = ("in a multi-process run (torchrun, accelerate launch) every process must register it, so do "
                     "it in the script they all run, not under a main-process check")


def register_pruning_criterion(entry: PruningCriterion, *, overwrite: bool = False) -> PruningCriterion:
    """Make `entry` available by its name to `prune_one_shot(method=...)` and `PruningConfig(criterion=...)`.

    Args:
        entry: a [`PruningCriterion`] (checked when it was built).
        overwrite: replace an entry registered under the same name.

    Returns:
        the entry, so a module can keep it as a constant.

    Raises:
        TypeError: `entry` is not a `PruningCriterion`.
        ValueError: the name is taken and `overwrite` is False.
    """
    if not isinstance(entry, PruningCriterion):
        raise TypeError(f"register_pruning_criterion takes a PruningCriterion, got {type(entry).__name__}.")
    if entry.name in _REGISTRY and not overwrite:
        raise ValueError(f"A pruning criterion named {entry.name!r} is already registered: choose another name, or "
                         "pass overwrite=True to replace it.")
    _REGISTRY[entry.name] = entry
    return entry


def get_pruning_criterion(name: str) -> PruningCriterion:
    """The registered criterion called `name`; `ValueError` naming the registered ones otherwise."""
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"Unknown pruning criterion {name!r}: choose one of {pruning_criterion_names()}, or register "
                         f"it with register_pruning_criterion(...) before building the config; {MULTI_PROCESS_FIX}.")
    return entry


def pruning_criterion_names() -> tuple[str, ...]:
    """Names of the registered criteria, in registration order."""
    return tuple(_REGISTRY)


# The built-ins register themselves on import, exactly as a user's module would.
