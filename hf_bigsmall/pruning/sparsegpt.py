"""SparseGPT: one-shot pruning that updates the weights it keeps to repair what it cuts.

Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot".
For one layer with weight `W` (`out x in`) and calibration inputs `X` (`in x tokens`), pruning
aims at the smallest output error `||W X - W' X||^2`. Its Hessian with respect to each row of `W`
is `H = X X^T` (the same for every row). The Optimal Brain Surgeon step removes weight `w_j` at
cost `w_j^2 / [H^-1]_jj` and corrects the row's other weights by `-(w_j / [H^-1]_jj) [H^-1]_j,:`,
so the layer's output changes as little as possible. SparseGPT visits the columns left to right,
only ever correcting the columns not yet visited; then the inverse Hessians it needs are the rows
of the upper Cholesky factor `U` of `H^-1` (`H^-1 = U^T U`), one factorisation per layer. Masks
are chosen lazily, for a block of columns at a time, from the weights as already corrected
(unstructured: the lowest `w^2 / U_jj^2` of the block, across every row; `N:M`: the `N` lowest of
each group of `M` columns of a row), and the corrections inside a block are applied column by
column, those to later blocks once per block.

Precision: `X X^T` is summed per batch in float32 (at most `batch_size x seq_len` tokens per sum,
so the matmul stays fast; for wide inputs only its upper half is multiplied out and mirrored) and
accumulated across batches in `hessian_dtype` (float64 by default, as the squared norms of Wanda
are, so hundreds of batches do not round away small channels); the dampening, the Cholesky
factorisation and the triangular inverse run in that dtype too, and the sweep over the columns in
float32.

Cost: besides the forwards, one factorisation per layer and, per input column, two tensor
operations (the column's errors, and the rank-one update of the later columns of its block); a
block's corrections to the columns after it are one matmul.

Dead inputs (a channel that is zero on every calibration token, so `H_jj = 0`) carry no signal:
their weights are pruned first (they cost nothing on the calibration data) and their diagonal is
set to 1 so the factorisation exists. A Hessian that is not positive definite even after the
dampening `dampening x mean(diag H)` is dampened ten times more, with a warning, until it is.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.utils import logging

from .wanda import _is_transposed, in_features

logger = logging.get_logger(__name__)

DEFAULT_BLOCK_SIZE = 128
DEFAULT_DAMPENING = 0.01
HESSIAN_DTYPES = {"float64": torch.float64, "float32": torch.float32}
# Dampening is raised tenfold at most this many times before giving up (0.01 -> 100 x mean(diag H)).
_MAX_DAMPENING_RETRIES = 4


def new_hessian(module: nn.Module, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A zero `(in, in)` accumulator for the layer's `X X^T`, on its weight's device."""
    return torch.zeros(in_features(module), in_features(module), dtype=dtype, device=module.weight.device)


# Below this width `X^T X` is one matmul; above, its two diagonal quarters and one off-diagonal one.
_SPLIT_WIDTH = 256


def _add_outer_product(target: torch.Tensor, inputs: torch.Tensor) -> None:
    """`target += X^T X` for the `(tokens, in)` rows of `inputs`, a float32 matmul per batch.

    `X^T X` is symmetric: for wide inputs only its upper half is multiplied out, as the quarters
    `A^T A`, `A^T B`, `B^T B` of `X = [A B]` (three quarters of the work), and the lower
    off-diagonal quarter is copied from the upper one."""
    inputs = inputs.detach().reshape(-1, inputs.shape[-1]).float()
    width = inputs.shape[1]
    if width < _SPLIT_WIDTH:
        target.add_((inputs.t() @ inputs).to(target.dtype))
        return
    half = width // 2
    left, right = inputs[:, :half], inputs[:, half:]
    target[:half, :half] += (left.t() @ left).to(target.dtype)
    target[:half, half:] += (left.t() @ right).to(target.dtype)
    target[half:, half:] += (right.t() @ right).to(target.dtype)
    target[half:, :half] = target[:half, half:].t()


