"""Which weights are pruned, and how structured units (FFN neurons, attention heads) map onto them.

Unstructured pruning targets, by default, the `nn.Linear` (and GPT-2 `Conv1D`) weights inside the
repeated transformer blocks. Embeddings, LayerNorms, biases, poolers, classifiers and LM heads are
left dense: they are small, and the GPT-2 LM head is tied to the input embedding, so pruning it
would prune the embedding too.

Structured pruning needs to know, per architecture, which rows and columns make up one FFN neuron
or one attention head. `unit_groups` describes that for BERT-like, GPT-2 and Llama-like blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn
from transformers.pytorch_utils import Conv1D

# A block index in a module path: "bert.encoder.layer.3.output.dense" -> 3
_BLOCK_INDEX = re.compile(r"\.(\d+)\.")
_ATTENTION_WORDS = ("attn", "attention")
# Modules attached to a model only to train it, never part of its architecture: the default
# targets leave them dense (DistillationTrainer's width projections, `distillation_projection.N`).
TRAINING_ONLY_MODULES = ("distillation_projection",)


def is_prunable_layer(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def _tied_to_embedding(model: nn.Module, module: nn.Module) -> bool:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return embeddings is not None and module.weight is embeddings.weight


def candidate_modules(model: nn.Module) -> list[str]:
    """Names of every Linear/Conv1D layer, i.e. what `target_modules` may match."""
    return [name for name, module in model.named_modules() if is_prunable_layer(module)]


def find_target_modules(model: nn.Module, target_modules: list[str] | str | None = None) -> dict[str, nn.Module]:
    """Return `{module name: module}` of the layers whose `.weight` is pruned.

    Args:
        model: the (unwrapped) model.
        target_modules: `None` for the default (Linear/Conv1D layers inside the transformer blocks,
            excluding output embeddings and `TRAINING_ONLY_MODULES`); a list of name suffixes (`["query", "value"]`, as in peft);
            or a single string used as a regular expression that must match the full module name.

    Raises:
        ValueError: if nothing matches (the message lists the candidates), or if a match is tied to
            the input embedding (a GPT-2 LM head).
    """
    output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not is_prunable_layer(module):
            continue
        if target_modules is None:
            selected = (
                _BLOCK_INDEX.search(f".{name}.") is not None
                and module is not output_embeddings
                and name.split(".")[0] not in TRAINING_ONLY_MODULES
            )
        elif isinstance(target_modules, str):
            selected = re.fullmatch(target_modules, name) is not None
        else:
            selected = any(name == suffix or name.endswith(f".{suffix}") for suffix in target_modules)
        if not selected:
            continue
        if _tied_to_embedding(model, module):
            raise ValueError(
                f"Module {name!r} shares its weight with the input embedding (a tied LM head): pruning it would "
                "prune the embedding too. Leave it out of `target_modules`."
            )
        found[name] = module
    if not found:
        candidates = sorted({_BLOCK_INDEX.sub(".N.", f".{n}.").strip(".") for n in candidate_modules(model)})
        raise ValueError(
            f"No Linear/Conv1D module matches target_modules={target_modules!r}. Candidate names "
            f"(block index shown as N): {candidates}"
        )
    return found


def layer_key(module_name: str) -> str:
    """Short per-layer logging key: "bert.encoder.layer.3.intermediate.dense" -> "layer.3.ffn"."""
    match = _BLOCK_INDEX.search(f".{module_name}.")
    kind = "attn" if any(word in module_name for word in _ATTENTION_WORDS) else "ffn"
    return f"layer.{match.group(1)}.{kind}" if match else module_name


@dataclass
class UnitSlice:
    """Where unit `u` lives in one weight: indices `[offset + u * size, offset + (u + 1) * size)` of `dim`."""

    module_name: str
    dim: int
    size: int = 1
    offset: int = 0


@dataclass
class UnitGroup:
    """The prunable units (FFN neurons or attention heads) of one transformer block."""

    layer: str
    structure: str
    num_units: int
    slices: list[UnitSlice] = field(default_factory=list)
    # Heads that share one key/value head (Llama GQA): units are pruned evenly inside each group so
    # the compacted model keeps `num_attention_heads % num_key_value_heads == 0`.
    kv_group_size: int | None = None


def _architecture(model: nn.Module) -> str | None:
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if {"query", "key", "value", "intermediate"} <= names:
        return "bert"
    if {"c_attn", "c_fc", "c_proj"} <= names:
        return "gpt2"
    if {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names:
        return "llama"
    return None


def _block_prefixes(model: nn.Module, anchor: str) -> list[str]:
    return [name[: -len(anchor) - 1] for name, _ in model.named_modules() if name.endswith(f".{anchor}")]


def unit_groups(model: nn.Module, structure: str) -> list[UnitGroup]:
    """Describe every block's FFN neurons (`structure="neurons"`) or attention heads (`"heads"`).

    Supported: BERT-like encoders, GPT-2 and Llama-like decoders. Raises `ValueError` otherwise.
    """
    architecture = _architecture(model)
    config = model.config
    if architecture is None:
        raise ValueError(
            f"structure={structure!r} is supported for BERT, GPT-2 and Llama-style blocks; "
            f"{type(model).__name__} is none of them. Use structure='unstructured'."
        )
    groups = []
    if architecture == "bert":
        hidden, heads = config.hidden_size, config.num_attention_heads
        head_dim = hidden // heads
        for prefix in _block_prefixes(model, "attention.self.query"):
            key = layer_key(prefix + ".x")
            layer = key.rsplit(".", 1)[0]
            if structure == "neurons":
                slices = [UnitSlice(f"{prefix}.intermediate.dense", 0), UnitSlice(f"{prefix}.output.dense", 1)]
                groups.append(UnitGroup(layer, structure, config.intermediate_size, slices))
            else:
                slices = [UnitSlice(f"{prefix}.attention.self.{p}", 0, head_dim) for p in ("query", "key", "value")]
                slices.append(UnitSlice(f"{prefix}.attention.output.dense", 1, head_dim))
                groups.append(UnitGroup(layer, structure, heads, slices))
    elif architecture == "gpt2":
        hidden, heads = config.n_embd, config.n_head
        head_dim = hidden // heads
        inner = config.n_inner if config.n_inner is not None else 4 * hidden
        for prefix in _block_prefixes(model, "attn.c_attn"):
            layer = layer_key(prefix + ".x").rsplit(".", 1)[0]
            # Conv1D stores weights as (in_features, out_features): outputs are columns (dim 1).
            if structure == "neurons":
                slices = [UnitSlice(f"{prefix}.mlp.c_fc", 1), UnitSlice(f"{prefix}.mlp.c_proj", 0)]
                groups.append(UnitGroup(layer, structure, inner, slices))
            else:
                slices = [UnitSlice(f"{prefix}.attn.c_attn", 1, head_dim, offset) for offset in (0, hidden, 2 * hidden)]
                slices.append(UnitSlice(f"{prefix}.attn.c_proj", 0, head_dim))
                groups.append(UnitGroup(layer, structure, heads, slices))
    else:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        for prefix in _block_prefixes(model, "self_attn.q_proj"):
            layer = layer_key(prefix + ".x").rsplit(".", 1)[0]
            if structure == "neurons":
                slices = [UnitSlice(f"{prefix}.mlp.{p}", 0) for p in ("gate_proj", "up_proj")]
                slices.append(UnitSlice(f"{prefix}.mlp.down_proj", 1))
                groups.append(UnitGroup(layer, structure, config.intermediate_size, slices))
            else:
                slices = [UnitSlice(f"{prefix}.self_attn.q_proj", 0, head_dim)]
                if kv_heads == heads:  # no GQA: each head owns its key and value, which go with it
                    slices += [UnitSlice(f"{prefix}.self_attn.{p}", 0, head_dim) for p in ("k_proj", "v_proj")]
                # under GQA only query heads and their o_proj columns: key/value heads are shared
                slices.append(UnitSlice(f"{prefix}.self_attn.o_proj", 1, head_dim))
                groups.append(UnitGroup(layer, structure, heads, slices,
                                        kv_group_size=heads // kv_heads if kv_heads < heads else None))
    if not groups:
        raise ValueError(f"Found no transformer blocks to prune by {structure!r} in {type(model).__name__}.")
    return groups


def unit_index(unit_slice: UnitSlice, units: "list[int] | range") -> list[int]:
    """Indices along `unit_slice.dim` covered by the given units."""
    return [unit_slice.offset + u * unit_slice.size + i for u in units for i in range(unit_slice.size)]
