"""The dataset contract shared by every detection dataset in ``detector.data``.

A dataset maps an index to ``(image, target)``:

- ``image``: ``float32`` tensor ``(3, H, W)``, RGB in ``[0, 1]``, *after* the transforms.
- ``target``: a dict with

  - ``"boxes"``: ``float32`` tensor ``(N, 4)``, ``(x1, y1, x2, y2)`` in absolute pixels of the
    transformed image (continuous coordinates: a box covering pixel columns ``0..9`` has
    ``x1 = 0, x2 = 10``);
  - ``"labels"``: ``int64`` tensor ``(N,)`` with contiguous labels ``1..K`` (0 is background);
  - ``"image_id"``: ``int``, the id of the image in :meth:`DetectionDataset.coco_gt`;
  - ``"orig_size"``: ``(H0, W0)`` of the image file.

Besides indexing, every dataset exposes ``class_names`` (label ``i + 1`` is
``class_names[i]``), ``label_to_cat_id`` (label -> category id used in ``coco_gt``),
``image_sizes()`` / ``aspect_ratios()`` read from the annotations (no image decoding, used for
aspect-ratio grouping) and ``coco_gt()``, the ground truth in COCO json format in the original
image coordinates, for the evaluator.

Subclasses parse their annotation format into :class:`ImageRecord` objects and implement
:meth:`DetectionDataset.coco_gt`; loading, transforming and target assembly live here.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

#: ``transforms(image (H, W, 3) uint8, boxes (N, 4) float xyxy, labels (N,) int)``
#: ``-> (image (3, H', W') float32 tensor in [0, 1], boxes (N', 4) float32, labels (N',) int64)``
DetectionTransform = Callable[
    [np.ndarray, np.ndarray, np.ndarray], tuple[torch.Tensor, np.ndarray, np.ndarray]
]


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset and its *training* targets, in original image coordinates.

    Attributes:
        image_id: id of the image in the dataset's ``coco_gt()``.
        path: image file.
        height, width: image size from the annotations (checked against the decoded file).
        gt_boxes: ``float32 (N, 4)`` xyxy boxes in original pixels, valid (``x2 > x1``, ``y2 > y1``).
        gt_labels: ``int64 (N,)`` contiguous labels in ``1..K``.
    """

    image_id: int
    path: Path
    height: int
    width: int
    gt_boxes: np.ndarray
    gt_labels: np.ndarray

    def __post_init__(self) -> None:
        if self.gt_boxes.dtype != np.float32 or self.gt_boxes.shape != (len(self.gt_labels), 4):
            raise ValueError(
                f"{self.path}: gt_boxes must be float32 (N, 4) matching {len(self.gt_labels)} "
                f"labels, got {self.gt_boxes.dtype} {self.gt_boxes.shape}"
            )
        if self.gt_labels.dtype != np.int64:
            raise ValueError(f"{self.path}: gt_labels must be int64, got {self.gt_labels.dtype}")


def make_record(
    *, image_id: int, path: Path, height: int, width: int, boxes: list, labels: list
) -> ImageRecord:
    """Build an :class:`ImageRecord` from python lists (``boxes``: list of 4-lists)."""
    return ImageRecord(
        image_id=image_id,
        path=path,
        height=height,
        width=width,
        gt_boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        gt_labels=np.asarray(labels, dtype=np.int64).reshape(-1),
    )


class SkipCounter:
    """Counts annotations that do not reach the training targets, by reason.

    ``skip(reason, detail)`` counts one box; with ``detail`` it also logs a warning
    (``"<name>: skipped box in <file>: <reason> (<detail>)"``). ``summary()`` is the one-line
    load report: ``"<name>: N images, M boxes kept; K boxes dropped: reason=count, ..."``.
    """

    def __init__(self, *, name: str) -> None:
        self.name = name
        self.box_reasons: Counter[str] = Counter()
        self.image_reasons: Counter[str] = Counter()

    def skip(self, reason: str, *, file: str | Path | None = None, detail: str = "") -> None:
        """Count one dropped box; warn (naming ``file``) when ``file`` is given."""
        self.box_reasons[reason] += 1
        if file is not None:
            extra = f" ({detail})" if detail else ""
            logger.warning("%s: skipped box in %s: %s%s", self.name, file, reason, extra)

    def skip_image(self, reason: str) -> None:
        """Count one image left out of the dataset."""
        self.image_reasons[reason] += 1

    @property
    def num_dropped(self) -> int:
        return sum(self.box_reasons.values())

    def summary(self, *, num_images: int, num_boxes: int) -> str:
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(self.box_reasons.items())) or "none"
        line = (
            f"{self.name}: {num_images} images, {num_boxes} boxes kept; "
            f"{self.num_dropped} boxes dropped: {reasons}"
        )
        if self.image_reasons:
            images = ", ".join(f"{r}={n}" for r, n in sorted(self.image_reasons.items()))
            line += f"; {sum(self.image_reasons.values())} images dropped: {images}"
        return line


