"""Availability checks for optional backends, in the style of `accelerate.utils.imports`.

Optional dependencies are never imported at module import time: call `is_x_available()` first,
and `require(...)` where the backend is mandatory for what the user asked, so that a missing one
raises an error naming the extra to install.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache

# import name -> (pip extra of hf-bigsmall, what it is for)
_EXTRAS: dict[str, tuple[str, str]] = {
    "pynvml": ("energy", "reading NVIDIA GPU energy counters (NVML)"),
    "codecarbon": ("codecarbon", "the CodeCarbon cross-check backend"),
    "matplotlib": ("plots", "drawing the comparison plots"),
    "gguf": ("gguf", "reading and writing GGUF files (the embedded SmolLM2, exports for llama.cpp)"),
    "llama_cpp": ("llamacpp", "K-quant (Q4_K_M) GGUF files through llama.cpp's quantizer"),
    "deepspeed": ("deepspeed", "DeepSpeed ZeRO training"),
}
# The quantization backends declare their own extra and modules (`hf_bigsmall.quantization.backends`), and
# pass them to `require` where they check them.


@lru_cache(maxsize=None)
def _is_package_available(import_name: str) -> bool:
    return importlib.util.find_spec(import_name) is not None


def is_pynvml_available() -> bool:
    return _is_package_available("pynvml")


def is_codecarbon_available() -> bool:
    return _is_package_available("codecarbon")


def is_matplotlib_available() -> bool:
    return _is_package_available("matplotlib")


def is_onnxruntime_available() -> bool:
    return _is_package_available("onnxruntime") and _is_package_available("onnx")


def is_llama_cpp_available() -> bool:
    return _is_package_available("llama_cpp")


def require(import_name: str, extra: str | None = None, purpose: str | None = None) -> None:
    """Raise an `ImportError` that names the extra to install if `import_name` is missing.

    `extra` and `purpose` default to this module's table; a quantization backend passes its own.
    """
    if _is_package_available(import_name):
        return
    known_extra, known_purpose = _EXTRAS.get(import_name, (None, "this feature"))
    extra, purpose = extra or known_extra, purpose or known_purpose
    hint = f'pip install "hf-bigsmall[{extra}]"' if extra else f"pip install {import_name}"
    raise ImportError(f"{import_name} is needed for {purpose} but is not installed: run `{hint}`.")
