"""Quantization of a trained model: int8 on CPU with ONNX Runtime, int8/int4 on CUDA with torchao.

```python
from hf_bigsmall.quantization import quantize

quantize("out/student-compact", "out/student-int8")                       # CPU: ONNX Runtime dynamic int8
quantize("out/student-compact", "out/student-int4", method="int4", device="cuda")   # GPU: torchao
quantize("out/student", "out/student-genai-int4", method="int4", backend="onnxruntime-genai")  # LLM serving, CPU
```

Needs `pip install "hf-bigsmall[onnx]"` (CPU), `pip install "hf-bigsmall[torchao]"` (CUDA),
`pip install "hf-bigsmall[genai]"` (ONNX Runtime GenAI) or `pip install "hf-bigsmall[gguf]"` (llama.cpp).
Each backend is an entry of the registry in `backends/`; `register_quantization_backend` adds your own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_names

# Names are imported when first used: the backend registry (`backends/`) and the records are read by the
# model card, which `quantize` writes into the folders served as they are (GGUF), so importing one of them
# must not import `quantize` back.
_LAZY_IMPORTS: dict[str, str] = {
    "GenAIModelRunner": ".genai",
    "LlamaCppModelRunner": ".gguf_runner",
    "OnnxModelRunner": ".onnx",
    "QuantizationBackend": ".backends",
    "QuantizationPlan": ".plan",
    "export_genai": ".genai",
    "get_quantization_backend": ".backends",
    "is_genai_folder": ".genai",
    "is_onnx_folder": ".config",
    "plan_quantization": ".plan",
    "quantization_backend_names": ".backends",
    "quantization_of": ".config",
    "quantize": ".api",
    "register_quantization_backend": ".backends",
}

__all__ = sorted(_LAZY_IMPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .api import quantize
    from .backends import (
        QuantizationBackend,
        get_quantization_backend,
        quantization_backend_names,
        register_quantization_backend,
    )
    from .config import is_onnx_folder, quantization_of
    from .genai import GenAIModelRunner, export_genai, is_genai_folder
    from .gguf_runner import LlamaCppModelRunner
    from .onnx import OnnxModelRunner
    from .plan import QuantizationPlan, plan_quantization


__getattr__ = lazy_names(__name__, _LAZY_IMPORTS, globals())


def __dir__() -> list[str]:
    return sorted(__all__)
