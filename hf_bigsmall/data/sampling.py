"""Training batches of rows of similar length, drawn in random order.

Random batches of short texts pad to their longest row: on the quickstart's reviews (27.6 tokens on average,
64 at most) a random batch of 32 is about half padding, and every padded token costs a step as much as a real
one. The `Trainer`'s `train_sampling_strategy="group_by_length"` (its `LengthGroupedSampler`) cuts the padding,
but it orders each window of about 50 batches longest first, so a run sees its texts in a saw-tooth of lengths:
long ones, then shorter and shorter, then long again. Distilling the quickstart's student that way left its int8
model 0.55 point below shuffled groups over 3 seeds (BENCHMARKS.md, "Batches of similar length").
`ShuffledLengthGroupedSampler` groups the same way and then shuffles the batches, which kept the accuracy of random
batches at half their padding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ["ShuffledLengthGroupedSampler", "length_grouped_batches"]


def length_grouped_batches(lengths: Sequence[int], batch_size: int, window_batches: int | None = None,
                           generator: torch.Generator | None = None) -> list[list[int]]:
    """Row indices cut into batches of similar length, the batches in random order.

    The rows are shuffled, cut into windows of `window_batches * batch_size` rows, each window is sorted by length
    (longest first) and cut into batches of `batch_size`, and all full batches are shuffled together. The batch
    holding the longest row then goes first, so that a batch too large for memory fails at the first step, not hours
    in (as the `Trainer`'s sampler does). A last, smaller batch (when `batch_size` does not divide the rows) comes
    last, so every other batch is whole.

    Args:
        lengths (`Sequence[int]`): the length of every row (tokens).
        batch_size (`int`): rows per group, >= 1. Under `accelerate` with several processes and gradient
            accumulation, the rows of one optimizer step on all processes (`DistillationTrainer` uses per-device
            batch x accumulation steps x processes), so that the processes wait for no longer batch than their own.
        window_batches (`int`, *optional*): batches per window. More groups lengths more tightly, fewer mixes
            the rows more; default as the `Trainer`'s `LengthGroupedSampler`: 50, or fewer so there are at
            least 4 windows.
        generator (`torch.Generator`, *optional*): the random source (default: torch's global one).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if window_batches is not None and window_batches < 1:
        raise ValueError(f"window_batches must be >= 1, got {window_batches}.")
    count = len(lengths)
    if window_batches is None:
        window_batches = max(1, min(count // (batch_size * 4), 50))
    window = window_batches * batch_size
    order = torch.randperm(count, generator=generator).tolist()
    full: list[list[int]] = []
    last: list[int] = []
    for start in range(0, count, window):
        rows = sorted(order[start:start + window], key=lambda index: lengths[index], reverse=True)
        for first in range(0, len(rows), batch_size):
            batch = rows[first:first + batch_size]
            if len(batch) == batch_size:
                full.append(batch)
            else:  # only the last window can end short
                last = batch
    shuffled = [full[index] for index in torch.randperm(len(full), generator=generator).tolist()]
    if shuffled:
        longest = max(range(len(shuffled)), key=lambda index: lengths[shuffled[index][0]])  # sorted: row 0 longest
        shuffled[0], shuffled[longest] = shuffled[longest], shuffled[0]
    return shuffled + ([last] if last else [])


class ShuffledLengthGroupedSampler(Sampler[int]):
    """Yields row indices so that every `batch_size` consecutive ones form a batch of similar lengths, the
    batches in random order (see `length_grouped_batches`). Iterating it yourself, call `set_epoch` at each epoch
    for a new order.

    Each epoch's order is drawn from a generator of its own seeded from `seed` and the epoch (`set_epoch`, which the
    `Trainer` and `accelerate` call at each epoch), never from torch's global random state: every process of a
    distributed run draws the same order and takes its own share of it, and a run resumed from a checkpoint
    draws the order the interrupted run was in.

    Example:

    ```python
    >>> from hf_bigsmall.data import ShuffledLengthGroupedSampler
    >>> sampler = ShuffledLengthGroupedSampler([len(ids) for ids in dataset["input_ids"]], batch_size=32, seed=42)
    >>> loader = torch.utils.data.DataLoader(dataset, batch_size=32, sampler=sampler, collate_fn=collator)
    >>> for epoch in range(epochs):
    ...     sampler.set_epoch(epoch)
    ...     for batch in loader:
    ...         ...
    ```

    `DistillationTrainer` uses it with `DistillationConfig(train_sampling_strategy="group_by_length",
    shuffle_length_groups=True)`, seeded with `data_seed` (else `seed`).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, window_batches: int | None = None, seed: int = 0):
        if len(lengths) == 0:
            raise ValueError("ShuffledLengthGroupedSampler needs at least one row; the dataset is empty.")
        self.lengths = [int(length) for length in lengths]
        self.batch_size = batch_size
        self.window_batches = window_batches
        self.seed = int(seed)
        self.epoch = 0
        length_grouped_batches([1], batch_size, window_batches)  # the same checks before any epoch starts

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        # seed and epoch mixed, not added: seed s in epoch e + 1 draws another order than seed s + 1 in epoch e
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        batches = length_grouped_batches(self.lengths, self.batch_size, self.window_batches, generator)
        return iter([index for batch in batches for index in batch])
