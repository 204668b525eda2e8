"""The LM head fused with the distillation loss: token-level KD without ever holding all the logits.

A causal LM's logits are `[tokens x vocabulary]`: at a 128k vocabulary one sequence of 2,048 tokens
has 1 GB of them in float32, and token-level distillation holds the student's, the teacher's, their
softmaxes and the gradient. Here the final hidden states and the head's weight go in instead, and
the logits are made a chunk of tokens at a time: each chunk's logits, its soft-target loss, its
next-token loss and their gradient with respect to the logits are computed, the gradient is pushed
through the head at once (into the hidden states and the head's weight), and the chunk is dropped.
The backward pass then only scales what was kept, so the peak holds one chunk's logits.

The per-chunk losses are those of the materialised path: the registered divergence
(`hf_bigsmall.distillation.divergences`) with its gradient on the chunk (its closed form, or autograd
on the chunk alone), `cached_distillation_losses`, `cross_entropy`: the fused loss and its gradients
are those of the materialised one up to float rounding, for every divergence, a user's included.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import logging

from .cached_loss import (
    cached_distillation_losses,
    cached_losses_and_logit_gradient,
    needs_untempered_logits,
)
from .divergences import LOG_FLOOR, Divergence, resolve_divergence, rows_and_logit_gradient
from .liger_loss import (
    liger_beta,
    liger_distillation_losses,
    liger_setting_refusal,
    require_liger_kernel,
)

logger = logging.get_logger(__name__)

# logits per chunk when no chunk size is given: 64 MB of float32, a handful of buffers of it at the peak
FUSED_CHUNK_LOGITS = 2**24
# who computes the fused loss: the chunked PyTorch code below, or Liger-Kernel's fused linear JSD (liger_loss.py)
FUSED_LOSS_BACKENDS = ("torch", "liger")


@dataclass
class LMHead:
    """A language-model head as the fused loss needs it: `logits = hidden @ weight.T + bias`.

    Args:
        weight (`torch.Tensor` of shape `(V, H)`): the output embedding (tied or not).
        bias (`torch.Tensor` of shape `(V,)`, *optional*): the head's bias, if it has one.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None = None

    @classmethod
    def of(cls, model: torch.nn.Module) -> LMHead:
        """The head of a `PreTrainedModel` (its `get_output_embeddings()`, an `nn.Linear`)."""
        linear = model.get_output_embeddings()
        return cls(linear.weight, linear.bias)


@dataclass
class CachedTargets:
    """A teacher-logit cache's top-k targets, one row per position the fused loss is given.

    Rows where `present` is False carry no target (their ids, log-probabilities and tail are ignored).
    """

    ids: torch.Tensor  # (N, k) int
    logprobs: torch.Tensor  # (N, k) float
    tail: torch.Tensor  # (N,) float
    present: torch.Tensor  # (N,) bool
    tail_shape: str = "uniform"  # how the tail mass is spread over the excluded tokens (`kd_tail`)


def _is_zero(weight: float | torch.Tensor) -> bool:
    return isinstance(weight, (int, float)) and weight == 0


class _ChunkBuffers:
    """`(chunk_size, V)` float32 buffers made once per loss call and reused by every chunk.

    A chunk's logits are tens of MB: a fresh tensor of that size per chunk and per intermediate is
    fresh memory from the OS each time (page faults, zeroing), which on CPU cost more than the
    arithmetic done in it. Each name gets one buffer; a chunk takes its first `rows` rows.
    """

    def __init__(self, rows: int, columns: int, device: torch.device):
        self.shape, self.device, self._buffers = (rows, columns), device, {}

    def get(self, name: str, rows: int) -> torch.Tensor:
        buffer = self._buffers.get(name)
        if buffer is None:
            buffer = self._buffers[name] = torch.empty(self.shape, dtype=torch.float32, device=self.device)
        return buffer[:rows]


