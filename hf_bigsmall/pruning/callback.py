"""`MagnitudePruningCallback`: magnitude pruning on any `transformers.Trainer`, masks that hold."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..trainer_context import running_trainer
from ..utils.distributed import full_tensor, is_sharded, shard_like, unsharded
from ..utils.files import publishing
from .calibration import prepare_calibration
from .config import PruningConfig
from .criteria import get_pruning_criterion
from .criteria.magnitude import MAGNITUDE
from .importance import compute_importance
from .io import (
    SPARSITY_REWIND_NAME,
    apply_masks,
    load_masks,
    load_pruning_state,
    masks_from_zeros,
    save_pruned_model,
    record_sparsity,
    write_masks,
    write_rewind_weights,
)
from .masks import (
    sparsity_report,
    structured_masks,
    structured_masks_from_zeros,
    targeted_weights,
    unstructured_masks,
)
from .schedules import PruningSchedule, build_schedule, restart_lr_each_round
from .state import PruningState, attach_pruning_state, get_pruning_state
from .statistics import collect_statistics
from .targets import find_target_modules, unit_groups
from .wanda import check_pattern_fits, criterion_masks

logger = logging.get_logger(__name__)


class MagnitudePruningCallback(TrainerCallback, ExportableState):
    """Prune a model by weight magnitude while it trains, and keep the pruned weights at exactly zero.

    Works with `transformers.Trainer` and any subclass (`DistillationTrainer` included), through
    the Trainer's documented callback events. Masks are re-applied after every optimizer step
    (`on_optimizer_step`), the gradients and optimizer state of pruned entries are zeroed so AdamW
    momentum and weight decay cannot revive them, and under DDP the masks are broadcast from rank 0
    so every rank holds the same ones. Checkpoints and
    `trainer.save_model()` hold the zeros, a `sparsity` block in `config.json` and
    `sparsity_masks.safetensors` (written into `output_dir` at the end of training);
    `trainer.train(resume_from_checkpoint=...)` restores masks, schedule position, IMP round and
    rewind weights. Masks only ever grow: pruning an already pruned model keeps its masks.

    Args:
        target_sparsity (`float` or `None`, defaults to 0.5):
            Final fraction pruned, in [0, 1): of the targeted weights (unstructured) or of the FFN
            neurons / attention heads (structured). `None` re-arms the masks of an already pruned
            checkpoint and prunes nothing more.
        schedule (`str`, defaults to `"cubic"`):
            `"one_shot"`, `"linear"`, `"cubic"` (Zhu & Gupta 2017) or `"imp"` (iterative magnitude
            pruning with rewinding, Frankle & Carbin 2019; Chen et al. 2020 for BERT).
        structure (`str`, defaults to `"unstructured"`): `"unstructured"`, `"neurons"`, `"heads"`, or
            an N:M pattern such as `"2:4"` (N pruned of every M consecutive input weights of each row;
            `target_sparsity` is then N/M, and a gradual schedule prunes `floor(s * M)` per block on the way).
        scope (`str`, *optional*): `"global"`, `"layer"` or `"row"` (default: global for unstructured
            magnitude, row for Wanda, layer for structured so that `compact` can shrink the model).
        target_modules (`list[str]` or `str`, *optional*): name suffixes or a full-match regex.
        criterion (`str`, defaults to `"magnitude"`): `"magnitude"`, `"wanda"` (`|W_ij| * ||X_j||_2`
            over `calibration_dataset`, recomputed at every pruning event; Sun et al. 2023) or
            `"activation"` (FFN neurons / heads ranked by their activations, Minitron; with
            `structure="neurons"` or `"heads"`), or any criterion registered with
            [`~hf_bigsmall.pruning.criteria.register_pruning_criterion`]; the calibration pass collects
            what it declares (`needs`) at every pruning event.
        calibration_dataset (*optional*): tokenized rows for Wanda and any criterion that needs calibration (see
            [`~hf_bigsmall.pruning.calibration.prepare_calibration`]), checked when the trainer is built;
            for `"activation"`, the samples `compute_importance` measures at the first pruning event.
        importance ([`~pruning.importance.Importance`], *optional*): with `criterion="activation"`, an
            importance already measured (`compute_importance`), used instead of `calibration_dataset`.
        **kwargs: the remaining fields of [`PruningConfig`] (`initial_sparsity`, `start_step`,
            `end_step`, `pruning_frequency`, `imp_rounds`, `rewind_step`, `steps_per_round`).

    The masks, the record of how they were made, the schedule position and the IMP rewind weights
    are one [`~hf_bigsmall.pruning.state.PruningState`], `callback.pruning_state`, which is attached
    to the model it prunes as `model.pruning_state`.

    Sparsity (`sparsity/global`, `sparsity/model`, `sparsity/scheduled` and per block
    `sparsity/layer.3.ffn`, `sparsity/layer.3.attn`) is logged to `log_history`; under a trainer
    with [`BigSmallTrainerMixin`] it goes through `trainer.log` and so reaches every `report_to`
    integration, `trainer.save_model(folder)` writes the masks into any folder, a resumed run
    reads them from the checkpoint it resumes wherever it was moved, and `create_model_card`
    writes the kit's card.

    Example:

    ```python
    >>> from transformers import Trainer
    >>> from hf_bigsmall import MagnitudePruningCallback, sparsity_report

    >>> pruning = MagnitudePruningCallback(target_sparsity=0.5, schedule="cubic")
    >>> trainer = Trainer(model=model, args=args, train_dataset=train_dataset, callbacks=[pruning])
    >>> trainer.train()
    >>> trainer.save_model()  # zeros + config.json "sparsity" block + sparsity_masks.safetensors
    >>> sparsity_report(trainer.model).global_sparsity
    0.5
    ```
    """

    def __init__(self, target_sparsity: float | None = 0.5, schedule: str = "cubic", structure: str = "unstructured",
                 scope: str | None = None, target_modules: list[str] | str | None = None,
                 criterion: str = "magnitude", calibration_dataset=None, importance=None, **kwargs):
        self.config = PruningConfig(target_sparsity=target_sparsity, schedule=schedule, structure=structure,
                                    scope=scope, target_modules=target_modules, criterion=criterion, **kwargs)
        self.criterion = get_pruning_criterion(criterion)
        needs = self.criterion.needs
        if target_sparsity is not None and calibration_dataset is None:
            if needs == "unit_activations" and importance is None:
                raise ValueError(f"criterion={criterion!r} needs importance=compute_importance(model, "
                                 "calibration_dataset) or calibration_dataset= (tokenized rows of text like the "
                                 "training data).")
            if needs not in ("nothing", "unit_activations"):
                raise ValueError(f"criterion={criterion!r} needs calibration_dataset= (tokenized rows of text like the "
                                 "training data), or use criterion='magnitude'.")
        self.importance = importance
        self.calibration_dataset = calibration_dataset
        self._calibration = None  # prepared (and checked against the model) once the model is known
        self.schedule: PruningSchedule | None = None
        # masks, record, schedule position and rewind weights; attached to the model it arms
        self.pruning_state = PruningState()
        self._record_inherited = False  # re-armed: the record says how the model was pruned before
        self._masked_params: list[tuple[nn.Parameter, torch.Tensor]] = []  # (param, bool mask)
        self._keep: list[tuple[nn.Parameter, torch.Tensor]] = []  # (param, 0/1 in the param's dtype)
        self._masks_saved_to: tuple[str, int] | None = None  # (folder, step) already holding the masks
        self._armed = False  # masks (maybe none yet) are in force on a model being trained

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """The masks in force (`True` = pruned), keyed by parameter name."""
        return self.pruning_state.masks

    # the ExportableState attributes: Trainer(restore_callback_states_from_checkpoint=True) sets them back
    @property
    def imp_round(self) -> int:
        """IMP rounds done."""
        return self.pruning_state.imp_round

    @imp_round.setter
    def imp_round(self, value: int) -> None:
        self.pruning_state.imp_round = value

    @property
    def last_pruned_step(self) -> int | None:
        """The step of the last pruning event."""
        return self.pruning_state.last_pruned_step

    @last_pruned_step.setter
    def last_pruned_step(self, value: int | None) -> None:
        self.pruning_state.last_pruned_step = value

    # ------------------------------------------------------------------ ExportableState
    def state(self) -> dict:
        return {
            "args": self.config.to_dict(),
            "attributes": {"imp_round": self.pruning_state.imp_round,
                           "last_pruned_step": self.pruning_state.last_pruned_step},
        }

    # ------------------------------------------------------------------ validation
    def _check_model(self, model: nn.Module) -> None:
        if self.config.structure in ("neurons", "heads"):
            unit_groups(model, self.config.structure)
        else:
            targets = find_target_modules(model, self.config.target_modules)
            if self.config.pattern is not None:
                check_pattern_fits(targets, self.config.structure)
        # the windows of what the criterion declares; an Importance is measured by compute_importance itself
        if self.criterion.calibrated and self.criterion.needs != "unit_activations" and self._calibration is None:
            self._calibration = prepare_calibration(
                self.calibration_dataset, self.config.calibration_samples, self.config.calibration_seq_len, model=model)

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None and self.config.target_sparsity is not None:
            self._check_model(extract_model_from_parallel(model))

    # ------------------------------------------------------------------ training events
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        model = extract_model_from_parallel(model)
        if self.config.target_sparsity is not None:
            self._check_model(model)
            if self.criterion.needs == "gradients" and args.world_size > 1:
                # a backward pass outside the wrapped model's forward would desynchronise DDP's gradient reduction
                raise ValueError(f"criterion={self.config.criterion!r} needs gradients of a calibration pass, which "
                                 "the callback takes in single-process runs only: prune it with prune_one_shot, or "
                                 "train on one process.")
            self.schedule = build_schedule(self.config, state.max_steps)
            if self.schedule.kind == "imp" and args.world_size > 1 and is_sharded(model):
                # each round's folder is written by the main process alone, which cannot gather shards
                raise ValueError("schedule='imp' saves every round's model from the main process, which cannot "
                                 "gather a model sharded by FSDP: use schedule='cubic' (or 'linear') under FSDP, "
                                 "or run IMP with DDP or on one GPU.")
        if state.global_step > 0:
            self._restore(args, state, model)
        else:
            self.pruning_state.masks = self._existing_masks(model)
            if self.schedule is None and not self.pruning_state.masks:
                raise ValueError(
                    "target_sparsity=None re-arms the masks of a pruned checkpoint, but this model carries none: "
                    "load a folder saved by a pruning run, or pass a target_sparsity."
                )
            if self.schedule is not None and self.schedule.kind == "imp" and self.schedule.rewind_step == 0:
                self.pruning_state.rewind_weights = _snapshot(model)
        if self.schedule is not None and self.schedule.kind == "imp" and self.config.imp_restart_lr:
            if not restart_lr_each_round(kwargs.get("lr_scheduler"), self.schedule, args, state.max_steps):
                logger.warning("IMP: the learning-rate schedule is not a LambdaLR, so it is not restarted in each "
                               "round; pass imp_restart_lr=False to silence this.")
        if state.is_world_process_zero and self.schedule is not None:
            logger.info(f"Pruning schedule: {self.schedule.describe()} (max_steps={state.max_steps})")
        self._arm(model, optimizer)
        if state.global_step == 0 and self.schedule is not None and self.schedule.is_pruning_step(0):
            self._prune(model, 0, optimizer)
        if running_trainer(self) is None:
            logger.warning_once(
                "MagnitudePruningCallback under a plain Trainer: sparsity goes to trainer.state.log_history but not to "
                "report_to integrations, and masks are saved into checkpoints and output_dir only. Mix "
                "hf_bigsmall.BigSmallTrainerMixin into the trainer class (or use BigSmallTrainer) for both."
            )

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        # Pruned entries get no gradient, so AdamW moments for them stay exactly zero.
        with torch.no_grad():
            for param, keep in self._keep:
                if param.grad is not None:
                    param.grad.mul_(keep)

    def on_optimizer_step(self, args, state, control, **kwargs):
        # With zero gradients and zero moments AdamW leaves a zero weight at zero; re-zeroing after
        # every step keeps the masks exact whatever the optimizer does (SGD momentum, custom ones).
        # A multiply by a 0/1 tensor of the weight's dtype is about 4x faster than masked_fill_ with a
        # bool mask on CPU, which keeps the per-step cost small next to forward and backward.
        with torch.no_grad():
            for param, keep in self._keep:
                param.mul_(keep)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        model = extract_model_from_parallel(model)
        if control.should_save:
            # the checkpoint is written right after this event: its config.json gets the block as measured now
            record_sparsity(model)
        if self.schedule is None:
            if control.should_log:
                self._log(model, state, control)
            return
        step = state.global_step
        if self.schedule.kind == "imp" and step == self.schedule.rewind_step and self.pruning_state.rewind_weights is None:
            self.pruning_state.rewind_weights = _snapshot(model)
        pruned = False
        if step > 0 and self.schedule.is_pruning_step(step):
            if self.schedule.kind == "imp":
                self._save_round(args, model)
            self._prune(model, step, optimizer)
            if self.schedule.kind == "imp":
                self._rewind(model, optimizer)
            pruned = True
            if control.should_save:
                record_sparsity(model)
        if pruned or control.should_log:
            self._log(model, state, control)

    def on_save(self, args, state, control, model=None, **kwargs):
        # the checkpoint the Trainer just wrote is args.output_dir/checkpoint-{global_step}
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not (args.should_save and folder.is_dir()):
            return
        model = extract_model_from_parallel(model)
        if self._masks_saved_to != (str(folder), state.global_step):  # not yet by BigSmallTrainerMixin.save_model
            write_masks(model, folder)
        write_rewind_weights(model, folder)

    def on_push_begin(self, args, state, control, model=None, **kwargs):
        """A push during training (`push_to_hub=True`) uploads `output_dir`, into which the Trainer has just
        copied the weights and config.json of the checkpoint it saved, and with `hub_strategy="checkpoint"`
        that checkpoint too, both before `on_save`: the masks of those weights go with them."""
        if model is None or not args.should_save:
            return
        model = extract_model_from_parallel(model)
        write_masks(model, args.output_dir)  # also removes a masks file an earlier save left there
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if folder.is_dir() and self._masks_saved_to != (str(folder), state.global_step):
            write_masks(model, folder)
            self._masks_saved_to = (str(folder), state.global_step)
            write_rewind_weights(model, folder)

    def on_model_save_begin(self, args, state, control, model=None, output_dir=None, **kwargs):
        """`BigSmallTrainerMixin.save_model` is about to write config.json: the `sparsity` block, measured now, goes in."""
        if model is not None and self._armed:
            model = extract_model_from_parallel(model)
            record_sparsity(model)

    def on_model_save(self, args, state, control, model=None, output_dir=None, **kwargs):
        """`BigSmallTrainerMixin.save_model` saved the model into `output_dir`: the masks go beside it."""
        if model is None or output_dir is None or not args.should_save:
            return
        write_masks(extract_model_from_parallel(model), output_dir)
        self._masks_saved_to = (str(Path(output_dir)), state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model = extract_model_from_parallel(model)
        if self.schedule is not None and self.schedule.kind == "imp":
            self._save_round(args, model)
        if args.load_best_model_at_end and state.best_model_checkpoint:
            self._adopt_best_checkpoint(model, Path(state.best_model_checkpoint))
        record_sparsity(model)
        if args.should_save:
            # `trainer.save_model()` after training writes weights and config.json here; the masks wait beside them
            os.makedirs(args.output_dir, exist_ok=True)
            write_masks(model, args.output_dir)

    def _adopt_best_checkpoint(self, model: nn.Module, folder: Path) -> None:
        """`load_best_model_at_end` put the best checkpoint's weights back: use that checkpoint's masks too.

        The final masks belong to the last step; the best checkpoint may be denser. Saving its
        weights with the final masks would call weights pruned that are not, and re-arming them
        would zero weights that were never pruned.
        """
        saved = load_pruning_state(folder, model=model)
        self.pruning_state.masks = saved.masks or self._masks_from_zeros(model)
        if "imp_round" in saved.record:
            self.pruning_state.imp_round = saved.record["imp_round"]
        if "pruned_at_step" in saved.record:
            self.pruning_state.last_pruned_step = saved.record["pruned_at_step"]
        self._arm(model)

    # ------------------------------------------------------------------ internals
    def _info(self) -> dict:
        schedule = self.schedule
        if schedule is None and self._record_inherited:
            return dict(self.pruning_state.record)  # re-armed: the block still says how the model was pruned
        return {
            "method": self.config.criterion,
            "schedule": self.config.schedule,
            "structure": self.config.structure,
            "scope": self.config.scope,
            "target": self.config.target_sparsity,
            "target_modules": self.config.target_modules,
            "start_step": schedule.start_step if schedule else None,
            "end_step": schedule.end_step if schedule else None,
            "pruning_frequency": schedule.frequency if schedule else None,
            "imp_round": self.pruning_state.imp_round if self.config.schedule == "imp" else None,
            "imp_rounds": self.config.imp_rounds if self.config.schedule == "imp" else None,
            "rewind_step": self.config.rewind_step if self.config.schedule == "imp" else None,
            "pruned_at_step": self.pruning_state.last_pruned_step,
            "calibration": self._calibration.describe() if self._calibration is not None else None,
        }

    def _arm(self, model: nn.Module, optimizer=None) -> None:
        params = dict(model.named_parameters())
        pruning = self.pruning_state
        unknown = sorted(set(pruning.masks) - set(params))
        if unknown:
            raise ValueError(f"Masks name parameters this model does not have: {unknown[:5]}. Was the model changed?")
        pruning.masks = {name: mask.to(params[name].device) for name, mask in pruning.masks.items()}
        # under FSDP2 each process holds a shard of every weight: its masks are split the same way
        self._masked_params = [(params[name], shard_like(mask, params[name])) for name, mask in pruning.masks.items()]
        self._keep = [(param, (~mask).to(param.dtype)) for param, mask in self._masked_params]
        pruning.record = self._info()
        attach_pruning_state(model, pruning)
        apply_masks(model, pruning.masks)
        _zero_optimizer_state(optimizer, self._masked_params)
        # config.json of any save from now on describes these masks, also a plain Trainer's save_model()
        record_sparsity(model)
        self._armed = True

    def _masks_from_zeros(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The masks this configuration prunes, read back from the weights' exact zeros (no masks file).

        Structured pruning masks only the weights of its units (FFN neurons or heads): whole units
        that are zero, as `structured_masks` would have masked them, not every targeted Linear.
        """
        if self.config.structure in ("neurons", "heads"):
            return structured_masks_from_zeros(model, self.config.structure)
        return masks_from_zeros(targeted_weights(model, self.config.target_modules))

    def _existing_masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Masks a model already carries: attached in memory, or saved beside the checkpoint it came from."""
        attached = get_pruning_state(model)
        block = (attached.record if attached is not None else None) or getattr(model.config, "sparsity", None)
        self._record_inherited = isinstance(block, dict)
        self.pruning_state.record = dict(block) if isinstance(block, dict) else {}
        if attached is not None and attached.masks:
            return dict(attached.masks)
        source = getattr(model, "name_or_path", "")
        block = getattr(model.config, "sparsity", None)
        # a model saved with no masks left (fully compacted) says so in its block: a masks file still
        # in the folder is then a leftover of the save before, with the old shapes
        saved_without_masks = isinstance(block, dict) and "masks_file" in block and block["masks_file"] is None
        if source and os.path.isdir(source) and not saved_without_masks:
            masks = load_masks(source, model=model)
            if masks:
                return masks
        if isinstance(block, dict) and block.get("per_layer"):
            modules = {f"{name}.weight" for name in block["per_layer"]}
            weights = {n: p for n, p in model.named_parameters() if n in modules}
            return masks_from_zeros(weights)
        return {}

    def _restore(self, args, state, model: nn.Module) -> None:
        stored = state.stateful_callbacks.get(type(self).__name__)
        if isinstance(stored, list):
            stored = stored[0]
        if stored is not None:
            if stored["args"] != self.config.to_dict():
                changed = {k: (v, stored["args"].get(k)) for k, v in self.config.to_dict().items() if stored["args"].get(k) != v}
                raise ValueError(
                    "Resuming with a different pruning configuration than the checkpoint's "
                    f"(field: (now, checkpoint)): {changed}. Resume with the same MagnitudePruningCallback arguments, "
                    "or start a new run in another output_dir."
                )
            self.pruning_state.imp_round = stored["attributes"].get("imp_round", 0)
            self.pruning_state.last_pruned_step = stored["attributes"].get("last_pruned_step")
        folder = self._resumed_folder(args, state)
        saved = load_pruning_state(folder, model=model)
        _check_masks_fit_weights(saved.masks, model, folder, deepspeed=_uses_deepspeed(args))
        self.pruning_state.masks = saved.masks
        if not saved.masks:
            logger.warning(f"No pruning masks in {folder}: reading them back from the exact zeros of the resumed weights.")
            self.pruning_state.masks = self._masks_from_zeros(model)
        if self.config.schedule == "imp":
            if saved.rewind_weights is not None:
                self.pruning_state.rewind_weights = saved.rewind_weights
            elif self.schedule is not None and state.global_step > self.schedule.rewind_step:
                raise ValueError(f"Resuming IMP needs the rewind weights {folder / SPARSITY_REWIND_NAME}, which is missing.")

    def _resumed_folder(self, args, state) -> Path:
        """The checkpoint this run resumes from.

        A `BigSmallTrainerMixin` trainer records the folder `train(resume_from_checkpoint=...)` was
        given. Otherwise `args.resume_from_checkpoint` when it names a folder (the recipes set it),
        else `output_dir/checkpoint-{global_step}`, the folder `resume_from_checkpoint=True` picks.
        """
        trainer = running_trainer(self)
        candidates = [getattr(trainer, "resumed_checkpoint", None), args.resume_from_checkpoint]
        for candidate in candidates:
            if isinstance(candidate, (str, os.PathLike)) and Path(candidate).is_dir():
                saved = _read_trainer_state_step(Path(candidate))
                if saved is None or saved == state.global_step:
                    return Path(candidate)
        return Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"

    @torch.no_grad()
    def _prune(self, model: nn.Module, step: int, optimizer=None) -> None:
        sparsity = self.schedule.sparsity_at(step)
        config = self.config
        if config.structure not in ("neurons", "heads") and (
                self.criterion is not MAGNITUDE or config.pattern is not None or config.scope == "row"):
            masks = self._criterion_masks(model, sparsity)
        elif config.structure == "unstructured":
            weights = targeted_weights(model, self.config.target_modules, prefer_masked=False)
            # a global threshold needs every weight whole: FSDP2 shards are gathered (collective)
            weights = {name: full_tensor(weight) for name, weight in weights.items()}
            masks = unstructured_masks(weights, sparsity, self.config.scope, previous=self.pruning_state.masks)
        else:
            scores = self.criterion.unit_scores(model, self.config.structure, self._unit_statistic(model))
            with unsharded(model):  # FSDP2: units are ranked on whole weights (collective)
                masks = structured_masks(model, self.config.structure, sparsity, self.config.scope,
                                         previous=self.pruning_state.masks, unit_scores=scores)
        masks = {name: full_tensor(mask) for name, mask in masks.items()}  # whole masks on every process
        # Masks only ever grow: a scheduled sparsity below what the model already has (a pruned model
        # pruned again from initial_sparsity=0) keeps every weight pruned before.
        for name, previous in self.pruning_state.masks.items():
            masks[name] = masks[name] | previous.to(masks[name].device) if name in masks else previous
        self.pruning_state.masks = _broadcast_from_main(masks)
        self.pruning_state.last_pruned_step = step
        self._arm(model, optimizer)

    def _unit_statistic(self, model: nn.Module):
        """What the criterion declares for ranking whole units: an `Importance` measured once, on the model as it
        is at the first pruning event (or given), or a per-layer statistic recomputed at every event."""
        if self.criterion.needs != "unit_activations":
            targets = find_target_modules(model, self.config.target_modules)
            return collect_statistics(model, self._calibration, targets, self.criterion)
        if self.importance is None:
            self.importance = compute_importance(model, self.calibration_dataset,
                                                 num_samples=self.config.calibration_samples)
        return self.importance

    def _criterion_masks(self, model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
        """The criterion's masks per row, per layer, globally or N:M (see `wanda.criterion_masks`)."""
        targets = find_target_modules(model, self.config.target_modules)
        # Recomputed at every event: the activations change as the model trains and is pruned.
        statistics = collect_statistics(model, self._calibration, targets, self.criterion)
        pattern_n = None
        if self.config.pattern is not None:
            # A gradual N:M schedule prunes floor(s * M) of every M inputs, reaching N at the target s = N/M.
            n, m = self.config.pattern
            pattern_n = min(n, int(sparsity * m + 1e-9))
        previous = {name: mask for name, mask in self.pruning_state.masks.items() if name.removesuffix(".weight") in targets}
        with unsharded(model):  # FSDP2: rows and N:M blocks are scored on whole weights (collective)
            return criterion_masks(targets, sparsity, self.config.scope, statistics,
                                   self.config.structure if self.config.pattern else None, previous, pattern_n=pattern_n,
                                   score=self.criterion.score)

    @torch.no_grad()
    def _rewind(self, model: nn.Module, optimizer=None) -> None:
        """Lottery-ticket rewinding: surviving weights go back to their values at `rewind_step`."""
        params = dict(model.named_parameters())
        for name, value in self.pruning_state.rewind_weights.items():
            params[name].copy_(value.to(params[name].device))
        apply_masks(model, self.pruning_state.masks)
        if optimizer is not None:
            # The next round trains the rewound weights from a fresh optimizer, as in Frankle & Carbin 2019.
            getattr(optimizer, "optimizer", optimizer).state.clear()
        self.pruning_state.imp_round += 1
        self.pruning_state.record = self._info()
        record_sparsity(model)

    def _save_round(self, args, model: nn.Module) -> None:
        """Keep the trained model of each IMP round in `output_dir/imp-round-{r}`."""
        if not args.should_save:
            return
        target = Path(args.output_dir) / f"imp-round-{self.pruning_state.imp_round}"
        with publishing(target) as partial:
            save_pruned_model(model, partial)

    def _log(self, model: nn.Module, state, control) -> None:
        report = sparsity_report(extract_model_from_parallel(model))
        logs = {"sparsity/global": report.global_sparsity, "sparsity/model": report.model_sparsity}
        if self.schedule is not None:
            logs["sparsity/scheduled"] = self.schedule.sparsity_at(state.global_step)
        if self.config.schedule == "imp":
            logs["sparsity/imp_round"] = self.pruning_state.imp_round
        logs.update({f"sparsity/{key}": value for key, value in report.grouped().items()})
        trainer = running_trainer(self)
        if trainer is not None:
            # Trainer.log clears control.should_log; keep the trainer's own loss log due at this step.
            should_log = control.should_log
            trainer.log(logs)
            control.should_log = should_log
        else:
            state.log_history.append({**logs, "step": state.global_step})


