"""Which `BigSmallTrainerMixin` trainer is running now: the one thing the kit's callbacks ask of the seam.

It sits apart from `hf_bigsmall.trainer` and imports nothing of the kit, so the callbacks (energy,
pruning) that read it never depend on the trainer, the model card it writes, or each other.
"""

from __future__ import annotations

import contextvars
from typing import Any

# The mixin trainer whose `train`/`evaluate`/`predict`/`save_model`/`push_to_hub` is running. A
# context variable rather than a reference kept by each callback: `restore_callback_states_from_
# checkpoint` replaces the callbacks with new instances in the middle of `train()`.
RUNNING_TRAINER: contextvars.ContextVar[Any] = contextvars.ContextVar("hf_bigsmall_running_trainer", default=None)


def running_trainer(callback: Any) -> Any | None:
    """The `BigSmallTrainerMixin` trainer running now whose callback list holds `callback`, or None.

    None under a plain `Trainer`, or when the callback is driven by hand: kit callbacks then do
    what the documented events allow (see the README section "Plain Trainer or the seam").
    """
    trainer = RUNNING_TRAINER.get()
    if trainer is None or not any(c is callback for c in trainer.callback_handler.callbacks):
        return None
    return trainer
