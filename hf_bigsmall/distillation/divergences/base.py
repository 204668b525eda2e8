"""The divergence registry: `Divergence`, `register_divergence`, `get_divergence`, `divergence_names`.

The package's docstring says what a divergence is; its built-ins register here as user code does.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

# log-probabilities reach a divergence clamped to this, so that a -inf (a token a model rules out,
# e.g. a masked vocabulary entry) gives 0 * finite = 0 instead of 0 * inf = nan, in the value and its gradient
LOG_FLOOR = torch.finfo(torch.float32).min

_FIX = ("register it with register_divergence(...) before building the config; in a multi-process run (torchrun, "
        "accelerate launch) every process must register it, so do it in the script they all run, not under a "
        "main-process check")


@dataclass(frozen=True)
class Divergence:
    r"""One divergence between the student's and the teacher's softened distributions, row by row.

    Args:
        name (`str`): what `DistillationConfig(kd_loss=...)` and the loss functions' `kind` call it.
        function (`Callable`): `function(student_logprobs, teacher_logprobs, **params) -> (N,)`, the value
            of each row, from `(N, C)` float32 log-probabilities at the training temperature (clamped to the
            float32 minimum, never -inf; `exp()` gives the probabilities). It must be differentiable in
            `student_logprobs` by autograd unless `gradient` is given; the teacher's carry no gradient.
            The loss multiplies it by `temperature**2` (Hinton et al. 2015) and sums or averages the rows.
        description (`str`): one line for the model card and reports, e.g. "forward KL(teacher || student)".
        params (`Mapping[str, float]`): the parameters `function` takes as keywords, with their defaults.
        check_params (`Callable`, *optional*): called with the resolved parameters (a dict); raises a
            `ValueError` naming a bad value and the fix.
        gradient (`Callable`, *optional*): a closed form for the chunked paths,
            `gradient(student_logprobs, teacher_logprobs, **params) -> (values (N,), grad (N, C))`, with
            `grad` the derivative of each row's value with respect to the student's softened logits `u`
            (`student_logprobs = log_softmax(u)`): if `g` is the derivative in the log-probabilities taken
            entry by entry, `grad = g - p * sum(g)` per row, `p` the student's probabilities (forward KL:
            `p - t`). It runs without autograd on copies it may overwrite (fewer buffers: the built-ins do),
            and the returned `grad` is the caller's to overwrite. Without it autograd differentiates
            `function` and the path applies that formula.

    Example:

    ```python
    >>> import torch
    >>> from hf_bigsmall import Divergence, register_divergence
    >>> def alpha_divergence(student_logprobs, teacher_logprobs, alpha=0.5):
    ...     mixed = torch.logsumexp(alpha * teacher_logprobs + (1 - alpha) * student_logprobs, dim=-1)
    ...     return (1 - mixed.exp()) / (alpha * (1 - alpha))
    >>> register_divergence(Divergence("alpha", alpha_divergence, "Amari alpha-divergence", params={"alpha": 0.5}))
    ```
    """

    name: str
    function: Callable[..., torch.Tensor]
    description: str
    params: Mapping[str, float] = field(default_factory=dict)
    check_params: Callable[[dict[str, Any]], None] | None = None
    gradient: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"a Divergence needs a non-empty name (a str), got {self.name!r}.")
        for attribute in ("function", "check_params", "gradient"):
            value = getattr(self, attribute)
            if attribute == "function" or value is not None:
                if not callable(value):
                    raise TypeError(f"Divergence {self.name!r}: {attribute} must be callable, got "
                                    f"{type(value).__name__}.")
        if not isinstance(self.description, str) or not self.description.strip():
            raise ValueError(f"Divergence {self.name!r} needs a description (one line for the model card).")
        if not isinstance(self.params, Mapping) or not all(isinstance(key, str) for key in self.params):
            raise TypeError(f"Divergence {self.name!r}: params must map parameter names (str) to defaults, "
                            f"got {self.params!r}.")
        for key, value in self.params.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"Divergence {self.name!r}: the default of {key!r} must be a number, got {value!r}.")
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        # a function that cannot take what every loss call passes would fail at each step, far from its cause
        params = ", ".join(f"{key}=..." for key in self.params)
        for attribute in ("function", "gradient"):
            _check_signature(self.name, attribute, getattr(self, attribute), (None, None), dict(self.params),
                             f"(student_logprobs, teacher_logprobs{', ' + params if params else ''})")
        _check_signature(self.name, "check_params", self.check_params, (dict(self.params),), {}, "(params)")

    def __reduce__(self):
        # the read-only view of params cannot be pickled or deep-copied itself: rebuild the entry from a dict
        return (type(self), (self.name, self.function, self.description, dict(self.params), self.check_params,
                             self.gradient))

    def resolve_params(self, given: Mapping[str, Any] | None = None) -> dict[str, float]:
        """The declared parameters with `given` over their defaults, checked; a `ValueError` names a bad one."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            declared = sorted(self.params) or "none"
            raise ValueError(f"divergence {self.name!r} takes no parameter {', '.join(map(repr, unknown))} "
                             f"(its parameters: {declared}).")
        params = {**self.params, **given}
        for key, value in params.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"parameter {key!r} of divergence {self.name!r} must be a finite number, "
                                 f"got {value!r}.")
        if self.check_params is not None:
            self.check_params(params)
        return params


