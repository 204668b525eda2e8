"""The quantization backends `quantize`, `hf-bigsmall quantize` and `compare_models` know, by name.

A backend is one `QuantizationBackend`: the tasks and devices it serves, its methods (each with the
scheme it stores), the pip extra that installs it, an export function, a runner `compare_models`
measures its folders with, and the "How to use" snippet of the model card. The built-ins
(`onnxruntime`, `onnxruntime-genai`, `gguf`, `torchao`) register themselves below exactly as user code
does:

```python
from hf_bigsmall.quantization.backends import QuantizationBackend, register_quantization_backend

register_quantization_backend(QuantizationBackend(
    name="my-engine", tasks=("text-generation",), devices=("cpu",), schemes={"int8": "int8 weights"},
    export=my_export, how_to_use=lambda where, record, **context: f"```python\\nload({where!r})\\n```"))
quantize("out/student", "out/student-my-engine", backend="my-engine")
```
"""

from __future__ import annotations

from .base import (  # the registry itself; the built-ins below register into it as user code would
    QuantizationBackend,
    auto_backend,
    backend_of_folder,
    get_quantization_backend,
    load_runner,
    quantization_backend_names,
    quantization_backends,
    register_quantization_backend,
)
from .folder import ExportJob, write_quantized_folder
from . import onnxruntime, torchao, onnxruntime_genai, gguf  # noqa: F401,I001  (the built-ins)

__all__ = ["ExportJob", "QuantizationBackend", "auto_backend", "backend_of_folder", "get_quantization_backend",
           "load_runner",
           "quantization_backend_names", "quantization_backends", "register_quantization_backend",
           "write_quantized_folder"]
