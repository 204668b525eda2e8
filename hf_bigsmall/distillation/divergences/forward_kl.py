"""Forward KL(teacher || student): mode-covering, the soft-target loss of Hinton et al. (2015) and DistilBERT."""

from __future__ import annotations

import torch

from .base import Divergence, register_divergence


def forward_kl(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """`sum_j t_j (log t_j - log s_j)` per row, `(N, C) -> (N,)`."""
    return (teacher_logprobs.exp() * (teacher_logprobs - student_logprobs)).sum(-1)


def forward_kl_and_gradient(student_logprobs: torch.Tensor,
                            teacher_logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The values and their gradient in the softened logits, `s - t` (the arguments are overwritten)."""
    teacher_probs = teacher_logprobs.exp()
    values = teacher_logprobs.sub_(student_logprobs).mul_(teacher_probs).sum(-1)
    return values, student_logprobs.exp_().sub_(teacher_probs)


register_divergence(Divergence(
    name="forward_kl",
    function=forward_kl,
    description="forward KL(teacher || student), mode-covering (Hinton et al. 2015)",
    gradient=forward_kl_and_gradient,
))
