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
    # s * (d - KL) computed as s * d - s * KL, so that no buffer beyond the two arguments is needed
    weighted = torch.sub(student_logprobs, teacher_logprobs, out=teacher_logprobs)
    student_probs = student_logprobs.exp_()
    values = weighted.mul_(student_probs).sum(-1)
    return values, weighted.addcmul_(student_probs, values[:, None], value=-1.0)


register_divergence(Divergence(
    name="reverse_kl",
    function=reverse_kl,
    description="reverse KL(student || teacher), mode-seeking (MiniLLM, Gu et al. 2024)",
    gradient=reverse_kl_and_gradient,
))
