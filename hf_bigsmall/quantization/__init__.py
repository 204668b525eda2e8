"""Quantization of a trained model: int8 on CPU with ONNX Runtime, int8/int4 on CUDA with torchao.

```python
from hf_bigsmall.quantization import quantize

quantize("out/student-compact", "out/student-int8")                       # CPU: ONNX Runtime dynamic int8
quantize("out/student-compact", "out/student-int4", method="int4", device="cuda")   # GPU: torchao
quantize("out/student", "out/student-genai-int4", method="int4", backend="onnxruntime-genai")  # LLM serving, CPU
```

Needs `pip install "hf-bigsmall[onnx]"` (CPU), `pip install "hf-bigsmall[torchao]"` (CUDA) or
`pip install "hf-bigsmall[genai]"` (ONNX Runtime GenAI).
"""

from .config import QuantizationPlan, is_onnx_folder, plan_quantization, quantization_of
from .genai import GenAIModelRunner, export_genai, is_genai_folder
from .quantize import quantize
from .runner import OnnxModelRunner

__all__ = ["GenAIModelRunner", "OnnxModelRunner", "QuantizationPlan", "export_genai", "is_genai_folder", "is_onnx_folder",
           "plan_quantization", "quantization_of", "quantize"]
