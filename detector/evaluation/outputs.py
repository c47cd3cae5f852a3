"""Turn a detector's per-image output into numpy arrays, checking its shape.

The model's inference contract (one dict per image) is::

    {"boxes": (N, 4) float xyxy in original image pixels (0-based, continuous),
     "scores": (N,) float, "labels": (N,) int in 1..K}

Tensors may live on any device; numpy arrays are accepted too (tests, exports).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

OUTPUT_KEYS: tuple[str, ...] = ("boxes", "scores", "labels")


@dataclass(frozen=True)
class ImageDetections:
    """One image's detections as numpy arrays: boxes (N, 4) xyxy, scores (N,), labels (N,)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def to_numpy(value: Any) -> np.ndarray:
    """Detach a torch tensor (any device) or wrap an array-like as a numpy array. Tensors are
    recognised by their methods, so scoring saved results never has to import torch."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def image_detections(image_id: object, output: Mapping[str, Any]) -> ImageDetections:
    """Validate one output dict and return it as :class:`ImageDetections`.

    Raises:
        ValueError: a key is missing, shapes disagree, or a box/score is not finite;
            the message names ``image_id``.
    """
    missing = [k for k in OUTPUT_KEYS if k not in output]
    if missing:
        raise ValueError(f"output for image {image_id!r} is missing key(s) {missing}")
    boxes = to_numpy(output["boxes"]).astype(np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"output for image {image_id!r}: boxes must have shape (N, 4), got {boxes.shape}"
        )
    scores = to_numpy(output["scores"]).astype(np.float64).reshape(-1)
    labels = to_numpy(output["labels"]).astype(np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(
            f"output for image {image_id!r}: {len(boxes)} boxes, {len(scores)} scores and "
            f"{len(labels)} labels (they must agree)"
        )
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError(f"output for image {image_id!r} has non-finite boxes or scores")
    return ImageDetections(boxes=boxes, scores=scores, labels=labels)


def check_batch(image_ids: Sequence[object], outputs: Sequence[Mapping[str, Any]]) -> None:
    """Raise ``ValueError`` unless there is exactly one output per image id."""
    if len(image_ids) != len(outputs):
        raise ValueError(f"got {len(image_ids)} image ids but {len(outputs)} outputs")
