"""Adding up energy across `accelerate launch` / torchrun processes without counting a device twice.

Each process reads its own meters; readings are keyed by what they measure. A GPU shared by two
processes, or the CPU package of a machine that runs several processes, appears under the same
key in each of them, measured over the same window: it is kept once (the largest value, i.e. the
process whose window was widest). Estimate keys name their process, so they are all added.
"""

from __future__ import annotations

import sys
from typing import Any


def _process_group():
    if "torch" not in sys.modules:  # nothing started a process group without importing torch
        return None
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def gather_objects(obj: Any) -> list[Any]:
    """`obj` from every process, in rank order (collective: every process must call it)."""
    dist = _process_group()
    if dist is None:
        return [obj]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def merge_readings(parts: list[dict[str, float]]) -> dict[str, float]:
    """One reading per device key: keys seen by several processes are kept once."""
    merged: dict[str, float] = {}
    for part in parts:
        for key, joules in part.items():
            merged[key] = max(joules, merged.get(key, 0.0))
    return merged


def gather_readings(window: dict[str, float]) -> dict[str, float]:
    """Every process's window merged by device key (collective)."""
    return merge_readings(gather_objects(window))
