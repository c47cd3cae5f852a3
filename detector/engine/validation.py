"""The one evaluation path: run a (test-time) detector over a dataset and score it.

Used by the trainer's final and periodic evaluations, ``tools/eval.py`` and ``tools/ablate.py``,
in one process and in a torchrun job alike: each of the ``world_size`` processes runs inference
on every ``world_size``-th image (world size 1 is the trivial shard), rank 0 gathers the
detections in dataset order, scores them (COCO and/or VOC, ``eval.type``), prints the tables
and writes the files, and every rank returns the same metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor
from torch.utils.data import Subset
from tqdm import tqdm

from detector.data.loader import build_test_loader
from detector.engine.build import build_dataset, build_test_model
from detector.engine.distributed import broadcast_from_main, current_context, gather_to_main
from detector.evaluation.coco_eval import DEFAULT_ENGINE
from detector.evaluation.dataset_eval import (
    DetectionEvaluator,
    evaluation_options,
    format_metrics,
    write_metrics,
)
from detector.inference.resize import rescale_detections

logger = logging.getLogger(__name__)
Detector = Callable[[list[Tensor]], list[dict[str, Tensor]]]


@torch.inference_mode()
def run_inference(
    model: Detector,
    loader: Iterable[tuple[list[Tensor], list[dict[str, Any]]]],
    *,
    device: torch.device,
    total: int | None = None,
    desc: str = "eval",
    progress: bool = True,
) -> tuple[list[int], list[dict[str, Tensor]], float]:
    """Detections for every image of ``loader`` in original image coordinates, on CPU.

    Returns (image_ids, detections, seconds per image).
    """
    image_ids: list[int] = []
    outputs: list[dict[str, Tensor]] = []
    start = time.perf_counter()
    bar = tqdm(loader, total=total, desc=desc, dynamic_ncols=True, disable=not progress)
    for images, targets in bar:
        dets = model([img.to(device) for img in images])
        for img, target, det in zip(images, targets, dets):
            det = {k: v.detach().cpu() for k, v in det.items()}
            size = (int(img.shape[1]), int(img.shape[2]))
            outputs.append(rescale_detections(det, size, tuple(target["orig_size"])))
            image_ids.append(int(target["image_id"]))
    seconds = (time.perf_counter() - start) / max(len(image_ids), 1)
    return image_ids, outputs, seconds


def evaluate_model(
    model: Detector,
    dataset: Any,
    *,
    device: torch.device,
    output_dir: str | Path | None,
    num_workers: int = 0,
    engine: str = DEFAULT_ENGINE,
    eval_type: str = "coco",
    voc_iou_thresholds: Sequence[float] = (0.5,),
    voc_use_07_metric: bool = True,
) -> dict[str, Any]:
    """Run ``model`` over every image of ``dataset`` (sharded over the processes of a torchrun
    job) and score it.

    ``eval_type`` selects the COCO evaluation (``engine``), the VOC devkit AP
    (``voc_iou_thresholds``, ``voc_use_07_metric``) or both; see
    :mod:`detector.evaluation.dataset_eval` for the metrics layout. Rank 0 prints the tables
    and, when ``output_dir`` is given, writes ``metrics.json`` and the detections there
    (``coco_results.json`` and/or ``voc_results/comp4_det_<split>_<class>.txt``).
    ``seconds_per_image`` is the mean over the processes of each one's time per image.
    """
    ctx = current_context()
    evaluator = None
    if ctx.is_main:  # built first: bad options or ground truth fail before the inference pass
        evaluator = DetectionEvaluator(
            coco_gt=dataset.coco_gt(),
            label_to_cat_id=dataset.label_to_cat_id,
            eval_type=eval_type,
            engine=engine,
            voc_iou_thresholds=voc_iou_thresholds,
            voc_use_07_metric=voc_use_07_metric,
        )
    positions = list(range(ctx.rank, len(dataset), ctx.world_size))
    loader = build_test_loader(Subset(dataset, positions), batch_size=1, num_workers=num_workers)
    if isinstance(model, torch.nn.Module):
        model.eval()
    shard = run_inference(model, loader, device=device, total=len(positions), progress=ctx.is_main)
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
    """Score the processes' ``(positions, image_ids, outputs, seconds)`` in dataset order."""
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


def score_detections(
    evaluator: DetectionEvaluator,
    image_ids: Sequence[int],
    outputs: Sequence[Mapping[str, Tensor]],
    seconds_per_image: float,
    dataset: Any,
    output_dir: str | Path | None,
) -> dict[str, Any]:
    """Score the detections of every image, print the tables and, when ``output_dir`` is
    given, write ``metrics.json`` and the results files (VOC image set: ``dataset.split``)."""
    evaluator.process(list(image_ids), list(outputs))
    metrics = evaluator.evaluate()
    metrics["seconds_per_image"] = seconds_per_image
    metrics["num_images"] = len(image_ids)
    print(format_metrics(metrics), flush=True)
    if output_dir is not None:
        out = Path(output_dir)
        evaluator.save_results(out, voc_imageset=str(getattr(dataset, "split", None) or "test"))
        logger.info("wrote %s", write_metrics(out / "metrics.json", metrics))
    return metrics


def validate(
    cfg: DictConfig,
    model: torch.nn.Module,
    device: torch.device,
    output_dir: Path | None,
    *,
    dataset: Any = None,
) -> dict[str, Any]:
    """Evaluate ``model`` with the test-time tricks of ``cfg`` (:func:`build_test_model`) on
    ``cfg``'s val split (``dataset``: that split, already built), with ``cfg.eval``'s options;
    files go to ``output_dir`` (rank 0)."""
    dataset = build_dataset(cfg, "val") if dataset is None else dataset
    return evaluate_model(
        build_test_model(cfg, model),
        dataset,
        device=device,
        output_dir=output_dir if current_context().is_main else None,
        num_workers=int(cfg.dataloader.num_workers),
        **evaluation_options(cfg.eval),
    )
