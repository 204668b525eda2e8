"""GGUF export of a saved Llama-family or GPT-2 causal LM, for llama.cpp, llama-cpp-python and Ollama.

The file is written with the `gguf` package (its tensor-name tables, metadata keys and numpy
quantizers), the tokenizer embedded, so `llama-cli -m model-Q8_0.gguf` needs nothing else.
F32, F16, Q8_0, Q5_0, Q4_1 and Q4_0 are made here in numpy; Q4_K_M goes through llama.cpp's own quantizer
(`llama_cpp.llama_model_quantize`) where llama-cpp-python is installed. `int4` is Q4_K_M wherever llama.cpp
is installed, also for widths K-quants cannot take (llama.cpp then stores those tensors in Q5_0 or Q8_0), and
Q4_0 without it: the best 4-bit file measured on SmolLM2 and on a student trained off its grid (BENCHMARKS.md,
"The 4-bit types, measured").

```python
from hf_bigsmall.quantization.gguf_export import export_gguf

folder = export_gguf("out/student-compact", "out/student-gguf", method="q8_0")
# llama-cli -m out/student-gguf/model-Q8_0.gguf -p "Once upon a time"
```
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformers.utils import logging

from ..utils.files import fresh_partial_dir
from ..utils.import_utils import is_llama_cpp_available, require
from .config import QUANTIZATION_KEY, check_quantized_output, publish_export
from .record import QuantizationRecord

logger = logging.get_logger(__name__)

# model_type in config.json -> GGUF architecture; only families whose tensors and rotary layout are written here
SUPPORTED_MODEL_TYPES = ("llama", "gpt2")
# the activation llama.cpp's graph computes per family (SwiGLU's SiLU; GPT-2's tanh-approximated GELU)
_LLAMA_CPP_ACTIVATIONS = {"llama": ("silu", "swish"), "gpt2": ("gelu_new", "gelu_pytorch_tanh")}
# what `method` may say: the GGUF types, and the kit's generic names mapped onto them
GGUF_METHODS = ("f32", "f16", "q8_0", "q5_0", "q4_1", "q4_0", "q4_k_m")
_ALIASES = {"int8": "q8_0", "int4": "q4_k_m"}
# K-quants pack 256 values per super-block: a quantized row (a weight's input width) that is not a multiple
# gets llama.cpp's fallback type for that tensor (Q5_0 for Q4_K, Q8_0 for Q6_K)
_K_QUANT_BLOCK = 256
# Q8_0, Q5_0, Q4_1 and Q4_0 pack 32 values per block
_BLOCK = 32
# kept at 8 bits (Q8_0; Q6_K in a K-quant file whose rows allow it) whatever the 4- or 5-bit type of the others
_EIGHT_BIT_TENSORS = ("token_embd.weight", "output.weight")
SCHEMES = {
    "F32": "GGUF F32: every tensor in float32 (no quantization)",
    "F16": "GGUF F16: matrices in float16, norms in float32",
    "Q8_0": "GGUF Q8_0: matrices in blocks of 32 int8 values with one fp16 scale, norms in float32",
    "Q5_0": "GGUF Q5_0: matrices in blocks of 32 5-bit values with one fp16 scale, the token embedding and the "
            "output layer in Q8_0, norms in float32",
    "Q4_1": "GGUF Q4_1: matrices in blocks of 32 4-bit values with an fp16 scale and minimum, the token embedding "
            "and the output layer in Q8_0, norms in float32",
    "Q4_0": "GGUF Q4_0: matrices in blocks of 32 4-bit values with one fp16 scale, the token embedding and the "
            "output layer in Q8_0, norms in float32",
    "Q4_K_M": "GGUF Q4_K_M (llama.cpp's quantizer): 4-bit K-quants in super-blocks of 256, some tensors in "
              "Q6_K, the token embedding and output layer in Q6_K (Q8_0 where their rows are not a multiple of 256), "
              "norms in float32",
}


@dataclass(frozen=True)
class GgufPlan:
    """A checked GGUF request: the type written, why a 4-bit request fell back to Q4_0, and the widths K-quants
    cannot take (llama.cpp stores those tensors in its fallback types)."""

    gguf_type: str
    fallback_reason: str | None = None
    odd_widths: dict[str, int] | None = None

    @property
    def file_name(self) -> str:
        return f"model-{self.gguf_type}.gguf"


def _read_config(model_dir: Path) -> dict[str, Any]:
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{model_dir} is not a saved model folder (no config.json).")
    return json.loads(config_path.read_text(encoding="utf-8"))


def _input_widths(config: dict[str, Any]) -> dict[str, int]:
    if config["model_type"] == "gpt2":
        return {"n_embd": config["n_embd"], "n_inner": config.get("n_inner") or 4 * config["n_embd"]}
    hidden = config["hidden_size"]
    heads, head_dim = config["num_attention_heads"], _head_dim(config)
    return {"hidden_size": hidden, "intermediate_size": config["intermediate_size"],
            "num_attention_heads x head_dim": heads * head_dim}


def _head_dim(config: dict[str, Any]) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def check_gguf_request(model_dir: str | os.PathLike, method: str) -> GgufPlan:
    """Check that `model_dir` can be written to GGUF as `method`; nothing is loaded or written.

    Raises:
        ValueError: an unknown method, a folder that is not a saved model, a model without a causal
            LM head (a classifier), an architecture other than Llama or GPT-2, a Llama with biases or rope
            scaling, an activation or attention scaling llama.cpp does not compute, a tokenizer that is
            not a byte-level BPE `tokenizer.json`, or a quantized source.
        ImportError: `gguf` (extra `gguf`) or, for Q4_K_M, `llama-cpp-python` (extra `llamacpp`) is missing.
    """
    requested = _ALIASES.get(method, method)
    if requested not in GGUF_METHODS:
        raise ValueError(f"method {method!r} is not a GGUF type: use one of {GGUF_METHODS} "
                         f"(or 'int8' = q8_0, 'int4' = q4_k_m, or q4_0 without llama-cpp-python).")
    model_dir = Path(model_dir)
    config = _read_config(model_dir)
    architectures = config.get("architectures") or []
    if not any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        raise ValueError(f"{model_dir} holds {architectures or 'a model without a task head'}: GGUF serves causal "
                         "language models (a ...ForCausalLM); quantize a classifier with backend='onnxruntime'.")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"GGUF export supports model_type {SUPPORTED_MODEL_TYPES} (Llama family: SmolLM2, Llama, and "
                         f"their pruned students; GPT-2), got {model_type!r}: use backend='onnxruntime' for this "
                         "model.")
    if config.get("quantization_config") or config.get(QUANTIZATION_KEY):
        raise ValueError(f"{model_dir} is already quantized: export the original full-precision folder.")
    if model_type == "llama" and (config.get("attention_bias") or config.get("mlp_bias")):
        raise ValueError("GGUF export writes Llama models without biases; this one has attention_bias or mlp_bias.")
    # llama.cpp's graphs fix these whatever the file says: another setting would decode differently, silently
    activation_key = "hidden_act" if model_type == "llama" else "activation_function"
    activation = config.get(activation_key, "silu" if model_type == "llama" else "gelu_new")
    if activation not in _LLAMA_CPP_ACTIVATIONS[model_type]:
        raise ValueError(f"{activation_key} {activation!r} is not what llama.cpp computes "
                         f"{_LLAMA_CPP_ACTIVATIONS[model_type]} for a {model_type} model: its GGUF would decode "
                         "differently from transformers. Serve this model with backend='onnxruntime'.")
    if model_type == "gpt2" and (config.get("scale_attn_by_inverse_layer_idx") or not config.get("scale_attn_weights",
                                                                                                 True)):
        raise ValueError("llama.cpp scales GPT-2's attention by 1/sqrt(head_dim) only: this model sets "
                         "scale_attn_by_inverse_layer_idx or scale_attn_weights=False, so its GGUF would decode "
                         "differently from transformers. Serve it with backend='onnxruntime'.")
    rope = (config.get("rope_parameters") or config.get("rope_scaling") or {}) if model_type == "llama" else {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"rope type {rope_type!r} is not written to GGUF here; only plain rotary embeddings are.")
    tokenizer = _check_tokenizer(model_dir)
    vocab_size = config.get("vocab_size") or 0
    largest_id = max([*tokenizer["model"]["vocab"].values(), *(t["id"] for t in tokenizer.get("added_tokens") or [])])
    if largest_id >= vocab_size:
        raise ValueError(f"the tokenizer has token id {largest_id} but the model's vocab_size is {vocab_size}: save "
                         "the model and its own tokenizer together (trim_vocabulary keeps them in step).")
    require("gguf")

    if requested != "q4_k_m":
        return GgufPlan(requested.upper())
    odd = {name: width for name, width in _input_widths(config).items() if width % _K_QUANT_BLOCK} or None
    if is_llama_cpp_available():
        return GgufPlan("Q4_K_M", odd_widths=odd)
    reason = 'K-quants are made by llama.cpp\'s quantizer: `pip install "hf-bigsmall[llamacpp]"`'
    if method == "int4":  # the generic request takes the 4-bit type that can be made without llama.cpp
        return GgufPlan("Q4_0", fallback_reason=reason)
    raise ImportError('Q4_K_M is made by llama.cpp\'s quantizer and llama-cpp-python is not installed: run '
                      '`pip install "hf-bigsmall[llamacpp]"` (it builds llama.cpp from source), or use method="q4_0".')


def _check_tokenizer(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"{model_dir} has no tokenizer.json: save the tokenizer beside the model "
                         "(tokenizer.save_pretrained) so it can be embedded in the GGUF file.")
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    model = tokenizer.get("model") or {}
    decoder = (tokenizer.get("decoder") or {}).get("type")
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder != "ByteLevel":
        raise ValueError("GGUF export embeds byte-level BPE tokenizers (GPT-2 / SmolLM2 style); this tokenizer.json "
                         f"is a {model.get('type')} model with a {decoder} decoder.")
    return tokenizer


def _pre_tokenizer_name(tokenizer: dict[str, Any]) -> str:
    """llama.cpp's name for the text splitting before BPE (`tokenizer.ggml.pre`)."""
    pre = tokenizer.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"]:
        return "gpt-2"  # llama.cpp's spelling (llama-vocab.cpp); it refuses to load a file that says "gpt2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"  # SmolLM2: every digit its own piece, then GPT-2's byte-level split
    logger.warning(f"Pre-tokenizer {kinds} has no llama.cpp name here: the GGUF says 'default', so llama.cpp may "
                   "split text differently from transformers (token ids given directly are unaffected).")
    return "default"


