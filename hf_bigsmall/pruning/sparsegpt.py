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
so the matmul stays fast) and accumulated across batches in `hessian_dtype` (float64 by default,
as the squared norms of Wanda are, so hundreds of batches do not round away small channels); the
dampening, Cholesky factorisations and inverse run in that dtype too, and the sweep over the
columns in float32.

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


def _add_outer_product(target: torch.Tensor, inputs: torch.Tensor) -> None:
    inputs = inputs.detach().reshape(-1, inputs.shape[-1]).float()
    target.add_((inputs.t() @ inputs).to(target.dtype))


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


def _inverse_hessian_factor(hessian: torch.Tensor, dampening: float, name: str) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor `U` of `(H + lambda I)^-1`, `lambda = dampening x mean(diag H)`, and the
    dampening used: raised tenfold, with a warning, while `H + lambda I` is not positive definite."""
    diagonal = torch.diagonal(hessian)
    scale = float(diagonal.mean()) or 1.0
    identity = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    used = dampening
    for attempt in range(_MAX_DAMPENING_RETRIES + 1):
        lower, info = torch.linalg.cholesky_ex(hessian + used * scale * identity)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0 and torch.isfinite(upper).all():
                if attempt:
                    logger.warning(
                        f"SparseGPT: the Hessian of {name!r} is not positive definite with dampening={dampening}; "
                        f"used {used:g} x mean(diag H) instead. More calibration tokens usually avoid this."
                    )
                return upper, used
        used *= 10
    raise ValueError(
        f"SparseGPT: the Hessian of {name!r} stays singular even with dampening {used / 10:g} x mean(diag H): its "
        "calibration inputs are degenerate. Pass more (or more varied) calibration data, or leave the layer out "
        "of target_modules."
    )


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
    columns = weight.shape[1]
    weights = weight.detach().float().clone(memory_format=torch.contiguous_format)
    hessian = hessian.clone()
    if not torch.isfinite(hessian).all():
        raise ValueError(f"SparseGPT: the calibration inputs of {name!r} hold inf/NaN: check the model in float32.")
    dead = torch.diagonal(hessian) == 0
    hessian[dead, dead] = 1.0
    upper = _inverse_hessian_factor(hessian, dampening, name)[0].float()
    del hessian

    forced = torch.zeros_like(weights, dtype=torch.bool) if previous is None else previous.to(weights.device).clone()
    if pattern is not None:
        n, m = pattern
        block_size = max(m, block_size // m * m)
    mask = torch.zeros_like(weights, dtype=torch.bool)
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        count = end - start
        block = weights[:, start:end].clone(memory_format=torch.contiguous_format)
        inverse = upper[start:end, start:end]
        errors = torch.zeros_like(block)
        block_forced = forced[:, start:end]
        block_dead = dead[start:end].unsqueeze(0)
        block_mask = torch.zeros_like(block, dtype=torch.bool)

        def saliency(values: torch.Tensor, first: int, last: int) -> torch.Tensor:
            # OBS cost of removing each weight; dead inputs cost nothing, pruned weights go first
            scores = values.pow(2) / torch.diagonal(inverse)[first:last].pow(2).unsqueeze(0)
            scores = scores.masked_fill(block_dead[:, first:last], 0.0)
            return scores.masked_fill(block_forced[:, first:last], -1.0)

        if pattern is None:
            pruned = round(sparsity * block.numel())
            if pruned:
                scores = saliency(block, 0, count).flatten()
                block_mask.view(-1)[torch.topk(scores, pruned, largest=False).indices] = True
        for column in range(count):
            if pattern is not None and column % m == 0:
                scores = saliency(block[:, column:column + m], column, column + m)
                block_mask[:, column:column + m].scatter_(1, torch.topk(scores, n, dim=1, largest=False).indices, True)
            values = block[:, column]
            kept = values.masked_fill(block_mask[:, column] | block_forced[:, column], 0.0)
            error = (values - kept) / inverse[column, column]
            # correct the columns of this block not yet visited (OBS update along row `column` of U)
            block[:, column:].addr_(error, inverse[column, column:], alpha=-1.0)
            block[:, column] = kept
            errors[:, column] = error
        weights[:, start:end] = block
        # then every later column at once
        weights[:, end:] -= errors @ upper[start:end, end:]
        mask[:, start:end] = block_mask | block_forced
    weights[mask] = 0.0
    return weights, mask


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
