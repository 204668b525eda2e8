"""CPU package and DRAM energy from Intel/AMD RAPL counters in `/sys/class/powercap`.

Each package zone (`intel-rapl:N`, named `package-N`) and its `dram` sub-zone expose `energy_uj`,
a counter in microjoules that wraps to zero after `max_energy_range_uj`. `core` and `uncore`
sub-zones are part of the package and are not added again. The counters measure the whole socket,
all processes included, so they are keyed once per machine (`rapl/<host>/package-0`).

Since Linux 5.10 `energy_uj` is readable by root only; the meter then raises `MeterUnavailable`
with what to do, and the caller falls back to the CPU-time estimate.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from .base import EnergyMeter, MeterUnavailable, hostname, logger

DEFAULT_POWERCAP_ROOT = "/sys/class/powercap"


class RaplZone:
    def __init__(self, path: Path, name: str):
        self.path = path
        self.name = name
        self.max_range_uj = int((path / "max_energy_range_uj").read_text())
        self.last_uj = self.read_raw()
        self.total_uj = 0

    def read_raw(self) -> int:
        return int((self.path / "energy_uj").read_text())

    def update(self) -> None:
        raw = self.read_raw()
        delta = raw - self.last_uj
        if delta < 0:  # the counter wrapped past max_energy_range_uj back to zero
            delta += self.max_range_uj
        self.total_uj += delta
        self.last_uj = raw


def find_rapl_zones(root: str | os.PathLike = DEFAULT_POWERCAP_ROOT) -> list[tuple[Path, str]]:
    """(folder, key suffix) of every package zone and its DRAM sub-zone under `root`."""
    root = Path(root)
    zones = []
    if not root.is_dir():
        return zones
    for package in sorted(root.glob("intel-rapl:*")):
        if package.name.count(":") != 1 or not (package / "name").is_file():
            continue
        package_name = (package / "name").read_text().strip()
        if not package_name.startswith("package"):
            continue  # e.g. `psys`, which overlaps the packages
        zones.append((package, package_name))
        for sub in sorted(package.glob(f"{package.name}:*")):
            if (sub / "name").is_file() and (sub / "name").read_text().strip() == "dram":
                zones.append((sub, f"{package_name}/dram"))
    return zones


class _Poller(threading.Thread):
    """Reads a meter's counters every `interval_s` while the meter lives, so that no window, however long and
    whatever runs in it (an evaluation, `measure_work`, `measure_inference`), spans a counter's whole range."""

    def __init__(self, meter: RaplMeter, interval_s: float):
        super().__init__(daemon=True, name="hf_bigsmall-rapl-poller")
        self._meter = weakref.ref(meter)  # the thread does not keep the meter alive
        self._interval_s = interval_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self._interval_s):
            meter = self._meter()
            if meter is None:
                return
            try:
                meter.poll()
            except Exception as error:  # one failed read (a busy sysfs) must not end the protection for good
                logger.debug("RAPL background read failed (%s); trying again in %.0f s", error, self._interval_s)
            del meter

    def stop(self) -> None:
        self._stop_event.set()


class RaplMeter(EnergyMeter):
    """Reads RAPL package and DRAM counters, handling wraparound.

    Args:
        root (`str`, *optional*, defaults to `/sys/class/powercap`): the powercap folder; tests
            point it at a tree written in a temporary folder.
        poll_interval_s (`float`, *optional*, defaults to 10): the counters are read at least this
            often, by a background thread while the meter lives, so that a counter never wraps twice
            between two reads (a 262 kJ range wraps after about 20 minutes at 200 W) in any window;
            `poll()` reads them when that long has passed.

    Example:

    ```python
    >>> meter = RaplMeter()  # raises MeterUnavailable without readable counters
    >>> meter.read()  # {'rapl/myhost/package-0': 12.5, 'rapl/myhost/package-0/dram': 1.25}
    ```
    """

    energy_source = "rapl"
    measures_cpu = True

    def __init__(self, root: str | os.PathLike = DEFAULT_POWERCAP_ROOT, poll_interval_s: float = 10.0):
        self.root = str(root)
        self.poll_interval_s = poll_interval_s
        found = find_rapl_zones(root)
        if not found:
            raise MeterUnavailable(f"no RAPL package zone under {self.root}")
        self.zones = []
        for path, name in found:
            try:
                self.zones.append(RaplZone(path, name))
            except PermissionError as error:
                raise MeterUnavailable(
                    f"RAPL counters are not readable ({error.filename}: permission denied; root-only "
                    "since Linux 5.10). To measure instead of estimating, run "
                    f"`sudo chmod o+r {self.root}/intel-rapl:*/energy_uj {self.root}/intel-rapl:*/*/energy_uj`"
                ) from error
            except (OSError, ValueError) as error:
                raise MeterUnavailable(f"RAPL zone {path} is unreadable: {error}") from error
        self._host = hostname()
        self._lock = threading.Lock()  # the poller and the caller update the same zones
        self._last_poll = time.monotonic()
        self._poller = _Poller(self, poll_interval_s)
        self._poller.start()

    def poll(self) -> None:
        if time.monotonic() - self._last_poll >= self.poll_interval_s:
            self.read()

    def read(self) -> dict[str, float]:
        with self._lock:
            for zone in self.zones:
                zone.update()
            self._last_poll = time.monotonic()
            return {f"rapl/{self._host}/{zone.name}": zone.total_uj / 1e6 for zone in self.zones}

    def close(self) -> None:
        self._poller.stop()

    def describe(self) -> dict[str, Any]:
        return {
            "energy_source": self.energy_source,
            "method": "RAPL energy counters (whole CPU package and DRAM, all processes)",
            "zones": [zone.name for zone in self.zones],
        }
