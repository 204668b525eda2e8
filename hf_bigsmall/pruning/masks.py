"""Magnitude masks (unstructured, FFN neurons, attention heads) and the measured sparsity report.

A mask here is a boolean tensor shaped like a weight, `True` where the weight is pruned. Masks only
ever grow: an entry pruned once stays pruned, because its magnitude is forced below every live one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..utils.distributed import full_tensor
from .heads import choose_heads
from .state import get_pruning_state
from .targets import UnitGroup, find_target_modules, layer_key, unit_groups, unit_index


def _pruned_count(total: int, amount: float) -> int:
    # `round`, as torch.nn.utils.prune does, so our masks match its L1 masks exactly.
    return round(amount * total)


def _scores(weight: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    scores = weight.detach().abs().float()
    if previous is not None:
        scores = scores.masked_fill(previous, -1.0)  # already pruned: always pruned first
    return scores


def _lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the `k` smallest entries of a flat tensor.

    A selection (`kthvalue`, O(n)) rather than `topk` (O(n log k)): about 4x faster on 21 M weights.
    Entries tied with the threshold are taken in index order until exactly `k` are chosen.
    """
    if k == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(scores, k).values
    mask = scores < threshold
    ties = (scores == threshold).nonzero().flatten()
    mask[ties[: k - int(mask.sum())]] = True
    return mask