def _add_tokenizer(writer: Any, model_dir: Path, vocab_size: int) -> None:
    import gguf

    tokenizer = _check_tokenizer(model_dir)
    tokens: dict[int, tuple[str, int]] = {
        index: (text, gguf.TokenType.NORMAL) for text, index in tokenizer["model"]["vocab"].items()}
    for added in tokenizer.get("added_tokens") or []:
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        tokens[added["id"]] = (added["content"], kind)
    # rows of the embedding no token uses (a vocabulary padded to a round size) still need a name in GGUF
    texts = [tokens.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED)) for i in range(vocab_size)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(tokenizer))
    writer.add_token_list([text for text, _ in texts])
    writer.add_token_types([int(kind) for _, kind in texts])
    gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer, quiet=True)


def _permute_for_rotary(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Reorder a q/k projection's rows from transformers' rotate-half layout to GGML's pairwise one.

    transformers rotates the two halves of each head (dims i and i + d/2 together); llama.cpp's
    rotary kernel rotates adjacent pairs (2i, 2i + 1). Interleaving the halves makes both compute
    the same attention; transformers' GGUF loader applies the inverse.
    """
    rows = weight.shape[0]
    return weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _encode(name: str, weight: np.ndarray, gguf_type: str) -> tuple[np.ndarray, Any]:
    """The tensor's data in `gguf_type` (1-D tensors stay float32) and its GGML type."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if weight.ndim == 1 or gguf_type == "F32":
        return weight.astype(np.float32), Q.F32
    if gguf_type == "F16":
        return weight.astype(np.float16), Q.F16
    # the token embedding and the output layer keep 8 bits (llama.cpp keeps its output at Q6_K or Q8_0): the output
    # layer makes every logit, and SmolLM2-style models tie the two
    qtype = Q.Q8_0 if name in _EIGHT_BIT_TENSORS else getattr(Q, gguf_type)
    if weight.shape[-1] % _BLOCK:  # a row that does not fill whole blocks cannot be quantized: keep it in F16
        logger.warning(f"{name}: rows of {weight.shape[-1]} are not a multiple of {_BLOCK}, written in F16.")
        return weight.astype(np.float16), Q.F16
    return gguf.quants.quantize(weight.astype(np.float32), qtype), qtype


def _file_type(gguf_type: str) -> int:
    import gguf

    return {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
            "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "Q5_0": gguf.LlamaFileType.MOSTLY_Q5_0,
            "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1, "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[gguf_type]


def _llama_metadata(writer: Any, config: dict[str, Any]) -> None:
    heads = config["num_attention_heads"]
    rope = config.get("rope_parameters") or {}
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    # key/value width and the rotary width say head_dim when it is not hidden_size / heads (pruned heads)
    writer.add_key_length(_head_dim(config))
    writer.add_value_length(_head_dim(config))
    writer.add_rope_dimension_count(_head_dim(config))
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))


