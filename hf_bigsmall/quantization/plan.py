"""Which backend a quantization request means on which device, checked before anything is loaded or written.

`backend="auto"` is chosen per device from measurement (BENCHMARKS.md, "Quantization"): on this kind
of CPU ONNX Runtime's dynamic int8 was several times faster than PyTorch fp32 while torchao's int8
configs ran slower than fp32 (their fast kernels are CUDA kernels), so CPU goes to ONNX Runtime and
CUDA to torchao through transformers' `TorchAoConfig`. Each backend declares its devices and
methods in the registry (`quantization/backends/`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .backends import auto_backend, get_quantization_backend, quantization_backends


@dataclass(frozen=True)
class QuantizationPlan:
    """A checked request: `method` on `device` through `backend`."""

    method: str
    device: str
    backend: str

    @property
    def scheme(self) -> str:
        return get_quantization_backend(self.backend).schemes[self.method]

    @property
    def extra(self) -> str | None:
        return get_quantization_backend(self.backend).extra

    def check_calibration(self) -> None:
        """Raise a `ValueError` unless the backend's export of this method takes calibration data."""
        if self.method in get_quantization_backend(self.backend).calibrated_schemes:
            return
        takers = [f"{entry.name} ({', '.join(entry.calibrated_schemes)})" for entry in quantization_backends()
                  if entry.calibrated_schemes]
        raise ValueError(f"{self.backend} {self.method} takes no calibration data: calibrated quantization is offered "
                         f"by {', '.join(takers) or 'no registered backend'}. Drop the calibration, or choose one of "
                         "those.")


def _unique(values) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def plan_quantization(method: str = "int8", device: str = "cpu", backend: str = "auto") -> QuantizationPlan:
    """Check a request against the registered backends and pick one; raises before anything is loaded or written.

    Raises:
        ValueError: an unknown method, device or backend, a backend that does not serve that
            device or offer that method, int4 on a CPU backend without int4 kernels, or what the
            backend's own `check` refuses (a CUDA request on a machine without a recent enough GPU).
        ImportError: the backend is not installed; the message names the extra to install.
    """
    backends = quantization_backends()
    methods = _unique(m for entry in backends for m in entry.methods)
    devices = _unique(d for entry in backends for d in entry.devices)
    if method not in methods:
        raise ValueError(f"method must be one of {methods}, got {method!r}.")
    if device not in devices:
        raise ValueError(f"device must be one of {devices} (where the quantized model will run), got {device!r}.")
    if backend == "auto":
        entry = auto_backend(device)
        if entry is None:
            raise ValueError(f"No registered backend is picked automatically on {device!r}: name one with backend=.")
    else:
        entry = get_quantization_backend(backend)
    others = [other.name for other in backends if device in other.devices and method in other.methods]
    if method == "int4" and device == "cpu" and method not in entry.methods:
        raise ValueError("int4 weight-only quantization has no fast kernels on CPU here (torchao's int4 kernels are "
                         "CUDA kernels): use method='int8' on CPU, "
                         + "".join(f"backend={name!r} or " for name in others)
                         + "device='cuda' on a GPU.")
    if device not in entry.devices:
        choices = tuple(other.name for other in backends if device in other.devices)
        raise ValueError(f"backend {entry.name!r} does not serve device {device!r}: use one of {choices} or "
                         "backend='auto'.")
    if method not in entry.methods:
        raise ValueError(f"{entry.name} does not offer {method} quantization here: use one of "
                         f"{sorted(entry.methods)}" + (f", or backend {others}" if others else "") + ".")
    if entry.check is not None:
        entry.check(method, device)
    entry.require()
    return QuantizationPlan(method=method, device=device, backend=entry.name)
