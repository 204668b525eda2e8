"""`BigSmallTrainerMixin`: the one seam between a `transformers.Trainer` and the kit's callbacks.

`MagnitudePruningCallback` and `EnergyCallback` do their core work through documented
`TrainerCallback` events alone (the model, optimizer and scheduler they receive, `state`,
`args.output_dir` + `state.global_step` for the checkpoint just saved). Five things have no
event: logging through `Trainer.log` (so figures reach every `report_to` integration), the start
of an `evaluate`/`predict` call, a `save_model` outside a checkpoint, the folder a resumed run
comes from, and a `train` that ends by an exception. A trainer class that mixes in `BigSmallTrainerMixin` provides them by overriding
public `Trainer` methods, and tells the kit's callbacks through the methods below.

The callbacks ask `running_trainer(callback)` (in `hf_bigsmall.trainer_context`, which imports
nothing of the kit) which such trainer is running, so they never import this module, and this
module can import the model card it writes.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from typing import Any

from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from .hub.trainer_card import write_trainer_card
from .trainer_context import RUNNING_TRAINER, running_trainer

__all__ = ["BigSmallTrainer", "BigSmallTrainerMixin", "running_trainer"]


def _resolve_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """The folder `Trainer.train(resume_from_checkpoint=...)` resumes from (`True`: the last in output_dir)."""
    if isinstance(resume_from_checkpoint, bool):
        return get_last_checkpoint(output_dir) if resume_from_checkpoint and os.path.isdir(output_dir) else None
    return os.fspath(resume_from_checkpoint) if resume_from_checkpoint is not None else None


class BigSmallTrainerMixin:
    """Mix into a `Trainer` class to give the kit's callbacks what the Trainer's events do not carry.

    Put it first in the bases: `class MyTrainer(BigSmallTrainerMixin, Trainer)` (a class that lists it
    after a Trainer is a `TypeError` when it is defined, since the Trainer's methods would hide it; or use
    [`BigSmallTrainer`], which is exactly that; `DistillationTrainer` has it built in). It overrides
    public `Trainer` methods only, each calling the Trainer's own:

    - `train`, `evaluate`, `predict`, `push_to_hub`: mark this trainer as running, so kit callbacks
      log through `Trainer.log` (reaching every `report_to` integration) instead of appending to
      `state.log_history` only. `train` also records `resumed_checkpoint`, the folder it resumes
      from, where the pruning callback reads its masks wherever that checkpoint was moved. When
      `train` ends by an exception it calls `on_train_abort(args, state, control)` on the callbacks
      that define it, so an `EnergyCallback` stops counting training (and in one process writes the
      energy used so far) before it re-raises.
    - `evaluation_loop`: calls `on_evaluation_loop_begin(args, state, control, description=...,
      metric_key_prefix=...)` and `on_evaluation_loop_end(..., output=...)` on the callbacks that
      define them, so every evaluation and prediction is a measured energy window.
    - `save_model`: calls `on_model_save_begin(args, state, control, model=..., output_dir=...)`
      before the Trainer saves and `on_model_save(...)` after, so every `trainer.save_model()`,
      during training too, writes a `sparsity` block measured at the save into `config.json` and
      `sparsity_masks.safetensors` beside the weights.
    - `create_model_card` (also run by `push_to_hub`): writes README.md once, as the kit's card
      (how the model was distilled and pruned, `co2_eq_emissions` from `energy.json`) with the
      Trainer's training sections kept below; see `hf_bigsmall.hub.trainer_card.write_trainer_card`.

    Example:

    ```python
    >>> from transformers import Trainer
    >>> from hf_bigsmall import BigSmallTrainerMixin, EnergyCallback, MagnitudePruningCallback

    >>> class MyTrainer(BigSmallTrainerMixin, Trainer):
    ...     pass
    >>> trainer = MyTrainer(model=model, args=args, train_dataset=train, eval_dataset=test,
    ...                     callbacks=[MagnitudePruningCallback(target_sparsity=0.5), EnergyCallback()])
    >>> trainer.train()
    >>> trainer.save_model()  # weights with zeros, config.json "sparsity", sparsity_masks.safetensors
    >>> trainer.create_model_card()  # README.md with the pruning section and co2_eq_emissions
    ```
    """

    #: The checkpoint folder the last `train()` call resumed from, or None.
    resumed_checkpoint: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # With a Trainer first in the bases, the Trainer's own train/save_model/... come first in the MRO and
        # the mixin's are never called: the class would train without a word about what it lacks.
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        if Trainer in mro and mro.index(Trainer) < mro.index(BigSmallTrainerMixin):
            bases = ", ".join(base.__name__ for base in cls.__bases__ if base is not BigSmallTrainerMixin)
            raise TypeError(
                f"{cls.__name__} puts BigSmallTrainerMixin after a Trainer class in its bases, so the Trainer's methods hide the "
                f"mixin's and the kit's callbacks would silently miss what it provides: write "
                f"`class {cls.__name__}(BigSmallTrainerMixin, {bases})` (the mixin first)."
            )

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        token = RUNNING_TRAINER.set(self)
        try:
            yield
        finally:
            RUNNING_TRAINER.reset(token)

    def _call_kit_event(self, event: str, **kwargs: Any) -> None:
        for callback in list(self.callback_handler.callbacks):
            hook = getattr(callback, event, None)
            if callable(hook):
                hook(self.args, self.state, self.control, **kwargs)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        self.resumed_checkpoint = _resolve_checkpoint(resume_from_checkpoint, self.args.output_dir)
        with self._running():
            try:
                return super().train(resume_from_checkpoint, *args, **kwargs)
            except BaseException:
                # no Trainer event says that training stopped here (KeyboardInterrupt, an error in a step)
                self._call_kit_event("on_train_abort")
                raise

    def evaluate(self, *args: Any, **kwargs: Any):
        with self._running():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args: Any, **kwargs: Any):
        with self._running():
            return super().predict(*args, **kwargs)

    def push_to_hub(self, *args: Any, **kwargs: Any):
        with self._running():
            return super().push_to_hub(*args, **kwargs)

    def evaluation_loop(self, *args: Any, **kwargs: Any):
        # named through the Trainer's own signature, so a parameter added upstream passes through
        named = inspect.signature(super().evaluation_loop).bind(*args, **kwargs).arguments
        description = named.get("description", "Evaluation")
        prefix = named.get("metric_key_prefix", "eval")
        self._call_kit_event("on_evaluation_loop_begin", description=description, metric_key_prefix=prefix)
        output = super().evaluation_loop(*args, **kwargs)
        self._call_kit_event("on_evaluation_loop_end", description=description, metric_key_prefix=prefix, output=output)
        return output

    def save_model(self, output_dir: str | None = None, *args: Any, **kwargs: Any) -> None:
        folder = output_dir or self.args.output_dir
        with self._running():
            # before the Trainer writes config.json, so what the callbacks record there (the `sparsity`
            # block, measured now) goes into this save, during training as after it
            self._call_kit_event("on_model_save_begin", model=self.model, output_dir=folder)
        super().save_model(output_dir, *args, **kwargs)
        with self._running():
            self._call_kit_event("on_model_save", model=self.model, output_dir=folder)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Write README.md once: the kit's card with the Trainer's training sections kept below it.

        Takes the arguments of `Trainer.create_model_card`. Before the model is saved in
        `output_dir` there is nothing to describe, and the Trainer's own draft is written instead.
        """
        if write_trainer_card(self, *args, **kwargs) is None:
            super().create_model_card(*args, **kwargs)


class BigSmallTrainer(BigSmallTrainerMixin, Trainer):
    """A `transformers.Trainer` with [`BigSmallTrainerMixin`]: the kit's callbacks get everything they offer."""
