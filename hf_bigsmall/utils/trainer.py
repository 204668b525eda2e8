"""Helpers shared by the callbacks that need the `Trainer` they are attached to."""

from __future__ import annotations

import inspect
import os
from typing import Any


def find_trainer(callback: Any) -> Any | None:
    """Return the `Trainer` whose callback list holds `callback`, found on the call stack.

    `TrainerCallback` events do not carry the trainer, and a callback passed as
    `Trainer(callbacks=[...])` is created before it (as is the new instance made by
    `restore_callback_states_from_checkpoint` on resume). Every event is called from a trainer
    method, so the trainer is the `self` of a calling frame whose `callback_handler` lists the
    callback. Returns `None` when no such frame exists (the callback is driven by hand).
    """
    frame = inspect.currentframe()
    try:
        frame = frame.f_back if frame is not None else None
        while frame is not None:
            candidate = frame.f_locals.get("self")
            handler = getattr(candidate, "callback_handler", None)
            if handler is not None and any(c is callback for c in getattr(handler, "callbacks", [])):
                return candidate
            frame = frame.f_back
        return None
    finally:
        # Frames hold references to their locals; drop ours so no cycle keeps the trainer alive.
        del frame


def resumed_checkpoint(trainer: Any) -> str | None:
    """The folder `trainer.train(resume_from_checkpoint=...)` is resuming from, or None.

    The Trainer does not keep the path it resumes from; its training loop holds it as the local
    `resume_from_checkpoint` (already resolved when `True` was passed). Callbacks that saved files
    beside a checkpoint read them from there, wherever the checkpoint was moved.
    """
    frame = inspect.currentframe()
    try:
        frame = frame.f_back if frame is not None else None
        while frame is not None:
            if frame.f_locals.get("self") is trainer:
                value = frame.f_locals.get("resume_from_checkpoint")
                if isinstance(value, (str, os.PathLike)):
                    return os.fspath(value)
            frame = frame.f_back
        return None
    finally:
        del frame
