"""Several detection datasets with the same classes used as one (e.g. VOC 07+12, COCO trainval35k).

:class:`ConcatDetection` keeps the dataset contract of :mod:`detector.data.base`: indexing,
``class_names`` / ``label_to_cat_id`` (checked to be identical in every part),
``image_sizes()`` / ``aspect_ratios()`` for aspect-ratio grouping, and ``coco_gt()`` when the
parts' image ids are disjoint (COCO splits are; VOC splits all number their images 1..N, so
two VOC parts cannot be evaluated as one: evaluate them separately).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset

from detector.data.base import DetectionTransform, ImageRecord, bad_image_limit


def describe_dataset(dataset: Any) -> str:
    """A short human-readable name of a dataset for error messages (type and its files)."""
    fields = [
        f"{key}={getattr(dataset, key)}"
        for key in ("root", "split", "ann_file")
        if getattr(dataset, key, None) is not None
    ]
    return f"{type(dataset).__name__}({', '.join(fields)})"


def _set_transforms(dataset: Any, transforms: DetectionTransform) -> None:
    if isinstance(dataset, ConcatDetection):
        for part in dataset.datasets:
            _set_transforms(part, transforms)
    elif hasattr(dataset, "transforms"):
        dataset.transforms = transforms
    else:
        raise TypeError(f"{describe_dataset(dataset)} has no 'transforms' attribute to replace")


class ConcatDetection(ConcatDataset):
    """The concatenation of detection datasets that share their classes (a Hydra ``_target_``).

    Index ``i`` is image ``i`` of the first part, then the second part's images follow, etc.
    Targets are the parts' own (``image_id`` is the id inside its part).

    Args:
        datasets: the parts, each following the :mod:`detector.data.base` contract.
        transforms: when given, replaces the ``transforms`` of every part (so a config states
            the training transforms once for all parts); ``None`` keeps the parts' own.

    Raises:
        ValueError: no parts, or parts whose ``class_names`` / ``label_to_cat_id`` differ (the
            message names both datasets and their classes).
    """

    def __init__(
        self, *, datasets: Sequence[Any], transforms: DetectionTransform | None = None
    ) -> None:
        parts = list(datasets)
        if not parts:
            raise ValueError("ConcatDetection needs at least one dataset")
        first = parts[0]
        for index, part in enumerate(parts[1:], start=1):
            if list(part.class_names) != list(first.class_names):
                raise ValueError(
                    f"ConcatDetection: dataset {index} {describe_dataset(part)} has classes "
                    f"{list(part.class_names)} but dataset 0 {describe_dataset(first)} has "
                    f"{list(first.class_names)}; all parts need the same classes in the same order"
                )
            if dict(part.label_to_cat_id) != dict(first.label_to_cat_id):
                raise ValueError(
                    f"ConcatDetection: dataset {index} {describe_dataset(part)} maps labels to "
                    f"category ids {dict(part.label_to_cat_id)} but dataset 0 maps them to "
                    f"{dict(first.label_to_cat_id)}"
                )
        if transforms is not None:
            for part in parts:
                _set_transforms(part, transforms)
        super().__init__(parts)
        self.class_names: list[str] = list(first.class_names)
        self.label_to_cat_id: dict[int, int] = dict(first.label_to_cat_id)
        self.cat_id_to_label: dict[int, int] = {c: lbl for lbl, c in self.label_to_cat_id.items()}

    @property
    def num_classes(self) -> int:
        """``K``, the number of foreground classes."""
        return len(self.class_names)

    @property
    def max_bad_images(self) -> int:
        """The smallest of the parts' ``max_bad_images``."""
        return min(part.max_bad_images for part in self.datasets)

    @property
    def max_bad_fraction(self) -> float:
        """The smallest of the parts' ``max_bad_fraction``."""
        return min(part.max_bad_fraction for part in self.datasets)

    @property
    def bad_image_limit(self) -> int:
        """Undecodable images a training stream may skip, from the parts' strictest settings
        applied to the whole concatenation (:func:`~detector.data.base.bad_image_limit`)."""
        return bad_image_limit(self.max_bad_images, self.max_bad_fraction, len(self))

    @property
    def records(self) -> list[ImageRecord]:
        """Every part's records, in index order."""
        return [r for part in self.datasets for r in part.records]

    def image_sizes(self) -> list[tuple[int, int]]:
        """``(height, width)`` of every image, in index order (from the annotations)."""
        return [size for part in self.datasets for size in part.image_sizes()]

    def aspect_ratios(self) -> np.ndarray:
        """``float64 (len(self),)`` width / height of every image."""
        sizes = np.asarray(self.image_sizes(), dtype=np.float64).reshape(-1, 2)
        return sizes[:, 1] / sizes[:, 0]

    def coco_gt(self) -> dict[str, Any]:
        """The parts' ground truths merged (annotation ids renumbered 1..N).

        Raises:
            ValueError: two parts share an image id (names both datasets).
        """
        owner: dict[int, int] = {}
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        categories: list[dict[str, Any]] = []
        for index, part in enumerate(self.datasets):
            gt = part.coco_gt()
            for image in gt["images"]:
                if image["id"] in owner:
                    other = owner[image["id"]]
                    raise ValueError(
                        f"ConcatDetection.coco_gt: image id {image['id']} is in dataset {other} "
                        f"{describe_dataset(self.datasets[other])} and dataset {index} "
                        f"{describe_dataset(part)}; evaluate the parts separately"
                    )
                owner[image["id"]] = index
            images.extend(gt["images"])
            start = len(annotations) + 1
            annotations.extend(dict(a, id=start + n) for n, a in enumerate(gt["annotations"]))
            categories = categories or gt["categories"]
        return {
            "info": {"description": "; ".join(describe_dataset(p) for p in self.datasets)},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
