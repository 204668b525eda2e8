"""The generalised Jensen-Shannon divergence of GKD (Agarwal et al. 2024).

`beta * KL(t || m) + (1 - beta) * KL(s || m)` with the mixture `m = beta * t + (1 - beta) * s`. At `beta`
0 or 1 the mixture is one of the two distributions and the value is exactly 0: finite, but no signal.
"""

from __future__ import annotations

import math

import torch

from .base import LOG_FLOOR, Divergence, register_divergence


def _log(weight: float) -> float:
    return math.log(weight) if weight > 0 else -math.inf


def _parts(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, beta: float):
    """`(KL(t || m) per row, log s - log m, s)` with the mixture `m`."""
    log_mixture = torch.logaddexp(teacher_logprobs + _log(beta), student_logprobs + _log(1.0 - beta))
    log_mixture = log_mixture.clamp(min=LOG_FLOOR)
    teacher_part = (teacher_logprobs.exp() * (teacher_logprobs - log_mixture)).sum(-1)
    return teacher_part, student_logprobs - log_mixture, student_logprobs.exp()


def jsd(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """The generalised JSD per row, `(N, C) -> (N,)`; `beta` is the teacher's weight in the mixture."""
    teacher_part, difference, student_probs = _parts(student_logprobs, teacher_logprobs, beta)
    return beta * teacher_part + (1.0 - beta) * (student_probs * difference).sum(-1)


def jsd_and_gradient(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor,
                     beta: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """The values and their gradient in the softened logits, `(1 - beta) * s * (log s - log m - KL(s || m))`:
    the derivative in `s` is `(1 - beta) * log(s / m)`, the mixture's own terms cancelling."""
    log_mixture = torch.logaddexp(teacher_logprobs + _log(beta), student_logprobs + _log(1.0 - beta))
    log_mixture.clamp_(min=LOG_FLOOR)
    teacher_part = (teacher_logprobs - log_mixture).mul_(teacher_logprobs.exp_()).sum(-1)
    difference = student_logprobs.sub(log_mixture)
    del log_mixture
    student_probs = student_logprobs.exp_()  # the arguments are overwritten
    student_part = (student_probs * difference).sum(-1)
    values = beta * teacher_part + (1.0 - beta) * student_part
    return values, difference.sub_(student_part[:, None]).mul_(student_probs).mul_(1.0 - beta)


def _check(params: dict) -> None:
    if not 0.0 <= params["beta"] <= 1.0:
        raise ValueError(f"jsd_beta (the JSD's beta, the teacher's weight in the mixture) must be in [0, 1], "
                         f"got {params['beta']}.")


register_divergence(Divergence(
    name="jsd",
    function=jsd,
    description="generalised Jensen-Shannon divergence, beta * KL(t || m) + (1 - beta) * KL(s || m) (GKD, "
                "Agarwal et al. 2024)",
    params={"beta": 0.5},
    check_params=_check,
    gradient=jsd_and_gradient,
))
