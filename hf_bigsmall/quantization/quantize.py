"""`quantize`: a saved classifier or causal LM made int8 (or int4 on CUDA), written as a new folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from transformers.utils import logging

from ..utils.files import fresh_partial_dir, publish_dir
from .config import check_full_precision_source, check_quantized_output, plan_quantization
from .genai import GENAI_BACKEND, export_genai
from .record import QuantizationRecord

logger = logging.get_logger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")

# how each backend's users load the result, as the model card and the docs say it
LOADING = {
    "onnxruntime": 'onnxruntime.InferenceSession("{path}/model.onnx")  # or hf_bigsmall.quantization.OnnxModelRunner',
    "torchao": '{auto_class}.from_pretrained("{path}", device_map="cuda")  # the TorchAoConfig is in config.json',
    "gguf": 'llama-cli -m {path}/model-<TYPE>.gguf  # or llama_cpp.Llama(...), or Ollama: FROM ./model-<TYPE>.gguf',
    "onnxruntime-genai": 'onnxruntime_genai.Model("{path}")  # or hf_bigsmall.quantization.genai.GenAIModelRunner',
}


def quantize(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    method: str = "int8",
    device: str = "cpu",
    backend: str = "auto",
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
        method: `"int8"`, or `"int4"` (CUDA, or ONNX Runtime GenAI); `"fp32"` (ONNX Runtime GenAI only).
        device: `"cpu"` or `"cuda"`: where the quantized model will run.
        backend: `"auto"` (ONNX Runtime on CPU, torchao on CUDA), `"onnxruntime"`, `"onnxruntime-genai"`
            (causal LMs on CPU), `"torchao"`, or `"gguf"`: a Llama-family or GPT-2 causal LM written as one
            GGUF file for llama.cpp and Ollama, `method` then a GGUF type (`f32`, `f16`, `q8_0`, `q5_0`,
            `q4_1`, `q4_0`, `q4_k_m`) or `int8` (= q8_0) / `int4` (q4_k_m where it can be made, else q4_0);
            see `gguf_export.export_gguf`.

    Returns:
        `output_dir` as a `Path`.

    Raises:
        ImportError: the backend is not installed (the message names the extra, e.g.
            `pip install "hf-bigsmall[onnx]"`).
        ValueError: int4 on a CPU or a GPU without its kernels, a model that is already quantized,
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
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from ..pruning.parameters import count_parameters
    from ..reporting.compare import CLASSIFICATION, task_of

    if backend == "gguf":  # llama.cpp / Ollama: a causal-LM file format with its own types and checks
        from .gguf_export import export_gguf

        return export_gguf(model_dir, output_dir, method=method)
    plan = plan_quantization(method, device, backend)
    if plan.backend == GENAI_BACKEND:  # a causal-LM engine with its own builder, checks and folder: genai.py
        return export_genai(model_dir, output_dir, plan.method)
    model_dir, output_dir = check_full_precision_source(model_dir), Path(output_dir)
    config = AutoConfig.from_pretrained(model_dir)
    task = task_of(config)  # a model without a classification or causal LM head raises here
    if not any((model_dir / name).is_file() for name in _TOKENIZER_FILES):
        raise ValueError(f"{model_dir} has no tokenizer: save it beside the model (tokenizer.save_pretrained) so the "
                         "quantized folder is usable on its own.")
    check_quantized_output(model_dir, output_dir)
    auto_class = AutoModelForSequenceClassification if task == CLASSIFICATION else AutoModelForCausalLM
    record = {"method": plan.method, "scheme": plan.scheme, "backend": plan.backend, "device": plan.device,
              "source": str(model_dir)}

    partial = fresh_partial_dir(output_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if plan.backend == "onnxruntime":
            import onnxruntime

            from .onnx import export_onnx_int8

            model = auto_class.from_pretrained(model_dir).eval()
            parameters, nonzero, sparsity = count_parameters(model, model_dir)
            record.update(backend_version=onnxruntime.__version__, parameters=parameters,
                          nonzero_parameters=nonzero, sparsity=sparsity)
            record.update(export_onnx_int8(model, tokenizer, partial, task))
            QuantizationRecord.from_dict(record).write(config)
            config.save_pretrained(partial)
        else:
            from .torchao import quantize_torchao

            quantize_torchao(model_dir, partial, plan.method, auto_class, record)
        tokenizer.save_pretrained(partial)
    except BaseException:  # a failed export or save leaves no half-written folder behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    publish_dir(partial, output_dir)
    logger.info(f"Quantized {model_dir} ({plan.method}, {plan.backend}, {plan.device}) -> {output_dir}; load with "
                + LOADING[plan.backend].format(path=output_dir, auto_class=auto_class.__name__))
    return output_dir