def _read_trainer_state_step(folder: Path) -> int | None:
    try:
        saved = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    step = saved.get("global_step") if isinstance(saved, dict) else None
    return step if isinstance(step, int) else None


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: param.detach().cpu().clone() for name, param in model.named_parameters() if param.requires_grad}


def _zero_optimizer_state(optimizer, masked_params) -> None:
    if optimizer is None:
        return
    state = getattr(optimizer, "optimizer", optimizer).state
    with torch.no_grad():
        for param, mask in masked_params:
            for value in state.get(param, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                    value.masked_fill_(mask, 0)


def _broadcast_from_main(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Make every rank use rank 0's masks (they agree already when weights agree; this guarantees it)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return masks
    if torch.distributed.get_world_size() == 1:
        return masks
    synced = {}
    for name in sorted(masks):
        as_bytes = masks[name].to(torch.uint8)
        torch.distributed.broadcast(as_bytes, src=0)
        synced[name] = as_bytes.bool()
    return synced


def _uses_deepspeed(args) -> bool:
    """DeepSpeed set in the arguments or by `accelerate launch` (which exports ACCELERATE_USE_DEEPSPEED)."""
    return bool(getattr(args, "deepspeed", None)) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


@torch.no_grad()
def _check_masks_fit_weights(masks: dict[str, torch.Tensor], model: nn.Module, folder: Path,
                             deepspeed: bool = False) -> None:
    """Raise unless every weight the masks prune is zero in the resumed model.

    A checkpoint's weights are saved with its masks applied, so masks that leave a pruned weight non-zero were
    saved by another run (a plain Trainer cannot see the folder `train(resume_from_checkpoint=...)` was given and
    reads `output_dir/checkpoint-{step}`): arming them would zero weights this run kept and let its pruned ones grow
    back. Under DeepSpeed a resume may copy the optimizer's fp32 master weights, in which pruned entries need not be
    zero, into the model: there a mismatch is only a warning, and the masks are armed as before. Collective under
    FSDP2 (every process checks the same weights in the same order).
    """
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        param = params[name]
        if tuple(param.shape) != tuple(mask.shape):  # not held whole nor as an FSDP2 DTensor (e.g. ZeRO-3)
            continue
        alive = int(full_tensor(((param != 0) & shard_like(mask.to(param.device), param)).sum()))
        if alive and deepspeed:
            logger.warning(f"{alive} weights of {name} that the masks in {folder} prune are not zero in the resumed "
                           "model (DeepSpeed may restore them from its fp32 master weights): the masks are applied "
                           "again. Check that this is the checkpoint you meant to resume.")
            return
        if alive:
            raise ValueError(
                f"The pruning masks in {folder} do not belong to the weights this run resumes: {alive} weights of "
                f"{name} they prune are not zero. A plain Trainer reads the masks of output_dir/checkpoint-<step> "
                "when train(resume_from_checkpoint=...) names a folder elsewhere: pass that folder as "
                "TrainingArguments(resume_from_checkpoint=...) too, or use a trainer with BigSmallTrainerMixin "
                "(BigSmallTrainer, DistillationTrainer), which records it."
            )