class SharedHessians:
    """`X X^T` of several layers, one accumulator per distinct input: the layers one tensor feeds in turn
    (a Llama block's q, k and v projections; its gate and up projections) share one Hessian, computed
    once per batch. A Llama block then holds 4 Hessians, not 7, and spends a quarter less on them.

    Sharing is decided on the first batch (a layer called with the very tensor the previous hooked
    layer just read joins its Hessian) and checked on every later one.

    Example:

    ```python
    >>> shared = SharedHessians({"q": q_proj, "k": k_proj}, torch.float64)
    >>> handles = [module.register_forward_pre_hook(shared.hook(name)) for name, module in shared.modules.items()]
    ```
    """

    def __init__(self, modules: dict[str, nn.Module], dtype: torch.dtype = torch.float64):
        self.modules, self.dtype = modules, dtype
        self.hessians: dict[str, torch.Tensor] = {}
        self.owner: dict[str, str] = {}
        self._last: tuple[torch.Tensor | None, str | None] = (None, None)

    def hook(self, name: str):
        def hook(module, args):
            inputs = args[0]
            last_input, last_name = self._last
            self._last = (inputs, name)
            same = inputs is last_input and last_name is not None
            if name not in self.owner:  # the first batch decides
                if same and last_name in self.owner and in_features(module) == in_features(self.modules[last_name]):
                    self.owner[name] = self.owner[last_name]
                    self.hessians[name] = self.hessians[last_name]
                    return
                self.owner[name] = name
                self.hessians[name] = new_hessian(module, self.dtype)
            elif self.owner[name] != name:
                if not (same and self.owner.get(last_name) == self.owner[name]):
                    raise RuntimeError(
                        f"SparseGPT: {name!r} shared the Hessian of {self.owner[name]!r} on the first batch but reads "
                        "another input now: the model calls its layers differently from batch to batch."
                    )
                return
            _add_outer_product(self.hessians[name], inputs)

        return hook

    def pop(self, name: str) -> torch.Tensor:
        """The layer's Hessian, forgotten here (freed once every layer sharing it has taken it)."""
        self._last = (None, None)
        self.owner.pop(name, None)
        return self.hessians.pop(name)


def inverse_hessian_factor(hessian: torch.Tensor, dampening: float, name: str,
                           method: str = "SparseGPT") -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor `U` of `(H + lambda I)^-1`, `lambda = dampening x mean(diag H)`, and the
    dampening used: raised tenfold, with a warning, while `H + lambda I` is not positive definite.

    One factorisation and one triangular inverse: with `P` the permutation that reverses the order,
    `P H P = L L^T` gives `H^-1 = (P L^-1 P)^T (P L^-1 P)`, and `P L^-1 P` is upper triangular with
    a positive diagonal, hence `U` (cheaper than inverting `H` and factorising `H^-1` again). SparseGPT and
    GPTQ (`quantization.gptq`) share it; `method` names the caller in the messages."""
    diagonal = torch.diagonal(hessian)
    scale = float(diagonal.mean()) or 1.0
    reversed_hessian = hessian.flip(0, 1)
    identity = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    used = dampening
    for attempt in range(_MAX_DAMPENING_RETRIES + 1):
        lower, info = torch.linalg.cholesky_ex(reversed_hessian + used * scale * identity)
        if int(info) == 0:
            upper = torch.linalg.solve_triangular(lower, identity, upper=False).flip(0, 1)
            if bool(torch.isfinite(upper.sum())) and bool((torch.diagonal(upper) > 0).all()):
                if attempt:
                    logger.warning(
                        f"{method}: the Hessian of {name!r} is not positive definite with dampening={dampening}; "
                        f"used {used:g} x mean(diag H) instead. More calibration tokens usually avoid this."
                    )
                return upper, used
        used *= 10
    raise ValueError(
        f"{method}: the Hessian of {name!r} stays singular even with dampening {used / 10:g} x mean(diag H): its "
        "calibration inputs are degenerate. Pass more (or more varied) calibration data"
        + (", or leave the layer out of target_modules." if method == "SparseGPT" else ".")
    )


def _lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of the `count` lowest entries of `scores` (ties at the threshold taken in index order).

    A selection by `kthvalue` (linear time) rather than `topk`, which sorts half the block."""
    flat = scores.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if count <= 0:
        return mask.view_as(scores)
    threshold = torch.kthvalue(flat, count).values
    torch.lt(flat, threshold, out=mask)
    missing = count - int(mask.sum())
    if missing > 0:
        mask[torch.nonzero(flat == threshold).squeeze(1)[:missing]] = True
    return mask.view_as(scores)


