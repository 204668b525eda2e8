"""Which quantization a request means on which device, and the checks made before anything is written.

The backend is chosen per device from measurement (BENCHMARKS.md, "Quantization"): on this kind of
CPU ONNX Runtime's dynamic int8 was several times faster than PyTorch fp32 while torchao's int8
configs ran slower than fp32 (their fast kernels are CUDA kernels), so CPU goes to ONNX Runtime and
CUDA to torchao through transformers' `TorchAoConfig`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..utils.files import check_replaceable, is_kit_folder

# key of the record that `quantize` adds to config.json (beside `distillation`, `sparsity`)
QUANTIZATION_KEY = "quantization"
ONNX_FILE = "model.onnx"

METHODS = ("int8", "int4", "fp32")  # fp32: an unquantized engine export (ONNX Runtime GenAI)
DEVICES = ("cpu", "cuda")
# device -> the backend `backend="auto"` picks there, and the backends that device accepts
_AUTO_BACKEND = {"cpu": "onnxruntime", "cuda": "torchao"}
_BACKENDS = {"cpu": ("onnxruntime", "onnxruntime-genai"), "cuda": ("torchao",)}
_EXTRA = {"onnxruntime": "onnx", "torchao": "torchao", "onnxruntime-genai": "genai"}
# what each (backend, method) does, as the config and the model card state it
SCHEMES = {
    ("onnxruntime", "int8"): "dynamic quantization: int8 weights (a scale per output channel), activations "
                             "quantized to int8 at run time",
    ("torchao", "int8"): "int8 weight-only (Int8WeightOnlyConfig)",
    ("torchao", "int4"): "int4 weight-only, groups of 128 (Int4WeightOnlyConfig)",
    # causal LMs served by ONNX Runtime GenAI with a KV cache (genai.py states the block settings)
    ("onnxruntime-genai", "fp32"): "fp32 weights, KV cache in the graph",
    ("onnxruntime-genai", "int8"): "int8 weight-only MatMulNBits, KV cache in the graph",
    ("onnxruntime-genai", "int4"): "int4 weight-only MatMulNBits, KV cache in the graph",
}
# int4 weight-only runs on torchao's tinygemm kernels, which need bf16 tensor cores (Ampere, sm_80, or newer)
_INT4_MIN_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class QuantizationPlan:
    """A checked request: `method` on `device` through `backend`."""

    method: str
    device: str
    backend: str

    @property
    def scheme(self) -> str:
        return SCHEMES[(self.backend, self.method)]

    @property
    def extra(self) -> str:
        return _EXTRA[self.backend]


def plan_quantization(method: str = "int8", device: str = "cpu", backend: str = "auto") -> QuantizationPlan:
    """Check a request and pick its backend; raises before anything is loaded or written.

    Raises:
        ValueError: an unknown method, device or backend, a backend that does not serve that
            device, int4 on a CPU, or a CUDA request on a machine without a (recent enough) GPU.
        ImportError: the backend is not installed; the message names the extra to install.
    """
    from ..utils.import_utils import require

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES} (where the quantized model will run), got {device!r}.")
    backend = _AUTO_BACKEND[device] if backend == "auto" else backend
    if method == "int4" and device == "cpu" and backend != "onnxruntime-genai":
        raise ValueError("int4 weight-only quantization has no fast kernels on CPU here (torchao's int4 kernels are "
                         "CUDA kernels): use method='int8' on CPU, backend='onnxruntime-genai' for a Llama-family "
                         "causal LM, or device='cuda' on a GPU.")
    if backend not in _BACKENDS[device]:
        raise ValueError(f"backend {backend!r} does not serve device {device!r}: use one of "
                         f"{_BACKENDS[device]} or backend='auto'.")
    if (backend, method) not in SCHEMES:
        raise ValueError(f"{backend} does not offer {method} quantization here: use one of "
                         f"{sorted(m for b, m in SCHEMES if b == backend)}.")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but no CUDA GPU is visible: quantize for the CPU with "
                             "method='int8', device='cpu', or run on a GPU machine.")
        capability = torch.cuda.get_device_capability()
        if method == "int4" and capability < _INT4_MIN_CAPABILITY:
            raise ValueError(f"int4 weight-only needs a GPU of compute capability {_INT4_MIN_CAPABILITY} or newer "
                             f"(its kernels use bf16 tensor cores); this one has {capability}: use method='int8'.")
    from ..utils.import_utils import is_onnxruntime_available, is_torchao_available

    if backend == "onnxruntime" and not is_onnxruntime_available():
        require("onnx")
        require("onnxruntime")
    if backend == "torchao" and not is_torchao_available():
        require("torchao")
    if backend == "onnxruntime-genai":
        require("onnxruntime_genai")
        require("onnx_ir")  # the builder imports it without declaring it
    return QuantizationPlan(method=method, device=device, backend=backend)


def quantization_of(model_dir: str | Path) -> dict[str, Any] | None:
    """How a saved folder is quantized: the kit's record, or a description of another quantizer's, or None."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    if config.get(QUANTIZATION_KEY):
        return config[QUANTIZATION_KEY]
    if config.get("quantization_config"):  # torchao, bitsandbytes, GPTQ, a GGUF import ...
        quant_method = config["quantization_config"].get("quant_method", "unknown")
        return {"method": quant_method, "backend": quant_method}
    if (model_dir / ONNX_FILE).is_file() or any(model_dir.glob("*.gguf")):
        return {"method": "unknown", "backend": "onnx" if (model_dir / ONNX_FILE).is_file() else "gguf"}
    return None


