"""The `onnxruntime-genai` backend: Llama-family causal LMs for ONNX Runtime GenAI on the CPU, KV cache in the graph.

Export (onnxruntime-genai's own model builder) and runner live in `quantization/genai.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...utils.heads import TEXT_GENERATION
from ..genai import (
    GENAI_BACKEND,
    GENAI_EXTRA,
    GENAI_MODULES,
    GenAIModelRunner,
    export_genai,
    is_genai_folder,
)
from .base import QuantizationBackend, register_quantization_backend


def export(model_dir: Path, output_dir: Path, method: str, calibration: Any = None) -> Path:
    """The builder's export with the kit's measured int4/int8 settings; int4 calibrated by GPTQ when calibration
    data is given (see `genai.export_genai`)."""
    return export_genai(model_dir, output_dir, method, calibration=calibration)


def how_to_use(where: str, record: dict[str, Any], **context: Any) -> str:
    """Greedy generation with onnxruntime-genai alone."""
    return "\n".join(["```python", "import onnxruntime_genai as og", "",
                      f'model = og.Model("{where}")',
                      "tokenizer = og.Tokenizer(model)",
                      "params = og.GeneratorParams(model)",
                      "params.set_search_options(max_length=64, do_sample=False)",
                      "generator = og.Generator(model, params)",
                      'generator.append_tokens(tokenizer.encode("The capital of France is"))',
                      "while not generator.is_done():",
                      "    generator.generate_next_token()",
                      "print(tokenizer.decode(generator.get_sequence(0)))", "```"])


register_quantization_backend(QuantizationBackend(
    name=GENAI_BACKEND,
    tasks=(TEXT_GENERATION,),
    devices=("cpu",),
    # what each scheme stores as the plan states it; the folder's record says it with the exact block settings
    schemes={"fp32": "fp32 weights, KV cache in the graph",
             "int8": "int8 weight-only MatMulNBits, KV cache in the graph",
             "int4": "int4 weight-only MatMulNBits, asymmetric, the output layer and every layer's qkv and down "
                     "projections int8, KV cache in the graph"},
    export=export,
    how_to_use=how_to_use,
    runner=GenAIModelRunner,
    is_export=is_genai_folder,
    extra=GENAI_EXTRA,
    requires=GENAI_MODULES,
    description="exporting and serving causal LMs with ONNX Runtime GenAI",
    loading='onnxruntime_genai.Model("{path}")  # or hf_bigsmall.quantization.GenAIModelRunner',
    calibrated_schemes=("int4",),  # GPTQ on the 4-bit matrices (quantization/gptq.py)
))
