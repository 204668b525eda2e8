"""Calibration: run a model over a few hundred thousand tokens and collect statistics of its activations.

Post-training pruning criteria such as Wanda (Sun et al. 2023, "A Simple and Effective Pruning
Approach for Large Language Models") score a weight by how large the activations are that flow
through it. This module provides the three pieces any such criterion needs:

- [`prepare_calibration`] turns a tokenized (or raw text) dataset into `num_samples` windows of
  `seq_len` tokens, checked against the model (vocabulary, positions) before anything runs;
- [`run_calibration`] runs the model over those windows with forward hooks on named modules, in
  `eval()` and under `torch.no_grad()`, and removes the hooks afterwards whatever happens: the
  generic machinery, for any statistic a hook can accumulate;
- [`collect_input_statistics`] uses it for the one Wanda needs: per Linear/Conv1D layer, the
  squared L2 norm of every input channel over all calibration tokens, `sum_t x_tj^2`.

Statistics are accumulated batch by batch, so memory is bounded by the statistics (one vector of
`in_features` per layer) and one batch's activations, never by the activations of the whole set.

Example:

```python
>>> from hf_bigsmall.pruning.calibration import prepare_calibration, collect_input_statistics
>>> calibration = prepare_calibration(dataset["train"], num_samples=128, seq_len=512, model=model)
>>> statistics = collect_input_statistics(model, calibration)
>>> statistics.norms()["model.layers.0.mlp.down_proj"].shape  # ||X_j||_2 per input channel
torch.Size([1536])
```
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from .targets import find_target_modules

logger = logging.get_logger(__name__)

DEFAULT_NUM_SAMPLES = 128
DEFAULT_SEQ_LEN = 512

# Config fields that bound the positions a model can read, by architecture family.
_POSITION_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx")


@dataclass
class CalibrationData:
    """Calibration windows: `input_ids` of shape `(num_samples, seq_len)`, served in batches.

    Every window is full (no padding), so every position is a real token and statistics need no
    mask. Build it with [`prepare_calibration`]; any function of this module also accepts the
    dataset itself and prepares it with the defaults.

    Attributes:
        input_ids: `LongTensor (num_samples, seq_len)` on the CPU.
        batch_size: windows per forward pass.
        requested_samples: how many windows were asked for (more than `num_samples` when the data
            held fewer tokens).
    """

    input_ids: torch.Tensor
    batch_size: int = 8
    requested_samples: int | None = None

    @property
    def num_samples(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def num_tokens(self) -> int:
        return self.input_ids.numel()

    def batches(self, device: torch.device | str | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """`{"input_ids", "attention_mask"}` batches of `batch_size` windows, on `device`."""
        for start in range(0, self.num_samples, self.batch_size):
            input_ids = self.input_ids[start : start + self.batch_size].to(device)
            yield {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    def describe(self) -> dict[str, int]:
        """What was used, for a config block or a model card."""
        return {"num_samples": self.num_samples, "seq_len": self.seq_len, "num_tokens": self.num_tokens}


def model_vocab_size(model: nn.Module) -> int | None:
    """Rows of the input embedding: the largest token id the model can read, plus one."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(embeddings, nn.Embedding):
        return embeddings.num_embeddings
    return getattr(getattr(model, "config", None), "vocab_size", None)


