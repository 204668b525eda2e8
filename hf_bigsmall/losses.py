"""Distillation losses as pure functions of tensors.

Every function upcasts to float32 before any softmax or log, so bf16/fp16 logits give the same
loss as fp32 ones up to rounding, and takes an optional boolean `mask` that selects the positions
that count (labels != -100, non-padding). They do not know about models or the Trainer: the
`DistillationTrainer` chooses the reduction so that gradient accumulation stays exact.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from .distillation.divergences import Divergence, divergence_rows, resolve_divergence, rows_and_logit_gradient

# the built-in divergences' names (the registry, `divergence_names()`, also lists the ones users register)
KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")
HIDDEN_LOSSES = ("mse", "cosine")
Reduction = Literal["batchmean", "sum", "none"]

def target_mask(labels: torch.Tensor | None, attention_mask: torch.Tensor | None, shift: bool) -> torch.Tensor:
    """The `(B, T)` positions whose logits are trained on: one rule for every loss and every count.

    A position counts when its target is a label (not -100) and, with an attention mask, the
    position and its target are both real tokens. With `shift` (a decoder-only causal LM) the logits
    at t predict token t + 1: position t counts when `labels[t + 1] != -100`, `attention_mask[t]`
    and `attention_mask[t + 1]`, and the last position never does. Without `shift` position t
    counts when `labels[t] != -100` and `attention_mask[t]`. So labels a collator left on padding
    count nowhere: not in the soft-target loss, the task loss, a teacher-logit cache or the
    `num_items_in_batch` they are divided by. Without labels the attention mask alone decides.

    Args:
        labels (`torch.Tensor` of shape `(B, T)`, *optional*): token labels, -100 where nothing is predicted.
        attention_mask (`torch.Tensor` of shape `(B, T)`, *optional*): 1 for real tokens, 0 for padding.
        shift (`bool`): whether position t predicts token t + 1.

    Returns:
        `torch.Tensor`: a `(B, T)` bool tensor, True at the positions that count.

    Example:

    ```python
    >>> import torch
    >>> from hf_bigsmall.losses import target_mask
    >>> labels = torch.tensor([[5, 6, 7, 0]])              # padding that kept its label
    >>> target_mask(labels, torch.tensor([[1, 1, 1, 0]]), shift=True)
    tensor([[ True,  True, False, False]])
    ```
    """
    if labels is None and attention_mask is None:
        raise ValueError("target_mask needs labels or an attention mask to know the positions.")
    counts = labels.ne(-100) if labels is not None else attention_mask.bool()
    if attention_mask is not None:
        counts = counts & attention_mask.bool()
    if not shift:
        return counts
    following = counts[..., 1:]  # target t + 1 is a label on a real token
    if attention_mask is not None:
        following = following & attention_mask[..., :-1].bool()  # and position t is a real token
    return F.pad(following, (0, 1), value=False)


def invalid_logit_rows(logits: torch.Tensor) -> torch.Tensor:
    """True at each position `(...)` of `(..., V)` logits that no soft target can be made from.

    That is a NaN or +inf anywhere in the row, or a row that is -inf everywhere (its softmax is
    0 / 0). A -inf among finite logits is allowed: it is a token the model rules out (a masked
    vocabulary entry). One reduction over the logits, `(..., V) -> (...)`.
    """
    peak = logits.amax(dim=-1)  # NaN if any entry is NaN, +inf if any is +inf, -inf if all are -inf
    return ~torch.isfinite(peak)


def _rows_that_count(mask: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor | None:
    """The flat boolean mask of the `(N, C)` rows that count, or None when every row does."""
    if mask is None:
        return None
    if mask.shape != logits.shape[:-1]:
        raise ValueError(f"mask has shape {tuple(mask.shape)} but the logits need {tuple(logits.shape[:-1])}.")
    keep = mask.reshape(-1).bool()
    # selecting copies every row (and its gradient); when every position counts, a view does
    return None if bool(keep.all()) else keep


def _divergence_rows(student_rows: torch.Tensor, teacher_rows: torch.Tensor, temperature: float,
                     divergence: Divergence, params: dict) -> torch.Tensor:
    """Per-row divergence of softened distributions, `(N, C) -> (N,)`, computed in float32."""
    log_s = F.log_softmax(student_rows.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_rows.float() / temperature, dim=-1)
    return divergence_rows(divergence, params, log_s, log_t)


def _chunk_rows(rows: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """The rows of one chunk that count (`keep` None: all of them, as a view)."""
    return rows if keep is None else rows[keep]


class _ChunkedDivergence(torch.autograd.Function):
    """A divergence of the kept rows, over chunks of rows, with its gradient taken in the same pass.

    Each chunk's gradient with respect to the logits is known while its softmaxes are at hand
    (`rows_and_logit_gradient`: the divergence's closed form, or autograd on the chunk alone): it is
    kept (in the logits' dtype, zero on rows that do not count) instead of the softmaxes, and the
    backward pass only scales it. Rows are selected chunk by chunk, so no copy of all the logits is made.
    """

    @staticmethod
    def forward(ctx, student_rows, teacher_rows, keep, temperature, chunk_size, divergence, params):
        needs_grad = ctx.needs_input_grad[0]
        grad = torch.zeros_like(student_rows) if needs_grad else None
        per_row = []
        for start in range(0, student_rows.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            chunk_keep = None if keep is None else keep[rows]
            log_s = F.log_softmax(_chunk_rows(student_rows[rows], chunk_keep).float() / temperature, dim=-1)
            log_t = F.log_softmax(_chunk_rows(teacher_rows[rows], chunk_keep).float() / temperature, dim=-1)
            values, chunk_grad = rows_and_logit_gradient(divergence, params, log_s, log_t, needs_grad=needs_grad,
                                                         consume=True)
            per_row.append(values)
            if needs_grad:
                chunk_grad.div_(temperature)  # d(u)/d(logits) with u = logits / T
                if chunk_keep is None:
                    grad[rows] = chunk_grad
                else:
                    grad[rows][chunk_keep] = chunk_grad.to(grad.dtype)
        ctx.save_for_backward(grad, keep)
        return torch.cat(per_row) if per_row else student_rows.new_zeros(0, dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad_per_row):
        grad, keep = ctx.saved_tensors
        if keep is None:
            scale = grad_per_row
        else:
            scale = grad_per_row.new_zeros(grad.shape[0])
            scale[keep] = grad_per_row
        return grad * scale.to(grad.dtype)[:, None], None, None, None, None, None, None


def reduce_rows(per_row: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """`(N,)` per-row losses reduced as `reduction` says: `"batchmean"`, `"sum"` or `"none"`."""
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    if reduction == "batchmean":
        # an empty selection (every label masked) is a zero loss, not a 0/0 = nan
        return per_row.sum() / max(per_row.shape[0], 1)
    raise ValueError(f"reduction must be 'batchmean', 'sum' or 'none', got {reduction!r}.")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    kind: str = "forward_kl",
    mask: torch.Tensor | None = None,
    jsd_beta: float | None = None,
    reduction: Reduction = "batchmean",
    chunk_size: int | None = None,
    divergence_params: dict[str, float] | None = None,
) -> torch.Tensor:
    """Soft-target distillation loss between student and teacher logits (Hinton et al. 2015).

    Both distributions are softened by `temperature` and the divergence is multiplied by
    `temperature**2`, so the gradients keep their size as the temperature grows (Hinton et al.
    2015, section 2). With `kind="forward_kl"` and no mask, the result equals
    `KLDivLoss(reduction="batchmean")(log_softmax(s / T), softmax(t / T)) * T**2` for `(N, C)`
    logits, the loss of DistilBERT (Sanh et al. 2019). Logits of shape `(B, T, V)` (causal LM) are
    treated as `B * T` rows, so `batchmean` averages over tokens, not sequences.

    Args:
        student_logits (`torch.Tensor` of shape `(..., C)`):
            Student logits; any float dtype (upcast to float32).
        teacher_logits (`torch.Tensor` of shape `(..., C)`):
            Teacher logits, same shape; no gradient flows into them.
        temperature (`float`):
            Softening temperature `T > 0`.
        kind (`str`):
            A registered divergence (`hf_bigsmall.distillation.divergences`; `register_divergence` adds
            one). Built in:
            `"forward_kl"`: KL(teacher || student), mode-covering, the classic choice.
            `"reverse_kl"`: KL(student || teacher), mode-seeking (MiniLLM, Gu et al. 2024).
            `"jsd"`: generalised Jensen-Shannon divergence of GKD (Agarwal et al. 2024),
            `beta * KL(t || m) + (1 - beta) * KL(s || m)` with `m = beta * t + (1 - beta) * s`.
            At `jsd_beta` 0 or 1 the mixture equals one of the two distributions and the value is
            exactly 0 (finite, but no training signal): use `forward_kl` or `reverse_kl` instead.
        mask (`torch.Tensor` of shape `(...)`, *optional*):
            True where a position counts; the others (labels -100, padding) are left out.
        jsd_beta (`float`, *optional*):
            Mixture weight of the teacher for `kind="jsd"`, in `[0, 1]` (default 0.5): the JSD's `beta`.
        reduction (`str`):
            `"batchmean"` (sum over the selected rows / their number), `"sum"`, or `"none"` (one
            value per selected row, shape `(N,)`).
        chunk_size (`int`, *optional*):
            Compute the divergence over this many rows at a time, so the float32 softmaxes of all
            rows are never held at once: for token-level distillation over a large vocabulary.
            Each chunk's gradient is computed with its loss and kept in the logits' dtype (the
            divergence's closed form where it has one, else autograd on the chunk). Same value and
            gradient; `None` computes all rows at once.
        divergence_params (`dict`, *optional*):
            Parameters the divergence declares (`Divergence.params`), over their defaults.

    Returns:
        `torch.Tensor`: a float32 scalar (or `(N,)` with `reduction="none"`).

    Example:

    ```python
    >>> import torch
    >>> from hf_bigsmall.losses import kd_loss
    >>> student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    >>> kd_loss(student, teacher, temperature=2.0).shape
    torch.Size([])
    ```
    """
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}.")
    divergence, params = resolve_divergence(kind, divergence_params, jsd_beta)
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"student has {student_logits.shape[-1]} classes/tokens but the teacher has "
            f"{teacher_logits.shape[-1]}: teacher and student must share the label set or vocabulary."
        )
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape: feed both the same batch."
        )
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows or None, got {chunk_size}.")
    # all rows as views of the logits; the rows that count are picked in one go or chunk by chunk
    student_rows = student_logits.reshape(-1, student_logits.shape[-1])
    teacher_rows = teacher_logits.reshape(-1, teacher_logits.shape[-1]).detach()
    keep = _rows_that_count(mask, student_logits)
    if chunk_size is None or student_rows.shape[0] <= chunk_size:
        per_row = _divergence_rows(_chunk_rows(student_rows, keep), _chunk_rows(teacher_rows, keep), temperature,
                                   divergence, params)
    else:
        per_row = _ChunkedDivergence.apply(student_rows, teacher_rows, keep, temperature, chunk_size, divergence,
                                           params)
    return reduce_rows(per_row * temperature**2, reduction)


def hidden_state_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    kind: str = "mse",
    mask: torch.Tensor | None = None,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> torch.Tensor:
    """Distance between student and teacher hidden states, one value per position.

    `"mse"` is the mean squared error over the hidden dimension (TinyBERT, Jiao et al. 2020);
    `"cosine"` is `1 - cos(student, teacher)`, the hidden-state loss of DistilBERT (Sanh et al.
    2019). When widths differ, project the student first (the trainer keeps a learned
    `nn.Linear(student_width, teacher_width)` per mapped layer for this).

    Args:
        student_hidden (`torch.Tensor` of shape `(B, T, D)`): student hidden states.
        teacher_hidden (`torch.Tensor` of shape `(B, T, D)`): teacher hidden states (no gradient).
        kind (`str`): `"mse"` or `"cosine"`.
        mask (`torch.Tensor` of shape `(B, T)`, *optional*): True where a position counts.
        reduction (`str`): `"mean"` over the selected positions, `"sum"`, or `"none"` (`(B, T)`,
            masked positions set to 0).
    """
    if kind not in HIDDEN_LOSSES:
        raise ValueError(f"kind must be one of {HIDDEN_LOSSES}, got {kind!r}.")
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"student hidden states {tuple(student_hidden.shape)} and teacher hidden states "
            f"{tuple(teacher_hidden.shape)} differ: project the student to the teacher's width first."
        )
    student_hidden = student_hidden.float()
    teacher_hidden = teacher_hidden.float().detach()
    if kind == "mse":
        per_position = (student_hidden - teacher_hidden).pow(2).mean(-1)
    else:
        per_position = 1.0 - F.cosine_similarity(student_hidden, teacher_hidden, dim=-1)
    return _reduce_positions(per_position, mask, reduction)


def attention_loss(
    student_attentions: torch.Tensor,
    teacher_attentions: torch.Tensor,
    mask: torch.Tensor | None = None,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> torch.Tensor:
    """KL(teacher || student) between attention distributions, per query position.

    The attention-transfer loss of MiniLM (Wang et al. 2020): for every head and query, the
    row of attention probabilities over the keys is a distribution. When the numbers of heads
    differ, both sides are first averaged over heads (the head-mean attention map).

    Args:
        student_attentions (`torch.Tensor` of shape `(B, H_s, T, T)`): student attention probabilities.
        teacher_attentions (`torch.Tensor` of shape `(B, H_t, T, T)`): teacher attention probabilities.
        mask (`torch.Tensor` of shape `(B, T)`, *optional*): True for query positions that count.
        reduction (`str`): `"mean"` over the selected positions, `"sum"`, or `"none"` (`(B, T)`).
    """
    if student_attentions.dim() != 4 or teacher_attentions.dim() != 4:
        raise ValueError("attentions must have shape (batch, heads, query, key).")
    if student_attentions.shape[-2:] != teacher_attentions.shape[-2:]:
        raise ValueError(
            f"student attentions {tuple(student_attentions.shape)} and teacher attentions "
            f"{tuple(teacher_attentions.shape)} cover different sequence lengths."
        )
    student_attentions = student_attentions.float()
    teacher_attentions = teacher_attentions.float().detach()
    if student_attentions.shape[1] != teacher_attentions.shape[1]:
        student_attentions = student_attentions.mean(1, keepdim=True)
        teacher_attentions = teacher_attentions.mean(1, keepdim=True)
    # probabilities are clamped before the log: masked keys have probability exactly 0
    log_s = student_attentions.clamp(min=1e-12).log()
    log_t = teacher_attentions.clamp(min=1e-12).log()
    per_query = (teacher_attentions * (log_t - log_s)).sum(-1)  # (B, H, T)
    return _reduce_positions(per_query.mean(1), mask, reduction)


def _reduce_positions(per_position: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    if mask is not None:
        if mask.shape != per_position.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)} but positions have {tuple(per_position.shape)}.")
        per_position = per_position * mask.to(per_position.dtype)
    if reduction == "none":
        return per_position
    if reduction == "sum":
        return per_position.sum()
    if reduction == "mean":
        count = per_position.numel() if mask is None else mask.sum()
        return per_position.sum() / (count.clamp(min=1) if torch.is_tensor(count) else max(count, 1))
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
