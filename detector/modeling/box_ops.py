"""Box coding, matching and sampling: thin, typed re-exports of torchvision's detection utilities.

Kept in one module so the rest of the package never imports torchvision's private paths.
"""

from __future__ import annotations

from torchvision.models.detection._utils import (
    BalancedPositiveNegativeSampler,
    BoxCoder,
    Matcher,
)
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, nms, remove_small_boxes

__all__ = [
    "BalancedPositiveNegativeSampler",
    "BoxCoder",
    "Matcher",
    "batched_nms",
    "box_iou",
    "clip_boxes_to_image",
    "nms",
    "remove_small_boxes",
]