def model_max_positions(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in _POSITION_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _row_tokens(row: Any) -> list[int]:
    """The real tokens of one row (padding dropped by its attention mask, if it has one)."""
    if isinstance(row, torch.Tensor):
        return row.flatten().tolist()
    if isinstance(row, (list, tuple)) and all(isinstance(token, int) for token in row):
        return list(row)
    if not isinstance(row, Mapping):
        raise TypeError(
            f"A calibration row must be a mapping with 'input_ids' (a tokenized dataset), got {type(row).__name__}."
        )
    ids = row["input_ids"]
    ids = ids.flatten().tolist() if isinstance(ids, torch.Tensor) else list(ids)
    mask = row.get("attention_mask")
    if mask is not None:
        mask = mask.flatten().tolist() if isinstance(mask, torch.Tensor) else list(mask)
        ids = [token for token, keep in zip(ids, mask) if keep]
    return ids


def _column_names(dataset: Any) -> list[str] | None:
    names = getattr(dataset, "column_names", None)
    if isinstance(names, dict):  # a DatasetDict
        raise TypeError(
            f"prepare_calibration got a dataset with splits {list(names)}: pass one split, e.g. dataset['train']."
        )
    return list(names) if names is not None else None


def prepare_calibration(
    dataset: Any,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seq_len: int | None = None,
    batch_size: int = 8,
    *,
    model: nn.Module | None = None,
    tokenizer: Any = None,
    text_column: str = "text",
    seed: int = 0,
) -> CalibrationData:
    """Cut a dataset into `num_samples` calibration windows of `seq_len` tokens.

    Rows are visited in an order shuffled by `seed`; their tokens (padding dropped) are
    concatenated into one stream, which is cut into full windows until `num_samples` are filled,
    as Wanda and SparseGPT draw fixed-length segments from C4. Only as many rows are read (and
    tokenized) as the windows need.

    When the data holds fewer tokens than `num_samples * seq_len`, the windows that can be filled
    are used and a warning says how many; with less than one full window of tokens, the one window
    is as long as the data. An empty dataset is an error.

    Args:
        dataset: a tokenized `datasets.Dataset` or any sequence of `{"input_ids": ...}` rows (for
            example the blocks of `load_causal_lm_dataset`), a `LongTensor (rows, length)`, a raw
            text dataset with `text_column` when `tokenizer` is given, or a [`CalibrationData`]
            (returned as is).
        num_samples: windows wanted (Wanda's default: 128).
        seq_len: tokens per window; default 512, or the model's maximum positions if smaller.
        batch_size: windows per forward pass.
        model: when given, token ids are checked against its vocabulary and `seq_len` against its
            positions, so data from another tokenizer fails here rather than as an index error.
        tokenizer: tokenizes `text_column` when the rows carry text rather than `input_ids`.
        text_column: the text column of a raw dataset.
        seed: fixes which rows are read first.

    Returns:
        a [`CalibrationData`].

    Raises:
        ValueError: empty data, a non-positive size, `seq_len` beyond the model's positions, or ids
            outside the model's vocabulary.
        TypeError: rows without `input_ids` (and no tokenizer), or a `DatasetDict`.
    """
    if isinstance(dataset, CalibrationData):
        if model is not None:
            check_calibration(dataset, model)
        return dataset
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    max_positions = model_max_positions(model) if model is not None else None
    if seq_len is None:
        seq_len = min(DEFAULT_SEQ_LEN, max_positions) if max_positions else DEFAULT_SEQ_LEN
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}.")
    if max_positions is not None and seq_len > max_positions:
        raise ValueError(
            f"seq_len={seq_len} is longer than the {max_positions} positions the model reads: pass "
            f"seq_len={max_positions} or less."
        )

    if dataset is None or len(dataset) == 0:
        raise ValueError(
            "The calibration dataset is empty: pass a few hundred tokenized rows of text like the model's "
            "use (e.g. load_causal_lm_dataset(tokenizer, assets.NEWS)['train'])."
        )
    columns = _column_names(dataset)
    tokenize = None
    if columns is not None and "input_ids" not in columns:
        if tokenizer is None or text_column not in columns:
            raise TypeError(
                f"The calibration dataset has no 'input_ids' column (columns: {columns}): tokenize it first, or "
                f"pass tokenizer= with its text in text_column= (now {text_column!r})."
            )
        tokenize = tokenizer

    wanted = num_samples * seq_len
    stream: list[int] = []
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    separator = [tokenizer.eos_token_id] if tokenize is not None and tokenizer.eos_token_id is not None else []
    for index in order:
        row = dataset[index]
        if tokenize is not None:
            stream += tokenize(row[text_column])["input_ids"] + separator
        else:
            stream += _row_tokens(row)
        if len(stream) >= wanted:
            break
    if not stream:
        raise ValueError("The calibration dataset holds no tokens (every row is empty or padding).")

    available = len(stream) // seq_len
    if available == 0:
        logger.warning(
            f"Calibration data holds {len(stream)} tokens, less than one window of seq_len={seq_len}: using one "
            f"window of {len(stream)} tokens. Pass more data for reliable statistics."
        )
        input_ids = torch.tensor([stream], dtype=torch.long)
    else:
        count = min(available, num_samples)
        if count < num_samples:
            logger.warning(
                f"Calibration data holds {len(stream)} tokens: {count} windows of {seq_len} instead of the "
                f"{num_samples} asked for. Using those {count}; pass more data (or a smaller num_samples/seq_len) "
                "to silence this."
            )
        input_ids = torch.tensor(stream[: count * seq_len], dtype=torch.long).view(count, seq_len)
    calibration = CalibrationData(input_ids=input_ids, batch_size=batch_size, requested_samples=num_samples)
    if model is not None:
        check_calibration(calibration, model)
    return calibration


