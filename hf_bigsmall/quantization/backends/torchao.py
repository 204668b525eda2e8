"""The `torchao` backend: int8 / int4 weight-only on CUDA, a plain transformers checkpoint (`../torchao.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...utils.heads import TEXT_CLASSIFICATION, TEXT_GENERATION
from ..torchao import INT4_GROUP_SIZE, quantize_torchao
from .base import QuantizationBackend, register_quantization_backend
from .folder import ExportJob, write_quantized_folder

NAME = "torchao"
# int4 weight-only runs on torchao's tinygemm kernels, which need bf16 tensor cores (Ampere, sm_80, or newer)
INT4_MIN_CAPABILITY = (8, 0)


def check(method: str, device: str) -> None:
    """A visible CUDA GPU, recent enough for int4's kernels."""
    import torch

    if not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA GPU is visible: quantize for the CPU with "
                         "method='int8', device='cpu', or run on a GPU machine.")
    capability = torch.cuda.get_device_capability()
    if method == "int4" and capability < INT4_MIN_CAPABILITY:
        raise ValueError(f"int4 weight-only needs a GPU of compute capability {INT4_MIN_CAPABILITY} or newer "
                         f"(its kernels use bf16 tensor cores); this one has {capability}: use method='int8'.")


def _write(job: ExportJob) -> None:
    quantize_torchao(job.model_dir, job.folder, job.method, job.auto_class, job.record)


def export(model_dir: Path, output_dir: Path, method: str) -> Path:
    """Load the model quantized on the GPU through `TorchAoConfig` and save it (see `torchao.quantize_torchao`)."""
    return write_quantized_folder(model_dir, output_dir, backend=NAME, method=method, device="cuda", write=_write)


def how_to_use(where: str, record: dict[str, Any], *, architecture: str | None = None, **context: Any) -> str:
    """Plain transformers on a GPU: the `TorchAoConfig` is in config.json."""
    loader = architecture or "AutoModel"
    return "\n".join(["```python", f"from transformers import {loader}", "",
                      f'model = {loader}.from_pretrained("{where}", device_map="cuda")', "```"])


register_quantization_backend(QuantizationBackend(
    name=NAME,
    tasks=(TEXT_CLASSIFICATION, TEXT_GENERATION),
    devices=("cuda",),
    schemes={"int8": "int8 weight-only (Int8WeightOnlyConfig)",
             "int4": f"int4 weight-only, groups of {INT4_GROUP_SIZE} (Int4WeightOnlyConfig)"},
    export=export,
    how_to_use=how_to_use,
    check=check,
    extra="torchao",
    requires=("torchao",),
    auto_devices=("cuda",),
    description="int8/int4 weight-only quantization on CUDA with torchao",
    loading='{auto_class}.from_pretrained("{path}", device_map="cuda")  # the TorchAoConfig is in config.json',
))
