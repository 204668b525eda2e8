"""Causal LMs for ONNX Runtime GenAI: export with its model builder, and a runner that `compare_models` measures.

ONNX Runtime GenAI serves decoder LLMs on the CPU with a KV cache in the graph (GroupQueryAttention)
and, for int4/int8, weights stored as MatMulNBits blocks. `export_genai` calls onnxruntime-genai's own
model builder (`onnxruntime_genai.models.builder`) on a saved folder, offline, and checks the result
against transformers before the folder is put in place. The folder loads with
`onnxruntime_genai.Model(folder)`; `config.json` carries the kit's `quantization` record (engine,
version, scheme, source) beside the builder's `genai_config.json`.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers.utils import logging

from ..pruning.parameters import count_parameters
from ..utils.files import (
    KIT_MARKER,
    NotReplaceableError,
    check_replaceable,
    is_kit_folder,
    mark_kit_folder,
    publish_dir,
    remove_leftovers,
)
from ..utils.heads import TEXT_GENERATION as CAUSAL_LM
from ..utils.import_utils import require
from ..utils.writers import release_writer, writer_tag
from .config import QUANTIZATION_KEY, check_full_precision_source, check_source_is_no_leftover, has_kit_record
from .engine_timing import padded_logits, time_engine_generation
from .record import QuantizationRecord

logger = logging.get_logger(__name__)

GENAI_BACKEND = "onnxruntime-genai"
GENAI_CONFIG_FILE = "genai_config.json"
GENAI_SCHEMES = ("fp32", "int8", "int4")
# the pip extra that installs the engine, and what it brings (the builder imports onnx-ir without declaring it)
GENAI_EXTRA = "genai"
GENAI_MODULES = ("onnxruntime_genai", "onnx_ir")
# the architectures the builder converts that the kit builds and tests (Llama covers SmolLM2 and the kit's
# pruned Llamas: fewer layers, narrower FFN, fewer heads and KV groups, head_dim != hidden/heads); the
# builder has no GPT-2 converter
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
# int4 MatMulNBits settings, measured on SmolLM2 and the quickstart's student (BENCHMARKS.md, "Serving with ONNX
# Runtime GenAI", "The 4-bit types, measured", "Mixed precision in GenAI int4" and "Every qkv and down projection in
# int8"): blocks of 32 input channels and accuracy level 4 (int8 activations in the kernel), the builder's CPU defaults
# (blocks of 128 lost twice as much perplexity, accuracy level 1 changed nothing); asymmetric blocks (a zero point
# each) by round-to-nearest; the output layer in int8 (a tied input embedding reads the same int8 weights); and every
# layer's attention qkv and MLP down projections in int8 (`int8_projections`, the kit's own option: the builder's
# flat options only reach llama.cpp's `mixed_layers`, half of those layers). Perplexity x1.086 of fp32 on the
# quickstart's student (x1.113 with `mixed_layers`, x1.226 with neither) for 7 MB more than `mixed_layers`, decoding as
# fast within the noise of a loaded machine; the gate, up and output projections, 58 to 59% of the layers' weights
# on both models, stay 4-bit. The builder's default algorithm names an asymmetric or int8 output layer's weights
# differently from what its tied embedding then reads, so those models built but failed to load in 0.18.0;
# `algo_config=rtn` names them alike
INT4_BLOCK_SIZE = 32
INT4_ACCURACY_LEVEL = 4
INT4_BUILDER_OPTIONS = {"is_symmetric": "false", "algo_config": "rtn", "matmul_mixed_precision": "last_matmul:int8",
                        "int8_projections": "qkv_proj,down_proj"}
# the decoder-layer projections `int8_projections` may name, and the builder's node group of each (it fuses the
# query, key and value projections into one `qkv_proj`)
INT8_PROJECTIONS = {"qkv_proj": "attn", "o_proj": "attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
# ONNX Runtime's CPU GroupQueryAttention kernel refuses other head sizes at run time (checked with 0.18.0)
_HEAD_DIM_MULTIPLE = 16
# the fp32 export must reproduce transformers' logits to this (absolute, plus relative to their size)
_EXPORT_TOLERANCE = 1e-3
# a quantized export is refused below this mean correlation of its probe logits with transformers' (per position,
# over the vocabulary): measured on random tiny Llamas, a correct int8 export gives 0.9998 and a correct int4 one 0.87
# to 0.98 (rows of one or two blocks, the worst case for 4 bits); exports the builder converts wrongly (hidden 64 or
# 128 in 0.18.0, whose fp32 exports are refused) 0.21 at int8 and int4
_QUANTIZED_MIN_CORRELATION = 0.5
_PROBE_TEXT = "The quick brown fox jumps over the lazy dog, and then the dog chases the fox around the yard."


def is_genai_folder(model_dir: str | os.PathLike) -> bool:
    """True for a folder that ONNX Runtime GenAI loads (`genai_config.json` beside the graph)."""
    return (Path(model_dir) / GENAI_CONFIG_FILE).is_file()


def is_kit_export(folder: str | os.PathLike) -> bool:
    """A quantized export the kit wrote: its marker and its record (any backend's), as `check_quantized_output`
    asks; or a GenAI export written before GenAI folders carried the marker (its record and `genai_config.json`)."""
    folder = Path(folder)
    if is_kit_folder(folder) and has_kit_record(folder):
        return True
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (config.get(QUANTIZATION_KEY) or {}).get("backend") == GENAI_BACKEND and is_genai_folder(folder)


def _holds_files(folder: Path) -> bool:
    """Whether `folder` holds anything but the kit's marker (a folder with the marker alone has nothing to lose)."""
    return any(entry.name != KIT_MARKER for entry in folder.iterdir())


def _is_replaceable_export(folder: Path) -> bool:
    """Whether an export may replace the folder `folder`: nothing in it but the kit's marker, or an earlier export."""
    return not _holds_files(folder) or is_kit_export(folder)


def _placement(options: dict[str, Any]) -> dict[str, str]:
    """The builder's `matmul_mixed_precision` option as {matrices: type}, e.g. {"last_matmul": "int8"}."""
    return dict(part.split(":", 1) for part in str(options.get("matmul_mixed_precision", "")).split(",")
                if ":" in part)


def _int8_projections(options: dict[str, Any]) -> list[str]:
    """The kit's `int8_projections` option ("qkv_proj,down_proj") as a list, every name checked."""
    names = [name.strip() for name in str(options.get("int8_projections") or "").split(",") if name.strip()]
    unknown = [name for name in names if name not in INT8_PROJECTIONS]
    if unknown:
        raise ValueError(f"int8_projections names {', '.join(map(repr, unknown))}, which is no decoder-layer "
                         f"projection: use a comma-separated subset of {', '.join(INT8_PROJECTIONS)}, or '' to keep "
                         "every layer's projections in 4 bits.")
    return names


def _is_on(value: Any) -> bool:
    """A builder flag as the builder reads it ("true", "1", True; "false", "0", False, None and "" are off)."""
    return str(value).strip().lower() in ("true", "1")


def _builder_target_options(config, options: dict[str, Any]) -> dict[str, Any] | None:
    """The builder's structured quantization settings that put `int8_projections` in int8, or None without any.

    The builder's flat options type matrices only by group (`matmul_mixed_precision`); per-node types go through its
    structured `target_options`, whose override list replaces the one the flat options imply: it is rebuilt here from
    them (exclusions first, then the groups, as the builder orders them), and so are the op types, to which the builder
    adds `Gather` for a tied input embedding only on the flat path (without it the embedding would be stored fp32).

    The structured list checks each exclusion against the graph, which the flat `nodes_to_exclude` does not: an
    exclusion of a node whose op type is not quantized anyway (an untied input embedding's `Gather`, as in the
    builder's own `/lm_head/MatMul,/model/embed_tokens/Gather` example) changes nothing and is left out.
    """
    from onnxruntime_genai.models.quantization.quant_config import desugar_algo_config

    projections = _int8_projections(options)
    if not projections:
        return None
    op_types = [kind for kind in str(options.get("op_types_to_quantize") or "MatMul").split("/") if kind]
    if _is_on(options.get("shared_embeddings", getattr(config, "tie_word_embeddings", False))):
        op_types += [kind for kind in ("MatMul", "Gather") if kind not in op_types]

    def quantized(name: str) -> bool:
        kind = name.rsplit("/", 1)[-1]
        return kind not in ("MatMul", "Gather") or kind in op_types

    excluded = [name for name in str(options.get("nodes_to_exclude") or "").split(",") if name and quantized(name)]
    overrides = [{"match": {"name": name}, "exclude": True} for name in excluded]
    _, placement = desugar_algo_config({key: value for key, value in options.items()
                                        if key in ("algo_config", "matmul_mixed_precision")})
    overrides += [{"match": {"preset": group}, "type": kind} for group, kind in placement.items()]
    fused_qkv = _is_on(options["fuse_qkv"]) if "fuse_qkv" in options else not _is_on(options.get("disable_qkv_fusion"))
    layers = int(options.get("num_hidden_layers", config.num_hidden_layers))
    for projection in projections:
        names = [projection] if projection != "qkv_proj" or fused_qkv else ["q_proj", "k_proj", "v_proj"]
        nodes = [f"/model/layers.{layer}/{INT8_PROJECTIONS[projection]}/{name}/MatMul"
                 for layer in range(layers) for name in names]
        overrides += [{"match": {"name": node}, "type": "int8"} for node in nodes if node not in excluded]
    return {"quant_config": {"weights": {"overrides": overrides, "op_types": op_types}}}


def _output_layer_type(options: dict[str, Any], bits: int) -> str:
    """How the builder stores the output layer under `options` ("fp32", "int8", "int4")."""
    # the builder quantizes the output layer with the others unless told otherwise; a tied input embedding
    # (shared_embeddings, the builder's default for tied models) reads the output layer's stored weights
    if "/lm_head/MatMul" in str(options.get("nodes_to_exclude", "")):
        return "fp32"
    return _placement(options).get("last_matmul") or f"int{bits}"


def scheme_description(scheme: str, builder_options: dict[str, Any] | None = None, calibrated: bool = False) -> str:
    """What a scheme stores, as the record and the model card state it (`calibrated`: int4 matrices by GPTQ)."""
    if scheme == "fp32":
        return "fp32 weights, KV cache in the graph (GroupQueryAttention)"
    options = builder_options or {}
    bits = 4 if scheme == "int4" else 8
    symmetric = str(options.get("is_symmetric", True)).lower() not in ("false", "0")
    algorithm = options.get("algo_config", "default")
    placement = _placement(options)
    head = _output_layer_type(options, bits)
    # the builder's `mixed_layers` selection (llama.cpp's mixed strategy), in words
    rounding = "round-to-nearest" if algorithm == "rtn" else f"{algorithm} algorithm"
    if calibrated and bits == 4:  # the builder's 8-bit matrices keep its rounding
        rounding = f"4-bit matrices GPTQ-calibrated (Frantar et al. 2022), 8-bit ones {rounding}"
    mixed = (f"; attention qkv and MLP down projections of the first and last eighth of the layers and of every "
             f"third layer between in {placement['mixed_layers']}" if placement.get("mixed_layers") else "")
    projections = _int8_projections(options) if bits == 4 else []
    if projections:
        mixed += f"; every layer's {', '.join(projections)} projections in int8"
    excluded = [name.strip() for name in str(options.get("nodes_to_exclude") or "").split(",") if name.strip()]
    if excluded:  # the builder leaves these unquantized, whatever the groups above say
        mixed += f"; left in fp32 (nodes_to_exclude): {', '.join(excluded)}"
    return (f"int{bits} weight-only MatMulNBits, {'symmetric' if symmetric else 'asymmetric (zero points)'}, "
            f"{rounding}, blocks of "
            f"{options.get('block_size', INT4_BLOCK_SIZE)} input channels, accuracy level "
            f"{options.get('accuracy_level', INT4_ACCURACY_LEVEL)}; output layer {head} (an input embedding tied to "
            f"it reads the same weights, an untied one stays fp32){mixed}; norms fp32; KV cache in the graph")


def check_genai_source(model_dir: str | os.PathLike, output_dir: str | os.PathLike, scheme: str):
    """Every check made before the builder runs; returns the source's `PretrainedConfig`.

    Raises:
        ImportError: onnxruntime-genai (or onnx-ir, which its builder needs) is not installed.
        ValueError: an unknown scheme, a folder that is not a saved model, a model already
            quantized, a classifier or another architecture the builder cannot take, no tokenizer,
            or an output folder that is the source or was not written by `export_genai`.
    """
    from transformers import AutoConfig

    if scheme not in GENAI_SCHEMES:
        raise ValueError(f"ONNX Runtime GenAI exports one of {GENAI_SCHEMES}, got {scheme!r}.")
    for module in GENAI_MODULES:
        require(module, extra=GENAI_EXTRA, purpose="exporting and serving causal LMs with ONNX Runtime GenAI")
    model_dir, output_dir = check_full_precision_source(model_dir), Path(output_dir)
    config = AutoConfig.from_pretrained(model_dir)
    architectures = list(getattr(config, "architectures", None) or [])
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        raise ValueError(f"{model_dir} is a classifier ({architectures[0]}): ONNX Runtime GenAI serves causal LMs. "
                         "Quantize a classifier with backend='onnxruntime' (int8 on CPU) instead.")
    if not architectures or architectures[0] not in SUPPORTED_ARCHITECTURES:
        name = architectures[0] if architectures else config.model_type
        raise ValueError(f"ONNX Runtime GenAI's builder cannot take {name!r} here: supported architectures are "
                         f"{SUPPORTED_ARCHITECTURES}. Use backend='onnxruntime' (int8 ONNX, no KV cache) for other "
                         "causal LMs.")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim % _HEAD_DIM_MULTIPLE:
        raise ValueError(f"{model_dir} has heads of {head_dim} dimensions: ONNX Runtime GenAI's CPU attention kernel "
                         f"(GroupQueryAttention) needs head_dim a multiple of {_HEAD_DIM_MULTIPLE}. Prune whole heads "
                         "rather than head dimensions, or serve this model with transformers.")
    if not ((model_dir / "tokenizer.json").is_file() or (model_dir / "tokenizer_config.json").is_file()):
        raise ValueError(f"{model_dir} has no tokenizer: save it beside the model (tokenizer.save_pretrained); "
                         "the builder copies it into the exported folder.")
    if output_dir.resolve() == model_dir.resolve():
        raise ValueError(f"output_dir {output_dir} is the model's own folder: export into a new folder.")
    source, target = model_dir.resolve(), output_dir.resolve()
    if source.is_relative_to(target) or target.is_relative_to(source):  # replacing one would change the other
        raise ValueError(f"output_dir {output_dir} and the model's folder {model_dir} are inside one another: write "
                         "the quantized model into a folder beside the model, not around or within it.")
    check_source_is_no_leftover(model_dir, output_dir)  # the export removes those names as leftovers
    try:  # one look at one folder: an earlier export another export is swapping that instant is not the user's
        check_replaceable(output_dir, _is_replaceable_export)
    except NotReplaceableError as error:
        raise ValueError(f"{output_dir} already exists and was not written by hf_bigsmall as a quantized export: "
                         "choose another output_dir or remove it yourself (only an earlier quantized export is "
                         "replaced).") from error
    return config


def _int4_options(config, block_size: int) -> dict[str, str]:
    """`INT4_BUILDER_OPTIONS`, symmetric where some matrix's rows hold an odd number of blocks.

    ONNX Runtime's round-to-nearest quantizer packs the 4-bit zero points of two blocks per byte across
    row boundaries, so a row of an odd number of blocks (a width of 32 or 96 with blocks of 32) fails to
    build asymmetric; symmetric blocks have no zero points.
    """
    options = dict(INT4_BUILDER_OPTIONS)
    if _odd_rows(config, block_size):
        options["is_symmetric"] = "true"
    return options


def _row_widths(config) -> tuple[int, int, int]:
    """Input widths of the decoder's matrices: hidden (q, k, v, gate, up), FFN (down), heads x head size (o)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.hidden_size, config.intermediate_size, config.num_attention_heads * head_dim


def _odd_rows(config, block_size: int) -> bool:
    return any(math.ceil(width / block_size) % 2 for width in _row_widths(config))


def _block_size(value: Any) -> int:
    """A builder block size as an int: a power of two from 16 to 256, as the builder documents for MatMulNBits."""
    try:
        size = int(str(value))
    except ValueError:
        size = 0
    if size < 16 or size > 256 or size & (size - 1):
        raise ValueError(f"block_size must be a power of two from 16 to 256 (16, 32, 64, 128, 256), got {value!r}.")
    return size


@contextlib.contextmanager
def _quiet_builder(console: io.StringIO) -> Iterator[None]:
    """Keep the builder's prints and logging out of the caller's console and logging setup.

    The builder prints its progress, and ONNX Runtime's int4 quantizer calls `logging.basicConfig(level=INFO)`
    when imported, which would make every INFO message of the caller's process visible from then on.
    """
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quantizer = logging.getLogger("onnxruntime.quantization")
    quantizer_level = quantizer.level
    quantizer.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
            yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        quantizer.setLevel(quantizer_level)


def _run_builder(model_dir: Path, build_dir: Path, scheme: str, extra_options: dict[str, Any],
                 target_options: dict[str, Any] | None = None) -> None:
    """onnxruntime-genai's model builder, in this process, its console output sent to the debug log.

    `extra_options` are the builder's flat options except the kit's own `int8_projections`, whose per-node types
    reach it in `target_options` (see `_builder_target_options`).
    """
    options = [f"{key}={value}" for key, value in extra_options.items() if key != "int8_projections"]
    structured = {"target_options": target_options} if target_options else {}
    console = io.StringIO()
    with tempfile.TemporaryDirectory() as cache_dir, _quiet_builder(console):
        try:
            import onnx_ir  # noqa: F401  (the builder needs it and does not declare it)
            from onnxruntime_genai.models.builder import create_model, parse_extra_options

            parsed = parse_extra_options(None, str(model_dir), str(build_dir), scheme, "cpu", cache_dir, options,
                                         **structured)
            create_model(None, str(model_dir), str(build_dir), scheme, "cpu", cache_dir, **parsed)
        except Exception as error:
            tail = "\n".join(console.getvalue().splitlines()[-5:])
            raise ValueError(f"onnxruntime-genai's builder failed on {model_dir} ({scheme}): {error}"
                             + (f"\nLast builder output:\n{tail}" if tail else "")) from error
    logger.debug(console.getvalue())


def _probe(model_dir: Path, build_dir: Path) -> dict[str, Any]:
    """The source's parameter counts, and the largest difference between its logits and the export's."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    token_ids = tokenizer(_PROBE_TEXT)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    token_ids = token_ids[: min(len(token_ids), model.config.max_position_embeddings)]
    with torch.inference_mode():
        reference = model(torch.tensor([token_ids])).logits[0].numpy()
    parameters, nonzero, sparsity = count_parameters(model, model_dir)
    candidate = GenAIModelRunner(build_dir, num_threads=1).prompt_logits(token_ids)
    return {"parameters": parameters, "nonzero_parameters": nonzero, "sparsity": sparsity,
            "max_logit_difference_from_transformers": float(np.abs(reference - candidate).max()),
            "logit_correlation_with_transformers": _mean_row_correlation(reference, candidate),
            "logit_scale": float(np.abs(reference).max())}


def _mean_row_correlation(reference, candidate) -> float:
    """Mean over positions of the Pearson correlation of two `(positions, vocabulary)` logit arrays."""
    import numpy as np

    reference = reference - reference.mean(-1, keepdims=True)
    candidate = candidate - candidate.mean(-1, keepdims=True)
    norms = np.sqrt((reference * reference).sum(-1) * (candidate * candidate).sum(-1))
    return float(np.mean((reference * candidate).sum(-1) / np.maximum(norms, 1e-30)))


def export_genai(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    scheme: str = "int4",
    *,
    block_size: int = INT4_BLOCK_SIZE,
    accuracy_level: int = INT4_ACCURACY_LEVEL,
    builder_options: dict[str, Any] | None = None,
    calibration: Any = None,
) -> Path:
    """Export a saved Llama-family causal LM for ONNX Runtime GenAI on CPU, into a new folder.

    The builder runs offline on the saved folder and writes into a hidden sibling folder; the
    export is loaded and checked against transformers' logits on a probe text (fp32: to `1e-3`;
    int8/int4: a mean correlation of at least 0.5, which a wrong conversion falls far below); only then is the folder
    renamed into place, so a failed build leaves nothing behind. `config.json` in the folder is the
    source's config with a `quantization` record: engine and version, scheme, the int4 settings,
    the source folder and the largest logit difference from transformers on a probe text.

    Args:
        model_dir: a folder written by `save_pretrained`, with its tokenizer (a `LlamaForCausalLM`,
            e.g. SmolLM2 or a student the kit pruned).
        output_dir: the new folder; an earlier export there is replaced, any other folder refused.
        scheme: `"int4"` (MatMulNBits, the fastest), `"int8"` or `"fp32"`.
        block_size, accuracy_level: int4/int8 MatMulNBits settings (see `INT4_BLOCK_SIZE`).
        builder_options: further `--extra_options` of the builder (e.g. `{"nodes_to_exclude":
            "/lm_head/MatMul"}`), passed as they are and recorded; for int4 they go over
            `INT4_BUILDER_OPTIONS` (asymmetric round-to-nearest, output layer and every layer's qkv and
            down projections int8), so `{"is_symmetric": "true", "algo_config": "default",
            "matmul_mixed_precision": "", "int8_projections": ""}` gives the builder's own defaults back.
            `int8_projections` is the kit's own option, not the builder's: a comma-separated subset of
            `INT8_PROJECTIONS` whose matrices every decoder layer keeps in int8 (int4 only); with it,
            `nodes_to_exclude` names are checked against the graph by the builder (see
            `_builder_target_options`).
        calibration: int4 only: token-id sequences of the model's usual text (a list of lists of ints,
            or a `datasets.Dataset` with `input_ids`), e.g. 32 blocks of 128 tokens of its training
            data. The 4-bit matrices are then quantized by GPTQ (`quantization.gptq`) instead of
            round-to-nearest: the same format, size and speed, less perplexity lost (BENCHMARKS.md,
            "GPTQ-calibrated GenAI int4"), for a forward pass over the sequences and seconds of CPU
            per matrix set. The int8 matrices stay round-to-nearest.

    Returns:
        `output_dir` as a `Path`.

    Raises:
        ImportError: onnxruntime-genai is missing (`pip install "hf-bigsmall[genai]"`).
        ValueError: see `check_genai_source`; calibration with another scheme than int4, or calibration
            sequences that are empty, shorter than 2 tokens, longer than the model's positions or hold ids
            outside its vocabulary (all checked before anything is written); or the builder failed, or its
            fp32 export does not reproduce transformers' logits.
        FileExistsError: another export to `output_dir` was renamed into place first on every attempt (see
            `hf_bigsmall.utils.files.publish_dir`); its whole folder is there, and this build is removed.

    Example:
    ```python
    import onnxruntime_genai as og
    from hf_bigsmall.quantization.genai import export_genai

    folder = export_genai("bigsmall_output/student", "bigsmall_output/student-genai-int4", "int4")
    model = og.Model(str(folder))
    ```
    """
    import onnxruntime_genai

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    config = check_genai_source(model_dir, output_dir, scheme)
    sequences = None
    if calibration is not None:
        from .gptq import check_calibration

        if scheme != "int4":
            raise ValueError(f"calibration (GPTQ) applies to the int4 scheme only, got scheme={scheme!r}: drop "
                             "calibration, or export int4.")
        sequences = check_calibration(calibration, config.vocab_size,
                                      getattr(config, "max_position_embeddings", None))
    extra_options = {} if scheme == "fp32" else {"block_size": block_size, "accuracy_level": accuracy_level}
    if scheme == "int4":
        # the block size the builder will use: a `block_size` among builder_options wins over the argument
        blocks = _block_size((builder_options or {}).get("block_size", block_size))
        extra_options.update(_int4_options(config, blocks))
    extra_options.update(builder_options or {})
    if scheme == "int4" and str(extra_options.get("is_symmetric")).lower() in ("false", "0") and _odd_rows(config, blocks):
        raise ValueError(f"is_symmetric=false cannot be built with blocks of {blocks}: some matrix rows of {model_dir} "
                         f"hold an odd number of blocks (widths {_row_widths(config)}), whose 4-bit zero points ONNX "
                         "Runtime cannot pack. Leave is_symmetric out (symmetric is then chosen) or pick a block size "
                         "that divides every width an even number of times.")
    if _int8_projections(extra_options) and scheme != "int4":
        raise ValueError(f"int8_projections applies to the int4 scheme only, got scheme={scheme!r}: drop it from "
                         "builder_options, or export int4.")
    target_options = _builder_target_options(config, extra_options) if scheme == "int4" else None
    if sequences is not None and _output_layer_type(extra_options, 4) == "int4":
        # a tied input embedding reads the output layer's 4-bit weights, which GPTQ calibrated for the output alone
        # would change under it; the output layer is not calibrated, and a partly calibrated export is not made
        raise ValueError("GPTQ calibration needs the output layer in 8 bits, but builder_options leave the output "
                         "layer in 4 bits: keep 'last_matmul:int8' in matmul_mixed_precision (the default), or "
                         "export without calibration.")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # builds of earlier exports to this folder that were killed (hundreds of MB each), once their writers are gone
    remove_leftovers(output_dir)
    build_dir = genai_build_dir(output_dir)
    try:
        _run_builder(model_dir, build_dir, scheme, extra_options, target_options)
        calibration_record = None
        if sequences is not None:
            from .gptq import GPTQ_DAMP, calibrate_genai_int4

            calibration_record = calibrate_genai_int4(model_dir, build_dir, sequences, damp=GPTQ_DAMP)
        config.save_pretrained(build_dir)  # the runner reads the vocabulary from it; the record follows below
        probe = _probe(model_dir, build_dir)
        difference, scale = probe["max_logit_difference_from_transformers"], probe.pop("logit_scale")
        if scheme == "fp32" and not difference <= _EXPORT_TOLERANCE * (1 + scale):
            raise ValueError(f"The GenAI fp32 export of {model_dir} does not reproduce transformers' logits (max "
                             f"difference {difference:.3g}): onnxruntime-genai {onnxruntime_genai.__version__}'s "
                             "builder does not convert this model correctly.")
        correlation = probe["logit_correlation_with_transformers"]
        if scheme != "fp32" and not correlation >= _QUANTIZED_MIN_CORRELATION:
            # quantization moves logits, it does not decorrelate them: this is a wrong conversion, not rounding
            raise ValueError(f"The GenAI {scheme} export of {model_dir} does not follow transformers' logits (mean "
                             f"correlation {correlation:.2f} on a probe text, below {_QUANTIZED_MIN_CORRELATION}): "
                             f"onnxruntime-genai {onnxruntime_genai.__version__}'s builder does not convert this model "
                             "correctly. Serve it with backend='gguf' instead.")
        record = {"method": scheme,
                  "scheme": scheme_description(scheme, extra_options, calibrated=bool(calibration_record and calibration_record["matrices"])),
                  "backend": GENAI_BACKEND, "backend_version": onnxruntime_genai.__version__, "device": "cpu",
                  "format": GENAI_BACKEND, "file": "model.onnx", "source": str(model_dir),
                  **probe,
                  **({"builder_options": extra_options} if extra_options else {}),
                  **({"calibration": calibration_record} if calibration_record else {})}
        QuantizationRecord.from_dict(record).write(config)
        config.save_pretrained(build_dir)
        mark_kit_folder(build_dir)  # like every folder the kit writes: a later run may replace or remove it
        _publish(build_dir, output_dir)
    except BaseException:  # a failed build, check or save leaves nothing half-written behind
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    finally:
        release_writer(build_dir)  # what a Ctrl-C in the removal above left goes at the next export
    logger.info(f"Exported {model_dir} for ONNX Runtime GenAI ({scheme}, max logit difference from transformers "
                f"{difference:.2g}) -> {output_dir}; load with onnxruntime_genai.Model('{output_dir}')")
    return output_dir


def genai_build_dir(output_dir: Path) -> Path:
    """A new, empty folder of this writer's own that the builder writes `output_dir`'s export into.

    Hidden (never uploaded), beside `output_dir` (on the same disk, for the rename), and named
    `.<name>.<writer>.genai`: a later export of the same folder tells from the name whose it is, and removes it
    once that writer is gone (`hf_bigsmall.utils.files.remove_leftovers`), never while it builds.
    """
    build_dir = output_dir.with_name(f".{output_dir.name}.{writer_tag()}.genai")
    build_dir.mkdir()
    return build_dir


def _publish(build_dir: Path, output_dir: Path) -> None:
    """Rename the finished build into place; an earlier export there is moved aside, then removed.

    The folder is checked again here: the build takes minutes, and a folder of the user's may have
    appeared at `output_dir` since `check_genai_source` ran. Such a folder is refused and kept. Two exports to one
    folder at once leave one whole export there, as `hf_bigsmall.utils.files.publish_dir` does for every folder the
    kit writes (it is the one that moves and renames here).

    Raises:
        ValueError: a file, a link or a folder that is not a quantized export of the kit's is at `output_dir`.
        FileExistsError: another export was renamed into `output_dir` first on every attempt; the build is removed.
    """
    try:
        publish_dir(build_dir, output_dir, is_replaceable=_is_replaceable_export)
    except NotReplaceableError as error:
        raise ValueError(f"{output_dir} appeared during the export and was not written by hf_bigsmall as a quantized "
                         "export: it is left as it is. Choose another output_dir or remove it yourself.") from error


class GenAIModelRunner:
    """Run a folder written by `export_genai` with ONNX Runtime GenAI, as `compare_models` runs a model.

    Called with keyword tensors it returns an output with `.logits` for every position (each row's
    tokens run alone, padding skipped), so held-out perplexity comes from the engine's own logits on
    the same tokens as the PyTorch models. `generate` decodes greedily with the engine's KV cache and
    search, and `measure_generation` times prefill and decode at batch 1.

    Args:
        model_dir: the folder (`genai_config.json`, `model.onnx`, `config.json`, tokenizer).
        num_threads: intra-op threads of the session; defaults to `torch.get_num_threads()`, so the
            engine and a PyTorch model measured side by side use the same number of cores.

    Example:
    ```python
    from hf_bigsmall.quantization.genai import GenAIModelRunner

    runner = GenAIModelRunner("bigsmall_output/student-genai-int4", num_threads=1)
    tokens, _ = runner.generate(tokenizer("The weather today")["input_ids"], new_tokens=32)
    ```
    """

    training = False

    def __init__(self, model_dir: str | os.PathLike, num_threads: int | None = None):
        require("onnxruntime_genai", extra=GENAI_EXTRA, purpose="serving causal LMs with ONNX Runtime GenAI")
        import onnxruntime_genai as og
        import torch
        from transformers import AutoConfig

        self.path = Path(model_dir)
        if not is_genai_folder(self.path):
            raise ValueError(f"{self.path} has no {GENAI_CONFIG_FILE}: export it with export_genai / "
                             "quantize(..., backend='onnxruntime-genai') first.")
        self.config = AutoConfig.from_pretrained(self.path)
        self.task = CAUSAL_LM
        self.record: dict[str, Any] = getattr(self.config, QUANTIZATION_KEY, None) or {}
        self.num_threads = num_threads or torch.get_num_threads()
        engine_config = og.Config(str(self.path))
        engine_config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": self.num_threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(engine_config)
        genai_config = json.loads((self.path / GENAI_CONFIG_FILE).read_text(encoding="utf-8"))
        self.context_length = int(genai_config["model"]["context_length"])
        self.device = torch.device("cpu")
        self.name_or_path = str(self.path)

    def eval(self) -> GenAIModelRunner:
        return self

    def _generator(self, max_length: int):
        import onnxruntime_genai as og

        if max_length > self.context_length:
            raise ValueError(f"{max_length} tokens exceed the model's context of {self.context_length}: use shorter "
                             "prompts or fewer new tokens.")
        params = og.GeneratorParams(self.model)
        # min_length = max_length: greedy decoding never stops at an end-of-text token, as measure_generation
        params.set_search_options(max_length=max_length, min_length=max_length, do_sample=False)
        return og.Generator(self.model, params)

    def prompt_logits(self, token_ids: list[int]):
        """The engine's logits for every position of one sequence, a float32 array (len(token_ids), vocab)."""
        import numpy as np

        generator = self._generator(len(token_ids) + 1)
        generator.append_tokens(list(map(int, token_ids)))
        return np.asarray(generator.get_output("logits"), dtype=np.float32)[0]

    def forward(self, input_ids=None, attention_mask=None, **ignored: Any):
        """Token ids (and mask) in, an output with `.logits` (batch, sequence, vocab) out; padding gets zeros."""
        if input_ids is None:
            raise ValueError("GenAIModelRunner needs input_ids.")
        return padded_logits(self.prompt_logits, self.config.vocab_size, input_ids, attention_mask)

    __call__ = forward

    def generate(self, prompt: list[int], new_tokens: int = 32):
        """Greedy tokens from the engine's own search, and the logits each was chosen from (new_tokens, vocab)."""
        import numpy as np

        generator = self._generator(len(prompt) + new_tokens)
        generator.append_tokens(list(map(int, prompt)))
        tokens, step_logits = [], []
        while not generator.is_done():
            step_logits.append(np.asarray(generator.get_logits(), dtype=np.float32)[0, -1].copy())
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        return tokens, np.stack(step_logits)

    def measure_generation(self, prompts, *, new_tokens: int = 32, warmup: int = 1, backend: str = "auto",
                           cpu_tdp_watts: float | None = None, cpu_threads: int | None = None):
        """Prefill latency, decode tokens/s and joules per token at batch 1, as `measure_generation` for torch.

        Prefill is the prompt's forward (`append_tokens`) and the choice of the first token; each
        decode step is one `generate_next_token`, which runs the model on the last token with the
        KV cache and picks the next one greedily.
        """
        def begin(prompt: list[int]):
            generator = self._generator(len(prompt) + new_tokens + 1)

            def prefill() -> None:
                generator.append_tokens(prompt)
                generator.generate_next_token()  # the first new token comes from the prompt's logits

            return prefill, generator.generate_next_token

        return time_engine_generation(prompts, begin, new_tokens=new_tokens, warmup=warmup, device=self.device,
                                      backend=backend, cpu_tdp_watts=cpu_tdp_watts, cpu_threads=cpu_threads)

    def parameter_counts(self) -> tuple[int, int, float]:
        """(parameters, non-zero parameters, sparsity) of the model that was exported, from its record."""
        return (int(self.record.get("parameters", 0)), int(self.record.get("nonzero_parameters", 0)),
                float(self.record.get("sparsity", 0.0)))

    def __repr__(self) -> str:
        return f"GenAIModelRunner({str(self.path)!r}, threads={self.num_threads})"
