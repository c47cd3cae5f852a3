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
image coordinates, for the evaluator. Datasets that parse class names (VOC, COCO) also keep
``seen_class_counts`` (annotated name -> number of objects, whether in ``class_names`` or not),
which :func:`require_boxes` lists when a training split keeps no box.

Subclasses parse their annotation format into :class:`ImageRecord` objects and implement
:meth:`DetectionDataset.coco_gt`; loading, transforming and target assembly live here.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from detector.data.class_names import class_name_hints, mismatch_details
from detector.data.errors import DatasetError

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
        apply_exif: rotate/flip the decoded pixels by the file's EXIF orientation (set when the
            annotation's size is the EXIF-rotated size, see :func:`check_image`).
    """

    image_id: int
    path: Path
    height: int
    width: int
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    apply_exif: bool = False

    def __post_init__(self) -> None:
        if self.gt_boxes.dtype != np.float32 or self.gt_boxes.shape != (len(self.gt_labels), 4):
            raise ValueError(
                f"{self.path}: gt_boxes must be float32 (N, 4) matching {len(self.gt_labels)} "
                f"labels, got {self.gt_boxes.dtype} {self.gt_boxes.shape}"
            )
        if self.gt_labels.dtype != np.int64:
            raise ValueError(f"{self.path}: gt_labels must be int64, got {self.gt_labels.dtype}")


def make_record(
    *,
    image_id: int,
    path: Path,
    height: int,
    width: int,
    boxes: list,
    labels: list,
    apply_exif: bool = False,
) -> ImageRecord:
    """Build an :class:`ImageRecord` from python lists (``boxes``: list of 4-lists)."""
    return ImageRecord(
        image_id=image_id,
        path=path,
        height=height,
        width=width,
        gt_boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        gt_labels=np.asarray(labels, dtype=np.int64).reshape(-1),
        apply_exif=apply_exif,
    )


def seen_class_counts(dataset: Any) -> dict[str, int] | None:
    """Annotated class name -> number of objects of ``dataset`` (its ``seen_class_counts``,
    summed over the parts of a concatenation); ``None`` when the dataset does not record them."""
    parts = getattr(dataset, "datasets", None)
    if parts is None:
        counts = getattr(dataset, "seen_class_counts", None)
        return None if counts is None else dict(counts)
    total: Counter[str] = Counter()
    for part in parts:
        counts = seen_class_counts(part)
        if counts is None:
            return None
        total.update(counts)
    return dict(total)


def require_boxes(dataset: Any, description: str) -> int:
    """Check that ``dataset`` (a training split) keeps at least one box; returns the box count.

    Also logs one warning naming the classes without any kept box, when some are.

    Args:
        dataset: a dataset of this module's contract (``records``, ``class_names``; the
            annotated names come from ``seen_class_counts`` when it records them).
        description: how the message names the split, e.g. ``"dataset.train"``.

    Raises:
        DatasetError: no box is kept; the message lists the class names the annotations use,
            with counts, a "did you mean" hint for names that differ only in case or spelling,
            and the dataset's load report (the reasons boxes were dropped).
    """
    records = dataset.records
    class_names = list(dataset.class_names)
    per_label = Counter(int(label) for r in records for label in r.gt_labels.tolist())
    seen = seen_class_counts(dataset)
    num_boxes = sum(per_label.values())
    if num_boxes == 0:
        message = f"{description}: no box left to train on (class_names {class_names})"
        if seen is not None:
            message += f"; {mismatch_details(class_names, seen)}"
        report = getattr(dataset, "load_report", "")
        if report:
            message += f"; load report: {report}"
        raise DatasetError(message)
    missing = [name for label, name in enumerate(class_names, 1) if not per_label[label]]
    if missing:
        hints = class_name_hints(missing, seen) if seen is not None else {}
        hint = "".join(f"; did you mean {hints[n]!r} for {n!r}?" for n in missing if n in hints)
        logger.warning(
            "%s: %d of %d classes have no training box: %s%s",
            description,
            len(missing),
            len(class_names),
            missing,
            hint,
        )
    return num_boxes


class ImageDecodeError(OSError):
    """An image whose pixels cannot be decoded (truncated, corrupt) or whose decoded size is
    not the annotated one: found when the image is read, not at load. Training loaders skip
    such images up to a bound (:mod:`detector.data.loader`); elsewhere it is an error.

    ``str()`` is ``"cannot decode image <path>: <reason>"``; ``path`` and ``reason`` are kept as
    attributes (the one-argument constructor lets the DataLoader re-raise it from a worker).
    """

    def __init__(self, message: str, *, path: str | Path = "", reason: str = "") -> None:
        super().__init__(message)
        self.path = str(path)
        self.reason = reason or message


#: Default bound on the undecodable images a training run skips: at most this many ...
DEFAULT_MAX_BAD_IMAGES = 10
#: ... and at most this fraction of the split (but always at least one), see
#: :func:`bad_image_limit`.
DEFAULT_MAX_BAD_FRACTION = 0.01


def bad_image_limit(max_bad_images: int, max_bad_fraction: float, num_images: int) -> int:
    """How many distinct undecodable images a training stream may skip before it stops:
    ``min(max_bad_images, max(1, floor(max_bad_fraction * num_images)))``, 0 when
    ``max_bad_images`` is 0 (then the first one is an error).

    Raises:
        ValueError: ``max_bad_images < 0`` or ``max_bad_fraction`` outside ``[0, 1]``.
    """
    if max_bad_images < 0:
        raise ValueError(f"max_bad_images must be >= 0, got {max_bad_images}")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    if max_bad_images == 0:
        return 0
    return min(max_bad_images, max(1, math.floor(max_bad_fraction * num_images)))


class ImageProblem(Exception):
    """Why an image cannot be used (raised by :func:`check_image`, caught by the datasets)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason = reason
        self.detail = detail


