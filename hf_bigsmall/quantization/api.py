"""`quantize`: a saved classifier or causal LM made int8 (or int4 on CUDA), written as a new folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers.utils import logging

from ..hub.card import build_model_card
from ..utils.files import atomic_write_text
from .backends import get_quantization_backend
from .config import quantization_of
from .plan import plan_quantization

logger = logging.get_logger(__name__)


def quantize(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    method: str = "int8",
    device: str = "cpu",
    backend: str = "auto",
    calibration: Any = None,
) -> Path:
    """Quantize a saved sequence classifier or causal LM for `device`, into a new folder.

    On the CPU, `int8` exports the model to ONNX and applies ONNX Runtime's dynamic int8
    quantization (the fastest CPU backend measured, see BENCHMARKS.md); the folder then holds
    `model.onnx`, `config.json` and the tokenizer, and loads with
    `onnxruntime.InferenceSession(f"{output_dir}/model.onnx")` (or `OnnxModelRunner(output_dir)`,
    which `compare_models` uses). With `backend="onnxruntime-genai"`, a Llama-family causal LM is
    exported by onnxruntime-genai's model builder (`fp32`, `int8` or `int4` MatMulNBits, KV cache in the
    graph) and loads with `onnxruntime_genai.Model(output_dir)` (see `genai.export_genai`). On CUDA,
    `int8` and `int4` are torchao weight-only quantization through transformers' `TorchAoConfig`; the
    folder loads with plain `AutoModelFor...from_pretrained(output_dir, device_map="cuda")`. Either way `config.json` gets a
    `quantization` record (method, scheme, backend and version, device, source folder).

    Everything is checked before anything is written; the folder is written as
    `<output_dir>.partial` and renamed when complete, so a failed export leaves nothing behind.

    Args:
        model_dir: a folder written by `save_pretrained` with its task head and tokenizer.
        output_dir: the new folder. Only a folder that `quantize` wrote before is replaced; any other
            folder with something in it is refused, and left as it is.
        method: `"int8"`, or `"int4"` (CUDA, or ONNX Runtime GenAI); `"fp32"` (ONNX Runtime GenAI only);
            whatever the backend's `schemes` name.
        device: `"cpu"` or `"cuda"`: where the quantized model will run.
        backend: `"auto"` (ONNX Runtime on CPU, torchao on CUDA) or the name of a registered backend
            (`quantization_backend_names()`): `"onnxruntime"`, `"onnxruntime-genai"` (causal LMs on CPU),
            `"torchao"`, or `"gguf"`: a Llama-family or GPT-2 causal LM written as one GGUF file for
            llama.cpp and Ollama, `method` then a GGUF type (`f32`, `f16`, `q8_0`, `q5_0`, `q4_1`, `q4_0`,
            `q4_k_m`) or `int8` (= q8_0) / `int4` (q4_k_m where it can be made, else q4_0); see
            `gguf_export.export_gguf`. A backend registered from your own code
            (`register_quantization_backend`) is taken by its name the same way.
        calibration: token-id sequences of the model's usual text (lists of ints, or a `datasets.Dataset`
            with `input_ids`; `gptq.calibration_blocks` cuts them from a corpus), for the methods a backend
            declares in `calibrated_schemes`: `backend="onnxruntime-genai"`, `method="int4"` quantizes its
            4-bit matrices by GPTQ instead of round-to-nearest (same size and speed, less perplexity lost;
            see `genai.export_genai`). Refused for every other backend and method.

    Returns:
        `output_dir` as a `Path`.

    Raises:
        RuntimeError: a backend whose folder carries the model card (`gguf`) wrote its folder, complete and
            usable, but the card could not be built; the message says how to write it again.
        ImportError: the backend is not installed (the message names the extra, e.g.
            `pip install "hf-bigsmall[onnx]"`).
        ValueError: calibration for a backend or method that takes none, int4 on a CPU or a GPU without its
            kernels, a model that is already quantized,
            a model without a classification or causal LM head, a model the backend cannot export,
            a missing tokenizer, or an `output_dir` that `quantize` did not write.

    Example:

    ```python
    from hf_bigsmall.quantization import quantize
    import onnxruntime

    folder = quantize("bigsmall_output/student-compact", "bigsmall_output/student-int8")
    session = onnxruntime.InferenceSession(f"{folder}/model.onnx")
    ```
    """
    plan = plan_quantization(method, device, backend)  # every check that needs no model, before anything is read
    entry = get_quantization_backend(plan.backend)
    if calibration is not None:
        plan.check_calibration()
    # only a calibrated request passes the keyword, so backends registered without calibration keep their signature
    options = {"calibration": calibration} if calibration is not None else {}
    folder = Path(entry.export(Path(model_dir), Path(output_dir), plan.method, **options))
    if entry.model_card:  # a folder served as it is (GGUF) carries its card
        try:
            atomic_write_text(folder / "README.md", str(build_model_card(folder, energy=False)))
        except Exception as error:  # the folder is published and whole: say so, not "the export failed"
            raise RuntimeError(
                f"{folder} is complete and usable ({plan.method}, {plan.backend}), but its model card (README.md) "
                f"could not be written: {type(error).__name__}: {error}. Fix the cause and write it with "
                f"hf_bigsmall.hub.card.build_model_card({str(folder)!r}, energy=False), or run quantize again "
                "(it replaces the folder).") from error
    record = quantization_of(folder) or {}
    logger.info(f"Quantized {model_dir} ({plan.method}, {plan.backend}, {plan.device}) -> {folder}; load with "
                + entry.load_instructions(folder, record, architecture=_architecture(folder)))
    return folder


def _architecture(folder: Path) -> str | None:
    import json

    try:
        return (json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures") or [None])[0]
    except (OSError, ValueError):
        return None
