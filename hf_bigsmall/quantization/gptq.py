"""GPTQ for ONNX Runtime's int4 `MatMulNBits`: calibration Hessians, the quantizer, and the initializers' packing.

GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers") quantizes a linear layer's input columns one after the other and spreads each column's
rounding error over the columns not yet quantized, weighted by the inverse of the layer's input Hessian
`H = sum x x^T` over calibration tokens, so the layer's *output* on such inputs moves as little as it can.
The integers it picks are stored exactly as ONNX Runtime's round-to-nearest stores them (codes, a scale
and a zero point per block of input channels), so the engine runs a calibrated model with the same
kernel, speed and size.

`calibration_hessians` collects the Hessians from a transformers model, `gptq_quantize` quantizes one
matrix, and `unpack_matmul_nbits` / `pack_matmul_nbits` read and write the three initializers of a
4-bit `MatMulNBits` node (the layout of onnxruntime's contrib op schema, as its quantizer writes it).
"""

from __future__ import annotations

import operator
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.utils import logging

from ..pruning.sparsegpt import inverse_hessian_factor

logger = logging.get_logger(__name__)

# the lazy-update batch of columns (Frantar et al. 2022, section 4 "Lazy Batch-Updates"): the error of a whole batch
# reaches the remaining columns in one matrix product instead of one rank-1 update per column
_LAZY_BATCH = 128
# GPTQ's dampening of the Hessian's diagonal, relative to its mean (the paper's 1%)
GPTQ_DAMP = 0.01


