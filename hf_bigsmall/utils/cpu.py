"""How much CPU other processes took while a block of code ran: the load a timing cannot see in itself.

The 1-minute load average counts the measuring process's own threads (a run with 2 torch threads on a
2-core machine sits at about 2 with nothing else running), and lags a minute behind. What spoils a
timing is work *other* processes did during it: the machine's busy CPU time (Linux `/proc/stat`) minus
this process's own (`os.times`, every thread), over the wall time, in cores.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_PROC_STAT = Path("/proc/stat")


def busy_cpu_seconds() -> float | None:
    """CPU-seconds the whole machine has spent busy since boot, or None where `/proc/stat` is not readable."""
    try:
        fields = _PROC_STAT.read_text().split("\n", 1)[0].split()
        ticks = [int(value) for value in fields[1:9]]
        ticks_per_second = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    if fields[0] != "cpu" or len(ticks) < 8:
        return None
    # user nice system idle iowait irq softirq steal: all but idle and iowait is busy (guest time is in user)
    return (sum(ticks[:3]) + sum(ticks[5:8])) / ticks_per_second


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class OtherCpuWork:
    """Cores' worth of CPU that other processes used while the `with` block ran (`cores`, None if unknown).

    Example:

    ```python
    >>> with OtherCpuWork() as others:
    ...     run_the_timing()
    >>> others.cores  # 0.0 on a machine this process had to itself
    ```
    """

    def __init__(self) -> None:
        self.cores: float | None = None

    def __enter__(self) -> OtherCpuWork:
        self._busy, self._own, self._wall = busy_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        busy, wall = busy_cpu_seconds(), time.perf_counter() - self._wall
        if busy is None or self._busy is None or wall <= 0:
            return
        others = (busy - self._busy) - (_own_cpu_seconds() - self._own)
        # clock ticks round both counts to 10 ms: never report a negative share
        self.cores = round(max(others, 0.0) / wall, 3)
