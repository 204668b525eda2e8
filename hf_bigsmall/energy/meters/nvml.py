"""NVIDIA GPU energy through NVML (`pip install "hf-bigsmall[energy]"`, which installs nvidia-ml-py).

Volta and newer GPUs keep a total-energy counter (`nvmlDeviceGetTotalEnergyConsumption`, in
millijoules since the driver loaded). It is read at window edges after `torch.cuda.synchronize`,
so that queued kernels are counted in the window that launched them. A difference that goes
negative (the driver reloaded and the counter restarted) is dropped rather than subtracted. Older
GPUs have no counter: a background thread samples `nvmlDeviceGetPowerUsage` and integrates it
(trapezoid rule).

Devices are found by UUID, not by index: NVML numbers every GPU of the machine and ignores
`CUDA_VISIBLE_DEVICES`, so CUDA device 0 of a process may be NVML device 3. The UUID is also the
key (`nvml/GPU-...`), so processes sharing a GPU count it once.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ...utils.import_utils import is_pynvml_available
from .base import EnergyMeter, MeterUnavailable


def cuda_device_uuid(index: int) -> str:
    """The NVML UUID (`GPU-xxxxxxxx-...`) of CUDA device `index` as this process numbers it."""
    import torch

    uuid = str(torch.cuda.get_device_properties(index).uuid)
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


class _PowerSampler(threading.Thread):
    """Integrates sampled power (mW) into joules for GPUs without an energy counter."""

    def __init__(self, read_milliwatts, interval_s: float):
        super().__init__(daemon=True, name="hf_bigsmall-gpu-power-sampler")
        self._read_milliwatts = read_milliwatts
        self._interval_s = interval_s
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self.joules = 0.0
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            last_time, last_watts = time.monotonic(), self._read_milliwatts() / 1000
            while not self._stop_event.wait(self._interval_s):
                now, watts = time.monotonic(), self._read_milliwatts() / 1000
                with self._lock:
                    self.joules += (watts + last_watts) / 2 * (now - last_time)
                last_time, last_watts = now, watts
        except Exception as error:  # reported by the next read(), never raised in this thread
            self.error = error

    def total(self) -> float:
        if self.error is not None:
            raise RuntimeError(f"GPU power sampling stopped: {self.error}")
        with self._lock:
            return self.joules

    def stop(self) -> None:
        self._stop_event.set()


class NvmlMeter(EnergyMeter):
    """Energy of the CUDA devices this process uses, from NVML.

    Args:
        devices (`list[int]`, *optional*): CUDA device indices as this process sees them
            (default: the current device).
        sample_interval_s (`float`, *optional*, defaults to 0.1): power-sampling period on GPUs
            without an energy counter.

    Example:

    ```python
    >>> meter = NvmlMeter()  # raises MeterUnavailable without NVML or a GPU
    >>> meter.read()  # {'nvml/GPU-5a1c...': 1520.3}
    ```
    """

    energy_source = "nvml"
    measures_cpu = False

    def __init__(self, devices: list[int] | None = None, sample_interval_s: float = 0.1):
        if not is_pynvml_available():
            raise MeterUnavailable('NVML is not installed: run `pip install "hf-bigsmall[energy]"` to measure GPU energy')
        import pynvml
        import torch

        if not torch.cuda.is_available():
            raise MeterUnavailable("no CUDA device is visible")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            raise MeterUnavailable(f"NVML failed to initialise: {error}") from error
        self._pynvml = pynvml
        self.devices = list(devices) if devices is not None else [torch.cuda.current_device()]
        self.uuids = [cuda_device_uuid(index) for index in self.devices]
        self._handles = [pynvml.nvmlDeviceGetHandleByUUID(uuid) for uuid in self.uuids]
        self._last_mj: dict[str, int] = {}
        self._totals: dict[str, float] = {}
        self._samplers: dict[str, _PowerSampler] = {}
        self.methods: dict[str, str] = {}
        for uuid, handle in zip(self.uuids, self._handles):
            self._totals[uuid] = 0.0
            try:
                self._last_mj[uuid] = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                self.methods[uuid] = "total energy counter"
            except pynvml.NVMLError:  # pre-Volta: no counter, sample the power instead
                sampler = _PowerSampler(lambda h=handle: pynvml.nvmlDeviceGetPowerUsage(h), sample_interval_s)
                sampler.start()
                self._samplers[uuid] = sampler
                self.methods[uuid] = f"power sampled every {sample_interval_s} s"
        names = [pynvml.nvmlDeviceGetName(handle) for handle in self._handles]
        self.names = [name.decode() if isinstance(name, bytes) else str(name) for name in names]  # bytes before v11

    def read(self) -> dict[str, float]:
        import torch

        for index in self.devices:
            torch.cuda.synchronize(index)  # count the kernels already queued in this window
        readings = {}
        for uuid, handle in zip(self.uuids, self._handles):
            if uuid in self._samplers:
                readings[f"nvml/{uuid}"] = self._samplers[uuid].total()
                continue
            now_mj = self._pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            delta_mj = now_mj - self._last_mj[uuid]
            self._last_mj[uuid] = now_mj
            if delta_mj > 0:  # negative: the driver reloaded and the counter restarted
                self._totals[uuid] += delta_mj / 1000
            readings[f"nvml/{uuid}"] = self._totals[uuid]
        return readings

    def describe(self) -> dict[str, Any]:
        return {
            "energy_source": self.energy_source,
            "method": "NVML, per GPU: " + ", ".join(f"{uuid} {m}" for uuid, m in self.methods.items()),
            "gpus": self.names,
        }

    def close(self) -> None:
        for sampler in self._samplers.values():
            sampler.stop()
