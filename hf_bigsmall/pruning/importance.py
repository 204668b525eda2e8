"""Activation importance of every prunable unit, measured on calibration data.

Minitron (Sreenivas et al. 2024, arXiv 2407.14679) ranks the units of an LLM by what they do on a
small calibration set rather than by the size of their weights:

- an FFN neuron by the mean |activation| of the intermediate (the input of the down projection);
- an attention head by the norm of its output (its slice of the input of the output projection),
  and on Llama a key/value group by the norm of the outputs of all the query heads it serves;
- an embedding (hidden) channel by the mean |output| of every LayerNorm/RMSNorm, summed over them;
- a block by its Block Influence (ShortGPT, Men et al. 2024, arXiv 2403.03853):
  `1 - cos(block input, block output)`, averaged over tokens. A block that barely turns its input
  scores near 0 and is the first to go.

[`compute_importance`] returns all of them in one [`Importance`], which saves as a small
`importance.json` (and `importance.png`, one curve per kind against the layer) beside a model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from ..reporting.plots import plot_importance as draw
from ..utils.files import atomic_write_text
from ..utils.import_utils import is_matplotlib_available
from .calibration import model_max_positions, prepare_calibration, run_calibration
from .targets import _architecture, _block_prefixes

logger = logging.get_logger(__name__)

IMPORTANCE_NAME = "importance.json"
IMPORTANCE_PLOT_NAME = "importance.png"
# tokens per calibration window: 128 windows of 128 tokens are 16k tokens, one pass of the model body
DEFAULT_SEQ_LEN = 128


@dataclass
class Importance:
    """Importance of every unit of a model, one row per transformer block (block order).

    Attributes:
        neurons: `(num_layers, intermediate_size)` mean |intermediate activation| of each FFN neuron.
        heads: `(num_layers, num_attention_heads)` mean L2 norm of each head's output.
        kv_groups: `(num_layers, num_key_value_heads)` mean L2 norm of the outputs of the query heads
            of each key/value group (Llama); `None` for GPT-2.
        channels: `(hidden_size,)` mean |norm output| of each hidden channel, summed over all norms.
        blocks: `(num_layers,)` Block Influence, `1 - cos(block input, block output)`.
        layers: the teacher block each row comes from (`range(num_layers)` unless selected).
        num_samples / num_tokens: how much calibration data was seen.

    Example:
    ```python
    >>> importance = compute_importance(model, calibration_dataset)
    >>> importance.blocks.argsort()[:4]  # the four blocks that change their input least
    >>> importance.save("smollm2-importance")  # importance.json + importance.png
    ```
    """

    neurons: torch.Tensor
    heads: torch.Tensor
    channels: torch.Tensor
    blocks: torch.Tensor
    kv_groups: torch.Tensor | None = None
    layers: list[int] = field(default_factory=list)
    num_samples: int = 0
    num_tokens: int = 0

    def __post_init__(self):
        if not self.layers:
            self.layers = list(range(len(self.blocks)))

    def select_layers(self, layers: Iterable[int]) -> Importance:
        """The rows of the given teacher blocks (e.g. those `make_student` kept), in that order."""
        layers = [int(layer) for layer in layers]
        missing = [layer for layer in layers if layer not in self.layers]
        if missing:
            raise ValueError(f"layers {missing} are not in this importance (it covers blocks {self.layers}).")
        rows = torch.tensor([self.layers.index(layer) for layer in layers], dtype=torch.long)
        return Importance(
            neurons=self.neurons[rows], heads=self.heads[rows], channels=self.channels, blocks=self.blocks[rows],
            kv_groups=None if self.kv_groups is None else self.kv_groups[rows], layers=layers,
            num_samples=self.num_samples, num_tokens=self.num_tokens,
        )

    def to_dict(self) -> dict[str, Any]:
        def rounded(tensor: torch.Tensor | None):
            # 5 significant digits: rankings survive, and SmolLM2's 46k neurons stay a few hundred KB
            if tensor is None:
                return None
            if tensor.dim() == 1:
                return [float(f"{value:.5g}") for value in tensor.tolist()]
            return [rounded(row) for row in tensor]

        return {
            "layers": self.layers, "num_samples": self.num_samples, "num_tokens": self.num_tokens,
            "block_influence": rounded(self.blocks), "attention_heads": rounded(self.heads),
            "kv_groups": rounded(self.kv_groups), "hidden_channels": rounded(self.channels),
            "ffn_neurons": rounded(self.neurons),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Importance:
        return cls(
            neurons=torch.tensor(data["ffn_neurons"]), heads=torch.tensor(data["attention_heads"]),
            channels=torch.tensor(data["hidden_channels"]), blocks=torch.tensor(data["block_influence"]),
            kv_groups=None if data.get("kv_groups") is None else torch.tensor(data["kv_groups"]),
            layers=list(data["layers"]), num_samples=data.get("num_samples", 0), num_tokens=data.get("num_tokens", 0),
        )

    def save(self, directory: str | os.PathLike, plot: bool = True) -> Path:
        """Write `importance.json` (and `importance.png` when matplotlib is installed) into `directory`."""

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = atomic_write_text(directory / IMPORTANCE_NAME, json.dumps(self.to_dict()))
        if plot and is_matplotlib_available():
            plot_importance(self, directory / IMPORTANCE_PLOT_NAME)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Importance:
        """Read an `importance.json` (or the folder that holds one)."""
        path = Path(path)
        if path.is_dir():
            path = path / IMPORTANCE_NAME
        return cls.from_dict(json.loads(path.read_text()))


def plot_importance(importance: Importance, path: str | os.PathLike, kept_layers: list[int] | None = None) -> Path:
    """One panel per kind of unit: Block Influence, and mean importance of heads and neurons, per layer.

    With `kept_layers`, the blocks not kept are marked dropped (see `hf_bigsmall.reporting.plots.plot_importance`).
    """

    draw(importance, path, kept_layers=kept_layers)
    return Path(path)


# ---------------------------------------------------------------------------- measuring
class _Accumulator:
    """Running sums over tokens of per-unit statistics (float64 across batches)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, key: str, values: torch.Tensor) -> None:
        """`values`: `(batch, seq, units)`, summed over the tokens. Calibration windows hold no padding."""
        flat = values.sum(dim=(0, 1)).double().cpu()
        self.sums[key] = self.sums[key] + flat if key in self.sums else flat

    def mean(self, key: str, tokens: int) -> torch.Tensor:
        return (self.sums[key] / max(tokens, 1)).float()