class SkipCounter:
    """Counts, by reason, what does not reach the training targets, and what was repaired.

    Three kinds of events:

    - problems (:meth:`skip` a box, :meth:`skip_image` an image): a warning naming the file and
      the reason, or :class:`DatasetError` when ``strict``;
    - policy exclusions (:meth:`exclude`, :meth:`exclude_image`: crowd or difficult boxes,
      classes left out on purpose, ``drop_empty``): counted only, never an error;
    - repairs (:meth:`fix`: box clipped, size read from the header, image converted to RGB,
      EXIF orientation applied): counted; the caller decides what to log.

    ``summary()`` is the one-line load report
    ``"<name>: N images, M boxes kept; K boxes dropped: reason=count, ...[; J images dropped:
    reason=count, ...]"``; ``fixes_summary()`` the repairs (empty when none).
    """

    def __init__(self, *, name: str, strict: bool = False) -> None:
        self.name = name
        self.strict = strict
        self.box_reasons: Counter[str] = Counter()
        self.image_reasons: Counter[str] = Counter()
        self.fixes: Counter[str] = Counter()
        #: ``(file, reason (detail))`` of every image skipped because of a problem.
        self.skipped_images: list[tuple[str, str]] = []

    def _problem(self, what: str, reason: str, file: str | Path, detail: str, warn: bool) -> None:
        extra = f" ({detail})" if detail else ""
        if self.strict:
            raise DatasetError(
                f"{self.name}: {file}: {reason}{extra} [strict mode: fix the data, or set "
                f"strict=False to skip the {what.split()[0]} with a warning]"
            )
        if warn:
            logger.warning("%s: skipped %s %s: %s%s", self.name, what, file, reason, extra)

    def skip(self, reason: str, *, file: str | Path, detail: str = "", warn: bool = True) -> None:
        """Count one dropped box of ``file`` (warned unless ``warn=False``; error when strict)."""
        self._problem("box in", reason, file, detail, warn)
        self.box_reasons[reason] += 1

    def skip_image(
        self, reason: str, *, file: str | Path, detail: str = "", num_boxes: int = 0
    ) -> None:
        """Count one image left out because of a problem, and its ``num_boxes`` annotations."""
        self._problem("image", reason, file, detail, True)
        self.image_reasons[reason] += 1
        self.skipped_images.append((str(file), f"{reason} ({detail})" if detail else reason))
        if num_boxes:
            self.box_reasons["in a skipped image"] += num_boxes

    def exclude(self, reason: str, count: int = 1) -> None:
        """Count ``count`` boxes left out of training by policy (no warning, never an error)."""
        self.box_reasons[reason] += count

    def exclude_image(self, reason: str) -> None:
        """Count one image left out by policy (e.g. ``drop_empty``)."""
        self.image_reasons[reason] += 1

    def fix(self, what: str, count: int = 1) -> None:
        """Count a repair that keeps the data (clipping, conversion, size from the header)."""
        self.fixes[what] += count

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

    def fixes_summary(self) -> str:
        """``"<name>: repaired: what=count, ..."``, or ``""`` when nothing was repaired."""
        if not self.fixes:
            return ""
        return f"{self.name}: repaired: " + ", ".join(
            f"{w}={n}" for w, n in sorted(self.fixes.items())
        )

    def report(self, *, num_images: int, num_boxes: int) -> str:
        """Log (INFO) and return the summary line; log the repairs line too when not empty.

        Raises:
            DatasetError: no image is left (the message carries the summary).
        """
        line = self.summary(num_images=num_images, num_boxes=num_boxes)
        if num_images == 0:
            raise DatasetError(f"{line}: the dataset has no usable image")
        logger.info("%s", line)
        if self.fixes:
            logger.info("%s", self.fixes_summary())
        return line


