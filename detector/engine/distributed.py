"""torchrun process groups and cross-rank collectives.

``torchrun --nproc_per_node=N tools/train.py ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous address) in their environment;
:func:`launch_context` reads them and :func:`init_distributed` turns them into a process group
(NCCL on CUDA, gloo on CPU) on each process's device. Without those variables everything here
degrades to a single process, so the same code path serves ``python tools/train.py``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job: ``rank`` in ``[0, world_size)``, ``local_rank`` on
    its node (the CUDA device index)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def current_context() -> DistributedContext:
    """The context of the initialised process group, or a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistributedContext()
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistributedContext(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank
    )


def launch_context() -> DistributedContext:
    """This process's place in the job: the existing process group's, else the torchrun
    environment's (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), else a single process."""
    if dist.is_available() and dist.is_initialized():
        return current_context()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


def init_distributed(ctx: DistributedContext, device: torch.device) -> bool:
    """Join the process group of ``ctx`` on ``device`` (made current when a GPU).

    Returns whether this call created the group (then :func:`cleanup_distributed` should
    destroy it); a group that already exists (e.g. made by a test harness) is used as it is.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not ctx.is_distributed or (dist.is_available() and dist.is_initialized()):
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        rank=ctx.rank,
        world_size=ctx.world_size,
        device_id=device if device.type == "cuda" else None,
    )
    logger.info("rank %d/%d joined (%s, %s)", ctx.rank, ctx.world_size, backend, device)
    return True


def cleanup_distributed() -> None:
    """Destroy the default process group (if one exists)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if current_context().is_distributed:
        dist.barrier()


def all_reduce_mean(values: dict[str, Tensor]) -> dict[str, float]:
    """Mean of each scalar tensor over the ranks, as floats (one collective for all keys)."""
    if not values:
        return {}
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in keys])
    if current_context().is_distributed:
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        stacked /= dist.get_world_size()
    return dict(zip(keys, stacked.tolist(), strict=True))


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` as a list indexed by rank on rank 0, ``None`` elsewhere."""
    ctx = current_context()
    if not ctx.is_distributed:
        return [obj]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not current_context().is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` when several processes train, else ``model``.

    Every trainable parameter takes part in each loss of the detector, so unused-parameter
    detection (an extra graph traversal per step) stays off.
    """
    if not current_context().is_distributed:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