def _block_paths(model: nn.Module, architecture: str) -> list[str]:
    return _block_prefixes(model, "self_attn.q_proj" if architecture == "llama" else "attn.c_attn")


def _norm_modules(model: nn.Module) -> list[str]:
    """Names of every LayerNorm / RMSNorm of the hidden width (block norms and the final norm)."""
    hidden = model.get_input_embeddings().embedding_dim
    norms = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        is_norm = isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")
        if is_norm and weight is not None and weight.dim() == 1 and weight.numel() == hidden:
            norms.append(name)
    return norms


def _check_fields(model: nn.Module, architecture: str | None) -> None:
    if architecture is None:
        raise ValueError(
            f"importance is measured on GPT-2 and Llama-style decoders; {type(model).__name__} is neither "
            "(it needs q_proj/k_proj/v_proj/o_proj/gate_proj/up_proj/down_proj or c_attn/c_fc/c_proj modules)."
        )
    config = model.config
    needed = ("num_attention_heads", "intermediate_size", "num_key_value_heads") if architecture == "llama" else ("n_head",)
    missing = [name for name in needed if getattr(config, name, None) is None]
    if missing:
        raise ValueError(f"{type(config).__name__} lacks {missing}: set them in the config to measure importance.")


def _head_layout(model: nn.Module, architecture: str) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dimension)."""
    config = model.config
    if architecture == "gpt2":
        return config.n_head, config.n_head, config.n_embd // config.n_head
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, config.num_key_value_heads, head_dim


@torch.no_grad()
def compute_importance(
    model: nn.Module,
    calibration_dataset,
    num_samples: int = 128,
    seq_len: int | None = None,
    batch_size: int = 8,
    tokenizer=None,
) -> Importance:
    """Measure the activation importance of every FFN neuron, head, KV group, hidden channel and block.

    One pass of the model body over the calibration windows (`calibration.run_calibration`), with
    forward hooks that read the input of each output projection (neurons, heads), the output of
    each norm (channels), and each block's input and output (Block Influence). The model is not
    changed.

    Args:
        model (`PreTrainedModel`): a GPT-2 or Llama-style causal LM (any head on those bodies works).
        calibration_dataset: tokenized rows with `input_ids` (a `datasets.Dataset`, a list of rows or
            a tensor of ids), e.g. `load_causal_lm_dataset(tokenizer, assets.NEWS)["train"]`, raw text
            with `tokenizer=`, or a prepared `CalibrationData`.
        num_samples (`int`, defaults to 128): calibration windows.
        seq_len (`int`, *optional*): tokens per window; default 128 (or the model's positions if fewer),
            so 128 x 128 = 16k tokens by default.
        batch_size (`int`, defaults to 8): windows per forward pass.
        tokenizer (*optional*): tokenizes a raw text dataset.

    Returns:
        [`Importance`].

    Raises:
        ValueError: an unsupported architecture or missing config fields (named), or ids outside the
            vocabulary (data of another tokenizer), before anything runs.
        TypeError: rows without `input_ids` and no tokenizer.

    Example:
    ```python
    >>> from hf_bigsmall import assets
    >>> from hf_bigsmall.pruning.importance import compute_importance
    >>> from hf_bigsmall.tasks.causal_lm import load_causal_lm_dataset
    >>> calibration = load_causal_lm_dataset(tokenizer, assets.NEWS, block_size=128)["train"]
    >>> importance = compute_importance(model, calibration, num_samples=128)
    >>> importance.save("out/student")
    ```
    """

    architecture = _architecture(model)
    _check_fields(model, architecture)
    if seq_len is None:
        seq_len = min(DEFAULT_SEQ_LEN, model_max_positions(model) or DEFAULT_SEQ_LEN)
    calibration = prepare_calibration(calibration_dataset, num_samples=num_samples, seq_len=seq_len,
                                      batch_size=batch_size, model=model, tokenizer=tokenizer)
    blocks = _block_paths(model, architecture)
    heads, kv_heads, head_dim = _head_layout(model, architecture)
    group_size = heads // kv_heads
    stats = _Accumulator()

    def on_intermediate(key):
        def hook(module, args):
            stats.add(key, args[0].abs())
        return hook

    def on_heads(key):
        def hook(module, args):
            x = args[0]
            squares = x.reshape(*x.shape[:-1], heads, head_dim).float().pow(2).sum(dim=-1)  # (b, s, heads)
            stats.add(f"{key}.heads", squares.sqrt())
            grouped = squares.reshape(*squares.shape[:-1], kv_heads, group_size).sum(dim=-1)
            stats.add(f"{key}.kv", grouped.sqrt())
        return hook

    def on_norm(module, args, output):
        stats.add("channels", output.abs())

    def on_block(key):
        def hook(module, args, output):
            # GPT-2 and Llama blocks take hidden_states first, positionally
            hidden_out = output[0] if isinstance(output, (tuple, list)) else output
            cosine = torch.nn.functional.cosine_similarity(args[0].float(), hidden_out.float(), dim=-1)
            stats.add(f"{key}.influence", (1.0 - cosine).unsqueeze(-1))
        return hook

    ffn_out = "mlp.down_proj" if architecture == "llama" else "mlp.c_proj"
    attn_out = "self_attn.o_proj" if architecture == "llama" else "attn.c_proj"
    pre_hooks, hooks = {}, {}
    for index, prefix in enumerate(blocks):
        pre_hooks[f"{prefix}.{ffn_out}"] = on_intermediate(f"{index}.neurons")
        pre_hooks[f"{prefix}.{attn_out}"] = on_heads(str(index))
        hooks[prefix] = on_block(str(index))
    for name in _norm_modules(model):
        hooks[name] = on_norm
    tokens = run_calibration(model, calibration, forward_hooks=hooks, forward_pre_hooks=pre_hooks)
    count = len(blocks)
    importance = Importance(
        neurons=torch.stack([stats.mean(f"{i}.neurons", tokens) for i in range(count)]),
        heads=torch.stack([stats.mean(f"{i}.heads", tokens) for i in range(count)]),
        kv_groups=torch.stack([stats.mean(f"{i}.kv", tokens) for i in range(count)]) if architecture == "llama" else None,
        channels=stats.mean("channels", tokens),
        blocks=torch.cat([stats.mean(f"{i}.influence", tokens) for i in range(count)]),
        num_samples=calibration.num_samples,
        num_tokens=tokens,
    )
    logger.info("importance measured on %d windows (%d tokens) over %d blocks", calibration.num_samples, tokens, count)
    return importance
