"""The fused LM-head distillation loss computed by Liger-Kernel (`fused_loss_backend="liger"`).

Liger-Kernel's `LigerFusedLinearJSDLoss` (`liger_kernel.chunked_loss`) takes the student's and the teacher's
final hidden states and output-layer weights (and biases), makes the logits a chunk of rows at a time, and
returns `weight_hard_loss * CE + weight_soft_loss * JSD_beta(student / T, teacher / T)`, each a sum over the
rows divided by the number of rows (from liger-kernel 0.7, the rows whose label is not `ignore_index`), with
the gradients to the student's hidden states, weight and bias taken in its forward pass. Its generalised JSD
mixes `m = beta * teacher + (1 - beta) * student`, as ours does, and is the forward KL at `beta = 0` and the
reverse KL at `beta = 1`, so the three built-in divergences map onto it; the CE is taken on the unsoftened
logits, without label smoothing; the soft-target loss is not scaled by `T**2`.

Here every row given to it counts in both losses (the rows carry a label where there are labels, and the
soft-target loss where there are none), so its normalising count is the number of rows in every release
since 0.6.4, and the weights passed to it are ours times that count (times `T**2` for the soft target):
the returned loss and gradients are those of `fused_distillation_losses` up to float rounding.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable

import torch
import torch.nn.functional as F
from packaging import version

from ..utils.import_utils import _is_package_available

LIGER_EXTRA = "liger"
# `return_soft_hard_loss` (the two parts of the loss, which the trainer logs) came in liger-kernel 0.6.4
LIGER_MIN_VERSION = "0.6.4"
# our built-in divergence -> the beta of Liger's generalised JSD that is it (None: our `jsd_beta`)
LIGER_DIVERGENCES = {"forward_kl": 0.0, "reverse_kl": 1.0, "jsd": None}


def liger_kernel_version() -> str | None:
    """The installed liger-kernel's version, or None where it is not installed."""
    if not _is_package_available("liger_kernel"):
        return None
    try:
        return importlib.metadata.version("liger-kernel")
    except importlib.metadata.PackageNotFoundError:  # importable but not installed by pip (a source tree)
        return "unknown"


def _recent_enough(installed: str) -> bool:
    return installed == "unknown" or version.parse(installed) >= version.parse(LIGER_MIN_VERSION)


def is_liger_kernel_available() -> bool:
    """Whether a liger-kernel recent enough for `fused_loss_backend="liger"` is installed."""
    installed = liger_kernel_version()
    return installed is not None and _recent_enough(installed)


def require_liger_kernel() -> None:
    """Raise an `ImportError` that names the extra to install when liger-kernel is missing or too old."""
    installed = liger_kernel_version()
    hint = f'pip install "hf-bigsmall[{LIGER_EXTRA}]"'
    if installed is None:
        raise ImportError(f"fused_loss_backend='liger' needs liger-kernel, which is not installed: run `{hint}` "
                          "(it brings Triton), or set fused_loss_backend='torch' for the built-in fused loss.")
    if not _recent_enough(installed):
        raise ImportError(f"fused_loss_backend='liger' needs liger-kernel >= {LIGER_MIN_VERSION}, found {installed}: "
                          f"run `{hint}`, or set fused_loss_backend='torch' for the built-in fused loss.")


def liger_setting_refusal(kd_loss: str, label_smoothing: float, soft_targets: str) -> str | None:
    """Why Liger's fused loss cannot compute these settings' loss, or None when it can.

    `soft_targets` is where they come from: `"teacher"` (online), `"cache"` (a teacher-logit cache's top-k)
    or `"none"` (the task loss alone).
    """
    if soft_targets == "none":
        return ("there are no soft targets (alpha_kd=0, the task loss alone): Liger-Kernel's fused distillation "
                "loss needs a teacher")
    if soft_targets == "cache":
        return ("the soft targets come from a teacher-logit cache: Liger-Kernel's fused distillation loss needs "
                "the teacher's hidden states and output layer")
    if kd_loss not in LIGER_DIVERGENCES:
        return (f"kd_loss={kd_loss!r} is not one Liger-Kernel computes (its generalised JSD gives "
                f"{', '.join(repr(name) for name in LIGER_DIVERGENCES)})")
    if label_smoothing > 0:
        return (f"label_smoothing_factor={label_smoothing}: Liger-Kernel's fused distillation loss has no label "
                "smoothing")
    return None


def liger_beta(kind: str, params: dict) -> float:
    """The beta of Liger's generalised JSD that gives our divergence `kind`."""
    beta = LIGER_DIVERGENCES[kind]
    return float(params["beta"]) if beta is None else beta