@torch.no_grad()
def unstructured_masks(
    weights: dict[str, torch.Tensor],
    sparsity: float,
    scope: str = "global",
    previous: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Prune the `sparsity` fraction of smallest-magnitude entries (L1), globally or per weight.

    Args:
        weights: `{name: weight}`; every weight is scored by `|w|`.
        sparsity: fraction of entries to prune, in [0, 1).
        scope: `"global"` (one threshold over all weights, as
            `torch.nn.utils.prune.global_unstructured`) or `"layer"` (the same fraction of each weight).
        previous: masks already in force; they stay pruned.

    Returns:
        `{name: bool tensor}`, `True` where pruned.
    """
    previous = previous or {}
    if scope == "layer":
        masks = {}
        for name, weight in weights.items():
            scores = _scores(weight, previous.get(name)).flatten()
            masks[name] = _lowest_k(scores, _pruned_count(scores.numel(), sparsity)).view_as(weight)
        return masks
    scores = torch.cat([_scores(w, previous.get(n)).flatten() for n, w in weights.items()])
    flat = _lowest_k(scores, _pruned_count(scores.numel(), sparsity))
    masks, start = {}, 0
    for name, weight in weights.items():
        masks[name] = flat[start : start + weight.numel()].view_as(weight)
        start += weight.numel()
    return masks


def _unit_scores(group: UnitGroup, weights: dict[str, torch.Tensor], previous: dict[str, torch.Tensor],
                 given: torch.Tensor | None = None) -> torch.Tensor:
    """L1 norm of every weight that belongs to a unit (or the `given` scores); units already pruned score -1."""
    scores = torch.zeros(group.num_units)
    dead = torch.zeros(group.num_units, dtype=torch.bool)
    for unit_slice in group.slices:
        weight = weights[unit_slice.module_name].detach().float().abs()
        moved = weight.movedim(unit_slice.dim, 0)
        block = moved[unit_slice.offset : unit_slice.offset + group.num_units * unit_slice.size]
        scores += block.reshape(group.num_units, -1).sum(dim=1).cpu()
        if unit_slice.module_name in previous:
            pruned = previous[unit_slice.module_name].movedim(unit_slice.dim, 0)
            pruned = pruned[unit_slice.offset : unit_slice.offset + group.num_units * unit_slice.size]
            dead |= pruned.reshape(group.num_units, -1).all(dim=1).cpu()
    if given is not None:
        scores = given.detach().float().cpu()
    return scores.masked_fill(dead, -1.0)


@torch.no_grad()
def structured_masks(
    model: nn.Module,
    structure: str,
    sparsity: float,
    scope: str = "layer",
    previous: dict[str, torch.Tensor] | None = None,
    unit_scores: list[torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Prune whole FFN neurons or attention heads with the smallest L1 norm (or the smallest `unit_scores`).

    The importance of a unit is the L1 norm of all the weights it owns (its rows in the input
    projections and its columns in the output projection), the magnitude criterion of Li et al.
    2017 ("Pruning Filters for Efficient ConvNets") applied to neurons and heads.

    With `scope="layer"` every block loses the same number of units, so `compact` can turn the
    masks into a smaller `intermediate_size` (or fewer heads on Llama). With `"global"` one
    threshold runs over all blocks. Heads are chosen by `choose_heads`: the fraction is of all the
    model's heads, no block loses every head, and Llama GQA blocks lose the same number of query
    heads in each key/value group. `unit_scores` (one `(num_units,)` tensor per block, e.g.
    activation importance) replaces the weight norms as the criterion.
    """
    previous = previous or {}
    groups = unit_groups(model, structure)
    modules = dict(model.named_modules())
    weights = {s.module_name: modules[s.module_name].weight for g in groups for s in g.slices}
    if unit_scores is not None and [len(s) for s in unit_scores] != [g.num_units for g in groups]:
        raise ValueError(
            f"unit_scores give {[len(s) for s in unit_scores]} units per block but the model has "
            f"{[g.num_units for g in groups]} {structure}: score this model."
        )
    if unit_scores is not None:
        # a negative score marks a unit already pruned (here and in `choose_heads`): a criterion's scores may take
        # any sign, so they are shifted to start at 0, which keeps their order within and across blocks
        unit_scores = [scores.detach().float().cpu() for scores in unit_scores]
        if any(bool(scores.isnan().any()) for scores in unit_scores):  # NaN ranks above every number: kept silently
            raise ValueError(f"The pruning criterion's unit scores hold NaN (blocks "
                             f"{[i for i, scores in enumerate(unit_scores) if scores.isnan().any()][:3]}): make them "
                             "finite.")
        lowest = min((float(scores.min()) for scores in unit_scores if scores.numel()), default=0.0)
        if lowest < 0:
            unit_scores = [scores - lowest for scores in unit_scores]
    given = unit_scores or [None] * len(groups)
    all_scores = [_unit_scores(g, weights, previous, s) for g, s in zip(groups, given)]
    if structure == "heads":
        chosen = choose_heads(groups, all_scores, sparsity, scope)
    elif scope == "global":
        flat = torch.cat(all_scores)
        chosen_flat = set(torch.topk(flat, _pruned_count(flat.numel(), sparsity), largest=False).indices.tolist())
        offsets = [sum(g.num_units for g in groups[:i]) for i in range(len(groups))]
        chosen = [[u for u in range(g.num_units) if u + off in chosen_flat] for g, off in zip(groups, offsets)]
    else:
        chosen = [torch.topk(scores, _pruned_count(group.num_units, sparsity), largest=False).indices.tolist()
                  for group, scores in zip(groups, all_scores)]
    masks = {name: torch.zeros_like(w, dtype=torch.bool) for name, w in weights.items()}
    for group, units in zip(groups, chosen):
        for unit_slice in group.slices:
            index = torch.tensor(unit_index(unit_slice, units), dtype=torch.long)
            masks[unit_slice.module_name].index_fill_(unit_slice.dim, index.to(masks[unit_slice.module_name].device), True)
    return {f"{name}.weight": mask for name, mask in masks.items()}


@torch.no_grad()
def structured_masks_from_zeros(model: nn.Module, structure: str) -> dict[str, torch.Tensor]:
    """The neuron or head masks of a model whose pruned units are exactly zero (saved without a masks file).

    A unit counts as pruned when every weight it owns (its rows in the input projections, its
    columns in the output projection) is zero; the masks have the keys and shapes `structured_masks`
    gives, so a run resumed from such a checkpoint holds the masks of the run that saved it.
    """
    groups = unit_groups(model, structure)
    modules = dict(model.named_modules())
    weights = {s.module_name: modules[s.module_name].weight for g in groups for s in g.slices}
    masks = {name: torch.zeros_like(w, dtype=torch.bool) for name, w in weights.items()}
    for group in groups:
        dead = torch.ones(group.num_units, dtype=torch.bool)
        for unit_slice in group.slices:
            moved = weights[unit_slice.module_name].detach().movedim(unit_slice.dim, 0)
            block = moved[unit_slice.offset : unit_slice.offset + group.num_units * unit_slice.size]
            dead &= (block.reshape(group.num_units, -1) == 0).all(dim=1).cpu()
        units = dead.nonzero().flatten().tolist()
        for unit_slice in group.slices:
            index = torch.tensor(unit_index(unit_slice, units), dtype=torch.long)
            masks[unit_slice.module_name].index_fill_(unit_slice.dim, index.to(masks[unit_slice.module_name].device), True)
    return {f"{name}.weight": mask for name, mask in masks.items()}


@dataclass
class SparsityReport:
    """Zeros actually present in the weights (never a number taken from a schedule).

    Attributes:
        total_params: number of entries in the targeted weights (the pruned set: by default the
            Linear/Conv1D weights inside the transformer blocks, or the weights that carry masks).
        zero_params: entries of those weights that are exactly zero.
        global_sparsity: `zero_params / total_params`.
        per_layer: sparsity of each targeted weight, keyed by module name.
        model_params: every parameter of the model (embeddings, norms, biases, heads included).
        model_zero_params: exact zeros among them.
        model_sparsity: `model_zero_params / model_params`, the whole-model figure.
        per_layer_counts: `(zeros, entries)` of each targeted weight.

    Example:

    ```python
    >>> report = sparsity_report(model)
    >>> report.global_sparsity, report.model_sparsity  # pruned weights only, every parameter
    (0.5, 0.39)
    >>> report.grouped()["layer.3.ffn"]
    0.5
    ```
    """

    total_params: int
    zero_params: int
    global_sparsity: float
    per_layer: dict[str, float] = field(default_factory=dict)
    model_params: int = 0
    model_zero_params: int = 0
    model_sparsity: float = 0.0
    per_layer_counts: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        return asdict(self)

    def grouped(self) -> dict[str, float]:
        """Sparsity per block and kind (`"layer.3.ffn"`, `"layer.3.attn"`), for compact logging."""
        totals: dict[str, list[float]] = {}
        for name, (zeros, numel) in self.per_layer_counts.items():
            entry = totals.setdefault(layer_key(name), [0, 0])
            entry[0] += zeros
            entry[1] += numel
        return {key: zeros / numel for key, (zeros, numel) in totals.items()}


def targeted_weights(
    model: nn.Module, target_modules: list[str] | str | None = None, prefer_masked: bool = True
) -> dict[str, torch.Tensor]:
    """`{parameter name: weight}` of the pruned set: the weights that carry masks if the model has
    some (and `prefer_masked`), else the layers that `target_modules` selects."""
    state = get_pruning_state(model)
    masks = state.masks if state is not None else None
    if masks and prefer_masked and target_modules is None:
        params = dict(model.named_parameters())
        return {name: params[name] for name in masks if name in params}
    return {f"{name}.weight": module.weight for name, module in find_target_modules(model, target_modules).items()}


@torch.no_grad()
def sparsity_report(model: nn.Module, target_modules: list[str] | str | None = None) -> SparsityReport:
    """Count the exact zeros in a model's weights.

    Args:
        model: any `PreTrainedModel` (masked, reloaded with plain `from_pretrained`, or compacted).
        target_modules: which layers make up the pruned set; by default the layers that carry
            masks, else the Linear/Conv1D layers inside the transformer blocks.

    Returns:
        a [`SparsityReport`]: `global_sparsity` over the pruned set, `model_sparsity` over every
        parameter, `per_layer` by module name.

    Example:

    ```python
    >>> from hf_bigsmall import sparsity_report
    >>> report = sparsity_report(model)
    >>> print(f"{report.global_sparsity:.1%} of {report.total_params:,} targeted weights are zero")
    ```
    """
    counts = {}
    for name, weight in targeted_weights(model, target_modules).items():
        counts[name.removesuffix(".weight")] = (_count_zeros(weight), weight.numel())
    total = sum(numel for _, numel in counts.values())
    zeros = sum(z for z, _ in counts.values())
    model_params = model_zeros = 0
    for param in model.parameters():  # named_parameters de-duplicates tied weights
        model_params += param.numel()
        model_zeros += _count_zeros(param)
    report = SparsityReport(
        total_params=total,
        zero_params=zeros,
        global_sparsity=zeros / total if total else 0.0,
        per_layer={name: z / n for name, (z, n) in counts.items()},
        model_params=model_params,
        model_zero_params=model_zeros,
        model_sparsity=model_zeros / model_params if model_params else 0.0,
        per_layer_counts=counts,
    )
    return report


def _count_zeros(weight: torch.Tensor) -> int:
    # an FSDP2 shard's count is a partial sum: full_tensor adds the processes' counts (collective)
    return int(full_tensor((weight == 0).sum()))