def check_calibration(calibration: CalibrationData, model: nn.Module) -> None:
    """Raise `ValueError` when the windows cannot be read by `model` (another tokenizer's ids, too long)."""
    vocab_size = model_vocab_size(model)
    if calibration.num_tokens == 0:
        raise ValueError("The calibration data is empty: pass tokenized text.")
    largest, smallest = int(calibration.input_ids.max()), int(calibration.input_ids.min())
    if smallest < 0:
        raise ValueError(f"Calibration token ids must be >= 0, found {smallest} (a -100 label used as input?).")
    if vocab_size is not None and largest >= vocab_size:
        raise ValueError(
            f"Calibration token id {largest} is outside the model's vocabulary of {vocab_size}: the data was "
            "tokenized with another tokenizer. Tokenize it with the model's own tokenizer."
        )
    max_positions = model_max_positions(model)
    if max_positions is not None and calibration.seq_len > max_positions:
        raise ValueError(
            f"Calibration windows of {calibration.seq_len} tokens are longer than the model's {max_positions} "
            f"positions: prepare them with seq_len={max_positions} or less."
        )


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _forward_module(model: nn.Module, hooked: list[nn.Module]) -> nn.Module:
    """The backbone alone when every hooked module lives in it: skips the LM head's vocabulary-wide
    logits (for SmolLM2 about a fifth of the forward's work), which no input statistic needs."""
    base = getattr(model, "base_model", None)
    if base is None or base is model or not isinstance(base, nn.Module):
        return model
    inside = {id(module) for module in base.modules()}
    return base if all(id(module) in inside for module in hooked) else model


HookFunction = Callable[..., Any]


@torch.no_grad()
def run_calibration(
    model: nn.Module,
    calibration: CalibrationData | Any,
    forward_hooks: Mapping[str, HookFunction] | None = None,
    forward_pre_hooks: Mapping[str, HookFunction] | None = None,
) -> int:
    """Run `model` over the calibration windows with hooks on named modules; returns the tokens seen.

    This is the generic machinery: each hook is a plain PyTorch hook
    (`hook(module, args, output)` for `forward_hooks`, `hook(module, args)` for
    `forward_pre_hooks`) registered on `model.get_submodule(name)`, and it accumulates whatever
    statistic it wants. The model runs in `eval()` (dropout off) under `torch.no_grad()` without a
    KV cache; its training mode is restored and every hook removed afterwards, also on error.

    Args:
        model: the (unwrapped) model.
        calibration: a [`CalibrationData`], or a dataset for [`prepare_calibration`] with defaults.
        forward_hooks: `{module name: hook}` called after the module's forward.
        forward_pre_hooks: `{module name: hook}` called before it.

    Returns:
        the number of tokens the model read.
    """
    calibration = prepare_calibration(calibration, model=model)
    forward_hooks, forward_pre_hooks = dict(forward_hooks or {}), dict(forward_pre_hooks or {})
    modules = {}
    for name in [*forward_hooks, *forward_pre_hooks]:
        try:
            modules[name] = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"The model has no module {name!r} to hook.") from None
    handles = [modules[name].register_forward_hook(hook) for name, hook in forward_hooks.items()]
    handles += [modules[name].register_forward_pre_hook(hook) for name, hook in forward_pre_hooks.items()]
    runner = _forward_module(model, list(modules.values()))
    was_training = model.training
    device = _model_device(model)
    tokens = 0
    model.eval()
    try:
        for batch in calibration.batches(device):
            kwargs = {"use_cache": False} if getattr(getattr(runner, "config", None), "use_cache", None) is not None else {}
            runner(**batch, **kwargs)
            tokens += batch["input_ids"].numel()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return tokens


class _EveryLayerReached(Exception):
    """Stops the check's forward once every layer it watches has been called."""


