"""`DistillationTrainer`: a `transformers.Trainer` that adds a frozen teacher's soft targets."""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, Trainer
from transformers.trainer_utils import has_length
from transformers.utils import logging

from ..losses import attention_loss, hidden_state_loss, invalid_logit_rows, kd_loss, target_mask
from ..trainer import BigSmallTrainerMixin
from .cache import (
    CACHE_COLUMNS,
    TARGET_COUNTS,
    TeacherLogitsCollator,
    cache_record,
    cached_columns,
    entries_per_target,
    load_teacher_logits,
    read_manifest,
    same_cache,
)
from .cached_loss import cached_distillation_losses
from .config import DistillationConfig
from .data_checks import check_dataset, model_columns, trainer_collator
from .fused_loss import CachedTargets, LMHead, fused_distillation_losses, lm_head_refusal
from .liger_loss import LIGER_MIN_VERSION, is_liger_kernel_available
from .record import DistillationRecord
from .teacher import (
    check_layer_map,
    check_teacher_student,
    default_layer_map,
    head_kind,
    load_teacher,
    prepare_deepspeed_teacher,
    teacher_name,
)

logger = logging.get_logger(__name__)

PROJECTION_NAME = "distillation_projection"
# logits per chunk of the soft-target loss when `kd_chunk_size` is unset: 16 MB of float32
KD_CHUNK_LOGITS = 2**22
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float, chunk_rows: int) -> torch.Tensor:
    """Summed float32 cross-entropy over the labels that are not -100, a chunk of rows at a time.

    Label smoothing as the Trainer's `LabelSmoother` applies it: (1 - eps) * nll + eps * the mean over
    classes of -log p, over the positions that count (Szegedy et al. 2016). The float32 copy of the
    logits is one chunk's, not the whole batch's.
    """
    rows, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    if rows.dtype == torch.float32 or rows.shape[0] <= chunk_rows:
        return F.cross_entropy(rows.float(), flat_labels, ignore_index=-100, reduction="sum", label_smoothing=smoothing)
    total = rows.new_zeros((), dtype=torch.float32)
    for start in range(0, rows.shape[0], chunk_rows):
        chunk = slice(start, start + chunk_rows)
        total = total + F.cross_entropy(rows[chunk].float(), flat_labels[chunk], ignore_index=-100, reduction="sum",
                                        label_smoothing=smoothing)
    return total


def _check_same_cache(teacher_logits: str | os.PathLike, carried: dict | None) -> None:
    """Refuse `teacher_logits` naming another cache than the one whose columns the train dataset carries."""
    named = read_manifest(teacher_logits)
    if carried is not None and same_cache(carried, named):
        return
    carried_from = (carried or {}).get("path", "an unknown cache")
    raise ValueError(
        f"teacher_logits={str(teacher_logits)!r} names another cache than the one whose columns train_dataset "
        f"already carries ({carried_from}): pass the plain train dataset with teacher_logits, or unset "
        "teacher_logits to train from the columns the dataset carries."
    )


def _scaler(num_items_in_batch: torch.Tensor | int | None):
    """`scale(total, local_count)`: a summed loss over the items `num_items_in_batch` counts (when the
    Trainer counted them, so GA=2 with batch b gives exactly the gradient of GA=1 with batch 2b), else
    over the batch's own `local_count`."""

    def scale(total: torch.Tensor, local_count) -> torch.Tensor:
        denominator = local_count if num_items_in_batch is None else num_items_in_batch
        if torch.is_tensor(denominator):
            return total / denominator.clamp(min=1).to(total.device)
        return total / max(denominator, 1)

    return scale


def _row_lengths(dataset, length_column: str, processing_class=None) -> list[int] | None:
    """Each row's length: its `length_column`, else the length of its model input (`input_ids`), read from the Arrow
    table without decoding rows where it can; None when the dataset has neither."""
    names = getattr(dataset, "column_names", None) or []
    if length_column in names:  # read past a format that leaves the column out (set_format(columns=[...]))
        column = dataset.with_format(None)[length_column] if hasattr(dataset, "with_format") else dataset[length_column]
        return [int(length) for length in column]
    input_names = getattr(processing_class, "model_input_names", None) or ["input_ids"]
    column = input_names[0] if input_names[0] in names else "input_ids" if "input_ids" in names else None
    if column is not None:
        try:
            import pyarrow.compute as pc

            table = dataset.with_format("arrow")[:]  # the rows in their order, a select/shuffle view included
            return pc.list_value_length(table[column]).to_pylist()
        except Exception:  # noqa: BLE001 - an unusual storage: read the rows
            return [len(ids) for ids in dataset[column]]
    if names or not has_length(dataset):
        return None
    try:  # a map-style dataset of dicts
        return [len(dataset[index][input_names[0]]) for index in range(len(dataset))]
    except (KeyError, TypeError, IndexError):
        return None