@torch.no_grad()
def sparsegpt_rows(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    pattern: tuple[int, int] | None = None,
    previous: torch.Tensor | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    dampening: float = DEFAULT_DAMPENING,
    name: str = "layer",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune an `(out, in)` weight with SparseGPT; returns the corrected float32 weight and its mask.

    Args:
        weight: `(out, in)` weight (any float dtype; not modified).
        hessian: `(in, in)` `X X^T` of the layer's calibration inputs (its scale does not matter).
        sparsity: fraction pruned in every block of columns (unstructured); ignored with `pattern`.
        pattern: `(N, M)`: `N` pruned of every `M` consecutive inputs of each row.
        previous: `(out, in)` mask already in force (`True` = pruned): those weights stay pruned.
        block_size: columns whose masks are chosen together (a multiple of `M` is used with a pattern).
        dampening: `lambda / mean(diag H)` added to the diagonal before inverting.
        name: the layer's name, for messages.

    Returns:
        `(weight, mask)`: the new `(out, in)` float32 weight, exactly zero where `mask` is `True`.
    """
    rows, columns = weight.shape
    if not bool(torch.isfinite(hessian.sum())):  # a sum is finite only if every entry is
        raise ValueError(f"SparseGPT: the calibration inputs of {name!r} hold inf/NaN: check the model in float32.")
    dead = torch.diagonal(hessian) == 0
    if dead.any():
        hessian = hessian.clone()
        hessian[dead, dead] = 1.0
    upper = inverse_hessian_factor(hessian, dampening, name)[0].float()
    del hessian
    # The sweep works on the transposed weight, `(in, out)`: visiting input column `c` then reads and
    # updates contiguous rows.
    weights = weight.detach().t().float().clone(memory_format=torch.contiguous_format)
    forced = None if previous is None else previous.to(weights.device).t()
    if pattern is not None:
        n, m = pattern
        block_size = max(m, block_size // m * m)
    mask = torch.zeros_like(weights, dtype=torch.bool)
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        count = end - start
        block = weights[start:end]  # a view: corrected in place
        inverse = upper[start:end, start:end]
        inverse_diagonal = torch.diagonal(inverse).unsqueeze(1)
        block_forced = None if forced is None else forced[start:end]
        block_dead = dead[start:end].unsqueeze(1)
        block_mask = mask[start:end]  # a view: filled in place
        # errors[c] = (w_c - kept_c) / U_cc for every row, the OBS step; kept separately to update later blocks
        errors = torch.empty(count, rows, dtype=weights.dtype, device=weights.device)

        def choose(first: int, last: int) -> torch.Tensor:
            # OBS cost of removing each weight (dead inputs cost nothing, pruned weights go first), and
            # the factor that turns a column's weights into its errors: 1 / U_cc where pruned, else 0
            scores = block[first:last].pow(2) / inverse_diagonal[first:last].pow(2)
            scores.masked_fill_(block_dead[first:last], 0.0)
            if block_forced is not None:
                scores.masked_fill_(block_forced[first:last], -1.0)
            if pattern is None:
                chosen = _lowest(scores, round(sparsity * scores.numel()))
            else:
                chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(
                    0, torch.topk(scores, n, dim=0, largest=False).indices, True)
            if block_forced is not None:
                chosen |= block_forced[first:last]
            block_mask[first:last] = chosen
            return chosen / inverse_diagonal[first:last]

        group = count if pattern is None else m
        for first in range(0, count, group):
            # masks are chosen lazily, from the weights as corrected by the columns before
            error_factor = choose(first, min(first + group, count))
            for column in range(first, min(first + group, count)):
                torch.mul(block[column], error_factor[column - first], out=errors[column])
                # correct this column and the later ones of the block (OBS update along row `column` of U);
                # a pruned weight becomes ~0 here and exactly 0 below, a kept one is unchanged
                block[column:].addr_(inverse[column, column:], errors[column], alpha=-1.0)
        block.masked_fill_(block_mask, 0.0)
        # then every later column at once
        weights[end:].addmm_(upper[start:end, end:].t(), errors, alpha=-1.0)
    return weights.t(), mask.t()


@torch.no_grad()
def sparsegpt_prune_module(
    module: nn.Module,
    hessian: torch.Tensor,
    sparsity: float,
    pattern: tuple[int, int] | None = None,
    previous: torch.Tensor | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    dampening: float = DEFAULT_DAMPENING,
    name: str = "layer",
) -> torch.Tensor:
    """Prune a `Linear` or GPT-2 `Conv1D` in place with SparseGPT; returns its mask in the weight's layout.

    `previous` is in the weight's own layout too (`(in, out)` for a `Conv1D`).
    """
    transposed = _is_transposed(module)
    weight = module.weight.detach()
    rows = weight.t() if transposed else weight
    previous_rows = None if previous is None else (previous.t() if transposed else previous)
    new, mask = sparsegpt_rows(rows, hessian, sparsity, pattern, previous_rows, block_size, dampening, name)
    if transposed:
        new, mask = new.t(), mask.t()
    module.weight.data.copy_(new.to(module.weight.dtype))
    return mask.contiguous()
