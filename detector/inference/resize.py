"""Image and box geometry for test-time resizing and flipping, and for mapping detections back
to the original image (pure functions)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def resized_size(
    height: int, width: int, short_size: int, max_size: int | None = None
) -> tuple[int, int]:
    """(H', W') with the shorter side ``short_size``, the longer side at most ``max_size``."""
    if short_size <= 0:
        raise ValueError(f"scale (shorter side) must be positive, got {short_size}")
    scale = short_size / min(height, width)
    if max_size is not None:
        scale = min(scale, max_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_image(image: Tensor, short_size: int, max_size: int | None = None) -> Tensor:
    """Bilinear resize of a (3, H, W) image (no anti-aliasing, like the data transforms'
    cv2 linear resize); the image itself when the size does not change."""
    size = resized_size(int(image.shape[-2]), int(image.shape[-1]), short_size, max_size)
    if size == tuple(image.shape[-2:]):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def box_scale(from_size: tuple[int, int], to_size: tuple[int, int], like: Tensor) -> Tensor:
    """(4,) factors ``[sx, sy, sx, sy]`` mapping xyxy boxes from ``from_size`` (H, W) to
    ``to_size``."""
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return like.new_tensor([sx, sy, sx, sy])


def hflip_boxes(boxes: Tensor, width: int) -> Tensor:
    """xyxy boxes of a horizontally flipped image of ``width`` pixels: x -> W - x."""
    return boxes[:, [2, 1, 0, 3]] * boxes.new_tensor([-1.0, 1.0, -1.0, 1.0]) + boxes.new_tensor(
        [float(width), 0.0, float(width), 0.0]
    )


def rescale_detections(
    det: dict[str, Tensor], input_size: tuple[int, int], orig_size: tuple[int, int]
) -> dict[str, Tensor]:
    """Map detection boxes from the (resized) network input of ``input_size`` (H, W) back to
    the original image's ``orig_size`` pixels, clipped to it."""
    (h, w), (h0, w0) = input_size, orig_size
    scale = det["boxes"].new_tensor([w0 / w, h0 / h, w0 / w, h0 / h])
    boxes = det["boxes"] * scale
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w0)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h0)
    return {**det, "boxes": boxes}
