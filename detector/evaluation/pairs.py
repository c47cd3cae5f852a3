"""How well a detector tells look-alike classes apart (e.g. the synthetic_scenes pairs).

Two classes of a pair look the same; only context separates them. For every ground-truth box
of a pair class, the detections of *either* class of its pair that overlap it (IoU >= 0.5, the
same image) compete, and the highest-scoring one decides: the pair is told apart when its
class is the box's class. ``pair_accuracy`` is the fraction of the boxes with a competitor that
are told apart (0.5 is chance for a detector that cannot see the difference);
``pair_recall`` is the fraction of boxes with a competitor at all. ``pair_AP`` is the mean COCO
AP of the pair classes (from the per-class APs of the COCO evaluation).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _iou_xywh(box: Sequence[float], others: np.ndarray) -> np.ndarray:
    """IoU of one ``[x, y, w, h]`` box with ``(N, 4)`` others."""
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[0] + box[2], others[:, 0] + others[:, 2])
    y2 = np.minimum(box[1] + box[3], others[:, 1] + others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = box[2] * box[3] + others[:, 2] * others[:, 3] - inter
    return inter / np.maximum(union, 1e-12)


def pair_metrics(
    coco_gt: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    pairs: Sequence[Sequence[str]],
    *,
    per_class_ap: Mapping[str, float] | None = None,
    iou_thresh: float = 0.5,
) -> dict[str, Any]:
    """``{"pair_accuracy", "pair_recall", "pair_boxes", "pair_AP"}`` (see the module doc).

    Args:
        coco_gt: COCO ground truth (``images``, ``annotations``, ``categories`` with names);
            crowd boxes are left out.
        results: COCO results (``image_id``, ``category_id``, ``bbox`` xywh, ``score``).
        pairs: class-name pairs, e.g. ``[["boat", "car"], ["cow", "camel"]]``.
        per_class_ap: the COCO evaluation's per-class AP by name (for ``pair_AP``).
    """
    name_of = {int(c["id"]): str(c["name"]) for c in coco_gt["categories"]}
    id_of = {name: cat for cat, name in name_of.items()}
    partner: dict[int, int] = {}
    for pair in pairs:
        if len(pair) != 2 or any(name not in id_of for name in pair):
            raise ValueError(f"pair {list(pair)}: need two class names of {sorted(id_of)}")
        a, b = id_of[pair[0]], id_of[pair[1]]
        partner[a], partner[b] = b, a
    dets: dict[tuple[int, int], list[Mapping[str, Any]]] = defaultdict(list)
    for r in results:
        if int(r["category_id"]) in partner:
            dets[(int(r["image_id"]), int(r["category_id"]))].append(r)
    told = found = total = 0
    for ann in coco_gt["annotations"]:
        cat = int(ann["category_id"])
        if cat not in partner or ann.get("iscrowd", 0):
            continue
        total += 1
        image = int(ann["image_id"])
        candidates = dets[(image, cat)] + dets[(image, partner[cat])]
        if not candidates:
            continue
        boxes = np.array([c["bbox"] for c in candidates], dtype=np.float64)
        overlap = _iou_xywh(ann["bbox"], boxes) >= iou_thresh
        if not overlap.any():
            continue
        found += 1
        scores = np.where(overlap, [float(c["score"]) for c in candidates], -np.inf)
        told += int(int(candidates[int(np.argmax(scores))]["category_id"]) == cat)
    names = [name for pair in pairs for name in pair]
    aps = [per_class_ap[n] for n in names if per_class_ap and per_class_ap.get(n) is not None]
    return {
        "pair_accuracy": told / found if found else float("nan"),
        "pair_recall": found / total if total else float("nan"),
        "pair_boxes": total,
        "pair_AP": float(np.mean(aps)) if aps and len(aps) == len(names) else float("nan"),
    }
