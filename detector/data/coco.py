"""COCO-format detection dataset (``instances_*.json`` + an image folder).

Labels: the selected categories get contiguous labels ``1..K`` in order of category id (or in
the order of ``class_names`` when given); ``label_to_cat_id`` maps them back.

Training targets exclude ``iscrowd`` boxes and annotations that cannot be boxes (non-positive
width/height, malformed, outside the image); each excluded box is counted by reason, the
malformed ones are also logged with their file name. ``coco_gt()`` returns the annotations as
they are in the file (crowd and degenerate boxes included), restricted to the dataset's images
and categories, which is what the official COCO evaluation uses.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detector.data.base import (
    DetectionDataset,
    DetectionTransform,
    ImageRecord,
    SkipCounter,
    make_record,
)

logger = logging.getLogger(__name__)

CROWD = "iscrowd (kept in coco_gt)"


class CocoDetection(DetectionDataset):
    """A COCO json annotation file and the folder holding its ``file_name``s.

    Args:
        image_dir: folder the images' ``file_name`` are relative to.
        ann_file: COCO instances json (``images``, ``annotations``, ``categories``).
        transforms: see :data:`detector.data.base.DetectionTransform`; ``None``: tensor only.
        drop_empty: leave out images with no training box (for training; keep ``False`` for
            evaluation so that ``coco_gt`` covers every image).
        class_names: restrict to these category names, labelled in this order; annotations of
            other categories are skipped (counted) and left out of ``coco_gt``.

    Raises:
        FileNotFoundError: missing ``ann_file`` or image files (named in the message).
        ValueError: malformed json entries, unknown ``class_names``.
    """

    def __init__(
        self,
        *,
        image_dir: str | Path,
        ann_file: str | Path,
        transforms: DetectionTransform | None = None,
        drop_empty: bool = False,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        data = _load_json(self.ann_file)
        categories = _select_categories(data["categories"], class_names, self.ann_file)
        label_to_cat_id = {i + 1: int(c["id"]) for i, c in enumerate(categories)}
        cat_id_to_label = {c: lbl for lbl, c in label_to_cat_id.items()}
        known_cat_ids = {int(c["id"]) for c in data["categories"]}

        skips = SkipCounter(name=f"CocoDetection({self.ann_file.name})")
        anns_by_image = _group_annotations(data, skips)
        records: list[ImageRecord] = []
        self._gt_images: list[dict[str, Any]] = []
        self._gt_annotations: list[dict[str, Any]] = []
        for image in data["images"]:
            image_id, file_name, height, width = _image_fields(image, self.ann_file)
            anns = anns_by_image.get(image_id, [])
            boxes, labels = [], []
            for ann in anns:
                box = _training_box(
                    ann, file_name, height, width, cat_id_to_label, known_cat_ids, skips
                )
                if box is not None:
                    boxes.append(box)
                    labels.append(cat_id_to_label[int(ann["category_id"])])
            if drop_empty and not boxes:
                skips.skip_image("no training box (drop_empty)")
                continue
            path = self.image_dir / file_name
            records.append(
                make_record(
                    image_id=image_id,
                    path=path,
                    height=height,
                    width=width,
                    boxes=boxes,
                    labels=labels,
                )
            )
            self._gt_images.append(
                {"id": image_id, "file_name": file_name, "height": height, "width": width}
            )
            self._gt_annotations.extend(
                _gt_annotation(a) for a in anns if _is_gt_annotation(a, cat_id_to_label)
            )
        _check_files_exist(records, self.ann_file)
        _ensure_annotation_ids(self._gt_annotations, self.ann_file)

        super().__init__(
            records=records,
            class_names=[str(c["name"]) for c in categories],
            label_to_cat_id=label_to_cat_id,
            transforms=transforms,
        )
        self.load_report = skips.summary(
            num_images=len(records), num_boxes=sum(len(r.gt_labels) for r in records)
        )
        logger.info(self.load_report)

    def coco_gt(self) -> dict[str, Any]:
        """See :meth:`DetectionDataset.coco_gt`; annotations as in the file (crowd included)."""
        return {
            "info": {"description": f"ground truth from {self.ann_file}"},
            "images": [dict(i) for i in self._gt_images],
            "annotations": [dict(a, bbox=list(a["bbox"])) for a in self._gt_annotations],
            "categories": self._coco_categories(),
        }


def _load_json(ann_file: Path) -> dict[str, Any]:
    if not ann_file.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {ann_file}")
    with ann_file.open() as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{ann_file}: not valid json: {err}") from err
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(f"{ann_file}: missing top-level key(s) {missing}")
    return data


def _select_categories(
    categories: list[dict[str, Any]], class_names: Sequence[str] | None, ann_file: Path
) -> list[dict[str, Any]]:
    """Categories in label order: sorted by id, or the order of ``class_names``."""
    by_id = sorted(categories, key=lambda c: int(c["id"]))
    if class_names is None:
        return by_id
    if isinstance(class_names, str):
        raise ValueError(f"class_names must be a list of names, got the string {class_names!r}")
    by_name = {str(c["name"]): c for c in by_id}
    unknown = [n for n in class_names if n not in by_name]
    if unknown:
        raise ValueError(
            f"{ann_file}: class_names {unknown} not among its categories {list(by_name)}"
        )
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names has duplicates: {list(class_names)}")
    return [by_name[n] for n in class_names]


def _group_annotations(data: dict[str, Any], skips: SkipCounter) -> dict[int, list[dict[str, Any]]]:
    image_ids = {int(i["id"]) for i in data["images"] if "id" in i}
    grouped: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in data["annotations"]:
        image_id = ann.get("image_id")
        if image_id not in image_ids:
            skips.skip(
                "unknown image_id", file="<annotations>", detail=f"annotation {ann.get('id')}"
            )
            continue
        grouped[int(image_id)].append(ann)
    return grouped


def _image_fields(image: dict[str, Any], ann_file: Path) -> tuple[int, str, int, int]:
    try:
        return int(image["id"]), str(image["file_name"]), int(image["height"]), int(image["width"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{ann_file}: malformed image entry {image!r}: {err}") from err


def _parse_bbox(ann: dict[str, Any]) -> tuple[float, float, float, float] | None:
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    return (x, y, w, h) if all(math.isfinite(v) for v in (x, y, w, h)) else None


def _training_box(
    ann: dict[str, Any],
    file_name: str,
    height: int,
    width: int,
    cat_id_to_label: dict[int, int],
    known_cat_ids: set[int],
    skips: SkipCounter,
) -> list[float] | None:
    """The xyxy training box of one annotation, clipped to the image, or ``None`` (counted)."""
    bbox = _parse_bbox(ann)
    if bbox is None:
        skips.skip("malformed bbox", file=file_name, detail=f"bbox={ann.get('bbox')!r}")
        return None
    cat_id = ann.get("category_id")
    if cat_id not in known_cat_ids:
        skips.skip("unknown category_id", file=file_name, detail=f"category_id={cat_id!r}")
        return None
    if int(cat_id) not in cat_id_to_label:
        skips.skip("category not in class_names")
        return None
    if ann.get("iscrowd", 0):
        skips.skip(CROWD)
        return None
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        skips.skip("non-positive width/height", file=file_name, detail=f"bbox xywh={list(bbox)}")
        return None
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x2 <= x1 or y2 <= y1:
        skips.skip("outside the image", file=file_name, detail=f"bbox xywh={list(bbox)}")
        return None
    return [x1, y1, x2, y2]


def _is_gt_annotation(ann: dict[str, Any], cat_id_to_label: dict[int, int]) -> bool:
    return _parse_bbox(ann) is not None and ann.get("category_id") in cat_id_to_label


def _gt_annotation(ann: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``ann`` that bbox evaluation needs (``area`` defaults to ``w * h``)."""
    x, y, w, h = _parse_bbox(ann)  # type: ignore[misc]  # filtered by _is_gt_annotation
    return {
        "id": ann.get("id"),
        "image_id": int(ann["image_id"]),
        "category_id": int(ann["category_id"]),
        "bbox": [x, y, w, h],
        "area": float(ann.get("area", w * h)),
        "iscrowd": int(ann.get("iscrowd", 0)),
    }


def _check_files_exist(records: list[ImageRecord], ann_file: Path) -> None:
    missing = [r.path for r in records if not r.path.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise FileNotFoundError(f"{ann_file}: {len(missing)} image file(s) not found, e.g. {shown}")


def _ensure_annotation_ids(annotations: list[dict[str, Any]], ann_file: Path) -> None:
    """COCOeval treats a matched ground-truth id of 0 as 'unmatched': ids must be unique and >= 1."""
    ids = [a["id"] for a in annotations]
    valid = all(isinstance(i, int) and i >= 1 for i in ids) and len(set(ids)) == len(ids)
    if not valid:
        logger.warning(
            "%s: annotation ids are missing, non-positive or duplicated; renumbering them 1..%d "
            "in coco_gt()",
            ann_file,
            len(ids),
        )
        for new_id, ann in enumerate(annotations, start=1):
            ann["id"] = new_id