def calibration_hessians(model: torch.nn.Module, sequences: Iterable[Sequence[int]],
                         module_names: Iterable[str]) -> tuple[dict[str, torch.Tensor], int]:
    """The input Hessians `sum x x^T` (float64, `(in_features, in_features)`) of some `nn.Linear` modules.

    Each sequence runs through `model` on its own (no padding); a forward hook adds every token's
    input row of each named module.

    Args:
        model: a transformers model in fp32, in `eval()`.
        sequences: token-id sequences.
        module_names: names (as `model.named_modules()` gives them) of the `nn.Linear` modules.

    Returns:
        The Hessian of each named module, and the number of tokens (rows) summed into each.
    """
    wanted = set(module_names)
    hessians: dict[str, torch.Tensor] = {}

    def accumulate(name: str):
        def hook(module, inputs, output):
            rows = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            if name in hessians:
                hessians[name].addmm_(rows.T, rows)
            else:
                hessians[name] = rows.T @ rows
        return hook

    modules = {name: module for name, module in model.named_modules() if name in wanted}
    if len(modules) < len(wanted):
        raise ValueError(f"The model has no modules named {sorted(wanted - set(modules))[:3]}.")
    for name, module in modules.items():
        if not isinstance(module, torch.nn.Linear):
            raise TypeError(f"{name} is a {type(module).__name__}, not an nn.Linear: GPTQ quantizes linear layers.")
    # the output layer's logits (positions x vocabulary: 1.6 GB for 8192 tokens of a 49152-word vocabulary) are of no
    # use unless its own input is wanted; nor is a KV cache
    options: dict[str, Any] = {}
    if hasattr(model, "get_output_embeddings"):  # a transformers model
        options["use_cache"] = False
        output_layer = model.get_output_embeddings()
        if output_layer is not None and not any(module is output_layer for module in modules.values()):
            options["logits_to_keep"] = 1
    hooks = [module.register_forward_hook(accumulate(name)) for name, module in modules.items()]
    tokens = 0
    try:
        with torch.inference_mode():
            for ids in sequences:
                model(torch.tensor([list(ids)], dtype=torch.long), **options)
                tokens += len(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return hessians, tokens


def _grid(block: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point `(rows, 1)` of each row of `block` (rows, block_size).

    Asymmetric: the block's range widened to include 0, `scale = (max - min) / (2^bits - 1)`, zero point
    `round(-min / scale)`, so 0 is exact and both ends are on the grid (ONNX Runtime's round-to-nearest
    takes the block's own min and max, which for a block of one sign wastes part of the grid).
    Symmetric: `scale = 2 max|w| / (2^bits - 1)` and the zero point fixed at `2^(bits-1)`, as ONNX
    Runtime stores a symmetric block without zero points.
    """
    levels = 2**bits - 1
    if symmetric:
        scale = 2 * block.abs().amax(dim=1, keepdim=True) / levels
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, torch.full_like(scale, 2 ** (bits - 1))
    low = block.amin(dim=1, keepdim=True).clamp(max=0)
    high = block.amax(dim=1, keepdim=True).clamp(min=0)
    scale = (high - low) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, torch.round(-low / scale).clamp(0, levels)


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int = 4,
    block_size: int = 32,
    damp: float = GPTQ_DAMP,
    symmetric: bool = False,
    name: str = "weight",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize `weight` (out_features N, in_features K) on ONNX Runtime's blocked grid, by GPTQ.

    Input columns are taken in order; at the first column of each block the block's scale and zero point
    are set from the weights as the earlier columns' errors have updated them; each column is rounded on
    that grid and its error, divided by the inverse Hessian's diagonal, is subtracted from the later
    columns in proportion to the inverse Hessian's row (Frantar et al. 2022, eq. 2-4, with the Cholesky
    form of the inverse). `damp` times the mean diagonal is added to the Hessian's diagonal. Columns no
    calibration input reached (a zero diagonal, and the zero padding of a last partial block) are stored
    as zeros. `K` need not be a multiple of `block_size`: the last block is zero-padded, as the engine
    pads it.

    Args:
        weight: the float weights, `(N, K)`, as `nn.Linear.weight` holds them.
        hessian: `(K, K)`, `sum x x^T` over calibration inputs (`calibration_hessians`).
        bits: 4 (or 8).
        block_size: input channels per block (a scale and a zero point each).
        damp: the dampening, relative to the mean of the Hessian's diagonal.
        symmetric: no zero points (fixed at `2^(bits-1)`), as the engine stores symmetric blocks.
        name: what the messages call the matrix (e.g. its graph node).

    Returns:
        `codes` (N, padded K) uint8 in `[0, 2^bits)`, `scales` (N, blocks) float32 and `zero_points`
        (N, blocks) uint8; the weight is `(codes - zero_point) * scale` per block.
    """
    rows, columns = weight.shape
    if hessian.shape != (columns, columns):
        raise ValueError(f"The Hessian is {tuple(hessian.shape)}, the weight {tuple(weight.shape)}: it must be "
                         f"({columns}, {columns}), from the inputs of the layer that holds this weight.")
    if not 0 <= damp < 1:
        raise ValueError(f"damp must be in [0, 1) (a fraction of the Hessian's mean diagonal), got {damp}.")
    blocks = -(-columns // block_size)
    padded = blocks * block_size
    work = torch.zeros(rows, padded, dtype=torch.float32)
    work[:, :columns] = weight.detach().float()
    h = torch.zeros(padded, padded, dtype=torch.float64)
    h[:columns, :columns] = hessian.double()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    work[:, dead] = 0
    # the upper Cholesky factor of (H + damp mean(diag H) I)^-1: its rows give each column's update of the later
    # ones (Frantar et al. 2022); the dampening is raised, with a warning, while the Hessian is not positive definite
    inverse = inverse_hessian_factor(h, damp, name, method="GPTQ")[0].float()
    levels = 2**bits - 1
    codes = torch.zeros(rows, padded, dtype=torch.uint8)
    scales = torch.zeros(rows, blocks, dtype=torch.float32)
    zero_points = torch.zeros(rows, blocks, dtype=torch.float32)
    # a lazy batch holds whole blocks, so a block's grid is set from weights its batch has fully updated
    batch = max(_LAZY_BATCH // block_size, 1) * block_size
    for start in range(0, padded, batch):
        end = min(start + batch, padded)
        chunk = work[:, start:end].clone()
        errors = torch.zeros_like(chunk)
        chunk_inverse = inverse[start:end, start:end]
        for column in range(end - start):
            if (start + column) % block_size == 0:
                block = (start + column) // block_size
                scale, zero_point = _grid(chunk[:, column:column + block_size], bits, symmetric)
                scales[:, block], zero_points[:, block] = scale[:, 0], zero_point[:, 0]
            values = chunk[:, column]
            code = torch.clamp(torch.round(values / scale[:, 0] + zero_point[:, 0]), 0, levels)
            codes[:, start + column] = code.to(torch.uint8)
            error = (values - (code - zero_point[:, 0]) * scale[:, 0]) / chunk_inverse[column, column]
            chunk[:, column + 1:] -= error[:, None] * chunk_inverse[column, column + 1:][None, :]
            errors[:, column] = error
        work[:, end:] -= errors @ inverse[start:end, end:]
    return codes, scales, zero_points.to(torch.uint8)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor,
               block_size: int = 32) -> torch.Tensor:
    """The float weights `(N, padded K)` that codes, scales and zero points stand for."""
    rows, padded = codes.shape
    shape = (rows, padded // block_size, block_size)
    values = (codes.float().reshape(shape) - zero_points.float()[..., None]) * scales.float()[..., None]
    return values.reshape(rows, padded)


def round_to_nearest(weight: torch.Tensor, bits: int = 4, block_size: int = 32,
                     symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes, scales and zero points of plain rounding on `gptq_quantize`'s grid (no calibration)."""
    rows, columns = weight.shape
    blocks = -(-columns // block_size)
    padded = torch.zeros(rows, blocks * block_size, dtype=torch.float32)
    padded[:, :columns] = weight.detach().float()
    grouped = padded.reshape(rows * blocks, block_size)
    scale, zero_point = _grid(grouped, bits, symmetric)
    codes = torch.clamp(torch.round(grouped / scale + zero_point), 0, 2**bits - 1)
    return (codes.to(torch.uint8).reshape(rows, -1), scale.reshape(rows, blocks),
            zero_point.reshape(rows, blocks).to(torch.uint8))


def pack_matmul_nbits(codes: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None,
                      block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The 4-bit `MatMulNBits` initializers B, scales and zero points, as onnxruntime's quantizer writes them.

    B is uint8 `(N, blocks, block_size / 2)`, two codes a byte, the even input channel in the low nibble;
    scales float32 `(N, blocks)`; zero points uint8, two a byte (low nibble first) over the flattened
    `(N * blocks)` sequence, shaped `(N, blocks / 2)` (which needs an even number of blocks, the reason
    rows of an odd number of blocks are stored symmetric, without zero points).
    """
    codes, scales = np.asarray(codes, dtype=np.uint8), np.asarray(scales, dtype=np.float32)
    rows, padded = codes.shape
    blocks = padded // block_size
    if padded != blocks * block_size or scales.shape != (rows, blocks):
        raise ValueError(f"codes {codes.shape} and scales {scales.shape} do not make blocks of {block_size}.")
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8).reshape(rows, blocks, block_size // 2)
    if zero_points is None:
        return packed, scales, None
    flat = np.asarray(zero_points, dtype=np.uint8).reshape(-1)
    if flat.size % 2:
        raise ValueError("4-bit zero points are packed two a byte across rows: rows of an odd number of blocks "
                         "must be stored symmetric (no zero points).")
    packed_zero_points = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).reshape(rows, -1)
    return packed, scales, packed_zero_points


def unpack_matmul_nbits(packed: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None,
                        rows: int, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes `(N, padded K)`, scales `(N, blocks)` and zero points `(N, blocks)` of a 4-bit `MatMulNBits`
    node's initializers (any shapes holding the bytes of `pack_matmul_nbits`); without zero points, 8."""
    packed = np.asarray(packed, dtype=np.uint8).reshape(rows, -1)
    codes = np.empty((rows, packed.shape[1] * 2), dtype=np.uint8)
    codes[:, 0::2], codes[:, 1::2] = packed & 0x0F, packed >> 4
    blocks = codes.shape[1] // block_size
    scales = np.asarray(scales, dtype=np.float32).reshape(rows, blocks)
    if zero_points is None:
        return codes, scales, np.full((rows, blocks), 8, dtype=np.uint8)
    flat = np.asarray(zero_points, dtype=np.uint8).reshape(-1)
    unpacked = np.empty(flat.size * 2, dtype=np.uint8)
    unpacked[0::2], unpacked[1::2] = flat & 0x0F, flat >> 4
    return codes, scales, unpacked[: rows * blocks].reshape(rows, blocks)


def check_calibration(calibration: Any, vocab_size: int, max_positions: int | None = None) -> list[list[int]]:
    """Calibration token sequences as lists of ints, or a `ValueError`/`TypeError` saying what is wrong.

    Padded sequences come with an `attention_mask` (a dataset column, or the tokenizer's output): the
    masked positions are padding, not text, and are left out, so no pad token reaches the Hessians.

    Args:
        calibration: a sequence of token-id sequences, or a `datasets.Dataset`, a dict or a `BatchEncoding`
            with `input_ids` (and optionally `attention_mask`).
        vocab_size: ids must be in `[0, vocab_size)`.
        max_positions: the longest sequence the model takes (its `max_position_embeddings`).
    """
    if calibration is None or isinstance(calibration, (str, bytes)):
        raise TypeError("calibration must be a sequence of token-id sequences (or a datasets.Dataset with an "
                        f"'input_ids' column), got {type(calibration).__name__}: tokenize the text first.")
    masks = None
    column_names = getattr(calibration, "column_names", None)
    if column_names is None and isinstance(calibration, Mapping):
        column_names = list(calibration.keys())
    if column_names is not None:
        if "input_ids" not in column_names:
            raise ValueError(f"The calibration data has no 'input_ids' column (columns: {list(column_names)}): "
                             "tokenize it with the model's tokenizer first.")
        if "attention_mask" in column_names:
            masks = calibration["attention_mask"]
        calibration = calibration["input_ids"]
    elif isinstance(calibration, Iterable):
        calibration = list(calibration)
        if calibration and all(isinstance(row, Mapping) for row in calibration):  # rows of a dataset, tokenizer calls
            if any("input_ids" not in row for row in calibration):
                raise ValueError("Some calibration rows have no 'input_ids': tokenize them with the model's tokenizer "
                                 "first.")
            if any("attention_mask" in row for row in calibration):
                masks = [row.get("attention_mask", [1] * len(row["input_ids"])) for row in calibration]
            calibration = [row["input_ids"] for row in calibration]
    try:
        sequences = [[_token_id(token) for token in ids] for ids in calibration]
        if masks is not None:
            masks = [[_token_id(flag) for flag in mask] for mask in masks]
    except TypeError as error:
        raise TypeError(f"calibration must be a sequence of token-id sequences (lists of ints): {error}.") from error
    if masks is not None:
        if len(masks) != len(sequences):
            raise ValueError(f"calibration has {len(sequences)} input_ids but {len(masks)} attention masks.")
        kept = []
        for index, (ids, mask) in enumerate(zip(sequences, masks)):
            positions = [position for position, flag in enumerate(mask) if flag]
            # left or right padding leaves the text in one run; a hole in it is no padding the model was fed
            if len(mask) != len(ids) or (positions and positions[-1] - positions[0] + 1 != len(positions)):
                raise ValueError(f"The attention_mask of sequence {index} is not padding around one run of text "
                                 f"({len(mask)} flags for {len(ids)} ids): give unpadded sequences instead.")
            kept.append([ids[position] for position in positions])
        sequences = kept
    if not sequences:
        raise ValueError("calibration holds no sequences: give a few dozen blocks of the model's usual text "
                         "(e.g. 32 blocks of 128 tokens of its training data).")
    for index, ids in enumerate(sequences):
        if len(ids) < 2:
            raise ValueError(f"calibration sequence {index} has {len(ids)} token(s): give sequences of at least 2 "
                             "tokens (blocks of 128 are typical).")
        if max_positions is not None and len(ids) > max_positions:
            raise ValueError(f"calibration sequence {index} has {len(ids)} tokens, more than the model's "
                             f"{max_positions} positions: cut it into shorter blocks.")
        low, high = min(ids), max(ids)
        if low < 0 or high >= vocab_size:
            raise ValueError(f"calibration sequence {index} holds token id {low if low < 0 else high}, outside the "
                             f"model's vocabulary [0, {vocab_size}): tokenize with the model's own tokenizer.")
    return sequences


def _token_id(value: Any) -> int:
    """An int token id (or mask flag) from a Python, NumPy or torch integer; a float or a string is refused."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"token ids must be whole numbers, got {value!r}") from None


# the 4-bit MatMulNBits nodes of onnxruntime-genai's Llama graph -> the transformers weights they hold (concatenated
# along the outputs, in this order) and the module whose input they read; `{}` is the layer
_GENAI_NODE = re.compile(r"^/model/layers\.(\d+)/(attn/(?:qkv|q|k|v|o)_proj|mlp/(?:gate|up|down)_proj)/MatMul_Q4$")
_GENAI_WEIGHTS = {
    "attn/qkv_proj": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.q_proj"),
    "attn/q_proj": (("self_attn.q_proj",), "self_attn.q_proj"),
    "attn/k_proj": (("self_attn.k_proj",), "self_attn.q_proj"),
    "attn/v_proj": (("self_attn.v_proj",), "self_attn.q_proj"),
    "attn/o_proj": (("self_attn.o_proj",), "self_attn.o_proj"),
    "mlp/gate_proj": (("mlp.gate_proj",), "mlp.gate_proj"),
    "mlp/up_proj": (("mlp.up_proj",), "mlp.gate_proj"),
    "mlp/down_proj": (("mlp.down_proj",), "mlp.down_proj"),
}


def _genai_int4_nodes(graph) -> list[tuple[Any, list[str], str]]:
    """Each 4-bit MatMulNBits node of a GenAI Llama graph, the transformers weights it holds, the module it reads."""
    nodes = []
    for node in graph.node:
        if node.op_type != "MatMulNBits":
            continue
        bits = next((attribute.i for attribute in node.attribute if attribute.name == "bits"), 4)
        if bits != 4:
            continue  # int8 nodes (the output layer, the qkv and down projections) keep the builder's round-to-nearest
        match = _GENAI_NODE.match(node.name)
        if match is None:
            raise ValueError(f"The GenAI int4 graph holds a 4-bit node {node.name!r} that GPTQ calibration does not "
                             "know how to map to the model's weights: export without calibration, or with "
                             "builder_options that keep that matrix in int8.")
        layer, part = match.groups()
        weights, reads = _GENAI_WEIGHTS[part]
        nodes.append((node, [f"model.layers.{layer}.{name}" for name in weights], f"model.layers.{layer}.{reads}"))
    return nodes


# the builder's rounding of a node lies within half a step of the weights it was given (round-to-nearest; its
# symmetric grid clips the top code by half a step more) or about one (k_quant, which fits its scales, clipping a few
# weights further): a root mean square of 0.3 step or less; weights of another matrix of one shape (q, k and v in
# another order, gate for up, a square matrix transposed) lie several steps away
_BUILDER_ROUNDING_STEPS = 0.6


def _check_builder_rounding(node, weight: torch.Tensor, arrays: list, attributes: dict[str, int],
                            names: str) -> torch.Tensor:
    """The weights `(N, K)` a node stores; refused when they are not the mapped model weights, rounded.

    The shapes alone cannot tell q, k and v apart in a fused node of a GQA model (k and v have one shape), nor a
    square matrix from its transpose; the builder's own bytes can, so a wrong mapping fails here instead of
    shipping a model with the wrong weights in its matrices.
    """
    rows, columns, block_size = attributes["N"], attributes["K"], attributes["block_size"]
    codes, scales, zero_points = unpack_matmul_nbits(arrays[0], arrays[1], arrays[2], rows=rows,
                                                     block_size=block_size)
    stored = dequantize(torch.tensor(codes), torch.tensor(scales), torch.tensor(zero_points), block_size)[:, :columns]
    step = torch.tensor(np.abs(scales)).repeat_interleave(block_size, dim=1)[:, :columns]
    steps = (stored - weight.float()).abs() / step.clamp(min=1e-12)
    distance = float(steps.square().mean().sqrt())
    if distance > _BUILDER_ROUNDING_STEPS:
        raise ValueError(f"{node.name} does not hold the model's {names} weights (the builder's rounding of it is "
                         f"{distance:.1f} steps from them, root mean square): GPTQ calibration maps this graph's "
                         "nodes wrongly, so "
                         "nothing is written. Export without calibration.")
    return stored


def _output_error(weight: torch.Tensor, stored: torch.Tensor, hessian: torch.Tensor) -> float:
    """`sum ||x (W - Q)^T||^2` over the calibration inputs: `trace((W - Q) H (W - Q)^T)`, what GPTQ minimizes."""
    difference = (weight.double() - stored.double())
    return float(((difference @ hessian.double()) * difference).sum())


def calibrate_genai_int4(model_dir: str | os.PathLike, build_dir: str | os.PathLike, sequences: list[list[int]],
                         damp: float = GPTQ_DAMP) -> dict[str, Any]:
    """Replace the 4-bit `MatMulNBits` weights of a GenAI Llama export by GPTQ's, calibrated on `sequences`.

    The builder's graph in `build_dir` (`model.onnx` and its external `model.onnx.data`) keeps its nodes,
    names, shapes and 8-bit nodes; only the codes, scales and zero points of its 4-bit nodes change, and
    the files are written again under the same names. A symmetric node (no zero point input) stays
    symmetric.

    Args:
        model_dir: the transformers folder the export was built from (the fp32 weights and the model the
            Hessians come from).
        build_dir: the builder's output folder.
        sequences: calibration token sequences (`check_calibration`).
        damp: GPTQ's dampening, relative to the mean diagonal of each Hessian.

    Returns:
        The calibration record: method, sequences, tokens, damp, the number of matrices calibrated, and (when
        some) `round_to_nearest_kept`: matrices whose GPTQ result had a larger output error on the calibration
        inputs than the builder's rounding, which they keep.

    Raises:
        ValueError: a 4-bit node that does not map to the model's weights, or whose shape differs from them.
    """
    import onnx
    from onnx import numpy_helper
    from transformers import AutoModelForCausalLM

    graph_file = Path(build_dir) / "model.onnx"
    graph = onnx.load(graph_file, load_external_data=False)
    nodes = _genai_int4_nodes(graph.graph)
    locations = {entry.value for tensor in graph.graph.initializer for entry in tensor.external_data
                 if entry.key == "location"}
    if len(locations) > 1:
        raise ValueError(f"{graph_file} keeps its weights in several files {sorted(locations)}: GPTQ calibration "
                         "rewrites one external data file, as onnxruntime-genai's builder writes it.")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    started = time.process_time()
    hessians, tokens = calibration_hessians(model, sequences, sorted({reads for _, _, reads in nodes}))
    hessian_seconds, started = time.process_time() - started, time.process_time()
    parameters = dict(model.named_parameters())
    del graph
    graph = onnx.load(graph_file)  # with its weights now
    initializers = {tensor.name: tensor for tensor in graph.graph.initializer}
    kept: list[str] = []
    for node, weights, reads in _genai_int4_nodes(graph.graph):
        attributes = {attribute.name: attribute.i for attribute in node.attribute}
        weight = torch.cat([parameters[f"{name}.weight"].detach() for name in weights])
        if tuple(weight.shape) != (attributes["N"], attributes["K"]):
            raise ValueError(f"{node.name} holds a ({attributes['N']}, {attributes['K']}) matrix, the model's "
                             f"{'+'.join(weights)} weights are {tuple(weight.shape)}: the graph was not built from "
                             f"{model_dir}.")
        symmetric = len(node.input) < 4 or not node.input[3]
        rounded = _check_builder_rounding(node, weight, [numpy_helper.to_array(initializers[name]) if name else None
                                               for name in list(node.input[1:4]) + [""] * (4 - len(node.input))],
                                attributes, "+".join(weights))
        codes, scales, zero_points = gptq_quantize(weight, hessians[reads], bits=4,
                                                   block_size=attributes["block_size"], damp=damp,
                                                   symmetric=symmetric, name=node.name)
        calibrated = dequantize(codes, scales, zero_points, attributes["block_size"])[:, :attributes["K"]]
        if _output_error(weight, calibrated, hessians[reads]) > _output_error(weight, rounded, hessians[reads]):
            # GPTQ minimizes this very error; a result above plain rounding's is no gain, so the node keeps the
            # builder's bytes and the export is never worse than round-to-nearest on the calibration text
            kept.append(node.name)
            continue
        packed = pack_matmul_nbits(codes.numpy(), scales.numpy(), None if symmetric else zero_points.numpy(),
                                   attributes["block_size"])
        for name, values in zip(node.input[1:4], packed):
            if not name:
                continue
            old = initializers[name]
            if int(np.prod(old.dims)) != values.size or old.data_type != onnx.helper.np_dtype_to_tensor_dtype(
                    values.dtype):
                raise ValueError(f"{name} of {node.name} is not laid out as onnxruntime's quantizer writes it "
                                 f"(dims {list(old.dims)}): GPTQ calibration cannot rewrite it.")
            old.CopyFrom(numpy_helper.from_array(values.reshape(tuple(old.dims)), name))
    logger.info(f"GPTQ: Hessians of {len(hessians)} inputs from {tokens} tokens in {hessian_seconds:.1f} s, "
                f"{len(nodes) - len(kept)} int4 matrices in {time.process_time() - started:.1f} s (CPU time)")
    if kept:
        logger.warning(f"GPTQ did not lower the calibration output error of {len(kept)} of {len(nodes)} int4 "
                       f"matrices ({', '.join(kept[:3])}{', ...' if len(kept) > 3 else ''}): they keep the builder's "
                       "round-to-nearest. Give more calibration text of the model's usual kind.")
    location = next(iter(locations), "model.onnx.data")
    data_file = Path(build_dir) / location
    # onnx creates the external data file readable by its owner alone: it keeps the mode the builder gave it
    mode = (data_file if data_file.exists() else graph_file).stat().st_mode & 0o777
    data_file.unlink(missing_ok=True)  # onnx appends to an existing external data file
    onnx.save_model(graph, graph_file, save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                    size_threshold=0)
    data_file.chmod(mode)
    return {"method": "gptq", "sequences": len(sequences), "tokens": tokens, "damp": damp,
            "matrices": len(nodes) - len(kept), **({"round_to_nearest_kept": len(kept)} if kept else {})}


def calibration_blocks(model_dir: str | os.PathLike, dataset: str, samples: int = 32,
                       block_size: int = 128) -> list[list[int]]:
    """`samples` evenly spaced blocks of `block_size` tokens from the training split of a text corpus.

    The corpus is tokenized with the model's tokenizer and cut into blocks as the causal-LM task cuts
    its training data (`tasks.causal_lm.load_causal_lm_dataset`); the held-out split is left alone, so a
    perplexity measured on it stays held out.

    Args:
        model_dir: the saved model, with its tokenizer.
        dataset: an embedded corpus (`embedded/news`, `embedded/hamlet`), a Hub id or a local dataset
            path (`datasets.load_dataset`), with a `text` column.
        samples: blocks wanted (fewer when the split holds fewer).
        block_size: tokens per block (at most the model's positions).
    """
    from transformers import AutoConfig, AutoTokenizer

    from ..tasks.causal_lm import load_causal_lm_dataset

    if samples < 1 or block_size < 2:
        raise ValueError(f"calibration needs at least 1 sample of at least 2 tokens, got {samples} x {block_size}.")
    positions = getattr(AutoConfig.from_pretrained(model_dir), "max_position_embeddings", None) or block_size
    train = load_causal_lm_dataset(AutoTokenizer.from_pretrained(model_dir), dataset,
                                   block_size=min(block_size, positions))["train"]
    if len(train) == 0:
        raise ValueError(f"{dataset}'s training split holds less than one block of {block_size} tokens: give more "
                         "text or a shorter block.")
    step = max(len(train) // samples, 1)
    return [list(train[index]["input_ids"]) for index in range(0, step * samples, step) if index < len(train)]
