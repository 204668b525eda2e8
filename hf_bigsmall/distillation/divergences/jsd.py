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
    if 0.0 < beta < 1.0:  # log m = log(1 - beta) + logaddexp(log t + log(beta / (1 - beta)), log s): one buffer
        log_mixture = teacher_logprobs + (math.log(beta) - math.log(1.0 - beta))
        torch.logaddexp(log_mixture, student_logprobs, out=log_mixture).add_(math.log(1.0 - beta))
    else:
        log_mixture = torch.logaddexp(teacher_logprobs + _log(beta), student_logprobs + _log(1.0 - beta))
    log_mixture.clamp_(min=LOG_FLOOR)
    teacher_part = (teacher_logprobs - log_mixture).mul_(teacher_logprobs.exp_()).sum(-1)
    # the arguments are overwritten: s * (d - KL(s || m)) computed as s * d - s * KL(s || m) in the mixture's buffer
    weighted = torch.sub(student_logprobs, log_mixture, out=log_mixture)
    student_probs = student_logprobs.exp_()
    student_part = weighted.mul_(student_probs).sum(-1)
    values = beta * teacher_part + (1.0 - beta) * student_part
    return values, weighted.addcmul_(student_probs, student_part[:, None], value=-1.0).mul_(1.0 - beta)


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
