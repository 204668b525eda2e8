"""`compact`: turn structured sparsity into a physically smaller dense model.

Zeros alone make nothing faster on dense kernels. Removing whole FFN neurons (rows of the input
projections, columns of the output projection) or whole attention heads gives smaller matrices,
hence fewer FLOPs, and a config that plain `from_pretrained` rebuilds at the smaller size:

- FFN neurons compact on BERT, GPT-2 and Llama when the same number is removed in every block
  (one `intermediate_size` / `n_inner` for all blocks); if blocks differ, the smallest count is
  removed everywhere and the remaining dead neurons stay as zeros.
- Attention heads compact on Llama-style models (explicit `head_dim`): under GQA the same number of
  query heads leaves every key/value group, so GQA still divides; without GQA each head's key and
  value go with it. Every block keeps at least one head (per key/value group); blocks that lost
  more than the fewest keep their extra dead heads as zeros. BERT and GPT-2 derive the head size from
  `hidden_size / num_heads` and transformers 5 dropped `pruned_heads`, so their heads cannot shrink
  and stay loadable: pruned heads stay as zeros with their masks, and a warning says so.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .io import attach_masks, detach_masks, record_sparsity
from .state import get_pruning_state
from .targets import UnitGroup, _architecture, unit_groups, unit_index


def _dead_units(group: UnitGroup, modules: dict[str, nn.Module]) -> list[int]:
    """Units whose slice of the output projection is all zero: they add exactly nothing to the output."""
    out_slice = group.slices[-1]
    weight = modules[out_slice.module_name].weight.detach().movedim(out_slice.dim, 0)
    weight = weight[out_slice.offset : out_slice.offset + group.num_units * out_slice.size]
    dead = (weight.reshape(group.num_units, -1) == 0).all(dim=1)
    return dead.nonzero().flatten().tolist()


def _removable(group: UnitGroup, dead: list[int], per_group: int) -> list[int]:
    if not group.kv_group_size:
        return dead[:per_group]  # per_group is one below the block's units at most: a block keeps one
    chosen = []
    for start in range(0, group.num_units, group.kv_group_size):
        chosen += [u for u in dead if start <= u < start + group.kv_group_size][:per_group]
    return chosen


def _count(group: UnitGroup, dead: list[int]) -> int:
    """How many units this block can lose (per key/value group for Llama GQA heads).

    Heads always leave one standing (per key/value group): a block with no head, or a key/value head
    that no query reads, is not a model the config can describe.
    """
    if not group.kv_group_size:
        return min(len(dead), group.num_units - 1) if group.structure == "heads" else len(dead)
    return min(
        min(sum(start <= u < start + group.kv_group_size for u in dead), group.kv_group_size - 1)
        for start in range(0, group.num_units, group.kv_group_size)
    )


@torch.no_grad()
def _keep(module: nn.Module, dim: int, index: torch.Tensor) -> None:
    """Keep only `index` along `dim` of a Linear/Conv1D weight, slicing the bias with the outputs."""
    index = index.to(module.weight.device)
    weight = module.weight.index_select(dim, index).clone()
    output_dim = 1 if isinstance(module, Conv1D) else 0
    if module.bias is not None and dim == output_dim:
        module.bias = nn.Parameter(module.bias.index_select(0, index).clone(), requires_grad=module.bias.requires_grad)
    module.weight = nn.Parameter(weight, requires_grad=module.weight.requires_grad)
    if isinstance(module, Conv1D):
        module.nx, module.nf = weight.shape
    else:
        module.out_features, module.in_features = weight.shape


def _shrink(model: nn.Module, groups: list[UnitGroup], removed: list[list[int]]) -> None:
    modules = dict(model.named_modules())
    for group, units in zip(groups, removed):
        keep_units = [u for u in range(group.num_units) if u not in set(units)]
        for unit_slice in group.slices:
            module = modules[unit_slice.module_name]
            dim_size = module.weight.shape[unit_slice.dim]
            covered = set(unit_index(unit_slice, range(group.num_units)))
            # Entries outside this slice's span (GPT-2 c_attn holds q, k and v side by side) are kept.
            keep = sorted(set(range(dim_size)) - covered | set(unit_index(unit_slice, keep_units)))
            _keep(module, unit_slice.dim, torch.tensor(keep, dtype=torch.long))


def set_intermediate_size(model: nn.Module, architecture: str, size: int) -> None:
    """Record a new feed-forward width in the config (GPT-2 `n_inner`) and in Llama MLP modules that keep it."""
    if architecture == "gpt2":
        model.config.n_inner = size
        return
    model.config.intermediate_size = size
    for module in model.modules():
        if hasattr(module, "intermediate_size") and hasattr(module, "down_proj"):
            module.intermediate_size = size


def heads_can_be_removed(config) -> bool:
    """True if the config states its head size (`head_dim`, as Llama's does), so fewer heads still load.

    BERT and GPT-2 derive the head size from `hidden_size / num_heads`, and transformers 5 has no
    `pruned_heads`: a model with fewer heads cannot be described by their stock config.
    """
    return getattr(config, "head_dim", None) is not None and getattr(config, "num_key_value_heads", None) is not None


def _head_counts(group: UnitGroup, per_group: int) -> tuple[int, int]:
    """`(num_attention_heads, num_key_value_heads)` after removing `per_group` heads (per KV group under GQA)."""
    if group.kv_group_size:
        num_kv = group.num_units // group.kv_group_size
        return group.num_units - per_group * num_kv, num_kv
    return group.num_units - per_group, group.num_units - per_group


def _loadable_head_count(config, group: UnitGroup, per_group: int) -> int:
    """The most heads (up to `per_group` per KV group) whose removal leaves a config that still validates.

    transformers' LlamaConfig asks `hidden_size % num_attention_heads == 0` even with an explicit
    `head_dim`, so 4 heads of a 32-wide model can go to 2 or 1 but not to 3.
    """
    for count in range(per_group, 0, -1):
        candidate = copy.deepcopy(config)
        candidate.num_attention_heads, candidate.num_key_value_heads = _head_counts(group, count)
        try:
            if hasattr(candidate, "validate"):
                candidate.validate()
        except Exception:  # noqa: BLE001, S112 - huggingface_hub's strict-dataclass errors are no ValueError
            continue  # this count would not load: try removing fewer
        return count
    return 0


def _compact_structure(model: nn.Module, structure: str, architecture: str) -> tuple[int, int] | str | None:
    """Remove dead units of one kind.

    Returns `(units before, units after)` per block; or, when dead units exist but none can be
    removed, the reason as a sentence; or None when there are no dead units of this kind.
    """
    groups = unit_groups(model, structure)
    modules = dict(model.named_modules())
    dead = [_dead_units(g, modules) for g in groups]
    if not any(dead):
        return None
    per_group = min(_count(g, d) for g, d in zip(groups, dead))
    if structure == "heads" and architecture != "llama":
        return (f"{architecture.upper()} derives its head size from hidden_size / num_heads and transformers 5 has no "
                "pruned_heads, so pruned attention heads cannot be removed and still load with plain from_pretrained; "
                "they stay in place as zeros, with their masks.")
    if per_group == 0:
        if structure == "heads":
            # scope='layer' alone does not even heads out: it keeps blocks within one step of each other
            step = groups[0].num_units // groups[0].kv_group_size if groups[0].kv_group_size else 1
            return ("some blocks have no removable dead heads while others do, and the config holds one head count for "
                    "every block: nothing removed. Heads leave a block in steps of one query head per key/value group "
                    f"({step} of its {groups[0].num_units}); prune with scope='layer' and a target_sparsity that gives "
                    f"every block the same number of steps (a multiple of {step / groups[0].num_units:.4g}).")
        return (f"some blocks have no removable dead {structure} while others do, and the config holds one size for "
                "every block: nothing removed. Prune with scope='layer' so every block loses the same number.")
    why = "blocks lost different numbers and the config holds one size for every block"
    if structure == "heads":
        loadable = _loadable_head_count(model.config, groups[0], per_group)
        if loadable < per_group:
            why = (f"a config with fewer heads would not load: {type(model.config).__name__} checks that hidden_size "
                   "is a multiple of num_attention_heads")
        per_group = loadable
        if per_group == 0:
            return (f"a config with fewer heads would not load: {type(model.config).__name__} checks that "
                    f"hidden_size ({model.config.hidden_size}) is a multiple of num_attention_heads, and no head count "
                    "reachable by removing the dead heads is; they stay in place as zeros, with their masks.")
    removed = [_removable(g, d, per_group) for g, d in zip(groups, dead)]
    leftover = sum(len(d) for d in dead) - sum(len(r) for r in removed)
    if leftover:
        warnings.warn(
            f"{per_group} dead {structure} removed from each block ({why}); the other {leftover} dead ones stay as "
            "zeros." + (" Prune with scope='layer' to remove them all." if structure == "neurons" else ""),
            stacklevel=3,
        )
    _shrink(model, groups, removed)
    config = model.config
    before = groups[0].num_units
    if structure == "neurons":
        after = before - per_group
        set_intermediate_size(model, architecture, after)
    else:
        # under GQA the same number of query heads left every key/value group; without it each
        # head's key and value went with it
        after, num_kv = _head_counts(groups[0], per_group)
        config.num_attention_heads, config.num_key_value_heads = after, num_kv
        config.head_dim = groups[0].slices[0].size  # explicit, or a reload derives it from the new head count
        for module in model.modules():
            if hasattr(module, "num_key_value_groups") and hasattr(module, "o_proj"):
                module.num_key_value_groups = after // num_kv
    return before, after


def compact(model: nn.Module) -> nn.Module:
    """Remove pruned FFN neurons and (on Llama) attention heads, **in place**; returns the same model.

    Units are found from the weights themselves (an all-zero slice of the output projection), so a
    model reloaded with plain `from_pretrained` compacts as well as one still carrying masks. The
    outputs are unchanged (up to float summation order), the config records the new sizes, and
    `save_pretrained` -> plain `from_pretrained` reloads the smaller model. Zeros that cannot be
    removed (unstructured sparsity, BERT/GPT-2 heads) stay, with their masks: save with
    [`save_pruned_model`] to keep those masks and to replace a masks file of the old shapes.

    Raises:
        ValueError: if the architecture is not BERT, GPT-2 or Llama-like, or if nothing can be removed
            (e.g. purely unstructured sparsity, which needs a sparse kernel rather than compaction).

    Example:

    ```python
    >>> from hf_bigsmall import compact, save_pruned_model
    >>> small = compact(trainer.model)  # after MagnitudePruningCallback(structure="neurons", ...)
    >>> save_pruned_model(small, "student-compact")  # loads anywhere with AutoModel.from_pretrained
    ```
    """
    architecture = _architecture(model)
    if architecture is None:
        raise ValueError(
            f"compact supports BERT, GPT-2 and Llama-style models; {type(model).__name__} is none of them. "
            "The masks and zeros are kept."
        )
    params_before = model.num_parameters()
    changes, kept = {}, []
    for structure, field_name in (("neurons", "n_inner" if architecture == "gpt2" else "intermediate_size"),
                                  ("heads", "num_attention_heads")):
        result = _compact_structure(model, structure, architecture)
        if isinstance(result, tuple):
            changes[field_name] = list(result)
        elif isinstance(result, str):
            kept.append(f"{structure}: {result}")
    if not changes:
        if kept:
            raise ValueError("Nothing to compact. " + " ".join(kept) + " The model, its zeros and masks are unchanged."
                             + (" For a smaller BERT or GPT-2, prune structure='neurons'." if architecture != "llama"
                                else ""))
        raise ValueError(
            "Nothing to compact: no FFN neuron or attention head is entirely zero. Unstructured sparsity keeps "
            "every matrix its size; prune with structure='neurons' (or 'heads' on Llama-style models) to get a "
            "smaller model. The model, its zeros and masks are unchanged."
        )
    for reason in kept:  # something was removed; say what stays
        warnings.warn(f"compact removed what it could and kept the rest: {reason}", stacklevel=2)
    state = get_pruning_state(model)
    info = dict((state.record if state else None) or getattr(model.config, "sparsity", None) or {})
    info.pop("per_layer", None)
    info["compacted"] = {**changes, "params": [params_before, model.num_parameters()]}
    remaining = {}
    if state is not None and state.masks:
        params = dict(model.named_parameters())
        # What is left of the masks is exactly the zeros that compaction could not remove.
        remaining = {name: params[name].detach() == 0 for name in state.masks if name in params}
        remaining = {name: mask for name, mask in remaining.items() if mask.any()}
    # the record of the compaction goes into config.json whether or not masks remain
    attach_masks(model, remaining, info)
    record_sparsity(model)
    if not remaining:
        detach_masks(model)
    return model

