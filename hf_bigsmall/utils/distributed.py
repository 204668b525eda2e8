"""Facts about the process group that every part of hf_bigsmall needs."""

from __future__ import annotations

import os


def launched_world_size() -> int:
    """Number of processes the launcher started (torchrun / accelerate launch), before any init."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if name in os.environ:
            return int(os.environ[name])
    return 1


def needs_cpu_process_group(use_cpu: bool) -> bool:
    """True when several processes were launched on a machine with no GPU but `use_cpu` is off.

    `accelerate launch` with a MULTI_GPU config on a CPU-only machine starts the processes, but
    unless training runs with `use_cpu`, each of them silently trains alone (DistributedType.NO).
    Our configs call this in `__post_init__` and switch `use_cpu` on so the gloo group forms.
    """
    if use_cpu or launched_world_size() <= 1:
        return False
    import torch

    return not torch.cuda.is_available() and not (
        hasattr(torch, "xpu") and torch.xpu.is_available()
    )


def shutdown_process_group() -> None:
    """Tear down the process group a script's `Trainer` started, in an order gloo survives.

    Left to interpreter exit, a DDP reducer and its gloo group can be destroyed in either order, and
    gloo then sometimes aborts or deadlocks. Call this at the end of a launched script, after the
    trainer is out of scope: the reducer is freed while the group is alive, then the group.
    """
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        import gc

        gc.collect()
        torch.distributed.destroy_process_group()