def _check_signature(name: str, attribute: str, function: Callable | None, args: tuple, kwargs: dict,
                     expected: str) -> None:
    """A `TypeError` when `function` cannot be called as `function(*args, **kwargs)` (checked on its signature)."""
    if function is None:
        return
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins have none to read: they are called as they are
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        raise TypeError(f"Divergence {name!r}: {attribute} is called as {attribute}{expected}, which "
                        f"{getattr(function, '__name__', attribute)}{signature} cannot take ({error}): make it take "
                        "those arguments, or declare in params exactly the keywords it takes.") from None


def _checked_rows(divergence: Divergence, values: Any, logprobs: torch.Tensor) -> torch.Tensor:
    """`values` when it holds one value per row of `logprobs`; a `ValueError` naming the entry otherwise."""
    rows = tuple(logprobs.shape[:-1])
    if not isinstance(values, torch.Tensor) or tuple(values.shape) != rows:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"divergence {divergence.name!r} must return one value per row, shape {rows}, got {shape}: "
                         "reduce over the last (class) dimension only, e.g. `.sum(-1)`, not over the rows.")
    return values


_DIVERGENCES: dict[str, Divergence] = {}


def register_divergence(divergence: Divergence, *, overwrite: bool = False) -> Divergence:
    """Make `divergence` available by its name to `DistillationConfig(kd_loss=...)` and every loss path.

    Args:
        divergence (`Divergence`): the entry (checked when it is built).
        overwrite (`bool`): replace an entry of the same name; otherwise that is a `ValueError`.

    Returns:
        `Divergence`: the registered entry.
    """
    if not isinstance(divergence, Divergence):
        raise TypeError(f"register_divergence takes a Divergence, got {type(divergence).__name__}.")
    if divergence.name in _DIVERGENCES and not overwrite:
        raise ValueError(f"a divergence named {divergence.name!r} is already registered: pick another name, or pass "
                         "overwrite=True to replace it.")
    _DIVERGENCES[divergence.name] = divergence
    return divergence


def divergence_names() -> tuple[str, ...]:
    """The names of the registered divergences, in the order they were registered."""
    return tuple(_DIVERGENCES)


def get_divergence(name: str) -> Divergence:
    """The registered divergence called `name`; a `ValueError` lists the registered names otherwise."""
    return _lookup(name, "divergence")


