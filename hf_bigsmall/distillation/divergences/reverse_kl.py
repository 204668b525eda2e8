"""Reverse KL(student || teacher): mode-seeking, the divergence of MiniLLM (Gu et al. 2024)."""

from __future__ import annotations

import torch

from .base import Divergence, register_divergence


def reverse_kl(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """`sum_j s_j (log s_j - log t_j)` per row, `(N, C) -> (N,)`."""
    return (student_logprobs.exp() * (student_logprobs - teacher_logprobs)).sum(-1)


def reverse_kl_and_gradient(student_logprobs: torch.Tensor,
                            teacher_logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The values and their gradient in the softened logits, `s * (log s - log t - KL(s || t))` (the
    arguments are overwritten)."""
    difference = student_logprobs - teacher_logprobs
    student_probs = student_logprobs.exp_()
    values = (student_probs * difference).sum(-1)
    return values, difference.sub_(values[:, None]).mul_(student_probs)


register_divergence(Divergence(
    name="reverse_kl",
    function=reverse_kl,
    description="reverse KL(student || teacher), mode-seeking (MiniLLM, Gu et al. 2024)",
    gradient=reverse_kl_and_gradient,
))
