"""Pascal VOC-format detection dataset (``Annotations/``, ``ImageSets/Main/``, ``JPEGImages/``).

Export layouts are read too: ``Annotations/`` + ``JPEGImages/`` without split files, and a flat
folder of images and XML files; folder names are arguments (:mod:`detector.data.voc_layout`).

Coordinates: VOC XML boxes are 1-based *inclusive* pixel indices (a box covering the first 10
pixel columns is ``xmin=1, xmax=10``). They become 0-based continuous xyxy as
``(xmin - 1, ymin - 1, xmax, ymax)`` (that box: ``x1 = 0, x2 = 10``), then are clipped to the
image. A box with ``xmax <= xmin`` or ``ymax <= ymin`` in the XML is a degenerate annotation
(a click, not a box) and is skipped as "zero-area", with a warning naming the XML file.

Labels are ``class_names.index(name) + 1``; category ids in ``coco_gt()`` equal the labels
(``1..K``) and image ids are the 1-based position of the image in the split file. Difficult
objects are excluded from the training targets unless ``keep_difficult``; ``coco_gt()``
always contains them with ``"iscrowd": 1`` so that COCO evaluation ignores them.
Objects whose name is not in ``class_names`` are skipped and counted (one warning per name);
``seen_class_counts`` keeps every annotated name with its number of objects, and a split whose
objects all have names outside ``class_names`` raises
:class:`~detector.data.base.DatasetError` listing them, with a hint for names that differ only
in case or spelling (:mod:`detector.data.class_names`).

Dirty data: a box with a missing, non-numeric or NaN coordinate is skipped ("malformed
bndbox"), one with ``xmax <= xmin`` or ``ymax <= ymin`` ("zero-area"), one entirely outside
the image ("outside the image"), each warned with the XML file's name; a box partly outside is
clipped (counted as a repair). A 0x0 or missing ``<size>`` is read from the image header. An
image whose file is missing, unreadable or of another size than ``<size>``, or whose XML is
malformed, is skipped with its boxes (see :func:`detector.data.base.check_image`).
``strict=True`` raises :class:`~detector.data.base.DatasetError` instead of any of these skips
(difficult objects are policy, not errors).
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
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
from detector.data.class_names import mismatch_details
from detector.data.voc_layout import IMAGE_SUFFIXES, VOCLayout, read_split

__all__ = ["VOC_CLASSES", "VOCDetection", "VOCObject", "read_split"]

logger = logging.getLogger(__name__)

#: The 20 Pascal VOC classes in the standard (devkit) order.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

DIFFICULT = "difficult (kept in coco_gt as iscrowd)"


@dataclass(frozen=True)
class VOCObject:
    """One parsed ``<object>``: 0-based xyxy box in original pixels, label ``1..K``."""

    box: tuple[float, float, float, float]
    label: int
    difficult: bool


class VOCDetection(DetectionDataset):
    """One split of a VOC-style dataset: the devkit layout, ``Annotations/`` + ``JPEGImages/``
    without split files, or a flat folder of images and XML files (:mod:`~detector.data.voc_layout`).

    Args:
        root: dataset folder, e.g. with ``Annotations/``, ``ImageSets/Main/<split>.txt``,
            ``JPEGImages/``.
        split: split file name without ``.txt`` (e.g. ``"trainval"``); without split files
            ``train``/``trainval``, ``val``/``test`` or ``all``
            (:func:`~detector.data.voc_layout.fraction_split`).
        class_names: the ``K`` class names, in label order (e.g. :data:`VOC_CLASSES`).
        transforms: see :data:`detector.data.base.DetectionTransform`; ``None``: tensor only.
        keep_difficult: also train on difficult objects.
        strict: raise :class:`~detector.data.base.DatasetError` on the first bad image or box
            instead of skipping it (module doc).
        annotations_dir, images_dir, imagesets_dir: folders under ``root``
            (:class:`~detector.data.voc_layout.VOCLayout`; ``imagesets_dir=None`` ignores
            split files).
        val_fraction, split_seed: without split files, the seeded fraction of the XML files
            held out as ``val``/``test``.
        max_bad_images, max_bad_fraction: bound on the undecodable images a training stream
            skips (:class:`~detector.data.base.DetectionDataset`).

    Raises:
        FileNotFoundError: missing split file (while others exist) or XML (named in the
            message).
        ValueError: empty or duplicate ``class_names``, a split name that needs a split file.
        DatasetError: no usable image left, objects annotated but none of a class in
            ``class_names``, or any skip when ``strict``.
    """

    def __init__(
        self,
        *,
        root: str | Path,
        split: str,
        class_names: Sequence[str],
        transforms: DetectionTransform | None = None,
        keep_difficult: bool = False,
        strict: bool = False,
        annotations_dir: str = "Annotations",
        images_dir: str = "JPEGImages",
        imagesets_dir: str | None = "ImageSets/Main",
        val_fraction: float = 0.2,
        split_seed: int = 0,
        max_bad_images: int = DEFAULT_MAX_BAD_IMAGES,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.keep_difficult = keep_difficult
        self.layout = VOCLayout(
            root=self.root,
            annotations_dir=annotations_dir,
            images_dir=images_dir,
            imagesets_dir=imagesets_dir,
        )
        names = _check_class_names(class_names)
        skips = SkipCounter(name=f"VOCDetection({self.root.name}/{split})", strict=strict)
        parser = _VOCParser(class_names=names, skips=skips)
        image_names = self.layout.split_names(
            split, val_fraction=val_fraction, split_seed=split_seed
        )

        records: list[ImageRecord] = []
        self._objects: list[list[VOCObject]] = []
        for image_id, name in enumerate(image_names, start=1):
            parsed = parser.parse(self.layout, name)
            if parsed is None:
                continue
            path, height, width, apply_exif, objects = parsed
            kept = [o for o in objects if keep_difficult or not o.difficult]
            if len(objects) > len(kept):
                skips.exclude(DIFFICULT, len(objects) - len(kept))
            records.append(
                make_record(
                    image_id=image_id,
                    path=path,
                    height=height,
                    width=width,
                    boxes=[o.box for o in kept],
                    labels=[o.label for o in kept],
                    apply_exif=apply_exif,
                )
            )
            self._objects.append(objects)

        self.seen_class_counts: dict[str, int] = dict(parser.seen)
        _require_a_known_class(skips.name, names, self.seen_class_counts)
        super().__init__(
            records=records,
            class_names=names,
            label_to_cat_id={i + 1: i + 1 for i in range(len(names))},
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
        """See :meth:`DetectionDataset.coco_gt`; difficult objects have ``iscrowd = 1``."""
        annotations = []
        for record, objects in zip(self.records, self._objects, strict=True):
            for obj in objects:
                x1, y1, x2, y2 = obj.box
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": record.image_id,
                        "category_id": self.label_to_cat_id[obj.label],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": int(obj.difficult),
                    }
                )
        return {
            "info": {"description": f"ground truth from {self.root} split {self.split}"},
            "images": self._coco_images(),
            "annotations": annotations,
            "categories": self._coco_categories(),
        }


def _require_a_known_class(name: str, class_names: list[str], seen: dict[str, int]) -> None:
    """Raise when objects are annotated but none is of a class in ``class_names`` (e.g.
    ``['Raccoon']`` for XML that says ``raccoon``): no box could be trained on or evaluated."""
    if seen and not any(n in seen for n in class_names):
        raise DatasetError(
            f"{name}: none of the {sum(seen.values())} annotated objects is of a class in "
            f"class_names {class_names}; {mismatch_details(class_names, seen)}"
        )


def _check_class_names(class_names: Sequence[str]) -> list[str]:
    if isinstance(class_names, str) or not class_names:
        raise ValueError(f"class_names must be a non-empty list of names, got {class_names!r}")
    names = [str(n) for n in class_names]
    if len(set(names)) != len(names):
        raise ValueError(f"class_names has duplicates: {names}")
    return names


class _VOCParser:
    """Parses VOC XML files, counting (and warning about) the objects it leaves out."""

    def __init__(self, *, class_names: list[str], skips: SkipCounter) -> None:
        self.label_of = {n: i + 1 for i, n in enumerate(class_names)}
        self.skips = skips
        self.seen: Counter[str] = Counter()  # every <object>'s name, in class_names or not
        self._warned_names: set[str] = set()

    def parse(
        self, layout: VOCLayout, name: str
    ) -> tuple[Path, int, int, bool, list[VOCObject]] | None:
        """``(image path, height, width, apply_exif, objects)`` of image ``name``, or ``None``
        when the image is skipped (malformed XML, missing or unusable image file)."""
        xml_file = layout.xml_file(name)
        if not xml_file.is_file():
            raise FileNotFoundError(f"VOC annotation not found: {xml_file}")
        try:
            tree = ET.parse(xml_file).getroot()
        except ET.ParseError as err:
            self.skips.skip_image("malformed XML", file=xml_file, detail=str(err))
            return None
        self.seen.update((node.findtext("name") or "").strip() for node in tree.iter("object"))
        filename = (tree.findtext("filename") or "").strip()
        path = layout.find_image(name, filename)
        num_boxes = len(tree.findall("object"))
        if path is None:
            detail = (
                f"no {name}.jpg, <filename> {filename!r} or "
                f"{name}.<{'|'.join(s[1:] for s in IMAGE_SUFFIXES)}> in "
                f"{layout.root / layout.images_dir} or next to the XML"
            )
            self.skips.skip_image(
                "image file not found", file=xml_file, detail=detail, num_boxes=num_boxes
            )
            return None
        try:
            height, width, apply_exif = check_image(path, *_xml_size(tree), self.skips)
        except ImageProblem as problem:
            self.skips.skip_image(
                problem.reason, file=path, detail=problem.detail, num_boxes=num_boxes
            )
            return None
        objects = []
        for node in tree.iter("object"):
            obj = self._parse_object(node, xml_file, height, width)
            if obj is not None:
                objects.append(obj)
        return path, height, width, apply_exif, objects

    def _parse_object(
        self, node: ET.Element, xml_file: Path, height: int, width: int
    ) -> VOCObject | None:
        cls = (node.findtext("name") or "").strip()
        if cls not in self.label_of:
            warn = cls not in self._warned_names
            self._warned_names.add(cls)
            detail = "first seen here; its boxes are skipped, further ones without a warning"
            self.skips.skip(
                f"class not in class_names ({cls!r})", file=xml_file.name, detail=detail, warn=warn
            )
            return None
        coords = _bndbox(node)
        if coords is None:
            raw = {k: node.findtext(f"bndbox/{k}") for k in ("xmin", "ymin", "xmax", "ymax")}
            self.skips.skip("malformed bndbox", file=xml_file.name, detail=f"{cls} {raw}")
            return None
        xmin, ymin, xmax, ymax = coords
        if xmax <= xmin or ymax <= ymin:
            detail = f"{cls} xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g}"
            self.skips.skip("zero-area", file=xml_file.name, detail=detail)
            return None
        box = (
            min(max(xmin - 1.0, 0.0), width),
            min(max(ymin - 1.0, 0.0), height),
            min(max(xmax, 0.0), width),
            min(max(ymax, 0.0), height),
        )
        if box[2] <= box[0] or box[3] <= box[1]:
            self.skips.skip("outside the image", file=xml_file.name, detail=f"{cls} {box}")
            return None
        if box != (xmin - 1.0, ymin - 1.0, xmax, ymax):
            self.skips.fix("box clipped to the image")
        difficult = (node.findtext("difficult") or "0").strip() not in ("0", "")
        return VOCObject(box=box, label=self.label_of[cls], difficult=difficult)


def _bndbox(node: ET.Element) -> tuple[float, float, float, float] | None:
    """``(xmin, ymin, xmax, ymax)`` of an ``<object>``, or ``None`` if one is missing, not a
    number or not finite."""
    try:
        values = tuple(float(node.findtext(f"bndbox/{k}") or "nan") for k in _COORDS)
    except ValueError:
        return None
    if not all(math.isfinite(v) for v in values):
        return None
    return values  # type: ignore[return-value]


_COORDS = ("xmin", "ymin", "xmax", "ymax")


def _xml_size(tree: ET.Element) -> tuple[int, int]:
    """``(height, width)`` from ``<size>``; ``(0, 0)`` when absent or unusable (then read from
    the image header by :func:`check_image`)."""
    try:
        height = int(float(tree.findtext("size/height") or 0))
        width = int(float(tree.findtext("size/width") or 0))
    except (ValueError, OverflowError):
        return 0, 0
    return (height, width) if height > 0 and width > 0 else (0, 0)
