"""Turning per-RoI class predictions into detections, and merging detection sets.

Pure functions shared by the test-time tricks (box refinement, multi-scale + flip testing).
"""

from __future__ import annotations

import torch
from torch import Tensor

from detector.inference.box_voting import box_voting
from detector.modeling.box_ops import batched_nms, clip_boxes_to_image, remove_small_boxes


def flatten_predictions(
    probs: Tensor, boxes: Tensor, image_size: tuple[int, int], *, score_thresh: float
) -> tuple[Tensor, Tensor, Tensor]:
    """One candidate per (RoI, foreground class) pair, as the detector's post-processing sees
    them before NMS: boxes clipped to the image, background dropped, scores > ``score_thresh``,
    near-empty boxes removed.

    Args:
        probs: (R, K+1) class probabilities (column 0 = background).
        boxes: (R, K+1, 4) class-specific boxes.
        image_size: (H, W) to clip to.

    Returns:
        boxes (M, 4), scores (M,), labels (M,) in 1..K.
    """
    if probs.dim() != 2 or boxes.shape != (*probs.shape, 4):
        raise ValueError(
            f"expected probs (R, K+1) and boxes (R, K+1, 4), got {tuple(probs.shape)} and "
            f"{tuple(boxes.shape)}"
        )
    num_fg = probs.shape[1] - 1
    boxes = clip_boxes_to_image(boxes, image_size)[:, 1:].reshape(-1, 4)
    labels = torch.arange(1, num_fg + 1, device=probs.device).repeat(probs.shape[0])
    scores = probs[:, 1:].reshape(-1)
    keep = torch.where(scores > score_thresh)[0]
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = remove_small_boxes(boxes, min_size=1e-2)
    return boxes[keep], scores[keep], labels[keep]


def concat_detections(dets: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """Union of detection dicts: boxes (M, 4), scores (M,), labels (M,)."""
    if not dets:
        raise ValueError("no detection sets to concatenate")
    return (
        torch.cat([d["boxes"] for d in dets]),
        torch.cat([d["scores"] for d in dets]),
        torch.cat([d["labels"] for d in dets]),
    )


def nms_merge(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    *,
    nms_thresh: float,
    vote_thresh: float | None = None,
    max_detections: int = 100,
) -> dict[str, Tensor]:
    """Per-class NMS over a candidate set, then (optionally) box voting of the kept boxes by all
    candidates, keeping the ``max_detections`` best.

    Returns ``{"boxes": (D, 4), "scores": (D,), "labels": (D,)}`` sorted by decreasing score.
    """
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:max_detections]
    kept_boxes = boxes[keep]
    if vote_thresh is not None:
        kept_boxes = box_voting(
            kept_boxes, labels[keep], boxes, scores, labels, iou_thresh=vote_thresh
        )
    return {"boxes": kept_boxes, "scores": scores[keep], "labels": labels[keep]}
