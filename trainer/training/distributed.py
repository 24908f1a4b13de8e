"""torchrun / DDP process-group setup (the device rule itself is trainer.device).

Launched plainly, training runs in one process on `--device`. Launched by `torchrun`
(RANK, WORLD_SIZE, LOCAL_RANK in the environment), every process joins one process group
(NCCL on CUDA, gloo on CPU) and takes its slice of each global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainer.device import resolve_device


@dataclass(frozen=True)
class DistContext:
    """Where this process runs and which part of the job it does."""

    rank: int
    """Global rank (0 when not distributed)."""
    world_size: int
    """Number of processes (1 when not distributed)."""
    device: torch.device
    """The device this process trains on."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(preference: str) -> DistContext:
    """Join the torchrun process group if launched by torchrun; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world_size, device=device)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over all ranks in place (a no-op in one process)."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (a no-op in one process)."""
    if ctx.distributed:
        dist.barrier()


def teardown(ctx: DistContext) -> None:
    """Leave the process group, if this process joined one."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
