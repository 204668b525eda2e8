"""Several meters read as one, with a labelled fallback when one of them fails mid-run.

`EnergyTracker.read()` returns cumulative joules per device key. A meter that raises is
reported once and dropped; what it measured until then is kept, and a CPU meter is replaced by the
CPU-time estimate from that moment on, so a window never loses what was already counted and the
label (`energy_source`) says which meters contributed. `window(start, end)` turns two readings
into the energy of the interval between them.
"""

from __future__ import annotations

from typing import Any, Callable

from .meters import CpuTimeEstimateMeter, EnergyMeter, warn_once


def subtract(end: dict[str, float], start: dict[str, float]) -> dict[str, float]:
    """Energy per key between two cumulative readings (a key absent at `start` started at 0)."""
    return {key: max(0.0, value - start.get(key, 0.0)) for key, value in end.items()}


def source_of(key: str) -> str:
    return key.split("/", 1)[0]


def label_sources(readings: dict[str, float] | list[str]) -> str:
    """`"estimate"`, `"nvml+rapl"`, ...: the sources behind a set of readings, sorted.

    For a window (a dict), only keys that measured energy in it name it: a meter that failed
    earlier stays in the readings at zero and should not label later windows.
    """
    if isinstance(readings, dict) and any(value > 0 for value in readings.values()):
        readings = [key for key, value in readings.items() if value > 0]
    return "+".join(sorted({source_of(key) for key in readings})) or "none"


def is_estimate(label: str) -> bool:
    """True when a CPU-time estimate or CodeCarbon's model contributed to a figure."""
    return any(source in ("estimate", "codecarbon") for source in label.split("+"))


class EnergyTracker:
    """Reads a list of meters, replacing a failing CPU meter by `fallback()`.

    Example:

    ```python
    >>> tracker = EnergyTracker([CpuTimeEstimateMeter()])
    >>> start = tracker.read()
    >>> ...  # work
    >>> window = subtract(tracker.read(), start)  # {'estimate/myhost/1234': 0.8}
    ```
    """

    def __init__(self, meters: list[EnergyMeter], fallback: Callable[[], EnergyMeter] | None = None):
        self.meters = list(meters)
        self._fallback = fallback or CpuTimeEstimateMeter
        self._last: dict[int, dict[str, float]] = {id(m): {} for m in self.meters}
        self._frozen: dict[str, float] = {}
        self.failures: list[str] = []
        self._described = [m.describe() for m in self.meters]

    def poll(self) -> None:
        for meter in list(self.meters):
            try:
                meter.poll()
            except Exception as error:
                self._fail(meter, error)

    def read(self) -> dict[str, float]:
        current: dict[str, float] = {}
        for meter in list(self.meters):
            try:
                values = meter.read()
            except Exception as error:
                self._fail(meter, error)
                continue
            self._last[id(meter)] = values
            current.update(values)
        return {**self._frozen, **current}

    def _fail(self, meter: EnergyMeter, error: Exception) -> None:
        self.meters.remove(meter)
        kept = self._last.pop(id(meter), {})
        self._frozen.update(kept)  # what it counted before failing stays counted
        message = f"{meter.energy_source} meter failed ({type(error).__name__}: {error}); the {sum(kept.values()):.1f} J it measured are kept"
        if meter.measures_cpu:
            replacement = self._fallback()
            self.meters.append(replacement)
            self._last[id(replacement)] = {}
            self._described.append(replacement.describe())
            message += f", and CPU energy is now measured by '{replacement.energy_source}'"
        else:
            message += ", and that device is no longer measured"
        self.failures.append(message)
        warn_once(message + ".")

    @property
    def energy_source(self) -> str:
        """Every source that contributed so far, e.g. `"estimate"` or `"nvml+rapl"`."""
        return label_sources([*self._frozen, *(m.energy_source + "/" for m in self.meters)])

    @property
    def is_estimate(self) -> bool:
        return is_estimate(self.energy_source)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"energy_source": self.energy_source, "meters": self._described}
        if self.failures:
            info["failures"] = list(self.failures)
        return info

    def hardware(self) -> str:
        """What was measured, in words: `"AMD EPYC (2 threads)"`, `"... + NVIDIA H100 x1"`."""
        return describe_hardware(self.meters)

    def close(self) -> None:
        for meter in self.meters:
            meter.close()


def describe_hardware(meters: list[EnergyMeter]) -> str:
    import os

    from .meters.estimate import cpu_model_name

    parts = [f"{cpu_model_name()} ({os.cpu_count()} threads)"]
    gpus: list[str] = [name for meter in meters for name in getattr(meter, "names", [])]
    for name in sorted(set(gpus)):
        parts.append(f"{name} x{gpus.count(name)}")
    return " + ".join(parts)
