"""Width pruning by activation importance: fewer FFN neurons, heads, key/value groups and hidden channels.

[`prune_width`] keeps the most important units of every block (the same number in each, since
stock configs have one `intermediate_size`, one `num_attention_heads`, ...) and slices the weights,
so the model is physically smaller and reloads with plain `from_pretrained`. This is the one-shot
width step of Minitron (Sreenivas et al. 2024, arXiv 2407.14679); heal it afterwards with
`DistillationTrainer` against the unpruned model.

[`importance_masks`] gives the same choice of FFN neurons and heads as masks, in the form the
structured pruning callback and `compact` use (`criterion="activation"` of the callback).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.utils import logging

from .compact import _keep, set_intermediate_size
from .importance import Importance, _block_paths, _check_fields, _head_layout
from .masks import structured_masks
from .record import WidthRecord
from .targets import _architecture, unit_groups

logger = logging.get_logger(__name__)


def _check_importance(model: nn.Module, importance: Importance, architecture: str) -> None:
    blocks = len(_block_paths(model, architecture))
    heads, kv_heads, _ = _head_layout(model, architecture)
    config = model.config
    inter = config.intermediate_size if architecture == "llama" else (config.n_inner or 4 * config.n_embd)
    expected = {"neurons": (blocks, inter), "heads": (blocks, heads), "channels": (model.get_input_embeddings().embedding_dim,)}
    if architecture == "llama":
        expected["kv_groups"] = (blocks, kv_heads)
    for name, shape in expected.items():
        got = tuple(getattr(importance, name).shape) if getattr(importance, name) is not None else None
        if got != shape:
            raise ValueError(
                f"importance.{name} has shape {got} but this model needs {shape}: the importance was measured on "
                "another model (or before layers were removed). Compute it on this model, or pass "
                "importance.select_layers(kept_layers) after make_student."
            )


def importance_masks(model: nn.Module, importance: Importance, structure: str, sparsity: float,
                     previous: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Masks (`True` = pruned) of the least important FFN neurons or attention heads of every block.

    The same fraction leaves each block (and, for Llama heads, each key/value group), so `compact`
    turns the masks into a smaller `intermediate_size` / `num_attention_heads`.
    """
    architecture = _architecture(model)
    _check_fields(model, architecture)
    _check_importance(model, importance, architecture)
    scores = importance.neurons if structure == "neurons" else importance.heads
    return structured_masks(model, structure, sparsity, scope="layer", previous=previous,
                            unit_scores=[row.clone() for row in scores])


