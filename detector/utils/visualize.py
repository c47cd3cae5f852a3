"""Draw detections on images (boxes, class names and scores) with torchvision's box drawing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.utils import draw_bounding_boxes

#: Box colours, indexed by ``(label - 1) % len(PALETTE)``: distinct, saturated RGB colours.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
    (0, 0, 128),
)


def label_color(label: int) -> tuple[int, int, int]:
    """The RGB colour of contiguous label ``label`` (1..K)."""
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def caption(label: int, score: float, class_names: Sequence[str]) -> str:
    """``"<class name> 0.93"``; ``"class <label>"`` when the label has no name."""
    name = class_names[label - 1] if 1 <= label <= len(class_names) else f"class {label}"
    return f"{name} {score:.2f}"


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    *,
    line_width: int = 2,
) -> np.ndarray:
    """Draw each box in its class colour with a filled caption ``"<class> <score>"``.

    Args:
        image: ``uint8 (H, W, 3)`` RGB image (not modified).
        boxes: ``(N, 4)`` xyxy in the image's pixels (clipped to the image here).
        labels: ``(N,)`` contiguous labels 1..K (label ``k`` is ``class_names[k - 1]``).
        scores: ``(N,)`` scores.
        class_names: the ``K`` class names.
        line_width: box outline width in pixels.

    Returns:
        A new ``uint8 (H, W, 3)`` image.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not len(boxes) == len(labels) == len(scores):
        raise ValueError(f"{len(boxes)} boxes, {len(labels)} labels, {len(scores)} scores")
    if len(boxes) == 0:
        return image.copy()
    height, width = image.shape[:2]
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height - 1)
    drawn = draw_bounding_boxes(
        torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
        torch.from_numpy(boxes),
        labels=[caption(int(lbl), float(s), class_names) for lbl, s in zip(labels, scores)],
        colors=[label_color(int(lbl)) for lbl in labels],
        width=line_width,
        fill_labels=True,
        label_colors="white",
    )
    return drawn.permute(1, 2, 0).numpy().copy()
