"""The `onnxruntime` backend: classifiers (and plain causal LMs) as dynamic int8 ONNX on the CPU.

The fastest CPU backend measured for classifiers (BENCHMARKS.md, "Quantization"), so `backend="auto"`
picks it on the CPU. Export and runner live in `quantization/onnx.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...utils.heads import TEXT_CLASSIFICATION, TEXT_GENERATION
from ..config import is_onnx_folder
from ..onnx import OnnxModelRunner, export_onnx_int8
from .base import QuantizationBackend, register_quantization_backend
from .folder import ExportJob, write_quantized_folder

NAME = "onnxruntime"


def _write(job: ExportJob) -> None:
    import onnxruntime

    from ...pruning.parameters import count_parameters

    model = job.auto_class.from_pretrained(job.model_dir).eval()
    parameters, nonzero, sparsity = count_parameters(model, job.model_dir)
    job.record.update(backend_version=onnxruntime.__version__, parameters=parameters, nonzero_parameters=nonzero,
                      sparsity=sparsity)
    job.record.update(export_onnx_int8(model, job.tokenizer, job.folder, job.task))


def export(model_dir: Path, output_dir: Path, method: str) -> Path:
    """Export to ONNX, check it against PyTorch, quantize to dynamic int8 (see `onnx.export_onnx_int8`)."""
    return write_quantized_folder(model_dir, output_dir, backend=NAME, method=method, device="cpu", write=_write)


def how_to_use(where: str, record: dict[str, Any], **context: Any) -> str:
    """ONNX Runtime alone, with the folder's tokenizer (from the Hub: `snapshot_download(repo_id)` first)."""
    return "\n".join([
        "```python", "import onnxruntime", "from transformers import AutoTokenizer", "",
        f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        f'session = onnxruntime.InferenceSession("{where}/{record.get("file", "model.onnx")}")',
        'logits = session.run(["logits"], dict(tokenizer("Some text", return_tensors="np")))[0]', "```"])


register_quantization_backend(QuantizationBackend(
    name=NAME,
    tasks=(TEXT_CLASSIFICATION, TEXT_GENERATION),
    devices=("cpu",),
    schemes={"int8": "dynamic quantization: int8 weights (a scale per output channel), activations quantized to "
                     "int8 at run time"},
    export=export,
    how_to_use=how_to_use,
    runner=OnnxModelRunner,
    is_export=is_onnx_folder,
    extra="onnx",
    requires=("onnx", "onnxruntime"),
    auto_devices=("cpu",),
    description="int8 quantization and inference on CPU with ONNX Runtime",
    loading='onnxruntime.InferenceSession("{path}/model.onnx")  # or hf_bigsmall.quantization.OnnxModelRunner',
))
