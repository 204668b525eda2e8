"""The soft-target loss against cached top-k teacher log-probabilities, as a pure function of tensors.

The cache keeps, per target token, the teacher's k most likely tokens `S` with their
log-probabilities at temperature 1, and the mass `m = 1 - sum_S p` of the other tokens. Both
distributions are collapsed onto the k tokens of `S` plus one "tail" outcome (every other token),
and the divergence is taken between the collapsed distributions. By the data-processing
inequality this is a lower bound of the full divergence, with equality when k covers the
vocabulary (the tail is then empty) or leaves out one token, and it charges the student for the mass it puts outside the
teacher's top-k, which a loss over `S` alone would not see (DistillKit and the random-sampling KD
study, Anshumann et al. ACL 2025, both note that truncating to the top-k alone biases the student).

Temperature is applied at training time. On `S`, softening is exact: `p_i^(1/T)`, renormalised.
The tail's own distribution is not stored, so under `T != 1` its softened mass `sum_{j not in S}
p_j^(1/T)` has to be estimated. By default (`tail="uniform"`) the mass `m` is taken as spread
evenly over the `V - k` other tokens (the maximum-entropy guess): `(V - k) * (m / (V - k))^(1/T)`.
`tail="student"` takes the teacher's tail to have the student's shape, `p_j = m * q_j / q_tail`,
which gives the softened mass `(m / q_tail)^(1/T) * sum_{j not in S} q_j^(1/T)` from the student's
own logits (a target, not differentiated; one more pass over the logits). That one is exact
whenever the two tails are proportional (the whole loss and its gradient then equal the
full-vocabulary divergence), but on SmolLM2 at `T = 2` neither estimate recovers what the tail's
shape carries: both left the student about 1.13x the online teacher's perplexity, the uniform one
slightly ahead (BENCHMARKS.md). At `T = 1` nothing is estimated: prefer it with token-level caches.
(`DistillationConfig.kd_tail` picks the estimate for `DistillationTrainer`.)

Both tails are kept as logs summed over their own tokens, never as `1 - sum_S` in float32, which
reads 0 below a mass of about 1e-7: the teacher's comes so from the cache (`topk_targets`), the
student's from its excluded log-probabilities where its mass is below 1e-3. A tail of (almost) zero
on the teacher's side is where reverse KL and JSD charge the student most for mass outside `S`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..losses import Reduction, reduce_rows
from .divergences import LOG_FLOOR, Divergence, divergence_rows, resolve_divergence

TAIL_MODELS = ("uniform", "student")
# the smallest student tail mass taken in a log: below it float32 rounding of 1 - sum(q) is noise
_TAIL_FLOOR = 1e-30
# a tail mass 1 - sum(q) below this is summed over the excluded entries instead (a copy of those rows
# and one more pass over them): float32 rounding of the difference is about 1e-7, so above it the
# relative error stays under 1e-4, far below what training notices
_EXACT_TAIL_BELOW = 1e-3
# log tail masses below this take the backward pass's row-by-row form (1 / Q would overflow float32)
_TINY_TAIL_LOG = -80.0


def _tail_logprob(logprobs: torch.Tensor, ids: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Log of the mass outside `ids` of `(n, V)` log-probabilities (`support` their values at `ids`).

    `log(1 - sum(exp(support)))` where that keeps its digits (a mass of at least `_EXACT_TAIL_BELOW`);
    below it, where float32 rounding of the difference would dominate, a logsumexp over the excluded
    entries of those rows (the cached ones set to -inf in a copy of at most a quarter of the rows at a
    time): exact, and finite however small.
    """
    inside = torch.logsumexp(support, dim=-1).clamp(max=0.0)
    estimate = -torch.expm1(inside)
    tail = estimate.clamp(min=_TAIL_FLOOR).log()
    small = (estimate < _EXACT_TAIL_BELOW).nonzero().flatten()
    # a confident student has most rows below the threshold: copied a quarter of the rows at a time, the copy
    # stays a fraction of the chunk's logits instead of adding a second buffer of their size to the peak
    for rows in small.split(max(1, logprobs.shape[0] // 4)):
        tail[rows] = torch.logsumexp(logprobs[rows].scatter_(1, ids[rows], float("-inf")), dim=-1)
    return tail


def _support_forward(rows: torch.Tensor, buffer: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor | None,
                     temperature: float, chunk_size: int, need_normaliser: bool, need_tail: bool) -> tuple:
    """`log_softmax(rows / T)` written into the float32 `buffer` chunk by chunk, and what the losses read off it.

    `buffer` may be `rows` itself where `rows` is float32 and the untempered logits are not read afterwards
    (`needs_untempered_logits` is False): the logits are then consumed, and no second buffer is needed. Returns
    `(support, tail, label, normaliser)` as `_SupportLogProbs` does (`normaliser` empty where nothing needs it).
    """
    support = torch.empty(ids.shape, dtype=torch.float32, device=rows.device)
    tail = torch.empty(rows.shape[0] if need_tail else 0, dtype=torch.float32, device=rows.device)
    untempered = temperature != 1.0 and (labels is not None or need_normaliser)
    normaliser = torch.empty(rows.shape[0] if untempered else 0, dtype=torch.float32, device=rows.device)
    label = None if labels is None or untempered else torch.empty(rows.shape[0], dtype=torch.float32,
                                                                  device=rows.device)
    for start in range(0, rows.shape[0], chunk_size):
        chunk = slice(start, start + chunk_size)
        source, target = rows[chunk], buffer[chunk]
        if untempered:
            normaliser[chunk] = torch.logsumexp(source.float(), dim=-1)
        if temperature != 1.0 or source.dtype != torch.float32:
            source = torch.div(source, temperature, out=target)
        # in place where the source is the buffer: the log-softmax is one pass per row either way
        torch._log_softmax(source, -1, False, out=target)
        support[chunk] = target.gather(1, ids[chunk])
        if label is not None:
            label[chunk] = target.gather(1, labels[chunk, None]).squeeze(1)
        if need_tail:
            tail[chunk] = _tail_logprob(target, ids[chunk], support[chunk])
    if labels is None:
        label = support.new_empty(0)
    elif untempered:
        label = rows.gather(1, labels[:, None]).squeeze(1).float() - normaliser
    return support, tail, label, normaliser


def _support_backward(buffer: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor | None, normaliser: torch.Tensor,
                      rows: torch.Tensor | None, support: torch.Tensor, tail: torch.Tensor, temperature: float,
                      chunk_size: int, grad_support: torch.Tensor | None, grad_tail: torch.Tensor | None,
                      grad_label: torch.Tensor | None) -> torch.Tensor:
    """The gradient of the logits, written over `buffer` (the log-softmax `_support_forward` left there).

    `rows` are the untempered logits, needed only for a label's gradient under T != 1; a `grad_*` of None
    adds nothing.
    """
    grad_support = torch.zeros_like(support) if grad_support is None else grad_support.float() / temperature
    total = grad_support.sum(1, keepdim=True)
    with_tail = tail.numel() > 0 and grad_tail is not None
    if with_tail:
        grad_tail = grad_tail.float()[:, None] / temperature
        total = total + grad_tail
    with_labels = labels is not None and grad_label is not None and bool(grad_label.any())
    if with_labels:
        grad_label = grad_label.float()[:, None]
        if temperature == 1.0:  # both terms share softmax(rows): one pass
            total = total + grad_label
    if with_tail:
        # the excluded j get q_j * (g_tail / Q - total); where Q is so small that 1 / Q overflows,
        # (q_j / Q) * (g_tail - Q * total) is taken row by row from log q_j - log Q instead
        tiny = tail < _TINY_TAIL_LOG
        tail_coefficient = grad_tail * torch.exp(-tail.clamp(min=_TINY_TAIL_LOG))[:, None] - total
    for start in range(0, buffer.shape[0], chunk_size):
        chunk = slice(start, start + chunk_size)
        if with_tail:
            rows_tiny = tiny[chunk].nonzero().flatten()
            if rows_tiny.numel():  # a tail of exactly 0 (every excluded logit -inf) has q_j = 0 there
                log_tail = tail[chunk][rows_tiny, None]
                log_tail = torch.where(torch.isfinite(log_tail), log_tail, torch.zeros_like(log_tail))
                exact = (buffer[chunk][rows_tiny] - log_tail).exp_() * (
                    grad_tail[chunk][rows_tiny] - tail[chunk][rows_tiny, None].exp() * total[chunk][rows_tiny])
            buffer[chunk].exp_().mul_(tail_coefficient[chunk])
            if rows_tiny.numel():
                buffer[chunk][rows_tiny] = exact
            # the cached ids: -q_j * total, written over (the line above is for the excluded ones)
            buffer[chunk].scatter_(1, ids[chunk], support[chunk].exp() * -total[chunk])
        else:
            buffer[chunk].exp_().mul_(-total[chunk])
        if with_labels and temperature != 1.0:
            untempered = (rows[chunk].float() - normaliser[chunk, None]).exp_()
            buffer[chunk].addcmul_(untempered, grad_label[chunk], value=-1.0)
    buffer.scatter_add_(1, ids, grad_support)
    if with_labels:
        buffer.scatter_add_(1, labels[:, None], grad_label)
    return buffer


class _SupportLogProbs(torch.autograd.Function):
    """The student's log-probabilities the losses need, from one log-softmax over the vocabulary.

    Returns `(support, tail, label, normaliser)`: `log_softmax(rows / T).gather(ids)` at the cached
    ids; with `need_tail` the log of the tempered mass outside them, summed over the excluded
    entries (`1 - sum(exp(support))` in float32 would lose every digit of a mass below about 1e-7
    and, with it, the gradient that should raise it), else empty; the untempered log-probability of
    each row's label (empty without labels); and, under T != 1 where labels or `need_normaliser` ask
    for it, the untempered log-normaliser `logsumexp(rows)` (not differentiated; else empty).

    Autograd would keep `rows / T` and its log-softmax and take several more passes over all the
    logits in the backward pass, and a separate cross-entropy takes two more of its own. Here the
    log-softmax is written chunk by chunk into one float32 buffer, which the backward pass turns in
    place into the gradient of all terms: with `q = softmax(rows / T)`, `Q` the tail mass and
    `total = sum(g_support) + g_tail`, it is `g_support_j - q_j * total` on the cached ids and
    `(q_j / Q) * (g_tail - Q * total)` elsewhere, divided by T, plus `scatter(g_label) - softmax(rows)
    * g_label` (at `T = 1` folded into `total`): one pass over the logits each way, plus the tail's sum.
    The buffer is consumed, so the graph cannot be run backward twice.
    """

    @staticmethod
    def forward(ctx, rows, ids, labels, temperature, chunk_size, need_normaliser, need_tail):
        buffer = torch.empty(rows.shape, dtype=torch.float32, device=rows.device)
        support, tail, label, normaliser = _support_forward(rows, buffer, ids, labels, temperature, chunk_size,
                                                            need_normaliser, need_tail)
        keep_rows = temperature != 1.0 and labels is not None
        ctx.save_for_backward(ids, labels if labels is not None else ids.new_empty(0), normaliser,
                              rows if keep_rows else rows.new_empty(0), support, tail)
        ctx.buffer, ctx.temperature, ctx.chunk_size, ctx.dtype = buffer, temperature, chunk_size, rows.dtype
        ctx.has_labels = labels is not None
        ctx.mark_non_differentiable(normaliser)
        return support, tail, label, normaliser

    @staticmethod
    def backward(ctx, grad_support, grad_tail, grad_label, _grad_normaliser):
        ids, labels, normaliser, rows, support, tail = ctx.saved_tensors
        buffer = ctx.buffer
        ctx.buffer = None
        grad = _support_backward(buffer, ids, labels if ctx.has_labels else None, normaliser, rows, support, tail,
                                 ctx.temperature, ctx.chunk_size, grad_support, grad_tail, grad_label)
        return grad.to(ctx.dtype), None, None, None, None, None, None


@dataclass
class _StudentRows:
    """The student's side of a cached loss: its `(N, V)` logits and the cached ids placed on them."""

    rows: torch.Tensor  # (N, V) logits
    ids: torch.Tensor  # (N, k) long: the cached ids on every row (zeros where `keep` is False)
    keep: torch.Tensor | None  # (N,) bool: the rows whose target counts; None: every row
    labels: torch.Tensor | None  # (N,) long: label ids, 0 where there is none
    valid: torch.Tensor | None  # (N,) bool: the rows with a label

    @property
    def has_tail(self) -> bool:  # otherwise the cached tokens cover the vocabulary: neither side has a tail
        return self.ids.shape[-1] < self.rows.shape[-1]


def _collapsed_losses(student: _StudentRows, support: torch.Tensor, student_tail: torch.Tensor,
                      label_logprob: torch.Tensor, normaliser: torch.Tensor, support_logits: torch.Tensor | None,
                      topk_logprobs: torch.Tensor, tail_logprob: torch.Tensor, temperature: float,
                      divergence: Divergence, params: dict, tail: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(per_row, ce)`: the divergence between the collapsed (k tokens + tail) distributions at the kept rows,
    times T**2, and the summed task loss (None without labels), from what `_support_forward` read off the
    student's log-softmax. `topk_logprobs` `(n, k)` and `tail_logprob` `(n,)` are the kept rows' targets."""
    vocab_size, k = student.rows.shape[-1], student.ids.shape[-1]
    ce = None if student.labels is None else -(label_logprob * student.valid).sum()
    if student.keep is not None:
        support = support[student.keep]
        normaliser = normaliser[student.keep] if normaliser.numel() else normaliser
        student_tail = student_tail[student.keep] if student.has_tail else student_tail
        support_logits = None if support_logits is None else support_logits[student.keep]

    tail_logprob = tail_logprob.to(support.device, torch.float32)
    if not student.has_tail:
        student_tail = torch.full_like(support[:, 0], LOG_FLOOR)
    # else the student's tail is kept whatever the teacher's: a teacher tail of (almost) zero is where
    # reverse KL and JSD charge the student most for the mass it puts outside S

    teacher_support = topk_logprobs.to(support.device, torch.float32) / temperature
    if temperature == 1.0:
        teacher_tail = tail_logprob
    elif tail == "uniform":  # softened tail as if spread evenly over the V - k other tokens
        teacher_tail = (1.0 - 1.0 / temperature) * math.log(max(vocab_size - k, 1)) + tail_logprob / temperature
    else:
        teacher_tail = _student_shaped_tail(support_logits, normaliser, support, student_tail, tail_logprob,
                                            float(temperature))
    teacher = torch.cat([teacher_support, teacher_tail[:, None]], dim=-1)
    teacher = teacher - torch.logsumexp(teacher, dim=-1, keepdim=True)  # also absorbs float16 rounding
    student_logprobs = torch.cat([support, student_tail[:, None]], dim=-1)

    # the registered divergence, between the collapsed (k tokens + tail) distributions
    return divergence_rows(divergence, params, student_logprobs, teacher) * temperature**2, ce


def _student_rows(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
                  tail_logprob: torch.Tensor, temperature: float, mask: torch.Tensor | None,
                  labels: torch.Tensor | None, tail: str, placed: bool = False) -> _StudentRows:
    """The checked inputs of a cached loss, the ids placed on their rows (`placed`: they are already)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if tail not in TAIL_MODELS:
        raise ValueError(f"tail must be one of {TAIL_MODELS}, got {tail!r}.")
    vocab_size = student_logits.shape[-1]
    k = topk_ids.shape[-1]
    if topk_logprobs.shape != topk_ids.shape or tail_logprob.shape != topk_ids.shape[:1]:
        raise ValueError(f"cached targets disagree in shape: ids {tuple(topk_ids.shape)}, log-probabilities "
                         f"{tuple(topk_logprobs.shape)}, tail {tuple(tail_logprob.shape)}.")
    if k > vocab_size:
        raise ValueError(f"the cache keeps {k} tokens per position but the student's vocabulary has {vocab_size}.")
    rows = student_logits.reshape(-1, vocab_size)
    if mask is not None:
        if mask.shape != student_logits.shape[:-1]:
            raise ValueError(f"mask has shape {tuple(mask.shape)} but the logits need {tuple(student_logits.shape[:-1])}.")
        keep = mask.reshape(-1).bool()
    else:
        keep = None
    if labels is not None and labels.shape != student_logits.shape[:-1]:
        raise ValueError(f"labels have shape {tuple(labels.shape)} but the logits need {tuple(student_logits.shape[:-1])}.")
    selected = rows.shape[0] if keep is None or placed else int(keep.sum())
    if selected != topk_ids.shape[0]:
        raise ValueError(f"the batch has {selected} positions that count but {topk_ids.shape[0]} cached targets: "
                         "the labels or attention mask select other positions than when the cache was made (a collator "
                         "that masks or drops tokens?); cache the dataset as it is trained on.")
    ids = topk_ids.to(rows.device, torch.long)
    if keep is not None and not placed:  # place the ids on their rows, so the gather works on the uncopied logits
        placed_ids = ids.new_zeros(rows.shape[0], k)
        placed_ids[keep] = ids
        ids = placed_ids
    flat_labels = valid = None
    if labels is not None:
        flat_labels = labels.reshape(-1).to(rows.device)
        valid = flat_labels.ne(-100)
        flat_labels = torch.where(valid, flat_labels, torch.zeros_like(flat_labels)).long()
    return _StudentRows(rows, ids, keep, flat_labels, valid)


def cached_distillation_losses(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_logprob: torch.Tensor,
    temperature: float = 1.0,
    kind: str = "forward_kl",
    mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    jsd_beta: float | None = None,
    reduction: Reduction = "batchmean",
    chunk_size: int | None = None,
    tail: str = "uniform",
    divergence_params: dict[str, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`cached_kd_loss` and the summed next-token cross-entropy, from one pass over the logits.

    `labels` (shape `(...)`, aligned with the logits' positions, -100 where nothing is predicted)
    adds the student's own task loss, `-sum log softmax(logits)[label]` in float32, computed from the
    same log-softmax as the soft-target loss instead of a second one (no label smoothing). Returns
    `(kd, ce)`, `ce` being None without labels.
    """
    student = _student_rows(student_logits, topk_ids, topk_logprobs, tail_logprob, temperature, mask, labels, tail)
    divergence, params = resolve_divergence(kind, divergence_params, jsd_beta)
    need_normaliser = temperature != 1.0 and tail == "student"
    rows = student.rows
    support, student_tail, label_logprob, normaliser = _SupportLogProbs.apply(
        rows, student.ids, student.labels, float(temperature), chunk_size or max(rows.shape[0], 1), need_normaliser,
        student.has_tail)
    support_logits = rows.gather(1, student.ids).float() if need_normaliser else None  # (rows, k): small
    per_row, ce = _collapsed_losses(student, support, student_tail, label_logprob, normaliser, support_logits,
                                    topk_logprobs, tail_logprob, temperature, divergence, params, tail)
    return reduce_rows(per_row, reduction), ce


def needs_untempered_logits(temperature: float, has_labels: bool, tail: str) -> bool:
    """Whether the losses read the untempered logits after their tempered log-softmax is made: under T != 1,
    for the task loss's log-probabilities and gradient, or the student-shaped tail's normaliser."""
    return temperature != 1.0 and (has_labels or tail == "student")


def cached_losses_and_logit_gradient(
    logits: torch.Tensor,
    ids: torch.Tensor,
    logprobs: torch.Tensor,
    tail_logprob: torch.Tensor,
    keep: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    divergence: Divergence,
    params: dict,
    tail: str,
    kd_weight: float | torch.Tensor,
    ce_weight: float | torch.Tensor,
    needs_grad: bool,
    spare: Callable[[], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`cached_distillation_losses(reduction="sum")` of one chunk of float32 logits, and the gradient of
    `kd_weight * kd + ce_weight * ce` with respect to them, written over a buffer: the fused LM-head loss's step.

    The same functions of the same log-probabilities as the autograd path, without its graph over the `(C, V)`
    logits: the log-softmax is written over `logits` themselves (consumed) unless the untempered logits are still
    needed (a label's gradient or the normaliser under T != 1), then into the buffer `spare()` gives; autograd runs
    on the `(C, k + 1)` collapsed distributions alone, and their gradient is pushed through the log-softmax in place.

    Args:
        logits (`torch.Tensor` of shape `(C, V)`, float32): the chunk's logits.
        ids, logprobs (`torch.Tensor` of shape `(C, k)`), tail_logprob (`(C,)`): the cached targets of every row.
        keep (`torch.Tensor` of shape `(C,)`, bool): the rows whose target counts (the others' targets are ignored).
        labels (`torch.Tensor` of shape `(C,)`, *optional*): next-token labels, -100 where none.
        kd_weight, ce_weight: the weights of the two sums in the loss whose gradient is taken (0: none).
        needs_grad (`bool`): whether to compute the gradient at all.
        spare (`Callable`, *optional*): gives a float32 buffer of `logits`' shape when one is needed (else fresh).

    Returns:
        `(kd, ce, grad)`: the two detached float32 sums (`ce` 0 without labels) and the gradient (None without
        `needs_grad`, or when neither sum is weighted).
    """
    student = _student_rows(logits, ids, logprobs, tail_logprob, temperature, keep, labels, tail, placed=True)
    # every row's ids are gathered below, but a row whose target is ignored may hold anything (a padding id such
    # as -1, as `CachedTargets` allows): id 0 there keeps the gather in range, and nothing reads its value
    student.ids = student.ids.masked_fill(~student.keep[:, None], 0)
    need_normaliser = temperature != 1.0 and tail == "student"
    buffer = logits
    if needs_untempered_logits(temperature, labels is not None, tail):
        buffer = spare() if spare is not None else torch.empty_like(logits)
    support_logits = logits.gather(1, student.ids) if need_normaliser else None
    support, student_tail, label_logprob, normaliser = _support_forward(
        logits, buffer, student.ids, student.labels, float(temperature), logits.shape[0], need_normaliser,
        student.has_tail)
    weighted = [(name, weight) for name, weight in (("kd", kd_weight), ("ce", ce_weight))
                if not (isinstance(weight, (int, float)) and weight == 0) and (name == "kd" or labels is not None)]
    needs_grad = needs_grad and bool(weighted)
    leaves = (support, student_tail, label_logprob)
    if needs_grad:
        for leaf in leaves:
            leaf.requires_grad_(True)
    with torch.enable_grad() if needs_grad else torch.no_grad():
        per_row, ce = _collapsed_losses(student, support, student_tail, label_logprob, normaliser, support_logits,
                                        logprobs[keep], tail_logprob[keep], temperature, divergence, params, tail)
        sums = {"kd": per_row.sum(), "ce": logits.new_zeros(()) if ce is None else ce}
        total = sum(sums[name] * weight for name, weight in weighted) if needs_grad else None
    grad = None
    if needs_grad:
        grad_support, grad_tail, grad_label = torch.autograd.grad(total, leaves, allow_unused=True)
        grad = _support_backward(buffer, student.ids, student.labels, normaliser, logits, support.detach(),
                                 student_tail.detach(), float(temperature), logits.shape[0], grad_support, grad_tail,
                                 grad_label)
    return sums["kd"].detach(), sums["ce"].detach(), grad


def cached_kd_loss(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_logprob: torch.Tensor,
    temperature: float = 1.0,
    kind: str = "forward_kl",
    mask: torch.Tensor | None = None,
    jsd_beta: float | None = None,
    reduction: Reduction = "batchmean",
    chunk_size: int | None = None,
    tail: str = "uniform",
    divergence_params: dict[str, float] | None = None,
) -> torch.Tensor:
    """Soft-target loss of a student against cached top-k teacher targets (see the module docstring).

    Scaled by `temperature**2` like `hf_bigsmall.losses.kd_loss` (Hinton et al. 2015); with k equal
    to the vocabulary and float32 log-probabilities it equals `kd_loss` on the teacher's logits.
    The student's logits are never copied: the log-softmax is taken over all rows of the `(..., V)`
    view into one buffer that the backward pass reuses as the gradient, and only the `(N, k)`
    gathered values are selected.

    Args:
        student_logits (`torch.Tensor` of shape `(..., V)`): student logits, any float dtype.
        topk_ids (`torch.Tensor` of shape `(N, k)`): cached token ids, for the N positions that count.
        topk_logprobs (`torch.Tensor` of shape `(N, k)`): the teacher's log-probabilities at T = 1.
        tail_logprob (`torch.Tensor` of shape `(N,)`): log of the teacher's mass outside the top-k,
            from the excluded log-probabilities (`logsumexp` over them, as `topk_targets` does): a
            difference `log(1 - sum(p))` in float32 reads -inf below about 1e-7. Ignored when k
            covers the vocabulary.
        temperature (`float`): softening temperature `T > 0`.
        kind (`str`): a registered divergence (`"forward_kl"`, `"reverse_kl"`, `"jsd"` or one of
            `register_divergence`), as in `kd_loss`, taken between the collapsed distributions.
        mask (`torch.Tensor` of shape `(...)`, *optional*): True at the N positions that count, in
            the row-major order of the cached rows; None when every position counts.
        jsd_beta (`float`, *optional*): teacher weight of the JSD mixture (default 0.5).
        reduction (`str`): `"batchmean"`, `"sum"` or `"none"` (`(N,)`).
        chunk_size (`int`, *optional*): rows of logits per chunk of the log-softmax, so the float32
            temporaries are one chunk's (None: all rows at once).
        tail (`str`): how the teacher's softened tail is estimated under `T != 1`: `"uniform"` (spread
            evenly over the other tokens) or `"student"` (shaped like the student's); see the module
            docstring.
        divergence_params (`dict`, *optional*): parameters the divergence declares, over their defaults.

    Returns:
        `torch.Tensor`: a float32 scalar (or `(N,)` with `reduction="none"`).

    Example:

    ```python
    >>> import torch
    >>> from hf_bigsmall.distillation.cached_loss import cached_kd_loss
    >>> teacher = torch.randn(4, 10).log_softmax(-1)
    >>> logprobs, ids = teacher.topk(3, dim=-1)
    >>> tail = teacher.scatter(1, ids, float("-inf")).logsumexp(-1)  # the mass outside the top-3
    >>> cached_kd_loss(torch.randn(4, 10), ids, logprobs, tail).shape
    torch.Size([])
    ```
    """
    kd, _ = cached_distillation_losses(student_logits, topk_ids, topk_logprobs, tail_logprob, temperature, kind, mask,
                                       None, jsd_beta, reduction, chunk_size, tail, divergence_params)
    return kd


@torch.no_grad()
def _student_shaped_tail(support_logits, normaliser, student_support, student_tail, tail_logprob, temperature):
    """Log of the teacher's softened tail mass `sum_{j not in S} p_j^(1/T)`, taking `p_j = m * q_j / q_tail`.

    With `L1 = logsumexp(z)` and `LT = logsumexp(z / T)` of the student's logits `z`, and `Q_tail`
    the student's tail mass at `T`: `sum_{j not in S} q_j^(1/T) = exp(LT - L1 / T) * Q_tail`, so the
    log is `(log m - log q_tail - L1) / T + LT + log Q_tail`. `LT` is read off the tempered
    log-softmax at the first cached id, `z_0 / T - log q^T_0`.
    """
    support = student_support.detach()
    tempered_normaliser = support_logits[:, 0] / temperature - support[:, 0]
    inside = torch.logsumexp(support_logits - normaliser[:, None], dim=-1).clamp(max=0.0)
    student_tail_t1 = (-torch.expm1(inside)).clamp(min=_TAIL_FLOOR).log()
    estimate = (tail_logprob - student_tail_t1 - normaliser) / temperature + tempered_normaliser + student_tail.detach()
    return torch.where(tail_logprob > float("-inf"), estimate, tail_logprob)