def load_rgb(path: Path) -> np.ndarray:
    """Decode an image file into a writable ``uint8 (H, W, 3)`` RGB array.

    EXIF orientation is *not* applied: annotations refer to the stored pixel grid.
    """
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except (OSError, ValueError) as err:
        raise OSError(f"cannot decode image {path}: {err}") from err


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``uint8 (H, W, 3)`` -> ``float32 (3, H, W)`` in ``[0, 1]``."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def identity_transform(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The transform used when a dataset gets ``transforms=None``: tensor conversion only."""
    return to_tensor(image), boxes.astype(np.float32), labels.astype(np.int64)


class DetectionDataset(Dataset, ABC):
    """Base class implementing the common dataset contract (see the module docstring).

    Args:
        records: one :class:`ImageRecord` per image, in dataset order.
        class_names: ``K`` class names; label ``i + 1`` is ``class_names[i]``.
        label_to_cat_id: label (``1..K``) -> category id used in :meth:`coco_gt`.
        transforms: a :data:`DetectionTransform`; ``None`` converts to a tensor only.
    """

    def __init__(
        self,
        *,
        records: Sequence[ImageRecord],
        class_names: Sequence[str],
        label_to_cat_id: Mapping[int, int],
        transforms: DetectionTransform | None = None,
    ) -> None:
        if sorted(label_to_cat_id) != list(range(1, len(class_names) + 1)):
            raise ValueError(
                f"label_to_cat_id keys must be 1..{len(class_names)}, got {sorted(label_to_cat_id)}"
            )
        self._records = list(records)
        self.class_names: list[str] = list(class_names)
        self.label_to_cat_id: dict[int, int] = dict(label_to_cat_id)
        self.cat_id_to_label: dict[int, int] = {c: lbl for lbl, c in self.label_to_cat_id.items()}
        self.transforms: DetectionTransform = (
            transforms if transforms is not None else identity_transform
        )

    @property
    def num_classes(self) -> int:
        """``K``, the number of foreground classes."""
        return len(self.class_names)

    @property
    def records(self) -> list[ImageRecord]:
        return self._records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self._records[index]
        image = load_rgb(record.path)
        if image.shape[:2] != (record.height, record.width):
            raise ValueError(
                f"{record.path}: decoded image is {image.shape[1]}x{image.shape[0]} (WxH) but the "
                f"annotations say {record.width}x{record.height}"
            )
        tensor, boxes, labels = self.transforms(
            image, record.gt_boxes.copy(), record.gt_labels.copy()
        )
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
            "image_id": record.image_id,
            "orig_size": (record.height, record.width),
        }
        return tensor, target

    def image_sizes(self) -> list[tuple[int, int]]:
        """``(height, width)`` of every image, from the annotations (no decoding)."""
        return [(r.height, r.width) for r in self._records]

    def aspect_ratios(self) -> np.ndarray:
        """``float64 (len(self),)`` width / height of every image."""
        sizes = np.asarray(self.image_sizes(), dtype=np.float64).reshape(-1, 2)
        return sizes[:, 1] / sizes[:, 0]

    @abstractmethod
    def coco_gt(self) -> dict[str, Any]:
        """Ground truth of this dataset's images in COCO json format (original coordinates).

        Keys ``info``, ``images`` (``id``, ``file_name``, ``height``, ``width``),
        ``annotations`` (``id`` >= 1, ``image_id``, ``category_id``, ``bbox`` xywh, ``area``,
        ``iscrowd``) and ``categories`` (``id``, ``name``). Image ids equal the targets'
        ``image_id``; category ids are ``label_to_cat_id`` values.
        """

    def _coco_categories(self) -> list[dict[str, Any]]:
        return [
            {"id": self.label_to_cat_id[i + 1], "name": name}
            for i, name in enumerate(self.class_names)
        ]

    def _coco_images(self) -> list[dict[str, Any]]:
        return [
            {"id": r.image_id, "file_name": r.path.name, "height": r.height, "width": r.width}
            for r in self._records
        ]


def read_image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the image header only (PIL opens lazily, no pixel decoding)."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, ValueError) as err:
        raise OSError(f"cannot read the size of image {path}: {err}") from err
    return height, width
