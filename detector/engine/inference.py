"""Run a detector over a dataset and score it with the COCO evaluator."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from detector.evaluation.coco_eval import COCOEvaluator, format_coco_table

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


def evaluate_detector(
    model: Detector,
    dataset: Any,
    loader: Iterable,
    *,
    device: torch.device,
    output_dir: str | Path | None,
    engine: str = "faster_coco_eval",
) -> dict[str, Any]:
    """COCO-evaluate ``model`` on ``dataset``; print the table, write ``metrics.json`` and
    ``coco_results.json`` into ``output_dir`` (when given)."""
    if hasattr(model, "eval"):
        model.eval()
    image_ids, outputs, sec = run_inference(model, loader, device=device, total=len(dataset))
    evaluator = COCOEvaluator(
        coco_gt=dataset.coco_gt(), label_to_cat_id=dataset.label_to_cat_id, engine=engine
    )
    evaluator.process(image_ids, outputs)
    metrics = evaluator.evaluate()
    metrics["seconds_per_image"] = sec
    metrics["num_images"] = len(image_ids)
    print(format_coco_table(metrics), flush=True)
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        evaluator.save_results(out / "coco_results.json")
        (out / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2))
        logger.info("wrote %s", out / "metrics.json")
    return metrics


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and obj != obj:  # NaN is not valid JSON
        return None
    if hasattr(obj, "item"):
        return _jsonable(obj.item())
    return obj
