"""int8 / int4 weight-only on CUDA with torchao, through transformers' `TorchAoConfig`.

The folder written is a plain transformers checkpoint whose `config.json` carries the
`quantization_config`, so it reloads with `AutoModelFor...from_pretrained(folder, device_map="cuda")`
and nothing from this kit. Weight-only int4 (groups of 128) follows GPTQ/AWQ practice of a scale per
group of input channels (Frantar et al., 2023; Lin et al., 2024).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .record import QuantizationRecord

if TYPE_CHECKING:
    from transformers import TorchAoConfig

INT4_GROUP_SIZE = 128


def torchao_config(method: str) -> TorchAoConfig:
    """The `TorchAoConfig` for `method` ("int8" or "int4")."""
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    if method == "int4":
        return TorchAoConfig(Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE))
    return TorchAoConfig(Int8WeightOnlyConfig())


def quantize_torchao(model_dir: Path, output_dir: Path, method: str, auto_class, record: dict[str, Any]) -> None:
    """Load `model_dir` quantized on the GPU and save it to `output_dir` with the kit's `record`."""
    import torch
    import torchao

    # int4's tinygemm kernels take bf16 activations; int8 weight-only keeps the model's float dtype
    dtype = torch.bfloat16 if method == "int4" else "auto"
    model = auto_class.from_pretrained(model_dir, dtype=dtype, device_map="cuda",
                                       quantization_config=torchao_config(method))
    record = {**record, "format": "safetensors", "backend_version": torchao.__version__}
    QuantizationRecord.from_dict(record).write(model.config)
    # transformers flattens torchao's tensor subclasses into safetensors and rebuilds them on load
    model.save_pretrained(output_dir)
