"""`QuantizationRecord`: what `quantize` did, kept in the quantized folder's `config.json` (`quantization`).

It renders the card's "Quantization" section, its tags and library, and the "How to use" of the
engine the folder is for.
"""

from __future__ import annotations

import dataclasses
from ..utils.card_text import settings_table
from ..utils.records import ConfigRecord
from .config import QUANTIZATION_KEY

# the settings the card lists, in this order
_CARD_SETTINGS = ("method", "scheme", "backend", "backend_version", "device", "format", "source",
                  "int8_max_logit_change", "max_logit_difference_from_transformers")
# methods of an engine export that keeps float weights (ONNX Runtime GenAI fp32, GGUF F32/F16)
_FLOAT_METHODS = ("fp32", "f32", "f16")


def _gguf_how_to_use(file_name: str, repo_id: str | None) -> list[str]:
    """llama.cpp, llama-cpp-python, Ollama and transformers lines for a GGUF folder (run from inside it)."""
    hub = ([f'llm = Llama.from_pretrained("{repo_id}", filename="{file_name}")  # from the Hub'] if repo_id else [])
    return ["## How to use", "", "From inside this folder:", "", "```bash",
            f'llama-cli -m {file_name} -p "Once upon a time" -n 32',
            f"printf 'FROM ./{file_name}\\n' > Modelfile && ollama create this-model -f Modelfile", "```", "",
            "```python", "from llama_cpp import Llama", "",
            f'llm = Llama(model_path="{file_name}")', *hub, 'print(llm("Once upon a time", max_tokens=32))', "```", "",
            "```python", "from transformers import AutoModelForCausalLM", "",
            f'model = AutoModelForCausalLM.from_pretrained(".", gguf_file="{file_name}")  # dequantized to float32',
            "```"]


def _genai_usage_snippet(where: str) -> list[str]:
    """Greedy generation with onnxruntime-genai alone, for a GenAI folder."""
    return ["import onnxruntime_genai as og", "",
            f'model = og.Model("{where}")',
            "tokenizer = og.Tokenizer(model)",
            "params = og.GeneratorParams(model)",
            "params.set_search_options(max_length=64, do_sample=False)",
            "generator = og.Generator(model, params)",
            'generator.append_tokens(tokenizer.encode("The capital of France is"))',
            "while not generator.is_done():",
            "    generator.generate_next_token()",
            "print(tokenizer.decode(generator.get_sequence(0)))"]


def _how_to_use(record: QuantizationRecord, repo_id: str | None, model_name: str) -> list[str] | None:
    """The card's "How to use" for the engine of `record`'s folder; None when transformers loads it."""
    # from the Hub: snapshot_download(repo_id) first, then this folder; never the local path of the machine
    where = repo_id or model_name
    if record.format == "onnxruntime-genai":  # an LLM engine export: its own loader
        return ["## How to use", "", "```python", *_genai_usage_snippet(where), "```"]
    if record.format == "onnx":
        return ["## How to use", "", "```python", "import onnxruntime", "from transformers import AutoTokenizer", "",
                f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
                f'session = onnxruntime.InferenceSession("{where}/{record.file or "model.onnx"}")',
                'logits = session.run(["logits"], dict(tokenizer("Some text", return_tensors="np")))[0]', "```"]
    if record.format == "gguf":
        return _gguf_how_to_use(record.file, repo_id)
    return None


@dataclasses.dataclass
class QuantizationRecord(ConfigRecord):
    """The quantization of a folder: method and scheme, the engine (backend, version, device), the export's checks.

    Example:

    ```python
    >>> record = QuantizationRecord.from_config(json.load(open("student-int8/config.json")))
    >>> record.method, record.backend, record.device
    ('int8', 'onnxruntime', 'cpu')
    ```
    """

    KEY = QUANTIZATION_KEY

    method: str | None = None
    scheme: str | None = None
    backend: str | None = None
    format: str | None = None
    backend_version: str | None = None
    engine: str | None = None
    device: str | None = None
    file: str | None = None
    source: str | None = None
    int8_max_logit_change: float | None = None
    max_logit_difference_from_transformers: float | None = None

    @property
    def is_onnx(self) -> bool:
        return self.format in ("onnx", "onnxruntime-genai")

    def card_tags(self) -> list[str]:
        return ["quantized", self.method, *(["onnx"] if self.is_onnx else []),
                *(["gguf"] if self.format == "gguf" else [])]

    def library_name(self) -> str:
        """The card's `library_name`: the library that loads the folder."""
        return "onnx" if self.is_onnx else "gguf" if self.format == "gguf" else "transformers"

    def summary(self) -> str:
        return f", quantized to {self.method} with {self.backend} for {self.device},"

    def card_section(self) -> list[str]:
        stored = ("Exported for the engine after training; the weights stay floating point."
                  if self.method in _FLOAT_METHODS else "Quantized after training; the weights stored are integers.")
        return ["### Quantization", "", stored, "", *settings_table((key, getattr(self, key)) for key in _CARD_SETTINGS),
                ""]

    def how_to_use(self, repo_id: str | None, model_name: str) -> list[str] | None:
        """The card's "How to use" lines for this folder's engine; None when transformers loads it."""
        return _how_to_use(self, repo_id, model_name)

