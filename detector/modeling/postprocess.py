"""From per-region class predictions to detections: the one post-processing path.

The detector's own inference, box refinement and every merge of detection sets (multi-scale +
flip views) use these pure functions:

* :func:`flatten_predictions`: one candidate per (region, foreground class): clipped, background
  dropped, low scores and near-empty boxes removed;
* :func:`select_detections`: per-class NMS, optional box voting, the best ``max_detections``;
* :func:`detections_from_predictions`: the two in a row (what ``StandardRoIHeads`` does);
* :func:`box_voting` (Gidaris & Komodakis, used by the ResNet paper after box refinement).
"""

from __future__ import annotations

import torch
from torch import Tensor

from detector.modeling.box_ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

Detections = list[dict[str, Tensor]]


def flatten_predictions(
    probs: Tensor, boxes: Tensor, image_size: tuple[int, int], *, score_thresh: float
) -> tuple[Tensor, Tensor, Tensor]:
    """One candidate per (region, foreground class) pair: boxes clipped to the image,
    background dropped, scores > ``score_thresh``, near-empty boxes removed.

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


def box_voting(
    kept_boxes: Tensor,
    kept_labels: Tensor,
    cand_boxes: Tensor,
    cand_scores: Tensor,
    cand_labels: Tensor,
    *,
    iou_thresh: float = 0.5,
) -> Tensor:
    """Voted boxes: each kept box becomes the score-weighted mean of the candidate boxes of its
    class that overlap it by IoU >= ``iou_thresh``; scores and labels are unchanged.

    Args:
        kept_boxes: (D, 4) xyxy boxes that survived NMS; kept_labels: (D,) their classes.
        cand_boxes: (M, 4) all candidate boxes (usually including the kept ones).
        cand_scores: (M,) candidate scores, the voting weights (non-negative).
        cand_labels: (M,) candidate classes.

    Returns:
        (D, 4): ``sum_j s_j b_j / sum_j s_j`` over the voting candidates ``j``; a kept box with
        no voter (or only zero-score voters) is returned unchanged.
    """
    if kept_boxes.dim() != 2 or kept_boxes.shape[-1] != 4 or cand_boxes.shape[-1:] != (4,):
        raise ValueError(
            f"boxes must be (N, 4), got kept {tuple(kept_boxes.shape)} and candidates "
            f"{tuple(cand_boxes.shape)}"
        )
    if not (len(kept_boxes) == len(kept_labels)) or not (
        len(cand_boxes) == len(cand_scores) == len(cand_labels)
    ):
        raise ValueError("boxes, scores and labels must have matching lengths")
    if not 0.0 <= iou_thresh <= 1.0:
        raise ValueError(f"iou_thresh must be in [0, 1], got {iou_thresh}")
    if len(kept_boxes) == 0 or len(cand_boxes) == 0:
        return kept_boxes.clone()
    same_class = kept_labels[:, None] == cand_labels[None, :]
    votes = (box_iou(kept_boxes, cand_boxes) >= iou_thresh) & same_class  # (D, M)
    weights = votes.to(cand_scores.dtype) * cand_scores[None, :]
    total = weights.sum(dim=1, keepdim=True)
    voted = (weights @ cand_boxes.to(weights.dtype)) / total.clamp(min=1e-12)
    return voted.where(total > 0, kept_boxes).to(kept_boxes.dtype)


def select_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    *,
    nms_thresh: float,
    max_detections: int = 100,
    vote_thresh: float | None = None,
) -> dict[str, Tensor]:
    """Per-class NMS over a candidate set, then (optionally) box voting of the kept boxes by
    all candidates; the ``max_detections`` best.

    Returns ``{"boxes": (D, 4), "scores": (D,), "labels": (D,)}`` sorted by decreasing score.
    """
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:max_detections]
    kept_boxes = boxes[keep]
    if vote_thresh is not None:
        kept_boxes = box_voting(
            kept_boxes, labels[keep], boxes, scores, labels, iou_thresh=vote_thresh
        )
    return {"boxes": kept_boxes, "scores": scores[keep], "labels": labels[keep]}


def detections_from_predictions(
    probs: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    *,
    score_thresh: float,
    nms_thresh: float,
    max_detections: int = 100,
    vote_thresh: float | None = None,
) -> dict[str, Tensor]:
    """:func:`flatten_predictions` then :func:`select_detections`, for one image's (R, K+1)
    probabilities and (R, K+1, 4) boxes."""
    candidates = flatten_predictions(probs, boxes, image_size, score_thresh=score_thresh)
    return select_detections(
        *candidates, nms_thresh=nms_thresh, max_detections=max_detections, vote_thresh=vote_thresh
    )


def concat_detections(dets: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """Union of detection dicts: boxes (M, 4), scores (M,), labels (M,)."""
    if not dets:
        raise ValueError("no detection sets to concatenate")
    return (
        torch.cat([d["boxes"] for d in dets]),
        torch.cat([d["scores"] for d in dets]),
        torch.cat([d["labels"] for d in dets]),
    )
