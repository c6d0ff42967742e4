"""Distributed data parallel set-up for ``torchrun`` (one process per GPU, or several CPU processes).

``torchrun --nproc_per_node 2 -m napari_dfa.cli train --config ...`` starts the same command in
every process with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set; :func:`setup` reads them and joins
the process group (NCCL on CUDA, gloo on CPU). Without those variables everything is a
single-process no-op, so the trainer has one code path. Rank 0 writes every file.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.

    Arguments:
      rank: global rank (0 writes files).
      world_size: number of processes.
      local_rank: rank on this machine (picks the GPU).
      device: the device this process trains on.
      initialized: True when this process joined a process group (and must leave it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device) -> DistContext:
    """Join the torchrun process group if there is one; returns the context of this process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=device)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
        initialized = True
    else:
        initialized = False
    logger.info("DDP: rank %d/%d on %s (%s)", rank, world, device, backend)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device, initialized=initialized)


def cleanup(ctx: DistContext) -> None:
    if ctx.initialized and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (identity in a single process)."""
    if not ctx.distributed:
        return values
    t = values.to(ctx.device) if ctx.device.type == "cuda" else values.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def gather_objects(ctx: DistContext, obj) -> list:
    """Every process's ``obj`` (a list of one in a single process)."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_flag(ctx: DistContext, flag: bool) -> bool:
    """Rank 0's decision (e.g. early stop, cancel) for every process."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    if ctx.device.type == "cuda":
        t = t.to(ctx.device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
