"""`QuantizationRecord`: what `quantize` did, kept in the quantized folder's `config.json` (`quantization`).

It renders the card's "Quantization" section, its tags and library; the "How to use" comes from the
backend that made the folder (its registered `how_to_use`).
"""

from __future__ import annotations

import dataclasses

from ..utils.card_text import settings_table
from ..utils.records import ConfigRecord
from .config import QUANTIZATION_KEY

# the settings the card lists, in this order
_CARD_SETTINGS = ("method", "scheme", "calibration", "backend", "backend_version", "device", "format", "source",
                  "int8_max_logit_change", "max_logit_difference_from_transformers",
                  "logit_correlation_with_transformers")
# methods of an engine export that keeps float weights (ONNX Runtime GenAI fp32, GGUF F32/F16)
_FLOAT_METHODS = ("fp32", "f32", "f16")


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
    logit_correlation_with_transformers: float | None = None
    #: how the weights were fitted to calibration data (`{"method": "gptq", "sequences": ..., "tokens": ...,
    #: "damp": ...}`), None for plain rounding
    calibration: dict | None = None

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
        return ["### Quantization", "", stored, "",
                *settings_table((key, self._card_value(key)) for key in _CARD_SETTINGS), ""]

    def _card_value(self, key: str):
        value = getattr(self, key)
        if key == "calibration" and isinstance(value, dict):  # one line: "gptq on 32 sequences (4096 tokens), ..."
            details = ", ".join(f"{name} {value[name]}" for name in ("damp",) if name in value)
            kept = value.get("round_to_nearest_kept")  # matrices the calibration did not improve keep plain rounding
            return (f"{value.get('method')} on {value.get('sequences')} sequences ({value.get('tokens')} tokens)"
                    + (f", {details}" if details else "")
                    + (f"; {kept} matrices kept round-to-nearest" if kept else ""))
        return value