@torch.no_grad()
def check_layers_reached(model: nn.Module, calibration: CalibrationData, modules: Mapping[str, nn.Module]) -> None:
    """Refuse layers that the first calibration batch never reaches, before anything is pruned.

    A layer the model does not call on these inputs (GPT-2's cross-attention without encoder states)
    would get no statistic: a bare `KeyError` mid-pruning, or half its weights zeroed on all-zero
    scores. The forward stops as soon as every layer has been called.

    Raises:
        ValueError: naming the layers no calibration token reached, and what to do.
    """
    reached: set[str] = set()

    def seen(name: str) -> HookFunction:
        def hook(module, args):
            reached.add(name)
            if len(reached) == len(modules):
                raise _EveryLayerReached
        return hook

    handles = [module.register_forward_pre_hook(seen(name)) for name, module in modules.items()]
    runner = _forward_module(model, list(modules.values()))
    kwargs = {"use_cache": False} if getattr(getattr(runner, "config", None), "use_cache", None) is not None else {}
    was_training = model.training
    model.eval()
    try:
        for batch in calibration.batches(_model_device(model)):
            runner(**batch, **kwargs)
            break
    except _EveryLayerReached:
        pass
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    missing = [name for name in modules if name not in reached]
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise ValueError(f"No calibration token reaches {len(missing)} targeted layer(s): {shown} (the model never "
                         "calls them on these inputs, e.g. cross-attention without encoder states), so they have "
                         "nothing to be calibrated on: leave them out of target_modules=, or pass calibration inputs "
                         "that reach them.")


@dataclass
class InputStatistics:
    """Per-layer statistics of the inputs of Linear/Conv1D layers over the calibration tokens.

    Attributes:
        squared_norms: `{module name: float64 tensor (in_features,)}`, `sum_t x_tj^2` over every
            calibration token `t`, i.e. `||X_j||_2^2` for input channel `j`.
        num_tokens: calibration tokens the statistics cover.
        calibration: what was used (`num_samples`, `seq_len`, `num_tokens`).
    """

    squared_norms: dict[str, torch.Tensor]
    num_tokens: int
    calibration: dict[str, int] = field(default_factory=dict)

    def norms(self) -> dict[str, torch.Tensor]:
        """`||X_j||_2` per input channel, the activation factor of the Wanda score."""
        return {name: value.sqrt() for name, value in self.squared_norms.items()}


def _accumulate_squared_norm(target: torch.Tensor) -> HookFunction:
    def hook(module, args, output=None):
        inputs = args[0]
        # Sum squares in float32 per batch (no float64 copy of the activations), then add in
        # float64, so hundreds of batches do not lose the small channels to rounding.
        target.add_(inputs.detach().float().pow(2).reshape(-1, inputs.shape[-1]).sum(dim=0).to(target.dtype))

    return hook


def collect_input_statistics(
    model: nn.Module,
    calibration: CalibrationData | Any,
    target_modules: list[str] | str | None = None,
) -> InputStatistics:
    """Squared L2 norm of every input channel of the targeted Linear/Conv1D layers over the calibration set.

    Works for `nn.Linear` (Llama, BERT) and GPT-2's `Conv1D` alike: both read their input's last
    dimension as the input channels (a Conv1D weight is `(in, out)`, a Linear's `(out, in)`).

    Args:
        model: the (unwrapped) model.
        calibration: a [`CalibrationData`], or a dataset for [`prepare_calibration`] with defaults.
        target_modules: which layers, as in `MagnitudePruningCallback` (default: the Linear/Conv1D
            layers inside the transformer blocks).

    Returns:
        an [`InputStatistics`].

    Raises:
        ValueError: no layer matches `target_modules` (before anything runs), or bad calibration data.
    """
    targets = find_target_modules(model, target_modules)
    calibration = prepare_calibration(calibration, model=model)
    squared = {}
    for name, module in targets.items():
        in_features = module.weight.shape[1] if isinstance(module, nn.Linear) else module.weight.shape[0]
        squared[name] = torch.zeros(in_features, dtype=torch.float64, device=module.weight.device)
    hooks = {name: _accumulate_squared_norm(squared[name]) for name in targets}
    tokens = run_calibration(model, calibration, forward_pre_hooks=hooks)
    return InputStatistics(squared_norms=squared, num_tokens=tokens, calibration=calibration.describe())

