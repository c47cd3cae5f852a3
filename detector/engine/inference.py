"""Run a detector over a dataset and score it (COCO and/or VOC, see ``eval.type``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from detector.evaluation.coco_eval import DEFAULT_ENGINE
from detector.evaluation.dataset_eval import DetectionEvaluator, format_metrics, write_metrics

logger = logging.getLogger(__name__)
Detector = Callable[[list[Tensor]], list[dict[str, Tensor]]]


def rescale_detections(
    det: dict[str, Tensor], input_size: tuple[int, int], orig_size: tuple[int, int]
) -> dict[str, Tensor]:
    """Map boxes from the (resized) network input back to the original image pixels."""
    (h, w), (h0, w0) = input_size, orig_size
    scale = det["boxes"].new_tensor([w0 / w, h0 / h, w0 / w, h0 / h])
    boxes = det["boxes"] * scale
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w0)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h0)
    return {**det, "boxes": boxes}


@torch.inference_mode()
def run_inference(
    model: Detector,
    loader: Iterable[tuple[list[Tensor], list[dict[str, Any]]]],
    *,
    device: torch.device,
    total: int | None = None,
    desc: str = "eval",
) -> tuple[list[int], list[dict[str, Tensor]], float]:
    """Detections for every image of ``loader`` in original image coordinates, on CPU.

    Returns (image_ids, detections, seconds per image).
    """
    image_ids: list[int] = []
    outputs: list[dict[str, Tensor]] = []
    start = time.perf_counter()
    for images, targets in tqdm(loader, total=total, desc=desc, dynamic_ncols=True):
        dets = model([img.to(device) for img in images])
        for img, target, det in zip(images, targets, dets):
            det = {k: v.detach().cpu() for k, v in det.items()}
            size = (int(img.shape[1]), int(img.shape[2]))
            outputs.append(rescale_detections(det, size, tuple(target["orig_size"])))
            image_ids.append(int(target["image_id"]))
    seconds = (time.perf_counter() - start) / max(len(image_ids), 1)
    return image_ids, outputs, seconds


def evaluation_options(eval_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`evaluate_detector` from a config's ``eval`` node
    (``type``, ``engine``, ``voc.iou_thresholds``, ``voc.use_07_metric``; missing keys take
    the defaults, so configs saved before a key existed still work)."""
    voc = eval_cfg.get("voc") or {}
    return {
        "engine": str(eval_cfg.get("engine", DEFAULT_ENGINE)),
        "eval_type": str(eval_cfg.get("type", "coco")),
        "voc_iou_thresholds": tuple(float(t) for t in voc.get("iou_thresholds", (0.5,))),
        "voc_use_07_metric": bool(voc.get("use_07_metric", True)),
    }


def evaluate_detector(
    model: Detector,
    dataset: Any,
    loader: Iterable,
    *,
    device: torch.device,
    output_dir: str | Path | None,
    engine: str = DEFAULT_ENGINE,
    eval_type: str = "coco",
    voc_iou_thresholds: Sequence[float] = (0.5,),
    voc_use_07_metric: bool = True,
) -> dict[str, Any]:
    """Run ``model`` over ``loader`` (every image of ``dataset``) and score it.

    ``eval_type`` selects the COCO evaluation (``engine``), the VOC devkit AP
    (``voc_iou_thresholds``, ``voc_use_07_metric``) or both; see
    :mod:`detector.evaluation.dataset_eval` for the metrics layout. Prints the tables and,
    when ``output_dir`` is given, writes ``metrics.json`` and the detections there
    (``coco_results.json`` and/or ``voc_results/comp4_det_<split>_<class>.txt``).
    """
    # built first: a bad eval option or ground truth fails before the long inference pass
    evaluator = DetectionEvaluator(
        coco_gt=dataset.coco_gt(),
        label_to_cat_id=dataset.label_to_cat_id,
        eval_type=eval_type,
        engine=engine,
        voc_iou_thresholds=voc_iou_thresholds,
        voc_use_07_metric=voc_use_07_metric,
    )
    if hasattr(model, "eval"):
        model.eval()
    image_ids, outputs, sec = run_inference(model, loader, device=device, total=len(dataset))
    return score_detections(evaluator, image_ids, outputs, sec, dataset, output_dir)


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
