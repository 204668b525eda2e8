"""Facts about the process group that every part of hf_bigsmall needs."""

from __future__ import annotations

import os
from contextlib import contextmanager


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


def full_tensor(tensor):
    """The whole of a tensor that FSDP2 shards (a `DTensor`), gathered from every process; any other as it is.

    Collective for a `DTensor`: every process must call it, for the same tensors in the same order.
    """
    if not _has_dtensors():
        return tensor
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard_like(tensor, param):
    """`tensor`, of `param`'s full shape, split across processes as `param` is; `tensor` itself for a plain `param`.

    Under FSDP2 a parameter is a `DTensor` holding one shard per process, and an in-place op between it
    and a plain tensor of the full shape is refused: the mask, split the same way, combines shard by
    shard. Each process cuts its own shard from its copy (no communication), so the copies must agree.
    """
    if not _has_dtensors():
        return tensor
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(param, DTensor) or isinstance(tensor, DTensor):
        return tensor
    return distribute_tensor(tensor.to(param.device), param.device_mesh, param.placements, src_data_rank=None)


@contextmanager
def unsharded(model):
    """Inside, every weight of an FSDP2 `model` is whole on every process (plain tensors); any other model as it is.

    Gathers the parameters of each FSDP2 module on entry and shards them again on exit
    (collective: every process must enter it). For code that reads weights through the modules,
    such as mask criteria; not for a forward pass, after which FSDP2 reshards the layers.
    """
    modules = []
    if _has_dtensors():
        from torch.distributed.fsdp import FSDPModule

        modules = [module for module in model.modules() if isinstance(module, FSDPModule)]
    for module in modules:
        module.unshard()
    try:
        yield model
    finally:
        for module in modules:
            module.reshard()


def is_sharded(model) -> bool:
    """Whether FSDP2 has split `model`'s parameters across processes (they are `DTensor`s)."""
    if not _has_dtensors():
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(param, DTensor) for param in model.parameters())


def _has_dtensors() -> bool:
    import torch

    return torch.distributed.is_available()  # builds without torch.distributed have no DTensor either
