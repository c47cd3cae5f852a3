"""COCO-format detection dataset (``instances_*.json`` + an image folder).

Labels: the selected categories get contiguous labels ``1..K`` in order of category id (or in
the order of ``class_names`` when given); ``label_to_cat_id`` maps them back.

Training targets exclude ``iscrowd`` boxes and annotations that cannot be boxes (non-positive
width/height, malformed or NaN, outside the image, unknown ``category_id`` or ``image_id``);
each excluded box is counted by reason, the bad ones are also logged with their file name.
Boxes partly outside the image are clipped (counted as a repair).

Images are checked from their header at load (:func:`detector.data.base.check_image`): a
missing or unreadable file, a size that differs from the entry, or an ``id`` shared by several
entries (their annotations cannot be told apart) skips the image and its boxes, counted and
warned; an entry without ``height``/``width`` takes them from the header. ``strict=True``
raises :class:`~detector.data.base.DatasetError` instead of skipping.

``coco_gt()`` returns the annotations as they are in the file (crowd and degenerate boxes
included), restricted to the dataset's (kept) images and categories, which is what the official
COCO evaluation uses.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detector.data.base import (
    DEFAULT_MAX_BAD_FRACTION,
    DEFAULT_MAX_BAD_IMAGES,
    DatasetError,
    DetectionDataset,
    DetectionTransform,
    ImageProblem,
    ImageRecord,
    SkipCounter,
    check_image,
    make_record,
)
from detector.data.class_names import class_name_hints, mismatch_details

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
        strict: raise :class:`~detector.data.base.DatasetError` on the first bad image or
            annotation instead of skipping it (crowd boxes, ``class_names`` and ``drop_empty``
            exclusions are policy, not errors).
        max_bad_images, max_bad_fraction: bound on the undecodable images a training stream
            skips (:class:`~detector.data.base.DetectionDataset`).

    Raises:
        FileNotFoundError: missing ``ann_file`` (named in the message).
        ValueError: empty or malformed json, unknown ``class_names``.
        DatasetError: no usable image left, or any skip when ``strict``.
    """

    def __init__(
        self,
        *,
        image_dir: str | Path,
        ann_file: str | Path,
        transforms: DetectionTransform | None = None,
        drop_empty: bool = False,
        class_names: Sequence[str] | None = None,
        strict: bool = False,
        max_bad_images: int = DEFAULT_MAX_BAD_IMAGES,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        data = _load_json(self.ann_file)
        categories = _select_categories(data["categories"], class_names, self.ann_file)
        self.seen_class_counts: dict[str, int] = _annotated_class_counts(data)
        _require_a_known_class(self.ann_file, categories, self.seen_class_counts)
        label_to_cat_id = {i + 1: int(c["id"]) for i, c in enumerate(categories)}
        cat_id_to_label = {c: lbl for lbl, c in label_to_cat_id.items()}

        skips = SkipCounter(name=f"CocoDetection({self.ann_file.name})", strict=strict)
        loader = _ImageLoader(
            image_dir=self.image_dir,
            ann_file=self.ann_file,
            data=data,
            cat_id_to_label=cat_id_to_label,
            drop_empty=drop_empty,
            skips=skips,
        )
        records: list[ImageRecord] = []
        self._gt_images: list[dict[str, Any]] = []
        self._gt_annotations: list[dict[str, Any]] = []
        for image in data["images"]:
            loaded = loader.load(image)
            if loaded is not None:
                records.append(loaded[0])
                self._gt_images.append(loaded[1])
                self._gt_annotations.extend(loaded[2])
        _ensure_annotation_ids(self._gt_annotations, self.ann_file)

        super().__init__(
            records=records,
            class_names=[str(c["name"]) for c in categories],
            label_to_cat_id=label_to_cat_id,
            transforms=transforms,
            max_bad_images=max_bad_images,
            max_bad_fraction=max_bad_fraction,
        )
        self.strict = strict
        self.load_report = skips.report(
            num_images=len(records), num_boxes=sum(len(r.gt_labels) for r in records)
        )
        self.load_fixes = skips.fixes_summary()
        self.load_skipped_images = skips.skipped_images

    def coco_gt(self) -> dict[str, Any]:
        """See :meth:`DetectionDataset.coco_gt`; annotations as in the file (crowd included)."""
        return {
            "info": {"description": f"ground truth from {self.ann_file}"},
            "images": [dict(i) for i in self._gt_images],
            "annotations": [dict(a, bbox=list(a["bbox"])) for a in self._gt_annotations],
            "categories": self._coco_categories(),
        }


class _ImageLoader:
    """Turns one ``images`` entry into its record, ``coco_gt`` image and annotations, or
    skips it (counted by ``skips``)."""

    def __init__(
        self,
        *,
        image_dir: Path,
        ann_file: Path,
        data: dict[str, Any],
        cat_id_to_label: dict[int, int],
        drop_empty: bool,
        skips: SkipCounter,
    ) -> None:
        self.image_dir, self.ann_file = image_dir, ann_file
        self.cat_id_to_label = cat_id_to_label
        self.known_cat_ids = {int(c["id"]) for c in data["categories"]}
        self.drop_empty = drop_empty
        self.skips = skips
        self.anns_by_image = _group_annotations(data, skips, ann_file)
        self.id_counts = Counter(i.get("id") for i in data["images"] if isinstance(i, dict))

    def load(self, image: Any) -> tuple[ImageRecord, dict[str, Any], list[dict[str, Any]]] | None:
        fields = _image_fields(image, self.ann_file, self.skips)
        if fields is None:
            return None
        image_id, file_name, height, width = fields
        anns = self.anns_by_image.get(image_id, [])
        path = self.image_dir / file_name
        try:
            if self.id_counts[image_id] > 1:
                raise ImageProblem(
                    "duplicate image id",
                    f"id {image_id} is used by {self.id_counts[image_id]} entries",
                )
            height, width, apply_exif = check_image(path, height, width, self.skips)
        except ImageProblem as problem:
            self.skips.skip_image(
                problem.reason, file=path, detail=problem.detail, num_boxes=len(anns)
            )
            return None
        boxes, labels = [], []
        for ann in anns:
            box = _training_box(
                ann, file_name, height, width, self.cat_id_to_label, self.known_cat_ids, self.skips
            )
            if box is not None:
                boxes.append(box)
                labels.append(self.cat_id_to_label[int(ann["category_id"])])
        if self.drop_empty and not boxes:
            self.skips.exclude_image("no training box (drop_empty)")
            return None
        record = make_record(
            image_id=image_id,
            path=path,
            height=height,
            width=width,
            boxes=boxes,
            labels=labels,
            apply_exif=apply_exif,
        )
        gt_image = {"id": image_id, "file_name": file_name, "height": height, "width": width}
        gt_anns = [_gt_annotation(a) for a in anns if _is_gt_annotation(a, self.cat_id_to_label)]
        return record, gt_image, gt_anns


def _load_json(ann_file: Path) -> dict[str, Any]:
    if not ann_file.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {ann_file}")
    if ann_file.stat().st_size == 0:
        raise ValueError(f"{ann_file}: the annotation file is empty (0 bytes)")
    with ann_file.open() as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{ann_file}: not valid json: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{ann_file}: expected a json object, got {type(data).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(f"{ann_file}: missing top-level key(s) {missing}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise ValueError(f"{ann_file}: {key!r} must be a list, got {type(data[key]).__name__}")
    if not data["images"]:
        raise DatasetError(f"{ann_file}: lists no images")
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
        hints = class_name_hints(unknown, dict.fromkeys(by_name, 1))
        hint = ", ".join(f"{found!r} for {name!r}" for name, found in hints.items())
        raise ValueError(
            f"{ann_file}: class_names {unknown} not among its categories {list(by_name)}"
            + (f"; did you mean {hint}?" if hint else "")
        )
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names has duplicates: {list(class_names)}")
    return [by_name[n] for n in class_names]


def _annotated_class_counts(data: dict[str, Any]) -> dict[str, int]:
    """Category name -> number of annotations of the file (any image, crowd included)."""
    names = {c.get("id"): str(c.get("name")) for c in data["categories"] if isinstance(c, dict)}
    counts: Counter[str] = Counter()
    for ann in data["annotations"]:
        cat_id = ann.get("category_id") if isinstance(ann, dict) else None
        if isinstance(cat_id, int) and cat_id in names:
            counts[names[cat_id]] += 1
    return dict(counts)


def _require_a_known_class(
    ann_file: Path, categories: list[dict[str, Any]], seen: dict[str, int]
) -> None:
    """Raise when the file has annotations but none of the selected categories."""
    selected = [str(c["name"]) for c in categories]
    if seen and not any(name in seen for name in selected):
        raise DatasetError(
            f"CocoDetection({ann_file.name}): none of the {sum(seen.values())} annotations is of "
            f"a category in class_names {selected}; {mismatch_details(selected, seen)}"
        )


def _group_annotations(
    data: dict[str, Any], skips: SkipCounter, ann_file: Path
) -> dict[int, list[dict[str, Any]]]:
    """Annotations by image id; those whose ``image_id`` is not an image's are skipped."""
    image_ids = {i["id"] for i in data["images"] if isinstance(i, dict) and "id" in i}
    grouped: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for index, ann in enumerate(data["annotations"]):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if image_id not in image_ids:
            ann_id = ann.get("id") if isinstance(ann, dict) else None
            detail = f"annotations[{index}] (id {ann_id!r}) has image_id {image_id!r}"
            skips.skip("unknown image_id", file=ann_file.name, detail=detail)
            continue
        grouped[image_id].append(ann)
    return grouped


def _image_fields(
    image: Any, ann_file: Path, skips: SkipCounter
) -> tuple[int, str, int, int] | None:
    """``(id, file_name, height, width)`` of an image entry (size 0 when absent: read from the
    header later), or ``None`` (skipped) when ``id`` or ``file_name`` is unusable."""
    try:
        image_id, file_name = image["id"], str(image["file_name"])
        height, width = int(image.get("height") or 0), int(image.get("width") or 0)
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            raise TypeError(f"id must be an integer, got {image_id!r}")
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        skips.skip_image("malformed image entry", file=ann_file.name, detail=f"{image!r}: {err}")
        return None
    return image_id, file_name, height, width


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
    if not isinstance(cat_id, int) or cat_id not in known_cat_ids:
        skips.skip("unknown category_id", file=file_name, detail=f"category_id={cat_id!r}")
        return None
    if int(cat_id) not in cat_id_to_label:
        skips.exclude("category not in class_names")
        return None
    if ann.get("iscrowd", 0):
        skips.exclude(CROWD)
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
    if (x1, y1, x2, y2) != (x, y, x + w, y + h):
        skips.fix("box clipped to the image")
    return [x1, y1, x2, y2]


def _is_gt_annotation(ann: dict[str, Any], cat_id_to_label: dict[int, int]) -> bool:
    cat_id = ann.get("category_id")
    return _parse_bbox(ann) is not None and isinstance(cat_id, int) and cat_id in cat_id_to_label


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