def check_full_precision_source(model_dir: str | Path) -> Path:
    """`model_dir` as a Path, once it is a saved model folder that is not quantized already.

    Raises:
        ValueError: no `config.json` there, or the folder holds a quantized model (quantizing it again
            would stack two roundings): the message says to give the full-precision folder.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir} is not a saved model folder (no config.json).")
    existing = quantization_of(model_dir)
    if existing is not None:
        raise ValueError(f"{model_dir} is already quantized ({existing.get('method')} with {existing.get('backend')}): "
                         "give the original full-precision folder instead.")
    return model_dir


def is_onnx_folder(model_dir: str | Path) -> bool:
    """True for a folder written by the ONNX Runtime backend (`model.onnx` beside `config.json`).

    A GenAI export also holds a `model.onnx`, but its graph takes a KV cache: `genai_config.json` tells it apart.
    """
    model_dir = Path(model_dir)
    return ((model_dir / ONNX_FILE).is_file() and (model_dir / "config.json").is_file()
            and not (model_dir / "genai_config.json").is_file())


def check_quantized_output(model_dir: str | Path, output_dir: str | Path) -> None:
    """Refuse an `output_dir` that an export may not write, before anything is written.

    Every backend that writes through the kit's `.partial` folders (ONNX Runtime, torchao, GGUF) follows one
    rule: only a folder the kit wrote *and* whose `config.json` carries a quantization record (an earlier
    quantized export) is replaced. A folder the kit wrote without that record is a trained model (a
    distilled or pruned student, a teacher) and is never replaced by an export of another model.

    Raises:
        ValueError: `output_dir` is `model_dir`, a file or a link, or a folder with something in it that is
            not a quantized folder the kit wrote; the message names it. Nothing is changed.
    """
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if output_dir.resolve() == model_dir.resolve():
        raise ValueError(f"output_dir {output_dir} is the model's own folder: write the quantized model into a new "
                         "folder (the full-precision model stays as it is).")
    # the kit's marker and the kit's quantization record: a GGUF file or another tool's model.onnx says
    # nothing about who owns the rest of the folder, and the marker alone is on every model the kit saves
    if output_dir.is_dir() and not output_dir.is_symlink() and any(output_dir.iterdir()):
        if not (is_kit_folder(output_dir) and _has_kit_record(output_dir)):
            raise ValueError(f"{output_dir} already exists and is not a quantized model folder written by hf_bigsmall: "
                             "it is left as it is, with everything in it. Choose another output_dir, or move or "
                             "delete that folder yourself (only a folder an earlier quantized export wrote is "
                             "replaced).")
    check_replaceable(output_dir)  # a file or a link there is refused too


def _has_kit_record(folder: Path) -> bool:
    """Whether `folder/config.json` carries the kit's own quantization record."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get(QUANTIZATION_KEY), dict)