def _lookup(name: str, argument: str) -> Divergence:
    divergence = _DIVERGENCES.get(name) if isinstance(name, str) else None
    if divergence is None:
        raise ValueError(f"{argument} must be one of {divergence_names()} (the registered divergences), got {name!r}: "
                         f"{_FIX}.")
    return divergence


def resolve_divergence(kind: str, params: Mapping[str, Any] | None = None, jsd_beta: float | None = None,
                       argument: str = "kind") -> tuple[Divergence, dict[str, float]]:
    """The entry called `kind` and its checked parameters; `jsd_beta` is the JSD's `beta` (the loss functions'
    keyword of old). Raises a `ValueError` naming `argument` for an unknown name."""
    divergence = _lookup(kind, argument)
    params = dict(params or {})
    if jsd_beta is not None and divergence.name == "jsd":
        if params.get("beta", jsd_beta) != jsd_beta:
            raise ValueError(f"jsd_beta={jsd_beta} and divergence_params beta={params['beta']} disagree: give one.")
        params["beta"] = jsd_beta
    return divergence, divergence.resolve_params(params)


def divergence_rows(divergence: Divergence, params: Mapping[str, float], student_logprobs: torch.Tensor,
                    teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """`(N,)` values of `divergence` between `(N, C)` log-probabilities, differentiable by autograd."""
    values = divergence.function(student_logprobs.clamp(min=LOG_FLOOR), teacher_logprobs.clamp(min=LOG_FLOOR),
                                 **params)
    return _checked_rows(divergence, values, student_logprobs)


def _floored(logprobs: torch.Tensor, in_place: bool) -> torch.Tensor:
    """`logprobs` clamped to `LOG_FLOOR`, detached; in place, only where a value is below it (on CPU a pass that
    reads is cheaper than one that writes, and log-probabilities rarely hold a -inf)."""
    logprobs = logprobs.detach()
    if not in_place:
        return logprobs.clamp(min=LOG_FLOOR)
    if logprobs.device.type != "cpu" or (logprobs.numel() and bool(logprobs.amin() < LOG_FLOOR)):
        logprobs.clamp_(min=LOG_FLOOR)
    return logprobs


def rows_and_logit_gradient(divergence: Divergence, params: Mapping[str, float], student_logprobs: torch.Tensor,
                            teacher_logprobs: torch.Tensor, student_probs: torch.Tensor | None = None,
                            needs_grad: bool = True, consume: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each row's value and its gradient with respect to the softened logits `u` (`student_logprobs = log_softmax(u)`).

    The entry's closed form gives it; otherwise autograd gives the derivative in the log-probabilities `g`,
    which goes through the log-softmax: `g - p * sum(g)` per row, with `p = exp(student_logprobs)`
    (`student_probs` when the caller has them; with `consume`, computed in place in `student_logprobs`,
    which the caller no longer needs and which is then also clamped in place). Neither result is attached
    to a graph. `teacher_logprobs` is clamped in place.
    """
    student = _floored(student_logprobs, in_place=consume)
    teacher = _floored(teacher_logprobs, in_place=True)
    if not needs_grad:
        with torch.no_grad():
            return _checked_rows(divergence, divergence.function(student, teacher, **params), student), None
    if divergence.gradient is not None:
        with torch.no_grad():
            values, grad = divergence.gradient(student, teacher, **params)
            return _checked_rows(divergence, values, student), grad
    with torch.enable_grad():
        student.requires_grad_(True)
        values = _checked_rows(divergence, divergence.function(student, teacher, **params), student)
        (grad,) = torch.autograd.grad(values.sum(), student)
    values = values.detach()
    if student_probs is None:
        student_probs = student_logprobs.detach().exp_() if consume else student_logprobs.detach().exp()
    # through the log-softmax: the directions that move every log-probability alike change nothing
    return values, grad.addcmul_(student_probs, grad.sum(-1, keepdim=True), value=-1.0)


# the built-ins register themselves as user code would
