"""One process or many: the few collective operations training needs, written once.

``torchrun`` (or any launcher that sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and ``MASTER_ADDR``/
``MASTER_PORT``) turns the same entry point into DistributedDataParallel: NCCL between GPUs, gloo on
CPU. In a single process every helper here is the identity, so the loop has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from micronet.errors import MicronetError


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    #: True when this call started the process group (and so must end it).
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and prints, so a run's outputs exist once whatever the world size."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value in (None, "") else int(value)
    except ValueError:
        raise MicronetError(f"environment variable {name}={value!r} is not an integer") from None


def setup(device: str | None = None) -> DistContext:
    """Read the launcher's environment, pick the device and join the process group if there is one."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device is not None:
        chosen = torch.device(device)
        if chosen.type == "cuda" and chosen.index is None:
            chosen = torch.device("cuda", local_rank)
    elif torch.cuda.is_available():
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise MicronetError(f"device {device!r} asked for, but this machine has no CUDA GPU")
        torch.cuda.set_device(chosen)
    if world_size <= 1:
        return DistContext(0, 1, 0, chosen)
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, chosen)
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                            device_id=chosen if chosen.type == "cuda" else None)
    return DistContext(rank, world_size, local_rank, chosen, owns_group=True)


def teardown(ctx: DistContext, together: bool = True) -> None:
    """Leave the process group; after a successful run, together.

    Without the barrier a rank that finishes first (rank 0 still writes its checkpoint) tears its gloo
    connections down under a peer that is still using them, which intermittently aborted a worker
    ("terminate called without an active exception"). After a failure there is no barrier: the peers
    are stuck in some other collective, and leaving at once makes theirs fail instead of hang.
    """
    if ctx.owns_group and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DistributedDataParallel around the model when there are several processes, else the model."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor of float64 statistics (loss sums, correct counts) over all processes: every rank
    then reports the same figures, computed on the whole data set."""
    if ctx.distributed:
        values = values.to(ctx.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values.cpu()


def broadcast_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's BatchNorm running statistics to every rank.

    DDP only syncs buffers at the start of a training forward, so after the last step each rank holds
    its own running means; evaluating with rank 0's makes every rank score the weights rank 0 saves.
    """
    if ctx.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` in rank order (e.g. RNG states, so rank 0 can checkpoint them all)."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
