"""Box-aware image transforms built on albumentations.

:func:`build_transforms` returns a :class:`DetectionTransforms`, the callable every dataset
accepts as ``transforms``::

    (image uint8 (H, W, 3), boxes float (N, 4) xyxy pixels, labels int (N,))
        -> (image float32 tensor (3, H', W') in [0, 1], boxes float32 (N', 4), labels int64 (N',))

Pipeline: clip boxes to the image -> :class:`ResizeShortestEdge` -> horizontal flip (train) ->
colour jitter (train, optional) -> drop boxes left without area, with their labels.

Randomness: albumentations keeps its own RNG inside ``Compose``; copied into DataLoader workers
it would repeat the same augmentations in every worker. So before each call a training
transform reseeds that RNG from torch's global generator, which PyTorch seeds per worker.
Augmentations are therefore reproducible under ``torch.manual_seed`` (and with the seeded
loaders of :mod:`detector.data.loader`). Test transforms draw no random numbers.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Any

# albumentations checks PyPI for updates on import (up to a 2 s network timeout); training
# machines are often offline, so opt out unless the user asked otherwise.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.augmentations.geometric.resize import MaxSizeTransform

from detector.data.base import to_tensor


def resize_scale(height: int, width: int, short_size: int, max_size: int) -> float:
    """Scale that brings the shorter side to ``short_size`` unless the longer side would exceed
    ``max_size`` (detectron2's ``ResizeShortestEdge``): ``min(s / short, max_size / long)``."""
    return min(short_size / min(height, width), max_size / max(height, width))


def resized_shape(height: int, width: int, scale: float) -> tuple[int, int]:
    """Output ``(height, width)`` for ``scale``, rounded as albumentations' resize does."""
    return max(1, round(height * scale)), max(1, round(width * scale))


class ResizeShortestEdge(MaxSizeTransform):
    """Resize keeping the aspect ratio: shorter side to a size drawn uniformly from
    ``min_sizes``, longer side at most ``max_size`` (see :func:`resize_scale`).

    Boxes follow exactly: albumentations stores them normalised by the image size, so each
    coordinate is multiplied by ``new_size / old_size`` along its axis.
    """

    def __init__(
        self,
        min_sizes: Sequence[int],
        max_size: int,
        interpolation: int = cv2.INTER_LINEAR,
        p: float = 1.0,
    ) -> None:
        super().__init__(max_size=max_size, interpolation=interpolation, p=p)
        self.min_sizes = _check_sizes(min_sizes, max_size)

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        height, width = params["shape"][:2]
        size = (
            self.min_sizes[0] if len(self.min_sizes) == 1 else self.py_random.choice(self.min_sizes)
        )
        return {"scale": resize_scale(height, width, size, int(self.max_size))}

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_sizes", "max_size", "interpolation")


class DetectionTransforms:
    """Callable ``(image, boxes, labels) -> (tensor, boxes, labels)`` around an ``A.Compose``.

    Args:
        compose: albumentations pipeline with ``bbox_params`` in ``pascal_voc`` format and a
            ``labels`` label field.
        random: reseed ``compose`` from torch's global RNG before every call (see module doc).
    """

    def __init__(self, *, compose: A.Compose, random: bool) -> None:
        self.compose = compose
        self.random = random

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(boxes) != len(labels):
            raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
        boxes, labels = clip_boxes(boxes, labels, height=image.shape[0], width=image.shape[1])
        if self.random:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
            self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = self.compose(image=image, bboxes=boxes, labels=labels)
        out_boxes = np.asarray(out["bboxes"], dtype=np.float64).reshape(-1, 4)
        out_labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        height, width = out["image"].shape[:2]
        out_boxes, out_labels = clip_boxes(out_boxes, out_labels, height=height, width=width)
        return to_tensor(out["image"]), out_boxes.astype(np.float32), out_labels

    def __repr__(self) -> str:
        return f"DetectionTransforms(random={self.random}, compose={self.compose!r})"


def clip_boxes(
    boxes: np.ndarray, labels: np.ndarray, *, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Clip ``(N, 4)`` xyxy boxes to ``[0, width] x [0, height]`` and drop the ones left
    without positive width and height, with their labels."""
    boxes = boxes.copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], labels[keep]


def build_transforms(
    *,
    train: bool,
    min_sizes: Sequence[int],
    max_size: int,
    flip_prob: float = 0.5,
    color_jitter: float = 0.0,
) -> DetectionTransforms:
    """Detection transforms for training or testing.

    Args:
        train: random shorter side from ``min_sizes``, flip and jitter; otherwise resize with
            ``min_sizes[-1]`` only.
        min_sizes: candidate shorter-side lengths in pixels.
        max_size: cap on the longer side in pixels.
        flip_prob: probability of a horizontal flip (train only).
        color_jitter: strength ``s`` of brightness/contrast/saturation jitter, each factor drawn
            from ``[1 - s, 1 + s]`` (train only; ``0`` disables it).
    """
    sizes = _check_sizes(min_sizes, max_size)
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
    if not 0.0 <= color_jitter < 1.0:
        raise ValueError(f"color_jitter must be in [0, 1), got {color_jitter}")
    ops: list[A.BasicTransform] = [ResizeShortestEdge(sizes if train else sizes[-1:], max_size)]
    if train and flip_prob > 0:
        ops.append(A.HorizontalFlip(p=flip_prob))
    if train and color_jitter > 0:
        ops.append(
            A.ColorJitter(
                brightness=color_jitter,
                contrast=color_jitter,
                saturation=color_jitter,
                hue=0.0,
                p=1.0,
            )
        )
    compose = A.Compose(
        ops,
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True),
        seed=0,
    )
    return DetectionTransforms(compose=compose, random=train)


def _check_sizes(min_sizes: Sequence[int] | int, max_size: int) -> list[int]:
    sizes = [min_sizes] if isinstance(min_sizes, int) else list(min_sizes)
    if not sizes or any(not isinstance(s, int) or s <= 0 for s in sizes):
        raise ValueError(f"min_sizes must be a non-empty list of positive ints, got {min_sizes!r}")
    if not isinstance(max_size, int) or max_size <= 0:
        raise ValueError(f"max_size must be a positive int, got {max_size!r}")
    return sizes