def _or_new(buffer: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(like) if buffer is None else buffer


def _linear_into(out: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """`hidden @ weight.T + bias` written into the float32 buffer `out` (computed in `hidden`'s dtype)."""
    if hidden.dtype != torch.float32:
        return out.copy_(F.linear(hidden, weight, bias))
    if bias is None:
        return torch.mm(hidden, weight.T, out=out)
    return torch.addmm(bias, hidden, weight.T, out=out)


def _online_chunk(logits: torch.Tensor, teacher_logits: torch.Tensor | None, keep: torch.Tensor | None,
                  labels: torch.Tensor | None, temperature: float, divergence: Divergence, params: dict,
                  kd_weight: float | torch.Tensor, ce_weight: float | torch.Tensor, label_smoothing: float,
                  needs_grad: bool, spare: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One chunk of the online losses and their gradient with respect to the float32 logits.

    The same values as `kd_loss` (times T**2) and `cross_entropy`. The divergence gives each row's
    value and its gradient in `u = logits / T` (`rows_and_logit_gradient`: its closed form, or
    autograd on this chunk alone), times T**2 / T for the logits; the cross-entropy's is written out,
    `softmax(logits) - (1 - eps) * onehot - eps / V`. `logits` and `teacher_logits` are overwritten
    (the returned gradient may be `logits` itself), and `spare`, a buffer of their shape, holds the
    task loss's probabilities: each step works in place, so a chunk allocates no `(C, V)` tensor of its
    own and takes few passes over its logits (each log-softmax is one fused pass per row).
    Returns `(kd_sum, ce_sum, grad)` (grad None without `needs_grad`).
    """
    zero = logits.new_zeros(())
    kd_sum, ce_sum, grad = zero, zero, None
    ce_probs = None
    if labels is not None:
        valid = labels.ne(-100)
        safe = torch.where(valid, labels, 0)
        if teacher_logits is None or temperature == 1.0:
            # at T = 1 one log-softmax serves both losses (the divergence then takes it as it is)
            log_p = torch.log_softmax(logits, dim=-1, out=logits)
        else:
            log_p = torch.log_softmax(logits, dim=-1, out=_or_new(spare, logits))
        nll = -log_p.gather(1, safe[:, None]).squeeze(1)
        if label_smoothing > 0:
            nll = (1 - label_smoothing) * nll - label_smoothing * log_p.mean(-1)
        ce_sum = (nll * valid).sum()
        if needs_grad and not _is_zero(ce_weight):
            # the divergence overwrites `logits`: a log-softmax it shares goes to the spare buffer as probabilities
            shared = teacher_logits is not None and log_p is logits
            ce_probs = torch.exp(log_p, out=_or_new(spare, logits)) if shared else log_p.exp_()
    if teacher_logits is not None:
        keep_f = keep.to(torch.float32)
        log_s = logits if temperature == 1.0 and labels is not None else \
            torch.log_softmax(logits.div_(temperature), dim=-1, out=logits)
        log_t = torch.log_softmax(teacher_logits.div_(temperature) if temperature != 1.0 else teacher_logits,
                                  dim=-1, out=teacher_logits)
        kd_rows, grad = rows_and_logit_gradient(divergence, params, log_s, log_t,
                                                needs_grad=needs_grad and not _is_zero(kd_weight), consume=True)
        kd_sum = (kd_rows * keep_f).sum() * temperature**2
        if grad is not None:  # T**2 for the loss, 1 / T for d(u)/d(logits)
            grad.mul_((keep_f * temperature)[:, None] * kd_weight)
    if ce_probs is not None:
        row_weight = valid.to(torch.float32)[:, None] * ce_weight
        if grad is None:
            grad = ce_probs.mul_(row_weight)
        else:
            grad.addcmul_(ce_probs, row_weight)
        if label_smoothing > 0:
            grad.sub_(row_weight * (label_smoothing / logits.shape[-1]))
        grad.scatter_add_(1, safe[:, None], -(1 - label_smoothing) * row_weight)
    return kd_sum, ce_sum, grad


def _functional_online_chunk(logits: torch.Tensor, teacher_logits: torch.Tensor, keep: torch.Tensor,
                             labels: torch.Tensor | None, kd_weight: torch.Tensor, ce_weight: torch.Tensor,
                             temperature: float, label_smoothing: float, gradient: Callable,
                             params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """`_online_chunk` with a closed-form divergence, written without `out=` for `torch.compile`.

    The same formulas; the gradient is written into `logits` at the end, so the compiled loops keep the
    chunk's buffer instead of returning a fresh `(C, V)` tensor. Returns `(kd_sum, ce_sum)`.
    """
    keep_f = keep.to(torch.float32)
    log_s = torch.log_softmax(logits / temperature, dim=-1)
    log_t = torch.log_softmax(teacher_logits / temperature, dim=-1)
    kd_rows, grad = gradient(log_s.clamp(min=LOG_FLOOR), log_t.clamp(min=LOG_FLOOR), **params)
    kd_sum = (kd_rows * keep_f).sum() * temperature**2
    grad = grad * ((keep_f * temperature)[:, None] * kd_weight)  # T**2 for the loss, 1 / T for d(u)/d(logits)
    ce_sum = logits.new_zeros(())
    if labels is not None:
        valid = labels.ne(-100)
        safe = torch.where(valid, labels, 0)
        log_p = log_s if temperature == 1.0 else torch.log_softmax(logits, dim=-1)
        nll = -log_p.gather(1, safe[:, None]).squeeze(1)
        if label_smoothing > 0:
            nll = (1 - label_smoothing) * nll - label_smoothing * log_p.mean(-1)
        ce_sum = (nll * valid).sum()
        row_weight = valid.to(torch.float32)[:, None] * ce_weight
        grad = grad + log_p.exp() * row_weight
        if label_smoothing > 0:
            grad = grad - row_weight * (label_smoothing / logits.shape[-1])
        grad = grad.scatter_add(1, safe[:, None], -(1 - label_smoothing) * row_weight)
    logits.copy_(grad)
    return kd_sum, ce_sum


class _CompiledChunk:
    """`_functional_online_chunk` under `torch.compile`, made once per process, eager where it cannot compile.

    Inductor turns the chunk's elementwise work into a few fused loops (on CPU vectorised C++ built by the
    system's compiler). It compiles for one chunk shape (`dynamic=False`): the last, smaller chunk is padded
    to it, so a run compiles once per loss setting. A failure to compile is logged once and the eager
    chunk is used from then on.
    """

    def __init__(self):
        self._function, self.failed, self.compile_seconds = None, False, None

    def __call__(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.failed:
            return None
        if self._function is None:
            self._function = torch.compile(_functional_online_chunk, dynamic=False)
        start = time.perf_counter()
        try:
            result = self._function(*args, **kwargs)
        except Exception as error:  # no C++ compiler, an unsupported op in a divergence, ...: eager from now on
            self.failed = True
            logger.warning(f"compile_fused_loss: torch.compile of the fused loss's chunk failed "
                           f"({type(error).__name__}: {error}); the chunks run eagerly instead.")
            return None
        if self.compile_seconds is None:
            self.compile_seconds = time.perf_counter() - start
            logger.info(f"compile_fused_loss: the fused loss's chunk compiled in {self.compile_seconds:.1f} s "
                        "(once per process and loss setting).")
        return result


_compiled_chunk = _CompiledChunk()


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype the head's matmul runs in: autocast's where it is on (as `nn.Linear` would), else the input's."""
    device_type = tensor.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return tensor.dtype


class _FusedHeadLoss(torch.autograd.Function):
    """`kd_weight * kd + ce_weight * ce` over chunks of rows, the gradient taken chunk by chunk in the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, chunk_losses, kd_weight, ce_weight, buffers):
        needs_grad = any(ctx.needs_input_grad[:3])
        dtype = _compute_dtype(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            weight_c = weight.to(dtype)
            bias_c = None if bias is None else bias.to(dtype)
            grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
                if ctx.needs_input_grad[1] else None
            grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) \
                if bias is not None and ctx.needs_input_grad[2] else None
            kd_total = hidden.new_zeros((), dtype=torch.float32)
            ce_total = hidden.new_zeros((), dtype=torch.float32)
            chunk_size = buffers.shape[0]
            for start in range(0, hidden.shape[0], chunk_size):
                rows = slice(start, start + chunk_size)
                chunk_hidden = hidden[rows].to(dtype)
                logits = _linear_into(buffers.get("student", chunk_hidden.shape[0]), chunk_hidden, weight_c, bias_c)
                kd, ce, grad_logits = chunk_losses(logits, rows, needs_grad)
                if grad_logits is not None:
                    grad_logits = grad_logits.to(dtype)  # no copy in float32
                    if grad_hidden is not None:
                        grad_hidden[rows] = (grad_logits @ weight_c).to(grad_hidden.dtype)
                    if grad_weight is not None:
                        if dtype == torch.float32:
                            grad_weight.addmm_(grad_logits.T, chunk_hidden)
                        else:
                            grad_weight.add_(grad_logits.T @ chunk_hidden)
                    if grad_bias is not None:
                        grad_bias.add_(grad_logits.float().sum(0))
                del logits, grad_logits
                kd_total += kd.detach()
                ce_total += ce.detach()
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(kd_total, ce_total)
        loss = kd_total * kd_weight + ce_total * ce_weight
        return loss, kd_total, ce_total

    @staticmethod
    def backward(ctx, grad_loss, _grad_kd, _grad_ce):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_loss.float()
        if grad_hidden is not None:
            grad_hidden = grad_hidden * scale.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * scale).to(ctx.weight_dtype)
        if grad_bias is not None:
            grad_bias = (grad_bias * scale).to(ctx.bias_dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def _as_weight(value: float | torch.Tensor) -> float | torch.Tensor:
    return value.detach().float() if torch.is_tensor(value) else float(value)


def fused_distillation_losses(
    student_hidden: torch.Tensor,
    student_head: LMHead,
    labels: torch.Tensor | None = None,
    kd_mask: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
    teacher_head: LMHead | None = None,
    cached: CachedTargets | None = None,
    temperature: float = 1.0,
    kind: str = "forward_kl",
    jsd_beta: float | None = None,
    kd_weight: float | torch.Tensor = 1.0,
    ce_weight: float | torch.Tensor = 1.0,
    label_smoothing: float = 0.0,
    chunk_size: int | None = None,
    check_teacher_logits: Callable[[torch.Tensor, torch.Tensor | None], None] | None = None,
    divergence_params: dict[str, float] | None = None,
    compile_chunks: bool = False,
    backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed soft-target and next-token losses of a student whose logits are never materialised.

    Per chunk of rows, `logits = student_hidden @ head.weight.T + head.bias` (in autocast's dtype
    where autocast is on, then float32, as the materialised path does); the soft-target loss is
    `kd_loss(logits, teacher_logits, temperature, kind, jsd_beta, reduction="sum")` against the
    teacher's logits made the same way from `teacher_hidden`, or `cached_distillation_losses`
    against `cached` top-k targets; the task loss is the summed cross-entropy on `labels` (with
    `label_smoothing` as the Trainer applies it). The gradient of `kd_weight * kd + ce_weight * ce`
    is pushed into the hidden states, the weight and the bias chunk by chunk.

    Args:
        student_hidden (`torch.Tensor` of shape `(N, H)`): the student's final hidden states, the
            rows to score (select them first; a copy of `(N, H)` is small next to `(N, V)`).
        student_head (`LMHead`): the student's output layer, weight `(V, H)`.
        labels (`torch.Tensor` of shape `(N,)`, *optional*): next-token targets, -100 where none.
        kd_mask (`torch.Tensor` of shape `(N,)`, *optional*): True where the soft-target loss counts
            (default: every row; with `cached`, the rows `cached.present` marks).
        teacher_hidden (`torch.Tensor` of shape `(N, H_t)`, *optional*): the teacher's final hidden
            states at the same rows (online distillation), with `teacher_head`.
        teacher_head (`LMHead`, *optional*): the teacher's output layer, weight `(V, H_t)`.
        cached (`CachedTargets`, *optional*): cached top-k targets instead of a teacher.
        temperature (`float`): softening temperature; the soft-target loss is scaled by T**2.
        kind (`str`): a registered divergence: `"forward_kl"`, `"reverse_kl"`, `"jsd"` or one of
            `register_divergence`.
        jsd_beta (`float`, *optional*): teacher weight of the JSD mixture (default 0.5).
        kd_weight, ce_weight (`float` or scalar `torch.Tensor`): what the two sums are multiplied
            by in the returned loss (loss weight over the normalising count).
        label_smoothing (`float`): label smoothing of the task loss, in `[0, 1)`.
        chunk_size (`int`, *optional*): rows per chunk (default: about 16M logits; 32M for cached targets
            that need no second buffer: no label smoothing, and T = 1 or, without labels, the uniform tail).
        check_teacher_logits (`Callable`, *optional*): called with each chunk's teacher logits `(C, V)`
            and the chunk's `kd_mask` rows (or None), where it may raise: a teacher whose logits are NaN
            or infinite is stopped before its soft targets reach the student.
        divergence_params (`dict`, *optional*): parameters the divergence declares, over their defaults.
        compile_chunks (`bool`): run each online chunk's elementwise work (log-softmaxes, divergence, task
            loss, gradient) through `torch.compile` where the divergence has a closed-form gradient: fused
            loops instead of a pass per operation, at a one-time compile cost per process; eager where it
            does not apply or fails to compile (logged once). With `backend="liger"`, Liger's `compiled`.
        backend (`str`): `"torch"`, the chunked PyTorch code here, or `"liger"`, Liger-Kernel's
            `LigerFusedLinearJSDLoss` (`liger_loss.py`; `pip install "hf-bigsmall[liger]"`): online soft targets
            with a built-in divergence, no label smoothing, and `kd_mask` equal to `labels != -100` where both
            are given (Liger counts the soft target at the labelled rows); anything else raises a `ValueError`.
            It takes the gradients in its forward whatever is asked, so a call without gradients (evaluation)
            runs here instead: the same values.

    Returns:
        `(loss, kd, ce)`: the weighted loss (differentiable) and the two float32 sums (detached; 0
        where there is no teacher or no labels).

    Example:

    ```python
    >>> import torch
    >>> from hf_bigsmall.distillation.fused_loss import LMHead, fused_distillation_losses
    >>> hidden, weight = torch.randn(6, 8, requires_grad=True), torch.randn(20, 8, requires_grad=True)
    >>> labels = torch.randint(0, 20, (6,))
    >>> loss, kd, ce = fused_distillation_losses(hidden, LMHead(weight), labels, teacher_hidden=torch.randn(6, 8),
    ...                                          teacher_head=LMHead(torch.randn(20, 8)), kd_weight=0.5, ce_weight=0.5)
    >>> loss.backward()
    ```
    """
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}.")
    divergence, params = resolve_divergence(kind, divergence_params, jsd_beta)
    if teacher_hidden is not None and cached is not None:
        raise ValueError("give either a teacher (teacher_hidden, teacher_head) or cached targets, not both.")
    if (teacher_hidden is None) != (teacher_head is None):
        raise ValueError("teacher_hidden and teacher_head go together: give both or neither.")
    if student_hidden.dim() != 2:
        raise ValueError(f"student_hidden must be (rows, hidden), got shape {tuple(student_hidden.shape)}.")
    rows, vocab_size = student_hidden.shape[0], student_head.weight.shape[0]
    for name, tensor in (("labels", labels), ("kd_mask", kd_mask), ("teacher_hidden", teacher_hidden)):
        if tensor is not None and tensor.shape[0] != rows:
            raise ValueError(f"{name} has {tensor.shape[0]} rows but student_hidden has {rows}.")
    if teacher_head is not None and teacher_head.weight.shape[0] != vocab_size:
        raise ValueError(f"the teacher's head has {teacher_head.weight.shape[0]} outputs but the student's has "
                         f"{vocab_size}: teacher and student must share the vocabulary.")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows or None, got {chunk_size}.")
    if chunk_size is None:
        chunk_size = FUSED_CHUNK_LOGITS // vocab_size
        in_place = cached is not None and label_smoothing == 0
        if in_place and not needs_untempered_logits(temperature, labels is not None, cached.tail_shape):
            # cached targets then work in one buffer, the logits overwritten by their log-softmax and then their
            # gradient, where the autograd path held two: twice the rows at the same peak, half the chunks
            chunk_size *= 2
        chunk_size = max(1, chunk_size)
    if backend not in FUSED_LOSS_BACKENDS:
        raise ValueError(f"backend must be one of {FUSED_LOSS_BACKENDS}, got {backend!r}.")
    if backend == "liger":
        result = _liger_losses(student_hidden, student_head, labels, kd_mask, teacher_hidden, teacher_head, cached,
                               temperature, divergence, params, kd_weight, ce_weight, label_smoothing, chunk_size,
                               check_teacher_logits, compile_chunks)
        if result is not None:
            return result
    buffers = _ChunkBuffers(max(1, min(chunk_size, rows)), vocab_size, student_hidden.device)
    with_kd = teacher_hidden is not None or cached is not None
    if cached is not None:
        kd_mask = cached.present if kd_mask is None else kd_mask & cached.present
    if with_kd and kd_mask is None:
        kd_mask = torch.ones(rows, dtype=torch.bool, device=student_hidden.device)
    valid = None if labels is None else labels.ne(-100)
    # a task loss that is only reported (weight 0) is computed without a graph
    ce_graph = not (isinstance(ce_weight, (int, float)) and ce_weight == 0)
    kd_graph = not (isinstance(kd_weight, (int, float)) and kd_weight == 0)
    teacher = None
    if teacher_head is not None:
        teacher_hidden = teacher_hidden.detach()
        teacher_dtype = _compute_dtype(teacher_hidden)
        teacher = (teacher_head.weight.detach().to(teacher_dtype),
                   None if teacher_head.bias is None else teacher_head.bias.detach().to(teacher_dtype))

    def task_loss(logits: torch.Tensor, chunk: slice) -> torch.Tensor:
        if labels is None:
            return logits.new_zeros(())
        with torch.enable_grad() if ce_graph else torch.no_grad():
            return F.cross_entropy(logits, labels[chunk], ignore_index=-100, reduction="sum",
                                   label_smoothing=label_smoothing)

    # the task loss's probabilities need a buffer of their own only beside the soft-target loss's
    shared_spare = labels is not None and teacher is not None
    compiled = compile_chunks and teacher is not None and kd_graph and divergence.gradient is not None
    if compiled:  # tensors, not floats, so that a new normalising count does not recompile
        weights = tuple(torch.as_tensor(weight, dtype=torch.float32, device=student_hidden.device)
                        for weight in (_as_weight(kd_weight), _as_weight(ce_weight)))

    def compiled_chunk(logits: torch.Tensor, teacher_logits: torch.Tensor, chunk: slice):
        """`(kd, ce, grad)` of one online chunk from the compiled loops, or None where they are not available."""
        rows, full = logits.shape[0], buffers.shape[0]
        keep, chunk_labels = kd_mask[chunk], None if labels is None else labels[chunk]
        student_buffer, teacher_buffer = buffers.get("student", full), buffers.get("teacher", full)
        if rows < full:  # the last chunk, padded to the compiled shape with rows that count nowhere
            student_buffer[rows:].zero_()
            teacher_buffer[rows:].zero_()
            keep = F.pad(keep, (0, full - rows), value=False)
            chunk_labels = None if chunk_labels is None else F.pad(chunk_labels, (0, full - rows), value=-100)
        sums = _compiled_chunk(student_buffer, teacher_buffer, keep, chunk_labels, *weights, temperature=temperature,
                               label_smoothing=label_smoothing, gradient=divergence.gradient, params=params)
        return None if sums is None else (*sums, logits)  # the gradient is written into the logits' buffer

    def chunk_losses(logits: torch.Tensor, chunk: slice, needs_grad: bool):
        """`(kd, ce, grad)` of one chunk: written-out gradients (autograd on the chunk: cache + label smoothing)."""
        if cached is None:
            teacher_logits = None
            if teacher is not None:
                teacher_logits = _linear_into(buffers.get("teacher", logits.shape[0]),
                                              teacher_hidden[chunk].to(teacher[0].dtype), *teacher)
                if check_teacher_logits is not None:  # the only place the teacher's logits ever exist
                    check_teacher_logits(teacher_logits, None if kd_mask is None else kd_mask[chunk])
                if compiled and needs_grad:
                    result = compiled_chunk(logits, teacher_logits, chunk)
                    if result is not None:
                        return result
            return _online_chunk(logits, teacher_logits, None if kd_mask is None else kd_mask[chunk],
                                 None if labels is None else labels[chunk], temperature, divergence, params,
                                 kd_weight, ce_weight, label_smoothing, needs_grad and (kd_graph or ce_graph),
                                 spare=buffers.get("spare", logits.shape[0]) if shared_spare else None)
        if label_smoothing == 0:  # the task loss from the soft-target loss's own log-softmax, all in place
            keep = kd_mask[chunk]
            return cached_losses_and_logit_gradient(
                logits, cached.ids[chunk], cached.logprobs[chunk], cached.tail[chunk], keep,
                None if labels is None else labels[chunk], temperature, divergence, params, cached.tail_shape,
                kd_weight if kd_graph else 0.0, ce_weight if ce_graph else 0.0, needs_grad,
                spare=lambda: buffers.get("spare", logits.shape[0]))
        if not needs_grad:
            return *cached_losses(logits, chunk), None
        logits.requires_grad_(True)
        with torch.enable_grad():
            kd, ce = cached_losses(logits, chunk)
            total = kd * kd_weight + ce * ce_weight
        grad = torch.autograd.grad(total, logits, allow_unused=True)[0] if total.requires_grad else None
        return kd.detach(), ce.detach(), grad

    def cached_losses(logits: torch.Tensor, chunk: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Label smoothing's task loss is a cross-entropy of its own, beside the cached loss under autograd."""
        keep, present = kd_mask[chunk], cached.present[chunk]
        pick = keep[present]  # the present rows whose target counts
        kd, _ = cached_distillation_losses(
            logits, cached.ids[chunk][present][pick], cached.logprobs[chunk][present][pick],
            cached.tail[chunk][present][pick], temperature, kind=divergence.name, mask=keep, reduction="sum",
            tail=cached.tail_shape, divergence_params=params)
        return (kd if kd_graph else kd.detach()), task_loss(logits, chunk)

    return _FusedHeadLoss.apply(student_hidden, student_head.weight, student_head.bias, chunk_losses,
                                _as_weight(kd_weight), _as_weight(ce_weight), buffers)


def _liger_losses(student_hidden, student_head, labels, kd_mask, teacher_hidden, teacher_head, cached, temperature,
                  divergence, params, kd_weight, ce_weight, label_smoothing, chunk_size, check_teacher_logits,
                  compiled) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """`fused_distillation_losses` by Liger-Kernel, or None where the built-in path gives the same values cheaper."""
    soft_targets = "cache" if cached is not None else "teacher" if teacher_head is not None else "none"
    reason = liger_setting_refusal(divergence.name, label_smoothing, soft_targets)
    if reason is not None:
        raise ValueError(f"backend='liger' cannot compute this loss: {reason}. Use backend='torch'.")
    require_liger_kernel()
    parameters = (student_hidden, student_head.weight, student_head.bias)
    if not (torch.is_grad_enabled() and any(tensor is not None and tensor.requires_grad for tensor in parameters)):
        return None  # Liger takes the gradients in its forward: without them the built-in chunks serve
    rows = kd_mask if kd_mask is not None else torch.ones(student_hidden.shape[0], dtype=torch.bool,
                                                          device=student_hidden.device)
    if labels is not None and not torch.equal(labels.ne(-100), rows):
        raise ValueError("backend='liger' counts the soft-target loss exactly at the labelled rows: give kd_mask "
                         "equal to labels != -100 (or no labels), or use backend='torch'.")
    if not bool(rows.all()):  # rows that count nowhere are left out
        if not bool(rows.any()):
            return None
        index = rows.nonzero().squeeze(1)
        student_hidden, teacher_hidden = student_hidden.index_select(0, index), teacher_hidden.index_select(0, index)
        labels = None if labels is None else labels.index_select(0, index)
    weights = [float(weight) for weight in (_as_weight(kd_weight), _as_weight(ce_weight))]
    return liger_distillation_losses(
        student_hidden, student_head.weight, student_head.bias, teacher_hidden, teacher_head.weight,
        teacher_head.bias, labels, temperature, liger_beta(divergence.name, params), *weights, chunk_size,
        compiled=compiled, check_teacher_logits=check_teacher_logits)


# transforms some architectures apply to the head's output (Gemma 2/3, Cohere, Granite): the fused
# loss computes `hidden @ weight.T + bias` alone, so these models keep the materialised logits
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def lm_head_refusal(model: torch.nn.Module) -> str | None:
    """Why the fused loss cannot stand in for `model`'s logits, or None when it can.

    It can when the model's forward takes `logits_to_keep` (so the full logits can be skipped), its
    output layer is an `nn.Linear`, no known transform follows the head, and on a few tokens its
    logits equal the output layer applied to its last hidden state (`hidden_states[-1]`).
    """
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return "takes no `logits_to_keep` in its forward, so its logits cannot be skipped"
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        return f"has no nn.Linear output layer (get_output_embeddings() is {type(head).__name__})"
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in _LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value is not None and value is not False and value != 1:
            return f"transforms its logits after the output layer (config.{name}={value})"
    vocab_size = head.weight.shape[0]
    input_ids = (torch.arange(1, 6, device=head.weight.device) % vocab_size)[None]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(input_ids=input_ids, output_hidden_states=True, use_cache=False)
            expected = head(outputs.hidden_states[-1]).float()
    except Exception as error:  # e.g. a model that needs more inputs: it keeps the materialised path
        return f"could not be checked on a few tokens ({type(error).__name__}: {error})"
    finally:
        model.train(was_training)
    logits = outputs.logits.float()
    tolerance = 1e-4 if head.weight.dtype == torch.float32 else 2e-2
    # a broken model's NaN/inf logits are compared as they are: the loss's own check reports them
    finite = expected[torch.isfinite(expected)]
    scale = float(finite.abs().max().clamp(min=1)) if finite.numel() else 1.0
    if logits.shape != expected.shape or not torch.allclose(logits, expected, rtol=tolerance,
                                                            atol=tolerance * scale, equal_nan=True):
        return "computes logits that are not its output layer applied to its last hidden state"
    return None