#: EXIF orientations (tag 0x0112) that swap width and height (transpose / rotate 90 / 270).
SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112


def to_rgb(img: Image.Image) -> np.ndarray:
    """Pixels of ``img`` as a writable ``uint8 (H, W, 3)`` RGB array, whatever its mode.

    Greyscale (``L``, ``1``, ``LA``) is replicated to 3 channels; alpha (``RGBA``, ``LA``,
    palette transparency) is dropped, keeping the stored colours; palette images are expanded;
    16-bit greyscale (``I;16*``, and ``I``, which Pillow uses for 16-bit files) is scaled
    ``0..65535 -> 0..255`` (``/ 257``) instead of being clipped at 255; CMYK/YCbCr by Pillow.
    """
    if img.mode.startswith("I;16") or img.mode == "I":
        grey = np.asarray(img).astype(np.float64) / 257.0
        grey8 = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey8[..., None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # Pillow warns when converting such palettes straight to RGB
    return np.array(img.convert("RGB"))


def load_rgb(path: Path, *, apply_exif: bool = False) -> np.ndarray:
    """Decode an image file into a writable ``uint8 (H, W, 3)`` RGB array (see :func:`to_rgb`).

    The stored pixel grid is returned unless ``apply_exif``, which rotates/flips it by the EXIF
    orientation (:func:`check_image` decides, from the annotation's size).

    Raises:
        ImageDecodeError: the file is missing, truncated or not a decodable image (an
            ``OSError`` whose message names the file).
    """
    try:
        with Image.open(path) as img:
            if apply_exif:
                img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except Exception as err:  # Pillow raises OSError, ValueError, SyntaxError, struct.error...
        reason = f"{type(err).__name__}: {err}"
        raise ImageDecodeError(
            f"cannot decode image {path}: {reason}", path=path, reason=reason
        ) from err


def decode_record(record: ImageRecord) -> np.ndarray:
    """The pixels of ``record`` as ``uint8 (H, W, 3)`` RGB, checked against its annotated size.

    Raises:
        ImageDecodeError: undecodable file (:func:`load_rgb`), or decoded size differs from
            the annotation.
    """
    image = load_rgb(record.path, apply_exif=record.apply_exif)
    if image.shape[:2] != (record.height, record.width):
        reason = (
            f"decoded image is {image.shape[1]}x{image.shape[0]} (WxH) but the annotations say "
            f"{record.width}x{record.height}"
        )
        raise ImageDecodeError(
            f"cannot decode image {record.path}: {reason}", path=record.path, reason=reason
        )
    return image


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
        max_bad_images, max_bad_fraction: how many undecodable images a *training* stream of
            this dataset may skip (:func:`bad_image_limit`, :attr:`bad_image_limit`); indexing
            the dataset itself always raises :class:`ImageDecodeError` for them.
    """

    def __init__(
        self,
        *,
        records: Sequence[ImageRecord],
        class_names: Sequence[str],
        label_to_cat_id: Mapping[int, int],
        transforms: DetectionTransform | None = None,
        max_bad_images: int = DEFAULT_MAX_BAD_IMAGES,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    ) -> None:
        if sorted(label_to_cat_id) != list(range(1, len(class_names) + 1)):
            raise ValueError(
                f"label_to_cat_id keys must be 1..{len(class_names)}, got {sorted(label_to_cat_id)}"
            )
        bad_image_limit(max_bad_images, max_bad_fraction, len(records))  # validates them
        self.max_bad_images = max_bad_images
        self.max_bad_fraction = max_bad_fraction
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

    @property
    def bad_image_limit(self) -> int:
        """Distinct undecodable images a training stream may skip (:func:`bad_image_limit`)."""
        return bad_image_limit(self.max_bad_images, self.max_bad_fraction, len(self))

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self._records[index]
        try:
            image = decode_record(record)
            tensor, boxes, labels = self.transforms(
                image, record.gt_boxes.copy(), record.gt_labels.copy()
            )
        except Exception as err:
            # the DataLoader re-raises a worker's exception with its traceback and notes
            err.add_note(f"while loading {record.path} (index {index}, image_id {record.image_id})")
            raise
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
    """``(height, width)`` of the stored grid from the image header (no pixel decoding).

    Raises:
        ImageProblem: see :func:`read_image_header`.
    """
    header = read_image_header(path)
    return header.height, header.width


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says: stored ``height`` x ``width``, Pillow ``mode``, and
    EXIF ``orientation`` (1 when absent)."""

    height: int
    width: int
    mode: str
    orientation: int


def read_image_header(path: Path) -> ImageHeader:
    """Read :class:`ImageHeader` (Pillow opens lazily: a few KB, no pixel decoding).

    Raises:
        ImageProblem: missing file, not an image, or over Pillow's decompression-bomb limit.
    """
    if not path.is_file():
        raise ImageProblem("image file not found")
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
            return ImageHeader(height=height, width=width, mode=img.mode, orientation=orientation)
    except Image.DecompressionBombError as err:  # over 2x Image.MAX_IMAGE_PIXELS
        raise ImageProblem("image too large to decode safely", str(err)) from err
    except Exception as err:  # Pillow raises UnidentifiedImageError, SyntaxError, ...
        raise ImageProblem("unreadable image header", f"{type(err).__name__}: {err}") from err


def check_image(path: Path, height: int, width: int, skips: SkipCounter) -> tuple[int, int, bool]:
    """Check an image against its annotated size, from the header only.

    Convention (``docs/robustness.md``): boxes refer to the grid whose size the annotation
    states: the stored grid when it matches (any EXIF orientation is then ignored, with a
    warning: flips and 180-degree turns keep the size, so the size cannot tell them apart);
    the EXIF-rotated grid when the annotation has the swapped size of a file whose EXIF
    orientation swaps axes (then ``apply_exif``); a size ``<= 0`` (unknown) is read from the
    header (the stored grid, counted as a repair).

    Returns:
        ``(height, width, apply_exif)`` of the grid the boxes refer to.

    Raises:
        ImageProblem: unusable file (see :func:`read_image_header`) or size mismatch.
    """
    header = read_image_header(path)
    if header.mode != "RGB":
        skips.fix(f"converted to RGB from mode {header.mode}")
    if height <= 0 or width <= 0:
        logger.warning("%s: no usable size in the annotation; reading it from the header", path)
        skips.fix("size read from the image header")
        return header.height, header.width, False
    if (height, width) == (header.height, header.width):
        if header.orientation != 1:
            logger.warning(
                "%s: EXIF orientation %d ignored: the annotation's size is the stored pixels'",
                path,
                header.orientation,
            )
            skips.fix("EXIF orientation ignored (annotation size = stored size)")
        return height, width, False
    if header.orientation in SWAPPING_ORIENTATIONS and (height, width) == (
        header.width,
        header.height,
    ):
        skips.fix("EXIF orientation applied")
        return height, width, True
    raise ImageProblem(
        "image size differs from the annotation",
        f"annotation {width}x{height}, file {header.width}x{header.height} (WxH), "
        f"EXIF orientation {header.orientation}",
    )