def _top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` highest scores, in their original order (so the weights keep their layout)."""
    return torch.topk(scores, count).indices.sort().values


def _units(unit_indices: torch.Tensor, size: int) -> torch.Tensor:
    """Rows covered by whole units of `size` entries (heads of `head_dim` rows)."""
    return (unit_indices.unsqueeze(1) * size + torch.arange(size)).flatten()


@torch.no_grad()
def _keep_channels(module: nn.Module, index: torch.Tensor) -> None:
    """Keep hidden channels `index` of an embedding or a norm (its weight and bias)."""
    if isinstance(module, nn.Embedding):
        module.weight = nn.Parameter(module.weight[:, index].clone(), requires_grad=module.weight.requires_grad)
        module.embedding_dim = len(index)
        return
    module.weight = nn.Parameter(module.weight[index].clone(), requires_grad=module.weight.requires_grad)
    if getattr(module, "bias", None) is not None:
        module.bias = nn.Parameter(module.bias[index].clone(), requires_grad=module.bias.requires_grad)
    if hasattr(module, "normalized_shape"):
        module.normalized_shape = (len(index),)


def _validate_targets(model, architecture, intermediate_size, num_attention_heads, num_key_value_heads, hidden_size):
    config = model.config
    heads, kv_heads, head_dim = _head_layout(model, architecture)
    inter = config.intermediate_size if architecture == "llama" else (config.n_inner or 4 * config.n_embd)
    hidden = model.get_input_embeddings().embedding_dim
    for name, value, current, unit in (("intermediate_size", intermediate_size, inter, "neuron of every FFN layer"),
                                       ("num_attention_heads", num_attention_heads, heads, "attention head"),
                                       ("num_key_value_heads", num_key_value_heads, kv_heads, "key/value group"),
                                       ("hidden_size", hidden_size, hidden, "hidden channel")):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}.")
        if value < 1:
            raise ValueError(f"{name}={value} would remove every {unit}: keep at least 1.")
        if value > current:
            raise ValueError(f"{name}={value} is more than the model's {current}: width pruning only removes units.")
    if architecture == "gpt2" and (num_attention_heads not in (None, heads) or hidden_size not in (None, hidden)
                                   or num_key_value_heads not in (None, kv_heads)):
        raise ValueError(
            f"GPT-2 computes its head size as n_embd / n_head ({hidden} / {heads} = {head_dim}), so fewer heads or "
            "hidden channels cannot carry the same heads and still load with plain from_pretrained: prune only "
            "intermediate_size on GPT-2 (or use a Llama-style model, whose config has an explicit head_dim)."
        )
    if architecture == "llama":
        if hidden_size not in (None, hidden) and getattr(config, "head_dim", None) is None:
            raise ValueError(
                f"{type(config).__name__} has no `head_dim`, so the head size would follow hidden_size / "
                f"num_attention_heads and hidden_size={hidden_size} cannot carry heads of {head_dim}: set "
                f"config.head_dim = {head_dim} first."
            )
        new_kv = num_key_value_heads or kv_heads
        new_heads = num_attention_heads or (new_kv * (heads // kv_heads))
        if new_heads < new_kv:
            raise ValueError(
                f"num_attention_heads={new_heads} with {new_kv} key/value groups would remove every query head of a "
                f"group: keep at least {new_kv} heads (one per group), or fewer groups (num_key_value_heads)."
            )
        if new_heads % new_kv:
            raise ValueError(
                f"num_attention_heads={new_heads} is not a multiple of num_key_value_heads={new_kv}: grouped-query "
                "attention needs the same number of query heads in every group."
            )
        if new_heads // new_kv > heads // kv_heads:
            raise ValueError(
                f"{new_heads} heads in {new_kv} groups needs {new_heads // new_kv} query heads per group, but each "
                f"group has {heads // kv_heads}: keep more groups or fewer heads."
            )
        # the saved config must pass its own class's checks, or plain from_pretrained refuses it
        # (LlamaConfig wants hidden_size to be a multiple of num_attention_heads)
        changes = {"num_attention_heads": new_heads, "num_key_value_heads": new_kv, "head_dim": head_dim,
                   "hidden_size": hidden_size or config.hidden_size}
        from huggingface_hub.errors import StrictDataclassError

        try:
            type(config).from_dict({**config.to_dict(), **changes})
        except (ValueError, TypeError, StrictDataclassError) as error:  # transformers 5 configs validate strictly
            raise ValueError(
                f"{type(config).__name__} rejects hidden_size={changes['hidden_size']} with "
                f"num_attention_heads={new_heads}: {str(error).strip().splitlines()[-1].strip()} Pick a hidden_size "
                f"that is a multiple of {new_heads}."
            ) from None


@torch.no_grad()
def prune_width(
    model: nn.Module,
    importance: Importance,
    intermediate_size: int | None = None,
    num_attention_heads: int | None = None,
    num_key_value_heads: int | None = None,
    hidden_size: int | None = None,
) -> nn.Module:
    """Remove the least important units of every block, **in place**; returns the same, smaller model.

    Every block keeps its `intermediate_size` most important FFN neurons; on Llama-style models its
    `num_key_value_heads` most important key/value groups and, inside each kept group, the most
    important query heads (`num_attention_heads` in all, the same number per group), and the
    `hidden_size` most important hidden channels everywhere (embeddings, every norm, every
    projection; the tied LM head with the embedding). The config records the new sizes, so
    `save_pretrained` -> plain `from_pretrained` rebuilds the smaller model.

    Args:
        model (`PreTrainedModel`): a GPT-2 or Llama-style model.
        importance ([`Importance`]): from `compute_importance` on this model (or `select_layers` of
            the teacher's for a student made with `make_student`).
        intermediate_size / num_attention_heads / num_key_value_heads / hidden_size (`int`, *optional*):
            the targets; `None` keeps that width. GPT-2 takes only `intermediate_size` (its head
            size is `n_embd / n_head`).

    Raises:
        ValueError: a target that removes every unit of a kind (or every head of a group), a head count
            that grouped-query attention cannot divide, a hidden size the head size cannot carry, a
            missing config field (named), or an importance of another shape; all before the model changes.

    Example:

    ```python
    >>> importance = compute_importance(model, calibration)
    >>> prune_width(model, importance, intermediate_size=1024, num_attention_heads=6)
    >>> model.save_pretrained("smaller")  # AutoModelForCausalLM.from_pretrained("smaller") just works
    ```
    """
    architecture = _architecture(model)
    _check_fields(model, architecture)
    _check_importance(model, importance, architecture)
    _validate_targets(model, architecture, intermediate_size, num_attention_heads, num_key_value_heads, hidden_size)
    config = model.config
    modules = dict(model.named_modules())
    heads, kv_heads, head_dim = _head_layout(model, architecture)
    hidden = model.get_input_embeddings().embedding_dim
    params_before = model.num_parameters()
    record = {}
    blocks = _block_paths(model, architecture)

    neuron_groups = unit_groups(model, "neurons")
    if intermediate_size is not None and intermediate_size != neuron_groups[0].num_units:
        record["intermediate_size"] = [neuron_groups[0].num_units, intermediate_size]
        for row, group in enumerate(neuron_groups):
            keep = _top(importance.neurons[row], intermediate_size)
            for unit_slice in group.slices:
                _keep(modules[unit_slice.module_name], unit_slice.dim, keep)
        set_intermediate_size(model, architecture, intermediate_size)

    if architecture == "llama":
        new_kv = num_key_value_heads or kv_heads
        new_heads = num_attention_heads or new_kv * (heads // kv_heads)
        if (new_kv, new_heads) != (kv_heads, heads):
            group_size, per_group = heads // kv_heads, new_heads // new_kv
            record["num_attention_heads"] = [heads, new_heads]
            record["num_key_value_heads"] = [kv_heads, new_kv]
            for row, prefix in enumerate(blocks):
                groups = _top(importance.kv_groups[row], new_kv)
                kept_heads = torch.cat([
                    group * group_size + _top(importance.heads[row, group * group_size:(group + 1) * group_size],
                                              per_group)
                    for group in groups.tolist()
                ])
                _keep(modules[f"{prefix}.self_attn.q_proj"], 0, _units(kept_heads, head_dim))
                _keep(modules[f"{prefix}.self_attn.o_proj"], 1, _units(kept_heads, head_dim))
                for name in ("k_proj", "v_proj"):
                    _keep(modules[f"{prefix}.self_attn.{name}"], 0, _units(groups, head_dim))
            config.num_attention_heads, config.num_key_value_heads = new_heads, new_kv
            config.head_dim = head_dim
            for module in model.modules():
                if hasattr(module, "num_key_value_groups") and hasattr(module, "o_proj"):
                    module.num_key_value_groups = per_group

        if hidden_size is not None and hidden_size != hidden:
            record["hidden_size"] = [hidden, hidden_size]
            keep = _top(importance.channels, hidden_size)
            embeddings = model.get_input_embeddings()
            output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            tied = output is not None and output.weight is embeddings.weight
            _keep_channels(embeddings, keep)
            if output is not None:
                if tied:
                    output.weight = embeddings.weight
                    output.in_features = hidden_size
                else:
                    _keep(output, 1, keep)
            for norm in _norm_modules_of_width(model, hidden):
                _keep_channels(norm, keep)
            for prefix in blocks:
                for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
                    _keep(modules[f"{prefix}.{name}"], 1, keep)
                for name in ("self_attn.o_proj", "mlp.down_proj"):
                    _keep(modules[f"{prefix}.{name}"], 0, keep)
            config.hidden_size = hidden_size
            config.head_dim = head_dim
            for module in model.modules():
                if hasattr(module, "hidden_size") and hasattr(module, "down_proj"):
                    module.hidden_size = hidden_size

    if not record:
        logger.warning("prune_width: every target equals the model's width; nothing was removed.")
        return model
    record["params"] = [params_before, model.num_parameters()]
    record["criterion"] = f"activation importance (Minitron), {importance.num_samples} calibration samples"
    WidthRecord.from_dict(record).write(config)
    return model


def _norm_modules_of_width(model: nn.Module, hidden: int) -> list[nn.Module]:
    # found by the old width: the embedding, which `_norm_modules` reads it from, is already sliced here
    return [
        module for module in model.modules()
        if (isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"))
        and getattr(module, "weight", None) is not None and module.weight.dim() == 1 and module.weight.numel() == hidden
    ]

