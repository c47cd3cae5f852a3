"""Weighted boxes fusion (Solovyev et al., 2021) of several detectors' final detections.

Used to ensemble models that cannot share proposals (different input sizes, one-stage models,
or when only their results files exist). Written from the paper's description.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from detector.modeling.box_ops import box_iou


def weighted_boxes_fusion(
    boxes: Sequence[Tensor],
    scores: Sequence[Tensor],
    labels: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    iou_thresh: float = 0.55,
    skip_score: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fuse the detections of ``N`` models on one image.

    Algorithm: all boxes with score >= ``skip_score`` are visited in decreasing order of
    ``w_m * score``; a box joins the cluster of its class whose current fused box overlaps it the
    most if that IoU is > ``iou_thresh``, otherwise it starts a new cluster. A cluster's fused
    box is the mean of its boxes weighted by ``w_m * score``; its score is
    ``sum(w_m * score) / max(sum of the cluster's w_m, sum of all w_m)``, i.e. the mean score
    when every model contributed one box, scaled down when fewer models found the object.

    Args:
        boxes, scores, labels: per model, (M_i, 4) xyxy boxes, (M_i,) scores, (M_i,) labels.
        weights: one per model (default all 1).

    Returns:
        boxes (F, 4), scores (F,), labels (F,) sorted by decreasing fused score.
    """
    if not (len(boxes) == len(scores) == len(labels)) or len(boxes) == 0:
        raise ValueError("need boxes, scores and labels for the same (non-zero) number of models")
    weights = [1.0] * len(boxes) if weights is None else [float(w) for w in weights]
    if len(weights) != len(boxes) or min(weights) <= 0:
        raise ValueError(f"need one positive weight per model ({len(boxes)}), got {weights}")
    all_boxes = torch.cat([b.reshape(-1, 4) for b in boxes]).double()
    all_w = torch.cat(
        [torch.full((len(s),), w, dtype=torch.float64) for s, w in zip(scores, weights)]
    )
    all_ws = torch.cat([s.double().reshape(-1) for s in scores]) * all_w
    all_labels = torch.cat([lab.reshape(-1) for lab in labels])
    raw = torch.cat([s.double().reshape(-1) for s in scores])
    order = [
        i
        for i in torch.argsort(all_ws, descending=True, stable=True).tolist()
        if raw[i] >= skip_score
    ]
    fused, clusters = _cluster(all_boxes, all_ws, all_labels, order, iou_thresh)
    if not clusters:
        return boxes[0].new_zeros((0, 4)), scores[0].new_zeros((0,)), labels[0].new_zeros((0,))
    total_weight = sum(weights)
    out_scores = torch.stack(
        [all_ws[c].sum() / max(float(all_w[c].sum()), total_weight) for c in clusters]
    )
    out_labels = torch.stack([all_labels[c[0]] for c in clusters])
    out_boxes = torch.stack(fused)
    rank = torch.argsort(out_scores, descending=True, stable=True)
    return (
        out_boxes[rank].to(boxes[0].dtype),
        out_scores[rank].to(scores[0].dtype),
        out_labels[rank],
    )


def _cluster(
    boxes: Tensor, ws: Tensor, labels: Tensor, order: list[int], iou_thresh: float
) -> tuple[list[Tensor], list[list[int]]]:
    """Greedy clustering of ``order``'s boxes; returns fused boxes and member indices."""
    fused: list[Tensor] = []
    clusters: list[list[int]] = []
    for i in order:
        best, best_iou = -1, iou_thresh
        candidates = [k for k, c in enumerate(clusters) if labels[c[0]] == labels[i]]
        if candidates:
            ious = box_iou(boxes[i : i + 1], torch.stack([fused[k] for k in candidates]))[0]
            j = int(ious.argmax())
            if float(ious[j]) > best_iou:
                best = candidates[j]
        if best < 0:
            clusters.append([i])
            fused.append(boxes[i].clone())
            continue
        clusters[best].append(i)
        members = clusters[best]
        w = ws[members]
        fused[best] = (w[:, None] * boxes[members]).sum(0) / w.sum().clamp(min=1e-12)
    return fused, clusters
