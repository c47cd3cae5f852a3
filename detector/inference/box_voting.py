"""Box voting (Gidaris & Komodakis, used by the ResNet paper after box refinement).

A pure function: each kept detection's box becomes the score-weighted mean of the candidate
boxes of its class that overlap it by IoU >= a threshold; its score and label are unchanged.
"""

from __future__ import annotations

from torch import Tensor

from detector.modeling.box_ops import box_iou


def box_voting(
    kept_boxes: Tensor,
    kept_labels: Tensor,
    cand_boxes: Tensor,
    cand_scores: Tensor,
    cand_labels: Tensor,
    *,
    iou_thresh: float = 0.5,
) -> Tensor:
    """Voted boxes for ``kept_boxes``.

    Args:
        kept_boxes: (D, 4) xyxy boxes that survived NMS.
        kept_labels: (D,) their classes.
        cand_boxes: (M, 4) all candidate boxes (usually including the kept ones).
        cand_scores: (M,) candidate scores, the voting weights (non-negative).
        cand_labels: (M,) candidate classes.
        iou_thresh: a candidate votes for a kept box of its class when IoU >= this.

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
