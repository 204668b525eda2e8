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
from .quantize import quantize

__all__ = ["GenAIModelRunner", "LlamaCppModelRunner", "OnnxModelRunner", "QuantizationBackend", "QuantizationPlan",
           "export_genai", "get_quantization_backend", "is_genai_folder", "is_onnx_folder", "plan_quantization",
           "quantization_backend_names", "quantization_of", "quantize", "register_quantization_backend"]
