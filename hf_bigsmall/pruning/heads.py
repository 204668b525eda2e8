"""Which attention heads to prune so that the model-wide fraction meets the target and `compact` can act.

Heads are not free to go one by one. Under grouped-query attention (Llama's `num_key_value_heads <
num_attention_heads`) a compacted layer must keep the same number of query heads in every key/value
group, or `num_attention_heads % num_key_value_heads` breaks; so heads leave a layer in *steps* of
one query head per group. Without GQA every head owns its key and value, and a step is one head. A
layer always keeps at least one step's worth (one query head per group): an attention layer with no
head left is not a model transformers can build.

A step costs the summed importance of the heads it removes; because each group's heads are taken
lowest first, a layer's step costs never decrease, so picking the cheapest steps model-wide yields
a valid prefix in every layer. The number of steps is the one whose head count lies closest to
`round(sparsity * heads)`: on SmolLM2 (9 heads, 3 KV heads, 30 layers) 50% is exactly 135 heads.
"""

from __future__ import annotations

import torch
from transformers.utils import logging

from .targets import UnitGroup

logger = logging.get_logger(__name__)


def step_shape(group: UnitGroup) -> tuple[int, int]:
    """`(heads per step, most steps the layer may take)` for one block's heads."""
    if group.kv_group_size:
        return group.num_units // group.kv_group_size, group.kv_group_size - 1
    return 1, group.num_units - 1


def _sorted_units(group: UnitGroup, scores: torch.Tensor) -> torch.Tensor:
    """Unit indices arranged `(steps, heads per step)`: row j holds the heads removed by step j."""
    if group.kv_group_size:
        per_kv = scores.view(-1, group.kv_group_size)
        order = torch.sort(per_kv, dim=1, stable=True).indices
        offsets = torch.arange(per_kv.shape[0]).unsqueeze(1) * group.kv_group_size
        return (order + offsets).t()  # (kv_group_size, num_kv)
    return torch.sort(scores, stable=True).indices.unsqueeze(1)


def choose_heads(groups: list[UnitGroup], scores: list[torch.Tensor], sparsity: float, scope: str) -> list[list[int]]:
    """Heads to prune in each block, the fraction `sparsity` of all heads as nearly as steps allow.

    Args:
        groups: `unit_groups(model, "heads")`, one per block.
        scores: importance of each block's heads; a negative score marks a head already pruned,
            which stays pruned (masks only ever grow).
        sparsity: fraction of the model's heads to prune.
        scope: `"global"` ranks every step of every block together (blocks lose different numbers);
            `"layer"` gives every block the same number of steps, and the steps left over when the
            target does not divide evenly go to the blocks where they cost least.

    Returns:
        the indices of the heads to prune, per block.
    """
    orders = [_sorted_units(g, s) for g, s in zip(groups, scores)]
    costs = [s[order].sum(dim=1) for s, order in zip(scores, orders)]
    shapes = [step_shape(g) for g in groups]
    # steps whose heads are all pruned already are taken whatever the target
    taken = [min(int((s[order] < 0).all(dim=1).sum()), most) for s, order, (_, most) in zip(scores, orders, shapes)]
    target = round(sparsity * sum(g.num_units for g in groups))
    pruned = sum(n * size for n, (size, _) in zip(taken, shapes))

    def closer(size: int) -> bool:
        return abs(pruned + size - target) < abs(pruned - target)

    if scope == "layer":
        # one step at a time to the cheapest of the blocks that have taken fewest: no block ends two ahead
        while True:
            open_blocks = [i for i, (size, most) in enumerate(shapes) if taken[i] < most and closer(size)]
            if not open_blocks:
                break
            level = min(taken[i] for i in open_blocks)
            i = min((i for i in open_blocks if taken[i] == level), key=lambda i: (float(costs[i][taken[i]]), i))
            taken[i] += 1
            pruned += shapes[i][0]
    else:
        candidates = sorted((float(costs[i][j]), i, j) for i, (_, most) in enumerate(shapes) for j in range(taken[i], most))
        for _, i, j in candidates:
            if not closer(shapes[i][0]):
                break
            taken[i] = j + 1  # step costs never decrease within a block, so earlier steps are taken already
            pruned += shapes[i][0]
    if pruned < target and all(n >= most for n, (_, most) in zip(taken, shapes)):
        logger.warning(
            f"Head pruning stops at {pruned} of {target} heads: every block keeps at least one query head per "
            "key/value group (a block with no head cannot be built). Prune FFN neurons as well to go further."
        )
    chosen = []
    for i, order in enumerate(orders):
        units = set(order[: taken[i]].flatten().tolist())
        units |= set((scores[i] < 0).nonzero().flatten().tolist())  # never revive a pruned head
        chosen.append(sorted(units))
    return chosen
