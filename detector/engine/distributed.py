"""torchrun process groups, cross-rank reductions and evaluation sharded across ranks.

``torchrun --nproc_per_node=N tools/train.py ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous address) in their environment;
:func:`init_distributed` turns that into a process group (NCCL on CUDA, gloo on CPU) and picks
each process's device. Without those variables everything here degrades to a single process,
so the same code path serves ``python tools/train.py``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Subset

from detector.data.loader import build_test_loader
from detector.engine.inference import run_inference, score_detections
from detector.evaluation.dataset_eval import DetectionEvaluator

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


def _device_for(name: str, ctx: DistributedContext) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device=cpu")
    if device.type == "cuda" and ctx.is_distributed:
        if device.index is not None:
            raise ValueError(
                f"device={name!r} names one GPU but {ctx.world_size} processes were started; "
                "use device=cuda (each process takes the GPU of its LOCAL_RANK)"
            )
        device = torch.device("cuda", ctx.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def init_distributed(device_name: str) -> tuple[DistributedContext, torch.device, bool]:
    """Join the torchrun job described by the environment, if any.

    Returns ``(context, device, created)``; ``created`` says whether this call initialised the
    process group (and :func:`cleanup_distributed` should destroy it). A process group that
    already exists (e.g. made by a test harness) is used as it is.
    """
    if dist.is_available() and dist.is_initialized():
        ctx = current_context()
        return ctx, _device_for(device_name, ctx), False
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(), _device_for(device_name, DistributedContext()), False
    ctx = DistributedContext(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
    )
    device = _device_for(device_name, ctx)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        rank=ctx.rank,
        world_size=ctx.world_size,
        device_id=device if device.type == "cuda" else None,
    )
    logger.info("rank %d/%d joined (%s, %s)", ctx.rank, ctx.world_size, backend, device)
    return ctx, device, True


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


def evaluate_sharded(
    model: nn.Module,
    dataset: Any,
    *,
    device: torch.device,
    output_dir: str | Path | None,
    num_workers: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``dataset`` with each rank running inference on every
    ``world_size``-th image; rank 0 gathers the detections, scores them with
    :class:`DetectionEvaluator` (``options``: ``eval_type``, ``engine``, ``voc_*``), prints
    and writes the results, and every rank returns the same metrics.

    ``seconds_per_image`` is the mean over ranks of each rank's time per image.
    """
    ctx = current_context()
    evaluator = None
    if ctx.is_main:  # built first: bad options or ground truth fail before the inference pass
        evaluator = DetectionEvaluator(
            coco_gt=dataset.coco_gt(), label_to_cat_id=dataset.label_to_cat_id, **options
        )
    positions = list(range(ctx.rank, len(dataset), ctx.world_size))
    loader = build_test_loader(Subset(dataset, positions), batch_size=1, num_workers=num_workers)
    model.eval()
    shard = run_inference(model, loader, device=device, total=len(positions))
    gathered = gather_to_main((positions, *shard))
    metrics = None
    if ctx.is_main:
        assert evaluator is not None and gathered is not None
        metrics = _score_gathered(evaluator, gathered, dataset, output_dir)
    return broadcast_from_main(metrics)


def _score_gathered(
    evaluator: DetectionEvaluator,
    gathered: list[tuple[list[int], list[int], list[dict[str, Tensor]], float]],
    dataset: Any,
    output_dir: str | Path | None,
) -> dict[str, Any]:
    """Score the ranks' ``(positions, image_ids, outputs, seconds)`` in dataset order."""
    rows = sorted(
        (
            (pos, image_id, out)
            for positions, image_ids, outputs, _ in gathered
            for pos, image_id, out in zip(positions, image_ids, outputs, strict=True)
        ),
        key=lambda row: row[0],
    )
    seconds = sum(g[3] for g in gathered) / len(gathered)
    return score_detections(
        evaluator, [r[1] for r in rows], [r[2] for r in rows], seconds, dataset, output_dir
    )
