"""Weighted boxes fusion (Solovyev et al., 2021) through the ``ensemble-boxes`` package.

Used to ensemble models that cannot share proposals (different input sizes, one-stage models,
or when only their results files exist). This module only adapts tensors in image pixels to the
package's lists of normalised ``[0, 1]`` numpy boxes and back; the clustering and the fused
scores are the package's (``conf_type="avg"``: a cluster's score is the weighted mean of its
scores times ``min(sum of weights, number of boxes) / sum of weights``, so an object found by
fewer models than there are keeps a lower score).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ensemble_boxes import weighted_boxes_fusion as _package_wbf
from torch import Tensor


def weighted_boxes_fusion(
    boxes: Sequence[Tensor],
    scores: Sequence[Tensor],
    labels: Sequence[Tensor],
    *,
    image_size: tuple[int, int],
    weights: Sequence[float] | None = None,
    iou_thresh: float = 0.55,
    skip_score: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fuse the detections of ``N`` models on one image of ``image_size`` (H, W) pixels.

    Args:
        boxes, scores, labels: per model, (M_i, 4) xyxy boxes in pixels, (M_i,) scores,
            (M_i,) integer labels.
        weights: one positive weight per model (default all 1).
        iou_thresh: a box joins a cluster whose fused box it overlaps by IoU > this.
        skip_score: boxes below this score are dropped first.

    Returns:
        boxes (F, 4) in pixels, scores (F,), labels (F,), sorted by decreasing fused score, with
        the dtypes and device of the first model's tensors.
    """
    if not (len(boxes) == len(scores) == len(labels)) or len(boxes) == 0:
        raise ValueError("need boxes, scores and labels for the same (non-zero) number of models")
    weights = [1.0] * len(boxes) if weights is None else [float(w) for w in weights]
    if len(weights) != len(boxes) or min(weights) <= 0:
        raise ValueError(f"need one positive weight per model ({len(boxes)}), got {weights}")
    height, width = image_size
    scale = np.array([width, height, width, height], dtype=np.float64)
    fused_boxes, fused_scores, fused_labels = _package_wbf(
        [b.detach().cpu().double().numpy().reshape(-1, 4) / scale for b in boxes],
        [s.detach().cpu().double().numpy().reshape(-1) for s in scores],
        [lab.detach().cpu().numpy().reshape(-1) for lab in labels],
        weights=weights,
        iou_thr=iou_thresh,
        skip_box_thr=skip_score,
    )
    like_box, like_score, like_label = boxes[0], scores[0], labels[0]
    return (
        torch.as_tensor(np.asarray(fused_boxes).reshape(-1, 4) * scale).to(like_box),
        torch.as_tensor(np.asarray(fused_scores).reshape(-1)).to(like_score),
        torch.as_tensor(np.asarray(fused_labels).reshape(-1)).round().to(like_label),
    )