class DistillationTrainer(BigSmallTrainerMixin, Trainer):
    r"""
    Trains a student on its task loss plus the soft targets of a frozen teacher (Hinton et al. 2015).

    The loss is `compute_loss`'s; `log` and `evaluation_loop` call the Trainer's own and only add
    to what it reports. It includes [`BigSmallTrainerMixin`], so the kit's callbacks log through it,
    measure its evaluations, save masks with `save_model`, and `create_model_card` (also run by
    `push_to_hub`) writes the kit's card: teacher as `base_model`, distillation and pruning
    settings, `co2_eq_emissions`. The training loop, callbacks, checkpoints,
    gradient accumulation, DDP, FSDP and DeepSpeed are the `Trainer`'s own. The teacher is frozen, kept in
    `eval()` and run under `torch.no_grad()`; it is prepared by accelerate in evaluation mode (mixed
    precision and device placement, never a DDP wrapper). Under DeepSpeed ZeRO-3 it is sharded by a
    DeepSpeed inference engine, under ZeRO-1/2 and FSDP each GPU holds one full copy (cast it with
    `teacher_dtype="bfloat16"` to halve that).

    For causal LMs the token-level losses are by default computed with the output layer fused into
    them (`fused_lm_head_loss`, see `fused_loss.py`): the `[tokens x vocabulary]` logits of the
    student and the teacher are made a chunk of tokens at a time and never held whole; calls that
    ask for the logits (`return_outputs=True`, evaluation) get them from the model as usual.
    `fused_loss_backend="liger"` (or `use_liger_kernel=True`) has Liger-Kernel compute that fused loss
    (`liger_loss.py`).

    Each loss part is normalised by `num_items_in_batch` (sequences for classification, target
    tokens for causal LM), so gradients with gradient accumulation equal those of one big batch; in
    evaluation each batch is a mean over the items it holds, counted by the same rule.
    The parts are logged unweighted as `loss_kd`, `loss_ce`, `loss_hidden` and `loss_attention`,
    averaged over the logging interval like `loss`.

    When `alpha_hidden > 0` and the widths differ, a learned `nn.Linear(student_width,
    teacher_width)` per mapped layer is added to the student as `model.distillation_projection`, so
    the optimizer, DDP, checkpoints and resuming handle it; it is saved with the student but is not
    part of its architecture: `from_pretrained` drops it (with a warning listing the unused keys).

    Args:
        model (`PreTrainedModel`): the student, with a task head (e.g. from `make_student`).
        teacher_model (`PreTrainedModel` or `str`, *optional*): the teacher, or a folder / Hub id / embedded
            asset name to load it from with the student's kind of head. `None` distils from a
            teacher-logit cache instead: a `train_dataset` from `load_teacher_logits` (or
            `args.teacher_logits`, the cache folder); only `alpha_kd` and `alpha_ce` apply, and an
            eval dataset without cached columns reports the task loss alone.
        args (`DistillationConfig`): training and loss settings.
        **kwargs: everything else `transformers.Trainer` takes (datasets, collator, callbacks...).

    Example:

    ```python
    >>> from hf_bigsmall import DistillationConfig, DistillationTrainer, make_student
    >>> student = make_student(teacher, num_layers=3)
    >>> args = DistillationConfig(output_dir="student", temperature=2.0, alpha_kd=0.5, alpha_ce=0.5)
    >>> trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args,
    ...                               train_dataset=train_dataset, processing_class=tokenizer)
    >>> trainer.train()
    ```
    """

    def __init__(
        self,
        model: PreTrainedModel | None = None,
        teacher_model: PreTrainedModel | str | os.PathLike | None = None,
        args: DistillationConfig | None = None,
        **kwargs: Any,
    ):
        if not isinstance(args, DistillationConfig):
            raise TypeError(f"args must be a DistillationConfig, got {type(args).__name__}.")
        if model is None:
            raise ValueError("DistillationTrainer needs a student (model=).")
        # teacher_model=None: the soft targets come from a teacher-logit cache (see _init_cached_teacher)
        self.teacher_logits_record: dict | None = None
        if teacher_model is not None and getattr(args, "teacher_logits", None):
            raise ValueError(f"both teacher_model and teacher_logits={args.teacher_logits!r} were given: pass "
                             "teacher_model=None to distil from the cache, or unset teacher_logits to run the teacher.")
        if teacher_model is None:
            self._init_cached_teacher(model, args, kwargs)
        elif isinstance(teacher_model, (str, os.PathLike)):
            teacher_model = load_teacher(teacher_model, model)
        if teacher_model is not None:
            check_teacher_student(teacher_model, model)

        self.layer_map: list[int] | None = None
        self._length_groups_sampler = None  # set by _get_train_sampler with shuffle_length_groups
        if teacher_model is not None and (args.layer_map is not None or args.alpha_hidden > 0 or args.alpha_attention > 0):
            self.layer_map = args.layer_map or default_layer_map(model, teacher_model.config.num_hidden_layers)
            check_layer_map(self.layer_map, model, teacher_model)
        if args.alpha_attention > 0:
            # fused attention kernels (sdpa, flash) never materialise the attention probabilities
            for network in (model, teacher_model):
                network.set_attn_implementation("eager")
        if args.alpha_hidden > 0:
            self._add_projection(model, teacher_model)

        if teacher_model is not None:
            teacher_model.requires_grad_(False)
            teacher_model.eval()
            if args.teacher_dtype in _DTYPES:
                teacher_model.to(_DTYPES[args.teacher_dtype])
            self._record_settings(model, teacher_model, args)

        # before the Trainer makes output_dir; the first batch of each dataset, as the Trainer will collate it
        collator = trainer_collator(kwargs.get("data_collator"), kwargs.get("processing_class"))
        columns = model_columns(model, args.label_names) if args.remove_unused_columns else None
        for split, batch_size in (("train_dataset", args.per_device_train_batch_size),
                                  ("eval_dataset", args.per_device_eval_batch_size)):
            datasets = kwargs.get(split)
            for dataset in datasets.values() if isinstance(datasets, dict) else [datasets]:
                check_dataset(dataset, split, model, teacher_model, args.alpha_ce, collator, batch_size, columns)
        super().__init__(model=model, args=args, **kwargs)
        # Our loss divides by `num_items_in_batch`; this makes the Trainer count it for every model
        # (it otherwise counts only for models whose forward takes loss kwargs).
        self.model_accepts_loss_kwargs = True
        if self.is_fsdp_enabled and hasattr(model, PROJECTION_NAME):
            # FSDP reshards the student's parameters after its forward; the projection runs after it
            raise ValueError(
                "alpha_hidden with a student narrower than the teacher needs a learned projection, which "
                "FSDP cannot run outside the student's forward: give the student the teacher's width, "
                "set alpha_hidden=0, or use DeepSpeed (accelerate_configs/deepspeed_zero3.yaml)."
            )
        if teacher_model is None:  # the cached columns travel beside whatever the collator makes
            record = self.teacher_logits_record
            self.data_collator = TeacherLogitsCollator(self.data_collator, entries_per_target(record),
                                                       record["logprob_dtype"], record.get("id_dtype"))
        self.teacher_model = self._prepare_teacher(teacher_model) if teacher_model is not None else None
        # whether position t predicts token t + 1 (a decoder-only causal LM), decided from the head:
        # the Trainer's own rule reads `loss_type`, which GPT2LMHeadModel leaves unset
        self.shifts_labels = head_kind(model) == "AutoModelForCausalLM" and not model.config.is_encoder_decoder
        # a sequence classifier's items are its rows: unlabelled rows (label -100, a transfer set) still
        # carry the soft-target loss, so they count in the denominator of both losses
        self.counts_rows = head_kind(model) == "AutoModelForSequenceClassification"
        self._loss_parts: dict[str, torch.Tensor] = {}
        self._loss_parts_since_step = 0
        self._eval_parts: dict[str, torch.Tensor] = {}  # per-batch means x sequences, over an evaluation
        self._eval_sequences = 0
        self._fused_refusal = self._fused_head_refusal(model)
        if self._fused_refusal is not None and args.fused_lm_head_loss:
            raise ValueError(f"fused_lm_head_loss=True but {self._fused_refusal}: leave fused_lm_head_loss unset (or "
                             "False) to compute the losses from the materialised logits.")
        if self._fused_refusal is not None and self.shifts_labels and args.fused_lm_head_loss is None:
            logger.info(f"Token-level losses from materialised logits: {self._fused_refusal}.")
        self._fused_backend = self._fused_loss_backend()

    # ------------------------------------------------------------------------------------------
    # set-up
    # ------------------------------------------------------------------------------------------
    def _add_projection(self, student: PreTrainedModel, teacher: PreTrainedModel) -> None:
        student_width = student.config.get_text_config().hidden_size
        teacher_width = teacher.config.get_text_config().hidden_size
        if student_width == teacher_width or hasattr(student, PROJECTION_NAME):
            return
        projection = nn.ModuleList(nn.Linear(student_width, teacher_width) for _ in self.layer_map)
        student.add_module(PROJECTION_NAME, projection.to(next(student.parameters()).device))

    def _record_settings(self, student: PreTrainedModel, teacher: PreTrainedModel, args: DistillationConfig) -> None:
        record = dict(getattr(student.config, "distillation", None) or {})
        record.setdefault("teacher", teacher_name(teacher))
        record.update(args.loss_settings())
        record["layer_map"] = self.layer_map
        record["hidden_projection"] = hasattr(student, PROJECTION_NAME)
        DistillationRecord.from_dict(record).write(student.config)

    def _prepare_teacher(self, teacher: PreTrainedModel) -> nn.Module:
        if self.is_deepspeed_enabled:
            return prepare_deepspeed_teacher(teacher, self.accelerator)
        if self.is_fsdp_enabled:
            # accelerate leaves device placement to FSDP, which never sees the teacher
            teacher = teacher.to(self.accelerator.device)
        return self.accelerator.prepare_model(teacher, evaluation_mode=True)

    # ------------------------------------------------------------------------------------------
    # loss
    # ------------------------------------------------------------------------------------------
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        if not model.training:
            # `prediction_step` counts the items itself by the Trainer's rule (GPT-2's labels unshifted,
            # padding that kept its labels, labelled classifier rows only), never through
            # `get_batch_samples`: an evaluation batch is a mean over the items target_mask counts in it
            num_items_in_batch = None
        if self._use_fused_loss(inputs, return_outputs):
            return self._fused_compute_loss(model, inputs, num_items_in_batch)
        return self._materialised_compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The Trainer's step, except that an evaluation that keeps no logits takes the fused loss.

        The Trainer asks `compute_loss` for the outputs even when it drops them (`prediction_loss_only`),
        which would make a causal LM's `[tokens x vocabulary]` logits: when the fused path serves this
        model and the batch has its labels, the loss is computed without them (the same value).
        """
        has_labels = bool(self.label_names) and all(inputs.get(name) is not None for name in self.label_names)
        if not (prediction_loss_only and has_labels and self._use_fused_loss(inputs, return_outputs=False)):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, return_outputs=False)
        return loss.detach().mean(), None, None

    # the materialised path: the model makes its logits, the losses take them -----------------------
    def _materialised_compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool, num_items_in_batch):
        args = self.args
        labels = inputs.get("labels")
        model_inputs = self._model_inputs(inputs)
        extra = self._feature_outputs()
        outputs = model(**model_inputs, **extra)
        student_logits, target_labels, row_mask, position_mask = self._prediction_targets(
            outputs.logits, labels, inputs.get("attention_mask"))
        # normalise by the items of the whole accumulated batch when the Trainer counted them, so
        # GA=2 with batch b gives exactly the gradient of GA=1 with batch 2b
        normalised = num_items_in_batch is not None and labels is not None
        scale = _scaler(num_items_in_batch if normalised else None)
        # every part counts the same items (target_mask's positions, or sequences): so does the Trainer
        local_rows = row_mask.sum() if row_mask is not None else student_logits.shape[0]
        self._check_labels(labels)

        # from a token-level cache the task loss comes out of the soft-target loss's own log-softmax
        shared_ce = (self.teacher_model is None and args.alpha_kd > 0 and labels is not None
                     and args.label_smoothing_factor == 0 and "teacher_topk_ids" in inputs)
        parts: dict[str, torch.Tensor] = {}
        if labels is not None and not shared_ce:
            parts["loss_ce"] = scale(self._task_loss(student_logits, target_labels), local_rows)
        if self.teacher_model is None:
            parts.update(self._cached_parts(model, student_logits, inputs, target_labels if shared_ce else None,
                                            scale, local_rows))
        elif self._runs_teacher():
            teacher_outputs = self._teacher_outputs(model_inputs, extra)
            if args.alpha_kd > 0:
                kd = self._online_kd(student_logits, teacher_outputs.logits, labels, row_mask)
                parts["loss_kd"] = scale(kd, local_rows)
            parts.update(self._feature_parts(model, outputs, teacher_outputs, position_mask, row_mask, scale))
        loss = self._weighted_sum(parts)
        return self._finish_loss(model, loss, parts, normalised, outputs.logits.shape[0], outputs, return_outputs)

    @staticmethod
    def _model_inputs(inputs: dict) -> dict:
        """What the models' forward takes: the batch less its labels and the cached teacher columns.

        Also less `skip_logits`, which the Trainer's `prediction_step` adds under `use_liger_kernel`: the losses
        here need the logits, and a student whose forward Liger patched refuses it without labels.
        """
        return {k: v for k, v in inputs.items()
                if k not in ("labels", "num_items_in_batch", "skip_logits", TARGET_COUNTS, *CACHE_COLUMNS)}

    def _feature_outputs(self) -> dict[str, bool]:
        """The extra outputs the hidden-state and attention losses need from both models."""
        extra = {}
        if self.args.alpha_hidden > 0:
            extra["output_hidden_states"] = True
        if self.args.alpha_attention > 0:
            extra["output_attentions"] = True
        return extra

    def _check_labels(self, labels: torch.Tensor | None) -> None:
        if labels is None and self.args.alpha_ce > 0:
            raise ValueError("alpha_ce > 0 needs `labels` in the batch; set alpha_ce=0 for label-free distillation.")

    def _runs_teacher(self) -> bool:
        """Whether a loss part needs the online teacher's outputs."""
        args = self.args
        needed = args.alpha_kd > 0 or args.alpha_hidden > 0 or args.alpha_attention > 0
        return self.teacher_model is not None and needed

    def _teacher_outputs(self, model_inputs: dict, extra: dict):
        """The frozen teacher's outputs on the batch, in `eval()` and without a graph."""
        self.teacher_model.eval()
        with torch.no_grad():
            return self.teacher_model(**model_inputs, **extra)

    def _task_loss(self, student_logits: torch.Tensor, target_labels: torch.Tensor) -> torch.Tensor:
        """The summed task loss; with alpha_ce = 0 it is only reported: no graph, so no backward pass
        over the logits for a gradient that would be multiplied by zero."""
        args = self.args
        with torch.no_grad() if args.alpha_ce == 0 else nullcontext():
            return _summed_cross_entropy(student_logits, target_labels, args.label_smoothing_factor,
                                         max(1, KD_CHUNK_LOGITS // student_logits.shape[-1]))

    def _online_kd(self, student_logits, teacher_logits, labels, row_mask) -> torch.Tensor:
        """The summed soft-target loss against the online teacher's (checked) logits."""
        args = self.args
        teacher_logits = self._prediction_targets(teacher_logits, labels, None)[0]
        self._check_teacher_logits(teacher_logits, row_mask)
        return kd_loss(
            student_logits, teacher_logits, args.temperature, kind=args.kd_loss, mask=row_mask, reduction="sum",
            chunk_size=args.kd_chunk_size or max(1, KD_CHUNK_LOGITS // student_logits.shape[-1]),
            divergence_params=args.divergence_params(),
        )

    def _cached_parts(self, model, student_logits, inputs, shared_labels, scale, local_rows) -> dict[str, torch.Tensor]:
        """`loss_kd` (and, with `shared_labels`, `loss_ce`) against the batch's cached teacher targets."""
        if self.args.alpha_kd > 0 and any(name in inputs for name in CACHE_COLUMNS):
            kd, ce = self._cached_kd(student_logits, inputs, shared_labels)
            parts = {"loss_kd": scale(kd, local_rows)}
            if ce is not None:
                parts["loss_ce"] = scale(ce, local_rows)
            return parts
        if self.args.alpha_kd > 0 and model.training:
            # a training batch without its cached targets would silently train on the task loss alone
            raise ValueError(
                f"this training batch carries none of the cached teacher columns {list(CACHE_COLUMNS)}: a data "
                "collator or column filter dropped them; pass remove_unused_columns=False or a collator that "
                "keeps them."
            )
        return {}

    def _weighted_sum(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        args = self.args
        weights = {"loss_kd": args.alpha_kd, "loss_ce": args.alpha_ce,
                   "loss_hidden": args.alpha_hidden, "loss_attention": args.alpha_attention}
        return sum(weights[name] * value for name, value in parts.items())

    def _feature_parts(self, model, outputs, teacher_outputs, position_mask, row_mask, scale) -> dict[str, torch.Tensor]:
        """The hidden-state and attention-map losses, summed in the units `scale` divides by."""
        parts = {}
        if self.args.alpha_hidden > 0:
            per_position = self._hidden_per_position(model, outputs.hidden_states, teacher_outputs.hidden_states)
            parts["loss_hidden"] = self._reduce_positions(per_position, position_mask, row_mask, scale)
        if self.args.alpha_attention > 0:
            per_position = torch.stack([
                attention_loss(outputs.attentions[s], teacher_outputs.attentions[t], reduction="none")
                for s, t in enumerate(self.layer_map)
            ]).mean(0)
            parts["loss_attention"] = self._reduce_positions(per_position, position_mask, row_mask, scale)
        return parts

    def _finish_loss(self, model, loss, parts, normalised, sequences, outputs, return_outputs):
        """Undo DDP's average where the Trainer counted items over processes, record the parts, return."""
        args = self.args
        if normalised and args.average_tokens_across_devices:
            # num_items_in_batch then counts the items of every process, and DDP averages the
            # gradients over processes: undo that average (as Trainer.compute_loss does)
            loss = loss * self.accelerator.num_processes
            parts = {name: value * self.accelerator.num_processes for name, value in parts.items()}
        # tell training_step whether to divide by the accumulation steps: since v5 models' forward
        # takes **kwargs, the Trainer would otherwise take a per-batch mean as already scaled and
        # double the gradient at GA=2 (transformers < 5.19 reads model_accepts_loss_kwargs instead)
        self.loss_is_scaled_for_ga = normalised
        if model.training:
            self._accumulate_parts(parts, normalised)
        else:  # weighted by the batch's sequences, as the Trainer weighs eval_loss
            for name, value in parts.items():
                self._eval_parts[name] = self._eval_parts.get(name, 0.0) + value.detach().float() * sequences
            self._eval_sequences += sequences
        return (loss, outputs) if return_outputs else loss

    def _check_teacher_logits(self, teacher_logits: torch.Tensor, row_mask: torch.Tensor | None) -> None:
        """Stop at the first teacher output with NaN or infinite logits where the loss is taken.

        A NaN soft target trains the student to NaN weights while the clamped loss can still read 0.
        """
        invalid = invalid_logit_rows(teacher_logits)
        if row_mask is not None:
            invalid = invalid & row_mask
        if bool(invalid.any()):  # one small reduction per step, checked on the host
            if row_mask is None:
                where = f"sequences of this batch (first {invalid.nonzero().flatten().tolist()[:5]})"
            elif invalid.dim() == 2:
                where = f"(sequence, position) pairs of this batch (first {invalid.nonzero().tolist()[:5]})"
            else:  # the fused head's flattened scored positions, one chunk at a time: no batch indices to give
                where = "scored positions of one chunk of this batch"
            raise ValueError(
                f"the teacher's logits are NaN or infinite at {int(invalid.sum())} {where} "
                f"at step {self.state.global_step}: the soft targets would make the student's weights "
                "NaN. Check the teacher (a float16 teacher can overflow: teacher_dtype='bfloat16' or 'float32') "
                "and those inputs."
            )

    # ------------------------------------------------------------------------------------------
    # the LM head fused with the loss (causal LMs): the logits are made a chunk of tokens at a time
    # ------------------------------------------------------------------------------------------
    def _fused_head_refusal(self, model: PreTrainedModel) -> str | None:
        """Why this run computes its token-level losses from materialised logits, or None."""
        if self.args.fused_lm_head_loss is False:
            return "fused_lm_head_loss=False"
        if not self.shifts_labels:
            return f"the student ({type(model).__name__}) is not a decoder-only causal LM"
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return "FSDP and DeepSpeed shard the output layer's weight outside the model's forward"
        teacher = None if self.teacher_model is None else self.accelerator.unwrap_model(self.teacher_model)
        for role, network in (("student", model), ("teacher", teacher)):
            reason = None if network is None else lm_head_refusal(network)
            if reason is not None:
                return f"the {role} ({type(network).__name__}) {reason}"
        return None

    def _fused_loss_backend(self) -> str:
        """Who computes the fused loss: 'liger' where asked for (or implied by `use_liger_kernel`) and possible.

        An explicit `fused_loss_backend="liger"` that cannot apply is a `ValueError` (the config has refused the
        settings Liger cannot compute; here the model); one implied by `use_liger_kernel=True` falls back to the
        built-in loss with one warning.
        """
        args = self.args
        asked = args.fused_loss_backend or ("liger" if args.use_liger_kernel else "torch")
        if asked == "torch":
            return "torch"
        reason = self._fused_refusal
        if reason is None and args.fused_loss_backend is None:
            reason = args.liger_refusal()
            if reason is None and not is_liger_kernel_available():
                reason = f"liger-kernel >= {LIGER_MIN_VERSION} is not installed"
        if reason is None:
            return "liger"
        if args.fused_loss_backend == "liger":
            raise ValueError(f"fused_loss_backend='liger' but {reason}: Liger-Kernel computes the loss only on the "
                             "fused LM-head path. Set fused_loss_backend='torch' or leave it unset.")
        logger.warning(f"use_liger_kernel=True, but the distillation loss is not computed by Liger-Kernel: {reason}. "
                       "It takes the built-in path instead; set fused_loss_backend='torch' to silence this.")
        return "torch"

    def _use_fused_loss(self, inputs: dict, return_outputs: bool) -> bool:
        """The fused path serves every causal-LM loss whose caller does not ask for the logits."""
        if self._fused_refusal is not None or return_outputs:
            return False
        if self.teacher_model is None and self.args.alpha_kd > 0:
            # a batch without its cached targets goes to the materialised path, which says what is wrong
            return "teacher_topk_ids" in inputs
        return True

    def _fused_compute_loss(self, model: nn.Module, inputs: dict, num_items_in_batch) -> torch.Tensor:
        """`compute_loss` with the student's (and the teacher's) LM head fused into the loss.

        The model runs its own forward (so DDP's hooks run) with `logits_to_keep=1`, which leaves
        the logits of one position per sequence (and keeps the head's weight in the forward's
        graph, as DDP's unused-parameter search needs); the final hidden states go to
        `fused_distillation_losses` at the positions that count, the same ones the materialised
        path selects (`_prediction_targets`, and the cache's own rule for cached targets).
        """
        args = self.args
        labels = inputs.get("labels")
        model_inputs = self._model_inputs(inputs)
        extra = {**self._feature_outputs(), "output_hidden_states": True, "logits_to_keep": 1}
        outputs = model(**model_inputs, **extra)
        hidden = outputs.hidden_states[-1]
        _, target_labels, row_mask, position_mask = self._prediction_targets(hidden, labels, inputs.get("attention_mask"))
        self._check_labels(labels)
        normalised = num_items_in_batch is not None and labels is not None
        scale = _scaler(num_items_in_batch if normalised else None)
        local_rows = row_mask.sum()
        local_labels = target_labels.ne(-100).sum() if labels is not None else local_rows

        online = self.teacher_model is not None
        teacher_outputs = self._teacher_outputs(model_inputs, extra) if self._runs_teacher() else None
        kd_positions = None
        if args.alpha_kd > 0:
            kd_positions = row_mask if online else self._cached_positions(inputs, hidden.shape[:2], hidden.device)
        rows = self._scored_rows(kd_positions, target_labels, row_mask)
        flat = lambda tensor: tensor.reshape(-1, *tensor.shape[2:]).index_select(0, rows)  # noqa: E731
        # each sum's weight: its alpha over the items it is normalised by (0: reported, no gradient)
        one = hidden.new_ones((), dtype=torch.float32)
        kd_weight = args.alpha_kd * scale(one, local_rows) if args.alpha_kd > 0 else 0.0
        ce_weight = args.alpha_ce * scale(one, local_labels) if args.alpha_ce > 0 and labels is not None else 0.0
        with self.accelerator.autocast():
            loss, kd, ce = fused_distillation_losses(
                flat(hidden), LMHead.of(self.accelerator.unwrap_model(model)),
                labels=None if labels is None else flat(target_labels),
                kd_mask=None if kd_positions is None or not online else flat(kd_positions),
                temperature=args.temperature, kind=args.kd_loss, divergence_params=args.divergence_params(),
                kd_weight=kd_weight, ce_weight=ce_weight, label_smoothing=args.label_smoothing_factor,
                chunk_size=args.kd_chunk_size, compile_chunks=args.compile_fused_loss, backend=self._fused_backend,
                check_teacher_logits=self._check_teacher_logits if online else None,
                **self._fused_soft_targets(inputs, teacher_outputs, kd_positions, rows, flat),
            )
        parts: dict[str, torch.Tensor] = {}
        if kd_positions is not None:
            parts["loss_kd"] = scale(kd, local_rows)
        if labels is not None:
            parts["loss_ce"] = scale(ce, local_labels)
        if teacher_outputs is not None:
            features = self._feature_parts(model, outputs, teacher_outputs, position_mask, row_mask, scale)
            loss = loss + self._weighted_sum(features)
            parts.update(features)
        return self._finish_loss(model, loss, parts, normalised, hidden.shape[0], outputs, False)

    def _fused_soft_targets(self, inputs, teacher_outputs, kd_positions, rows, flat) -> dict[str, Any]:
        """What the fused loss distils from: the teacher's final hidden states and head, or the cached targets."""
        if teacher_outputs is not None and self.args.alpha_kd > 0:
            teacher = self.accelerator.unwrap_model(self.teacher_model)
            return {"teacher_hidden": flat(teacher_outputs.hidden_states[-1]), "teacher_head": LMHead.of(teacher)}
        if kd_positions is not None:
            return {"cached": self._fused_cached_targets(inputs, kd_positions, rows, kd_positions.device,
                                                         self.args.kd_tail)}
        return {}

    @staticmethod
    def _scored_rows(kd_positions, target_labels, row_mask) -> torch.Tensor:
        """The flat indices of the positions the fused loss scores: a soft target or a label there."""
        scored = kd_positions
        if target_labels is not None:
            scored = target_labels.ne(-100) if scored is None else scored | target_labels.ne(-100)
        if scored is None:  # no soft targets and no labels (hidden states or attention alone): no row is scored
            scored = torch.zeros_like(row_mask)
        return scored.reshape(-1).nonzero().squeeze(1)

    @staticmethod
    def _fused_cached_targets(inputs: dict, kd_positions: torch.Tensor, rows: torch.Tensor,
                              device: torch.device, tail_shape: str = "uniform") -> CachedTargets:
        """The batch's cached targets placed on the positions they belong to, then taken at the scored `rows`."""
        cached_rows = kd_positions.reshape(-1)
        ids = inputs["teacher_topk_ids"].to(device, torch.long)
        if int(cached_rows.sum()) != ids.shape[0]:
            raise ValueError(f"the batch has {int(cached_rows.sum())} positions that count but {ids.shape[0]} "
                             "cached targets: the labels changed since the cache was made (a collator that masks "
                             "tokens?); cache the dataset as it is trained on.")
        placed_ids = ids.new_zeros(cached_rows.shape[0], ids.shape[-1])
        placed_ids[cached_rows] = ids
        placed_logprobs = placed_ids.new_zeros(placed_ids.shape, dtype=torch.float32)
        placed_logprobs[cached_rows] = inputs["teacher_topk_logprobs"].to(device, torch.float32)
        placed_tail = placed_logprobs.new_zeros(cached_rows.shape[0])
        placed_tail[cached_rows] = inputs["teacher_tail_logprob"].to(device, torch.float32)
        return CachedTargets(placed_ids.index_select(0, rows), placed_logprobs.index_select(0, rows),
                             placed_tail.index_select(0, rows), cached_rows.index_select(0, rows),
                             tail_shape=tail_shape)

    def _get_train_sampler(self, train_dataset=None):
        """The Trainer's sampler, or with `shuffle_length_groups` batches of similar length in random order.

        The one override of the Trainer's sampler choice: `train_sampling_strategy="group_by_length"` with
        `shuffle_length_groups=True` draws from `hf_bigsmall.data.ShuffledLengthGroupedSampler`, seeded with
        `args.data_seed` (else `args.seed`), in groups of the rows of one optimizer step on all processes. Lengths
        come from `args.length_column_name` where the training dataset has that column, else from the model's
        first input (`input_ids`); anything else is the Trainer's own choice.
        """
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if not (self.args.shuffle_length_groups and self.args.train_sampling_strategy == "group_by_length"
                and dataset is not None and has_length(dataset)):
            return super()._get_train_sampler(train_dataset)
        from ..data.sampling import ShuffledLengthGroupedSampler

        # the dataset as given: the Trainer passes it here with the columns the model does not take removed
        lengths = _row_lengths(self.train_dataset, self.args.length_column_name, self.processing_class)
        if lengths is None or len(lengths) != len(dataset):
            lengths = _row_lengths(dataset, self.args.length_column_name, self.processing_class)
        if lengths is None:
            raise ValueError("shuffle_length_groups needs each row's length: the training dataset has no "
                             f"{self.args.length_column_name!r} column and no input_ids. Add a length column "
                             "(length_column_name), or use train_sampling_strategy='random'.")
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        group = self.args.train_batch_size * self.args.gradient_accumulation_steps * max(1, self.args.world_size)
        self._length_groups_sampler = ShuffledLengthGroupedSampler(lengths, group, seed=seed)
        return self._length_groups_sampler

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        """The Trainer's loader that skips the batches a resumed run already trained on, with shuffle_length_groups
        first putting the sampler at the epoch the run resumes in.

        The Trainer's `set_epoch` does not reach the sampler through accelerate's skipping wrapper when several
        processes train, so a resumed run would draw the first epoch's order and skip the wrong batches.
        """
        sampler = self._length_groups_sampler
        if sampler is not None and has_length(dataloader):
            # the epoch the Trainer resumes in, from the same count it uses (`Trainer.set_initial_training_values`)
            steps_per_epoch = max(math.ceil(len(dataloader) / self.args.gradient_accumulation_steps), 1)
            sampler.set_epoch(self.state.global_step // steps_per_epoch)
        return super().get_resumed_dataloader(dataloader, num_batches)

    # ------------------------------------------------------------------------------------------
    # distilling from a teacher-logit cache (teacher_model=None)
    # ------------------------------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """The Trainer's batches and item count, counting the positions the losses are taken over.

        For token-level heads the Trainer counts `labels != -100` (over `labels[..., 1:]` only for
        models whose `loss_type` routes to its causal-LM loss, which leaves out GPT-2's
        `GPT2LMHeadModel`), so labels a collator left on padding would be counted though no loss
        is taken there. Here each batch carries `shift_labels` (the collator's documented
        alternative, which the Trainer counts as it is): each position's target label where
        `target_mask` keeps the position, -100 elsewhere. A sequence classifier counts every row,
        labelled or not (label -100: a transfer-set row distilled on soft targets alone), so that
        the loss is a mean over rows, each unlabelled row adding zero task loss. `shift_labels` is
        removed again before training sees the batch.
        """
        added = []

        def marked():
            for batch in epoch_iterator:
                labels = batch.get("labels") if isinstance(batch, MutableMapping) else None
                # token labels: integers per position (float labels are a multi-label classifier's)
                token_level = torch.is_tensor(labels) and labels.dim() >= 2 and not labels.is_floating_point()
                if token_level and not self.counts_rows and "shift_labels" not in batch:
                    attention_mask = batch.get("attention_mask")
                    if not torch.is_tensor(attention_mask) or attention_mask.shape != labels.shape:
                        attention_mask = None
                    counted = target_mask(labels, attention_mask, shift=self.shifts_labels)
                    aligned = F.pad(labels[..., 1:], (0, 1), value=-100) if self.shifts_labels else labels
                    batch["shift_labels"] = aligned.masked_fill(~counted, -100)
                    added.append(batch)
                elif self.counts_rows and torch.is_tensor(labels) and "shift_labels" not in batch:
                    batch["shift_labels"] = labels.new_zeros(labels.shape[:1], dtype=torch.long)  # one item a row
                    added.append(batch)
                yield batch

        try:
            return super().get_batch_samples(marked(), num_batches, device)
        finally:
            for batch in added:
                del batch["shift_labels"]

    def _init_cached_teacher(self, student: PreTrainedModel, args: DistillationConfig, kwargs: dict) -> None:
        """Check the cache behind `train_dataset` against the student, before anything trains.

        The train dataset either carries the cached columns (from `load_teacher_logits`) or
        `args.teacher_logits` names the cache folder, which is then loaded and checked against it.
        """
        if args.alpha_hidden > 0 or args.alpha_attention > 0:
            raise ValueError(
                "alpha_hidden and alpha_attention compare hidden states and attention maps, which a teacher-logit "
                "cache does not hold: pass the teacher (teacher_model=...) or set alpha_hidden=0 and "
                "alpha_attention=0 to train from the cached logits."
            )
        train_dataset = kwargs.get("train_dataset")
        if getattr(args, "teacher_logits", None):
            if train_dataset is None:
                raise ValueError("teacher_logits needs the train_dataset the cache was made from.")
            if not cached_columns(train_dataset):
                train_dataset = load_teacher_logits(args.teacher_logits, train_dataset)
                kwargs["train_dataset"] = train_dataset
            else:
                _check_same_cache(args.teacher_logits, cache_record(train_dataset))
        if train_dataset is None or not cached_columns(train_dataset):
            raise ValueError(
                "DistillationTrainer needs a teacher (teacher_model=...) or a train_dataset carrying cached teacher "
                f"logits (columns {list(CACHE_COLUMNS)}), e.g. load_teacher_logits(cache_dir, train_dataset) after "
                "cache_teacher_logits, or DistillationConfig(teacher_logits=cache_dir)."
            )
        record = cache_record(train_dataset)
        if record is None:
            raise ValueError(
                "train_dataset has cached teacher columns but no record of the cache they came from, so the student "
                "cannot be checked against it: build it with load_teacher_logits(cache_dir, dataset)."
            )
        where = record.get("path", "the cache")
        if record["task"] == "classification":
            if getattr(student.config, "num_labels", None) != record["num_labels"]:
                raise ValueError(f"{where} holds {record['num_labels']} teacher logits per row but the student has "
                                 f"num_labels={student.config.num_labels}: use a student with the teacher's labels.")
            student_labels = {str(int(k)): v for k, v in student.config.id2label.items()}
            if record.get("id2label") is not None and student_labels != record["id2label"]:  # older caches lack it
                raise ValueError(f"{where} holds the logits of a teacher with id2label {record['id2label']} but the "
                                 f"student has {student_labels}: class i must mean the same thing to both. Give the "
                                 "student the teacher's id2label/label2id (make_student copies them).")
        else:
            vocab_size = student.config.get_text_config().vocab_size
            if vocab_size != record["vocab_size"]:
                raise ValueError(
                    f"{where} was made by a teacher with vocab_size {record['vocab_size']} but the student has "
                    f"vocab_size {vocab_size}: use a student built from the teacher's tokenizer (make_student), or "
                    "cache the logits of a teacher that shares the student's vocabulary."
                )
        self.teacher_logits_record = record
        _check_eval_caches(record, kwargs.get("eval_dataset"))
        distillation = dict(getattr(student.config, "distillation", None) or {})
        distillation.setdefault("teacher", record.get("teacher"))
        distillation.update(args.loss_settings())
        distillation["teacher_logits"] = {
            "top_k": record.get("top_k"), "tail_samples": record.get("tail_samples"),
            "logprob_dtype": record.get("logprob_dtype"),
            "teacher_fingerprint": record.get("teacher_fingerprint"),
        }
        if record["task"] == "causal_lm" and args.temperature != 1.0:  # only then is the tail estimated
            distillation["teacher_logits"]["tail"] = args.kd_tail
        DistillationRecord.from_dict(distillation).write(student.config)

    def _set_signature_columns_if_needed(self) -> None:
        # the cached teacher columns are not forward arguments: keep them for the loss
        super()._set_signature_columns_if_needed()
        if self.teacher_logits_record is not None:
            self._signature_columns += [name for name in CACHE_COLUMNS if name not in self._signature_columns]

    def _cached_kd(self, student_logits: torch.Tensor, inputs: dict, labels: torch.Tensor | None = None):
        """The summed soft-target loss against the cached targets of this batch, and with `labels`
        (token-level caches) the summed task loss from the same pass over the logits: `(kd, ce)`."""
        args = self.args
        if self.teacher_logits_record["task"] == "classification":
            teacher_logits = inputs["teacher_logits"].to(student_logits.device)
            return kd_loss(student_logits, teacher_logits, args.temperature, kind=args.kd_loss, reduction="sum",
                           divergence_params=args.divergence_params()), None
        mask = self._cached_positions(inputs, student_logits.shape[:2], student_logits.device)
        return cached_distillation_losses(
            student_logits, inputs["teacher_topk_ids"], inputs["teacher_topk_logprobs"],
            inputs["teacher_tail_logprob"], args.temperature, kind=args.kd_loss, mask=mask, labels=labels,
            reduction="sum", tail=args.kd_tail, divergence_params=args.divergence_params(),
            chunk_size=args.kd_chunk_size or max(1, KD_CHUNK_LOGITS // student_logits.shape[-1]),
        )

    def _cached_positions(self, inputs: dict, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """The (B, T) positions the cache holds targets for, by the rule it was made with (next-token
        targets of a causal LM), in the row-major order of its rows."""
        labels, attention_mask = inputs.get("labels"), inputs.get("attention_mask")
        if labels is None and attention_mask is None:
            attention_mask = torch.ones(shape, dtype=torch.long, device=device)
        positions = target_mask(labels, attention_mask, shift=self.teacher_logits_record["shift_labels"])
        counts = inputs.get(TARGET_COUNTS)
        if counts is not None:  # a total that matches can hide rows off by opposite amounts: check each row
            found = positions.reshape(positions.shape[0], -1).sum(-1).cpu()
            counts = counts.cpu().to(found.dtype)
            if found.shape != counts.shape or not torch.equal(found, counts):
                row = 0 if found.shape != counts.shape else int((found != counts).nonzero()[0])
                have = int(found[row]) if row < found.numel() else 0
                cached = int(counts[row]) if row < counts.numel() else 0
                raise ValueError(
                    f"row {row} of the batch has {have} positions that count but {cached} cached targets: the "
                    "labels or attention mask select other positions than when the cache was made (a collator that "
                    "masks, drops or packs tokens?); cache the dataset as it is trained on.")
        return positions

    def evaluation_loop(self, *args, **kwargs):
        """The Trainer's loop; its metrics gain the loss parts (`eval_loss_kd`, `eval_loss_ce`, ...).

        `eval_loss` is the weighted sum the student trains on; the parts say what it is made of,
        and `eval_loss_ce` is the student's own task loss (its exponential is a perplexity for a
        causal LM). They are averaged over the batches and the processes, like `eval_loss`.
        """
        self._eval_parts, self._eval_sequences = {}, 0
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", "eval")
        if self._eval_parts:
            # every process evaluates, so the gathers are collective
            device = next(iter(self._eval_parts.values())).device
            sequences = self.accelerator.gather(torch.tensor(float(self._eval_sequences), device=device)).sum()
            for name in sorted(self._eval_parts):
                total = self.accelerator.gather(self._eval_parts[name]).sum()
                output.metrics[f"{prefix}_{name}"] = (total / sequences.clamp(min=1)).item()
        self._eval_parts, self._eval_sequences = {}, 0
        return output

    def _prediction_targets(self, logits, labels, attention_mask):
        """Logits aligned with their targets, plus the masks of rows and positions that count.

        Returns `(logits, labels, row_mask, position_mask)`: for causal LM the logits at position t
        predict token t + 1, so the labels are shifted left (the last position gets -100);
        `row_mask` (B, T) selects the positions whose logits are trained on, by `target_mask`'s rule
        (a label that is not -100 and, with an attention mask, a real position predicting a real
        token), and `position_mask` (the same for token-level heads) the positions of the hidden
        states and attention rows that count. The returned labels are -100 wherever `row_mask` is
        False, so the task loss counts exactly the positions the soft-target loss does and that
        `get_batch_samples` counts: labels a collator left on padding are never trained on. For
        sequence classification `row_mask` is None.
        """
        if logits.dim() == 2:  # sequence classification: one row per sequence
            return logits, labels, None, None if attention_mask is None else attention_mask.bool()
        if labels is None and attention_mask is None:
            attention_mask = logits.new_ones(logits.shape[:2], dtype=torch.long)
        row_mask = target_mask(labels, attention_mask, shift=self.shifts_labels)
        target_labels = None
        if labels is not None:
            # position t predicts token t + 1: the targets are shifted, not the logits, so the (large)
            # logits are never copied; the last position has no target
            aligned = F.pad(labels[:, 1:], (0, 1), value=-100) if self.shifts_labels else labels
            target_labels = aligned.masked_fill(~row_mask, -100)
        return logits, target_labels, row_mask, row_mask

    def _hidden_per_position(self, model, student_hidden, teacher_hidden) -> torch.Tensor:
        student = self.accelerator.unwrap_model(model)
        projection = getattr(student, PROJECTION_NAME, None)
        student_last, teacher_last = len(student_hidden) - 2, len(teacher_hidden) - 2
        losses = []
        for student_layer, teacher_layer in enumerate(self.layer_map):
            # hidden_states[0] is the embedding output, so layer i's output is hidden_states[i + 1]
            hidden, target = student_hidden[student_layer + 1], teacher_hidden[teacher_layer + 1]
            # decoders (GPT-2, Llama) return their last layer's output after the final norm and the others before
            # it: a last layer paired with another is compared after that other model's own final norm too
            if (student_layer == student_last) != (teacher_layer == teacher_last):
                if student_layer == student_last:
                    target = _apply_final_norm(self.accelerator.unwrap_model(self.teacher_model), target)
                else:
                    hidden = _apply_final_norm(student, hidden)
            if projection is not None:
                hidden = projection[student_layer](hidden)
            losses.append(hidden_state_loss(hidden, target, self.args.hidden_loss, reduction="none"))
        return torch.stack(losses).mean(0)

    @staticmethod
    def _reduce_positions(per_position, position_mask, row_mask, scale):
        """Sum a (B, T) loss in the units `num_items_in_batch` counts: tokens, or whole sequences."""
        if position_mask is None:
            position_mask = torch.ones_like(per_position, dtype=torch.bool)
        per_position = per_position * position_mask
        if row_mask is None:  # one item per sequence: mean over its tokens, sum over sequences
            per_sequence = per_position.sum(1) / position_mask.sum(1).clamp(min=1)
            return scale(per_sequence.sum(), per_sequence.shape[0])
        return scale(per_position.sum(), position_mask.sum())

    # ------------------------------------------------------------------------------------------
    # logging the loss parts through the Trainer
    # ------------------------------------------------------------------------------------------
    def _accumulate_parts(self, parts: dict[str, torch.Tensor], normalised: bool) -> None:
        if not self._loss_parts:
            self._loss_parts_since_step = self.state.global_step
        divisor = 1 if normalised else self.current_gradient_accumulation_steps
        for name, value in parts.items():
            value = value.detach().float() / divisor
            previous = self._loss_parts.get(name)
            self._loss_parts[name] = value if previous is None else previous + value

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged loss parts to the Trainer's training logs, so they reach `log_history`."""
        if "loss" in logs and self._loss_parts:
            steps = max(self.state.global_step - self._loss_parts_since_step, 1)
            for name in sorted(self._loss_parts):
                # every process logs together (as for `loss`), so the gather is collective
                total = self.accelerator.gather(self._loss_parts[name]).mean().item()
                logs[name] = total / steps
            self._loss_parts = {}
        super().log(logs, start_time)


# the attribute of a decoder's base model that normalises its last hidden state (GPT-2, Llama and most decoders)
_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "norm_f")


def _apply_final_norm(model, hidden: torch.Tensor) -> torch.Tensor:
    """`hidden` through `model`'s final norm, where it has one (decoders); as it is otherwise (BERT has none: its
    last layer's output is returned as the others are)."""
    base = getattr(model, "base_model", model)
    for name in _FINAL_NORM_NAMES:
        module = getattr(base, name, None)
        if isinstance(module, nn.Module):
            return module(hidden)
    return hidden


# what makes two teacher-logit caches interchangeable: the same teacher and the same stored targets
_CACHE_IDENTITY = ("task", "teacher_fingerprint", "top_k", "tail_samples", "logprob_dtype")


def _check_eval_caches(record: dict[str, Any], eval_dataset) -> None:
    """Refuse evaluation sets whose cached teacher logits came from another teacher or other settings than the
    training set's: the evaluation loss would measure the student against another teacher without a word."""
    named = eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval_dataset", eval_dataset)]
    for name, dataset in named:
        if dataset is None or not cached_columns(dataset):
            continue
        other = cache_record(dataset) or {}
        differ = {key: (record.get(key), other.get(key)) for key in _CACHE_IDENTITY if record.get(key) != other.get(key)}
        if differ:
            raise ValueError(
                f"{name} carries teacher logits from {other.get('path', 'another cache')} and train_dataset from "
                f"{record.get('path', 'its cache')}, which differ in (train, eval) {differ}: cache the evaluation rows "
                "with the same teacher and settings (cache_teacher_logits(teacher, eval_rows, ...)), or evaluate on "
                "rows without cached columns."
            )

