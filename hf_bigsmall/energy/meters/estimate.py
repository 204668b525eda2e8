"""CPU energy estimated from process CPU time, for machines with no readable counter.

energy = CPU seconds of this process x (TDP / hardware threads). A thread that is busy for one
second is assumed to draw its share of the package's thermal design power; idle power, DRAM and
other processes are not counted. This is a model, not a measurement, so every figure it produces
carries `energy_source="estimate"` and the watts per thread it used and where that number came
from (`user`, `table`, `environment` or `default`).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Any

from .base import EnergyMeter, float_from_env, hostname, warn_once

# Published TDP (W) and hardware threads of common CPUs. Matched as a substring of the model name
# the kernel reports, longest match first.
CPU_TDP_TABLE: dict[str, tuple[float, int]] = {
    "EPYC 9654": (360.0, 192),
    "EPYC 7763": (280.0, 128),
    "EPYC 7742": (225.0, 128),
    "EPYC 7R13": (280.0, 96),
    "Xeon(R) Platinum 8480": (350.0, 112),
    "Xeon(R) Platinum 8380": (270.0, 80),
    "Xeon(R) Platinum 8275CL": (240.0, 48),
    "Xeon(R) Platinum 8259CL": (210.0, 48),
    "Xeon(R) Gold 6248": (150.0, 40),
    "Core(TM) i9-13900K": (125.0, 32),
    "Core(TM) i7-12700": (65.0, 20),
    "Ryzen 9 7950X": (170.0, 32),
    "Ryzen 7 5800X": (105.0, 16),
}
# The median TDP per thread of the table above (3.56 W), rounded: used when nothing better is known.
DEFAULT_WATTS_PER_THREAD = 3.5
# Above this a per-thread figure is a typo (the largest server CPUs draw under 6 W per thread).
MAX_WATTS_PER_THREAD = 50.0
TDP_ENV_VAR = "HF_BIGSMALL_CPU_TDP_WATTS"


def cpu_model_name() -> str:
    """The CPU model as the kernel names it (`/proc/cpuinfo`), or what `platform` knows elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@dataclass(frozen=True)
class CpuPowerModel:
    """Watts drawn by one busy hardware thread, and where that number came from."""

    watts_per_thread: float
    origin: str
    cpu_model: str
    tdp_watts: float | None = None
    threads: int | None = None


def _check_tdp(tdp_watts: float, threads: int) -> str | None:
    """What is wrong with a TDP / thread count pair, or None when it is plausible."""
    if isinstance(tdp_watts, bool) or not isinstance(tdp_watts, (int, float)):
        return f"cpu_tdp_watts must be a number of watts, got {type(tdp_watts).__name__}"
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        return f"cpu_threads must be a positive integer, got {threads!r}"
    if not tdp_watts > 0:
        return f"cpu_tdp_watts must be positive, got {tdp_watts}"
    if tdp_watts / threads > MAX_WATTS_PER_THREAD:
        return (
            f"cpu_tdp_watts={tdp_watts} over {threads} threads is {tdp_watts / threads:.0f} W per "
            f"thread, above the {MAX_WATTS_PER_THREAD:.0f} W no CPU draws: pass the whole package's "
            "TDP and its number of hardware threads"
        )
    return None


def resolve_cpu_power(
    cpu_tdp_watts: float | None = None, cpu_threads: int | None = None, cpu_model: str | None = None
) -> CpuPowerModel:
    """Pick the watts per busy thread: the user's TDP, else `HF_BIGSMALL_CPU_TDP_WATTS`, else the
    table by CPU model, else `DEFAULT_WATTS_PER_THREAD`.

    A bad value passed as an argument raises `ValueError` (it is caught before training starts);
    a bad environment variable is reported and skipped, so a run is never stopped by it.
    """
    cpu_model = cpu_model or cpu_model_name()
    match = max((name for name in CPU_TDP_TABLE if name.lower() in cpu_model.lower()), key=len, default=None)
    table_threads = CPU_TDP_TABLE[match][1] if match else None
    default_threads = table_threads or os.cpu_count() or 1

    if cpu_tdp_watts is not None:
        threads = cpu_threads if cpu_threads is not None else default_threads
        problem = _check_tdp(cpu_tdp_watts, threads)
        if problem:
            raise ValueError(f"{problem}. Leave cpu_tdp_watts unset to use the table or the default.")
        return CpuPowerModel(cpu_tdp_watts / threads, "user", cpu_model, float(cpu_tdp_watts), threads)
    if cpu_threads is not None:
        raise ValueError("cpu_threads is only used with cpu_tdp_watts: pass both, or neither.")

    tdp, problem = float_from_env(TDP_ENV_VAR)
    if tdp is not None:
        problem = _check_tdp(tdp, default_threads)
        if problem is None:
            return CpuPowerModel(tdp / default_threads, "environment", cpu_model, tdp, default_threads)
    if problem:
        warn_once(f"{TDP_ENV_VAR}: {problem}; ignoring it and using the CPU table or the default instead.")

    if match:
        tdp, threads = CPU_TDP_TABLE[match]
        return CpuPowerModel(tdp / threads, f"table ({match}: {tdp:.0f} W / {threads} threads)", cpu_model, tdp, threads)
    return CpuPowerModel(
        DEFAULT_WATTS_PER_THREAD,
        f"default ({DEFAULT_WATTS_PER_THREAD} W per thread; CPU model not in the table)",
        cpu_model,
    )


class CpuTimeEstimateMeter(EnergyMeter):
    """Estimates this process's CPU energy as CPU seconds x watts per hardware thread.

    Each process is its own key (`estimate/<host>/<pid>`): CPU times of different processes never
    overlap, so they add up without double counting. Only this process's threads are counted
    (`time.process_time`), not DataLoader worker processes.

    Args:
        cpu_tdp_watts (`float`, *optional*): the CPU package's TDP; default from the table or 3.5 W
            per thread.
        cpu_threads (`int`, *optional*): hardware threads that TDP covers (default: the table's,
            else `os.cpu_count()`).
        clock (`callable`, *optional*): returns CPU seconds; injectable for tests.

    Example:

    ```python
    >>> meter = CpuTimeEstimateMeter(cpu_tdp_watts=64, cpu_threads=16)  # 4 W per busy thread
    >>> sum(x * x for x in range(10**6)) and None
    >>> meter.read()  # {'estimate/myhost/1234': 0.35}
    ```
    """

    energy_source = "estimate"
    measures_cpu = True

    def __init__(self, cpu_tdp_watts: float | None = None, cpu_threads: int | None = None, clock=None):
        self.power = resolve_cpu_power(cpu_tdp_watts, cpu_threads)
        self._clock = clock or time.process_time
        self._start = self._clock()
        self.key = f"estimate/{hostname()}/{os.getpid()}"

    def cpu_seconds(self) -> float:
        return self._clock() - self._start

    def read(self) -> dict[str, float]:
        return {self.key: self.cpu_seconds() * self.power.watts_per_thread}

    def describe(self) -> dict[str, Any]:
        return {
            "energy_source": self.energy_source,
            "method": "process CPU time x CPU TDP per hardware thread",
            **{k: v for k, v in asdict(self.power).items() if v is not None},
        }