def liger_distillation_losses(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    student_bias: torch.Tensor | None,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    teacher_bias: torch.Tensor | None,
    labels: torch.Tensor | None,
    temperature: float,
    beta: float,
    kd_weight: float,
    ce_weight: float,
    chunk_size: int,
    compiled: bool = False,
    check_teacher_logits: Callable[[torch.Tensor, torch.Tensor | None], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`kd_weight * kd + ce_weight * ce` over rows that all count, by Liger-Kernel's `LigerFusedLinearJSDLoss`.

    Args:
        student_hidden (`torch.Tensor` of shape `(N, H)`), student_weight (`(V, H)`), student_bias (`(V,)` or
            None): the student's final hidden states and output layer.
        teacher_hidden (`torch.Tensor` of shape `(N, H_t)`), teacher_weight (`(V, H_t)`), teacher_bias: the
            teacher's, at the same rows.
        labels (`torch.Tensor` of shape `(N,)`, *optional*): next-token targets, none of them -100 (every row
            counts in the task loss); None for the soft-target loss alone.
        temperature (`float`): softening temperature; the soft-target loss is scaled by T**2 here.
        beta (`float`): Liger's JSD beta (0: forward KL, 1: reverse KL).
        kd_weight, ce_weight (`float`): what the two sums are multiplied by in the returned loss.
        chunk_size (`int`): Liger's `chunk_size`: it splits the rows into `max(1, N // chunk_size)` chunks.
        compiled (`bool`): Liger's `compiled` (`torch.compile` of its per-chunk step).
        check_teacher_logits (`Callable`, *optional*): called with each chunk's teacher logits, as by
            `fused_distillation_losses`, but only when the soft-target loss comes out NaN or infinite (Liger
            never shows the logits), so that a broken teacher is named as on the built-in path.

    Returns:
        `(loss, kd, ce)` as `fused_distillation_losses` returns them.
    """
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    rows = student_hidden.shape[0]
    # Liger divides both parts by its count of rows (all of them count here) and does not scale by T**2. The
    # weights go in as tensors: under `compiled` a float that changes from step to step (the normalising count
    # does) would be a new constant of the compiled chunk, recompiled every step up to dynamo's limit
    hard_weight, soft_weight = torch.tensor([ce_weight * rows if labels is not None else 0.0,
                                             kd_weight * temperature**2 * rows], device=student_hidden.device)
    liger_loss = LigerFusedLinearJSDLoss(
        weight_hard_loss=hard_weight, weight_soft_loss=soft_weight,
        beta=beta, ignore_index=-100, temperature=temperature, compiled=compiled, chunk_size=chunk_size,
        return_soft_hard_loss=True,
    )
    # without labels every row carries the soft target alone: a valid placeholder label, the task loss weighted 0
    targets = labels if labels is not None else torch.zeros(rows, dtype=torch.long, device=student_hidden.device)
    loss, soft, hard = liger_loss(student_hidden, student_weight, teacher_hidden.detach(), teacher_weight.detach(),
                                  targets, student_bias, None if teacher_bias is None else teacher_bias.detach())
    kd = soft.detach().float() * (rows * temperature**2)
    ce = hard.detach().float() * rows if labels is not None else kd.new_zeros(())
    if not bool(torch.isfinite(kd)):  # one check on the host per step
        _check_teacher_after_non_finite(teacher_hidden, teacher_weight, teacher_bias, chunk_size, check_teacher_logits)
    return loss, kd, ce


def _check_teacher_after_non_finite(teacher_hidden: torch.Tensor, teacher_weight: torch.Tensor,
                                    teacher_bias: torch.Tensor | None, chunk_size: int,
                                    check_teacher_logits: Callable | None) -> None:
    """After a NaN or infinite soft-target loss, raise where the teacher's logits are the cause.

    NaN or +inf teacher logits get `check_teacher_logits`'s error, as on the built-in path. A -inf among finite
    ones (a token the teacher rules out, e.g. a masked vocabulary entry) is valid there, but Liger's divergences
    give NaN for it: that is refused with the fallback. A NaN student is left to show in the loss, as elsewhere.
    """
    with torch.no_grad():
        for start in range(0, teacher_hidden.shape[0], chunk_size):
            logits = F.linear(teacher_hidden[start:start + chunk_size], teacher_weight, teacher_bias).float()
            if check_teacher_logits is not None:  # every row given here counts
                check_teacher_logits(logits, torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device))
            if bool(torch.isneginf(logits).any()):
                raise ValueError(
                    "the teacher rules tokens out with -inf logits, for which Liger-Kernel's divergences give NaN "
                    "(fused_loss_backend='liger'): set fused_loss_backend='torch', whose fused loss takes them as "
                    "the materialised loss does.")