def _gpt2_metadata(writer: Any, config: dict[str, Any]) -> None:
    writer.add_context_length(config["n_positions"])
    writer.add_embedding_length(config["n_embd"])
    writer.add_block_count(config["n_layer"])
    writer.add_feed_forward_length(config.get("n_inner") or 4 * config["n_embd"])
    writer.add_head_count(config["n_head"])
    writer.add_layer_norm_eps(float(config["layer_norm_epsilon"]))


def _llama_tensor(hf_name: str, weight: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    heads = config["num_attention_heads"]
    if hf_name.endswith("q_proj.weight"):
        return _permute_for_rotary(weight, heads)
    if hf_name.endswith("k_proj.weight"):
        return _permute_for_rotary(weight, config.get("num_key_value_heads") or heads)
    return weight


def _gpt2_tensor(hf_name: str, weight: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    # GPT-2's Conv1D stores (in, out); GGML wants each output's weights as a row, as nn.Linear does
    if hf_name.endswith(("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")):
        return np.ascontiguousarray(weight.T)
    return weight


# model_type -> GGUF architecture, metadata writer, per-tensor layout change
_ARCHITECTURES = {"llama": ("LLAMA", _llama_metadata, _llama_tensor), "gpt2": ("GPT2", _gpt2_metadata, _gpt2_tensor)}


def write_gguf(model_dir: str | os.PathLike, path: str | os.PathLike, gguf_type: str = "F32") -> dict[str, int]:
    """Write the Llama or GPT-2 causal LM saved in `model_dir` to the GGUF file `path` (F32 ... Q4_0).

    Call `check_gguf_request` first; this writes `path` directly (`export_gguf` wraps it in a
    `.partial` folder). Returns the number of tensors written per GGML type name.
    """
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    config = _read_config(model_dir)
    arch_name, add_metadata, layout = _ARCHITECTURES[config["model_type"]]
    arch = getattr(gguf.MODEL_ARCH, arch_name)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tied = bool(model.config.tie_word_embeddings)

    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(model_dir.name)
    add_metadata(writer, config)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(_file_type(gguf_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, model_dir, config["vocab_size"])

    names = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    counts: dict[str, int] = {}
    for hf_name, tensor in model.state_dict().items():
        # a tied Llama head is left out (llama.cpp reuses token_embd); GPT-2's is written, as llama.cpp's converter does
        if hf_name == "lm_head.weight" and tied and arch_name == "LLAMA":
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"{hf_name} has no GGUF name for a {arch_name} model: this checkpoint has extra tensors.")
        weight = layout(hf_name, tensor.detach().numpy(), config)
        data, qtype = _encode(name, weight, gguf_type)
        writer.add_tensor(name, data, raw_dtype=qtype)  # quantized bytes: the writer derives the shape from the type
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts


def _quantize_k(source: Path, target: Path) -> None:
    """Q4_K_M through llama.cpp's own quantizer (importance-free, as `llama-quantize` does by default).

    The token embedding and the output layer are stored in Q6_K where their rows (the hidden size) are
    a multiple of 256, else in Q8_0: left alone llama.cpp would store an untied model's token embedding
    in Q4_K, and a type asked for explicitly gets no fallback (Q6_K on rows of 576 fails its validation).
    Any other matrix whose rows K-quants cannot take gets llama.cpp's own fallback type (Q5_0 for Q4_K,
    Q8_0 for Q6_K): measured on SmolLM2 and a student trained off its grid, that beat storing those
    tensors in Q4_1 or Q4_0 instead (BENCHMARKS.md).
    """
    import ctypes

    import gguf
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    embedding = next(tensor for tensor in gguf.GGUFReader(source).tensors if tensor.name == "token_embd.weight")
    rows_allow_k = int(embedding.shape[0]) % _K_QUANT_BLOCK == 0  # GGUF shapes list the row width first
    params.token_embedding_type = params.output_tensor_type = (
        llama_cpp.GGML_TYPE_Q6_K if rows_allow_k else llama_cpp.GGML_TYPE_Q8_0)
    # the C function takes a pointer to its parameters
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        raise RuntimeError(f"llama.cpp's quantizer failed on {source} (status {status}).")


def tensor_type_counts(path: str | os.PathLike) -> dict[str, int]:
    """How many tensors of each GGML type the GGUF file at `path` holds, read from the file itself."""
    import gguf

    counts: dict[str, int] = {}
    for tensor in gguf.GGUFReader(path).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return dict(sorted(counts.items()))


def export_gguf(model_dir: str | os.PathLike, output_dir: str | os.PathLike, *, method: str = "q8_0") -> Path:
    """Export a saved Llama-family or GPT-2 causal LM to a GGUF file in a new folder, for llama.cpp and Ollama.

    The folder holds `model-<TYPE>.gguf` (weights, config and tokenizer in one file), the source's
    `config.json` with a `quantization` record (engine, `gguf` version, GGUF type, scheme, source)
    and the tokenizer files. It is written as `<output_dir>.partial` and renamed when complete, so
    a failure half-way leaves nothing; everything is checked before anything is written.

    Args:
        model_dir: a folder written by `save_pretrained` (a `LlamaForCausalLM`, pruned or not, or a
            `GPT2LMHeadModel`) with its
            tokenizer (`tokenizer.json`, byte-level BPE).
        output_dir: the new folder; only an earlier quantized export the kit wrote is replaced.
        method: `"f32"`, `"f16"`, `"q8_0"`, `"q5_0"`, `"q4_1"`, `"q4_0"`, `"q4_k_m"` (needs llama-cpp-python;
            tensors whose rows are not multiples of 256 get llama.cpp's fallback types), or `"int8"` (= q8_0) /
            `"int4"` (q4_k_m where llama-cpp-python is installed, else q4_0). The record's `tensor_types`
            counts the tensors of each type the file holds.

    Returns:
        `output_dir` as a `Path`.

    Raises:
        ValueError: see `check_gguf_request`; also an `output_dir` that is the model's folder or a
            folder other than an earlier quantized export the kit wrote (a trained model is never replaced).
        ImportError: the `gguf` extra (or, for Q4_K_M, `llamacpp`) is missing; the message names it.

    Example:

    ```python
    from llama_cpp import Llama

    folder = export_gguf("out/student-compact", "out/student-gguf", method="q8_0")
    llm = Llama(str(folder / "model-Q8_0.gguf"))
    ```
    """
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    plan = check_gguf_request(model_dir, method)
    check_quantized_output(model_dir, output_dir)  # only an earlier quantized export is replaced, as quantize does

    import gguf  # noqa: F401  (checked by check_gguf_request)

    partial = fresh_partial_dir(output_dir)
    try:
        target = partial / plan.file_name
        if plan.gguf_type == "Q4_K_M":
            source = partial / "model-F32.gguf.tmp"
            write_gguf(model_dir, source, "F32")
            _quantize_k(source, target)
            source.unlink()
        else:
            write_gguf(model_dir, target, plan.gguf_type)
        counts = tensor_type_counts(target)  # what the file holds, fallbacks included
        config = _read_config(model_dir)
        engine_version = (importlib.metadata.version("llama_cpp_python") if plan.gguf_type == "Q4_K_M"
                          else importlib.metadata.version("gguf"))
        scheme = SCHEMES[plan.gguf_type]
        if plan.fallback_reason:
            scheme += f" (instead of Q4_K_M: {plan.fallback_reason})"
        if plan.odd_widths:
            scheme += (f"; widths {plan.odd_widths} are not multiples of {_K_QUANT_BLOCK}, so llama.cpp stored the "
                       f"tensors they feed in its fallback types: {counts}")
            logger.warning(f"Q4_K_M of {model_dir}: K-quants need widths that are multiples of {_K_QUANT_BLOCK} and "
                           f"{plan.odd_widths} are not; llama.cpp stored those tensors in its fallback types ({counts}).")
        QuantizationRecord.from_dict({
            "method": plan.gguf_type.lower(), "scheme": scheme, "backend": "gguf", "format": "gguf",
            "backend_version": engine_version, "engine": "llama.cpp", "device": "cpu", "file": plan.file_name,
            "tensor_types": counts, "source": str(model_dir),
            **({"fallback_reason": plan.fallback_reason} if plan.fallback_reason else {}),
        }).write(config)
        (partial / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, partial / name)
    except BaseException:  # a failed export leaves no half-written folder behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    publish_export(partial, output_dir)  # an earlier export only, as checked first
    logger.info(f"Exported {model_dir} to GGUF {plan.gguf_type} -> {output_dir / plan.file_name}")
    return output_dir

