"""Energy meters behind one interface (`EnergyMeter.read() -> {device key: cumulative joules}`).

`select_meters` picks them for a device: NVML for an NVIDIA GPU, plus RAPL for the CPU when its
counters are readable, else the CPU-time estimate. CodeCarbon is used only when asked for.
"""

from __future__ import annotations

import os
from typing import Literal

from .base import EnergyMeter, MeterUnavailable, logger, warn_once
from .estimate import CpuTimeEstimateMeter, resolve_cpu_power
from .rapl import DEFAULT_POWERCAP_ROOT, RaplMeter

Backend = Literal["auto", "rapl", "estimate", "codecarbon"]
BACKENDS = ("auto", "rapl", "estimate", "codecarbon")

__all__ = [
    "BACKENDS",
    "CpuTimeEstimateMeter",
    "EnergyMeter",
    "MeterUnavailable",
    "RaplMeter",
    "resolve_cpu_power",
    "select_meters",
]


def select_meters(
    device=None,
    *,
    backend: Backend = "auto",
    cpu_tdp_watts: float | None = None,
    cpu_threads: int | None = None,
    country_iso_code: str | None = None,
    powercap_root: str | os.PathLike = DEFAULT_POWERCAP_ROOT,
) -> list[EnergyMeter]:
    """The meters that measure work on `device` (a `torch.device`, `"cuda:0"`, `"cpu"` or None).

    The CPU is always measured (the host process runs the data pipeline even when a GPU does
    the math); a CUDA device adds an NVML meter for it. `backend` picks the CPU meter: `"auto"`
    tries RAPL and falls back to the estimate, reporting why once.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    meters: list[EnergyMeter] = []
    device_str = str(device) if device is not None else "cpu"
    if device_str.startswith("cuda"):
        from .nvml import NvmlMeter

        index = int(device_str.split(":")[1]) if ":" in device_str else None
        try:
            meters.append(NvmlMeter(None if index is None else [index]))
        except MeterUnavailable as error:
            warn_once(f"GPU energy is not measured: {error}.")

    if backend == "codecarbon":
        from .codecarbon import CodeCarbonMeter

        meters.append(CodeCarbonMeter(country_iso_code))
        return meters
    if backend in ("auto", "rapl"):
        try:
            meters.append(RaplMeter(powercap_root))
            return meters
        except MeterUnavailable as error:
            if backend == "rapl" or os.path.isdir(powercap_root):
                warn_once(f"{error}. CPU energy is estimated from process CPU time instead.")
            else:
                logger.info("No RAPL counters on this machine (%s): CPU energy is estimated.", error)
    meters.append(CpuTimeEstimateMeter(cpu_tdp_watts, cpu_threads))
    return meters
