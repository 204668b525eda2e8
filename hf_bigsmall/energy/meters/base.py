"""The one small interface every energy meter implements.

A meter returns *cumulative* joules since it was created, one number per thing it measures, keyed
by what that thing is (`"nvml/GPU-<uuid>"`, `"rapl/<host>/package-0"`, `"estimate/<host>/<pid>"`).
The key is what makes several processes safe to add up: two processes sharing a GPU or a CPU
package report the same key, and `merge_readings` keeps it once. The first part of a key is the
`energy_source` that produced it.
"""

from __future__ import annotations

import math
import os
import socket
from abc import ABC, abstractmethod
from typing import Any

from transformers.utils import logging

logger = logging.get_logger("hf_bigsmall.energy")

JOULES_PER_KWH = 3.6e6

_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """Log `message` as a warning the first time it is seen in this process only.

    The same as the transformers logger's `warning_once`, with a set that can be emptied, so a
    new run in the same process (or a test) hears about a meter failing again.
    """
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def float_from_env(name: str) -> tuple[float | None, str | None]:
    """The environment variable `name` as a float, or what is wrong with it (None, None if unset)."""
    raw = os.environ.get(name)
    if not raw:
        return None, None
    try:
        value = float(raw)
    except ValueError:
        return None, f"{name}={raw!r} is not a number"
    # float() reads "nan" and "inf", which no range check would catch
    return (value, None) if math.isfinite(value) else (None, f"{name}={raw!r} is not a finite number")


def hostname() -> str:
    return socket.gethostname()


class MeterUnavailable(RuntimeError):
    """Raised by a meter's constructor when its counter cannot be used on this machine."""


class EnergyMeter(ABC):
    """Reads cumulative energy, in joules, of the devices it measures.

    Subclasses set `energy_source` (the label that appears in logs and `energy.json`) and
    `measures_cpu` (whether the CPU-time estimate can stand in for it when it fails).
    """

    energy_source: str = "unknown"
    measures_cpu: bool = True

    @abstractmethod
    def read(self) -> dict[str, float]:
        """Joules consumed since the meter was created, per measured device key."""

    def poll(self) -> None:
        """Called often and cheaply (every training step); meters whose counters wrap read here."""

    def describe(self) -> dict[str, Any]:
        """The meter's parameters, written next to every figure it produced."""
        return {"energy_source": self.energy_source}

    def close(self) -> None:
        """Release background threads or library handles."""
