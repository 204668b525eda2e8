"""The `gguf` backend: Llama-family and GPT-2 causal LMs as one GGUF file for llama.cpp, llama-cpp-python and Ollama.

Export in `quantization/gguf_export.py` (the `gguf` package, no llama.cpp needed but for Q4_K_M);
the runner `compare_models` measures a GGUF folder with is llama.cpp itself (`gguf_runner.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...utils.heads import TEXT_GENERATION
from ..gguf_export import GGUF_METHODS, SCHEMES, export_gguf
from ..gguf_runner import LlamaCppModelRunner, is_gguf_folder
from .base import QuantizationBackend, register_quantization_backend

NAME = "gguf"


def export(model_dir: Path, output_dir: Path, method: str) -> Path:
    """One GGUF file of type `method`, the tokenizer embedded (see `gguf_export.export_gguf`)."""
    return export_gguf(model_dir, output_dir, method=method)


def how_to_use(where: str, record: dict[str, Any], *, from_hub: bool = False, **context: Any) -> str:
    """llama.cpp, llama-cpp-python, Ollama and transformers lines, run from inside the folder."""
    file_name = record["file"]
    hub = [f'llm = Llama.from_pretrained("{where}", filename="{file_name}")  # from the Hub'] if from_hub else []
    return "\n".join([
        "From inside this folder:", "", "```bash",
        f'llama-cli -m {file_name} -p "Once upon a time" -n 32',
        f"printf 'FROM ./{file_name}\\n' > Modelfile && ollama create this-model -f Modelfile", "```", "",
        "```python", "from llama_cpp import Llama", "",
        f'llm = Llama(model_path="{file_name}")', *hub, 'print(llm("Once upon a time", max_tokens=32))', "```", "",
        "```python", "from transformers import AutoModelForCausalLM", "",
        f'model = AutoModelForCausalLM.from_pretrained(".", gguf_file="{file_name}")  # dequantized to float32',
        "```"])


register_quantization_backend(QuantizationBackend(
    name=NAME,
    tasks=(TEXT_GENERATION,),
    devices=("cpu",),
    schemes={**{method: SCHEMES[method.upper()] for method in GGUF_METHODS},
             "int8": "= q8_0: " + SCHEMES["Q8_0"],
             "int4": "= q4_k_m where llama-cpp-python is installed (tensors whose rows are not multiples of 256 in "
                     "llama.cpp's fallback types), else q4_0"},
    export=export,
    how_to_use=how_to_use,
    runner=LlamaCppModelRunner,
    model_card=True,
    is_export=is_gguf_folder,
    extra="gguf",
    requires=("gguf",),
    description="GGUF files for llama.cpp and Ollama",
    loading="llama-cli -m {path}/{file}  # or llama_cpp.Llama(...), or Ollama: FROM ./{file}",
))
