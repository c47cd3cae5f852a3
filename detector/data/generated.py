"""Machinery shared by the datasets that are generated on first use (COCO format).

A generated dataset is described by a :class:`GeneratorSpec`: its ``meta`` (the generator
version and every argument; the cache key), its COCO categories and a ``render`` function that
turns a seeded RNG into one image. :func:`ensure_generated_dataset` writes::

    root/train/000001.png ...            root/val/000001.png ...
    root/annotations/instances_train.json, instances_val.json
    root/meta.json                       ``spec.meta`` (sorted keys)

Image ``i`` of a split is ``render(image_rng(seed, split, i))``, from an RNG seeded with
``[seed, 0 (train) or 1 (val), i]``, so the output is bit-for-bit reproducible and the first
images do not change when ``num_train`` grows.

Also here: small drawing helpers that more than one generator uses (tight mask crops, box IoUs,
hue-family colours, smooth colour fields with stripes).
"""

from __future__ import annotations

import colorsys
import fcntl
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

logger = logging.getLogger(__name__)

META_FILE = "meta.json"
SPLITS = ("train", "val")

Box = tuple[int, int, int, int]


class GeneratedObject(Protocol):
    """What the writer needs of one object: category id, tight xyxy box (ints, exclusive max)
    and mask area in pixels."""

    @property
    def category_id(self) -> int: ...

    @property
    def box(self) -> Box: ...

    @property
    def area(self) -> int: ...


@dataclass(frozen=True)
class GeneratedImage:
    """One rendered image: ``uint8 (H, W, 3)`` pixels, its objects, and extra keys for its COCO
    image entry (written after ``id, file_name, height, width``)."""

    pixels: np.ndarray
    objects: Sequence[GeneratedObject]
    image_fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GeneratorSpec:
    """What :func:`ensure_generated_dataset` writes.

    Attributes:
        description: name in logs, the progress bar and the json ``info``.
        meta: json-serialisable; must hold ``generator_version``, ``num_train``, ``num_val`` and
            ``seed``. A cached dataset is reused only when its ``meta.json`` equals this.
        categories: the COCO ``categories`` list.
        render: image ``i`` of a split from its own RNG (see the module doc).
        info: extra keys for the json ``info`` (after ``description`` and ``generator_version``).
    """

    description: str
    meta: Mapping[str, Any]
    categories: Sequence[Mapping[str, Any]]
    render: Callable[[np.random.Generator], GeneratedImage]
    info: Mapping[str, Any] = field(default_factory=dict)


def check_int(name: str, value: object, low: int) -> int:
    """``value`` if it is an int (not a bool) ``>= low``, else ``ValueError`` naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The RNG that renders image ``index`` (0-based; file ``{index + 1:06d}.png``) of ``split``."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def ensure_generated_dataset(root: str | Path, spec: GeneratorSpec) -> Path:
    """Return ``root`` holding the dataset of ``spec``, generating it first when missing or
    generated with another ``spec.meta``.

    Generation writes into a temporary sibling folder and renames it to ``root`` (an existing
    stale ``root`` is moved aside and deleted only after the swap); a file lock serialises
    concurrent callers.

    Raises:
        FileExistsError: ``root`` is a non-empty folder without ``meta.json`` (not written here).
    """
    root = Path(root).absolute()
    meta = dict(spec.meta)
    root.parent.mkdir(parents=True, exist_ok=True)
    with _FileLock(root):
        if _read_meta(root) == meta:
            return root
        if root.exists() and not (root / META_FILE).is_file() and any(root.iterdir()):
            raise FileExistsError(
                f"{root} exists, is not empty and has no {META_FILE}: not a generated dataset "
                f"({spec.description}); refusing to overwrite it"
            )
        logger.info("generating the %s dataset in %s (%s)", spec.description, root, meta)
        tmp = Path(tempfile.mkdtemp(prefix=f"{root.name}.tmp-", dir=root.parent))
        try:
            _write_dataset(tmp, spec)
            _swap_into_place(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _read_meta(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / META_FILE).read_text())
    except (OSError, ValueError):
        return None


class _FileLock:
    """Exclusive ``flock`` on a lock file in the temp dir keyed by ``root`` (context manager)."""

    def __init__(self, root: Path) -> None:
        digest = hashlib.sha1(str(root).encode()).hexdigest()[:16]
        self.path = Path(tempfile.gettempdir()) / f"detector-synthetic-{digest}.lock"

    def __enter__(self) -> None:
        self._file = self.path.open("w")
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def _swap_into_place(tmp: Path, root: Path) -> None:
    old = None
    if root.exists():
        old = root.with_name(f"{root.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        root.rename(old)
    tmp.rename(root)
    if old is not None:
        shutil.rmtree(old)


def _write_dataset(out: Path, spec: GeneratorSpec) -> None:
    (out / "annotations").mkdir()
    counts = {"train": spec.meta["num_train"], "val": spec.meta["num_val"]}
    info = {
        "description": spec.description,
        "generator_version": spec.meta["generator_version"],
        **spec.info,
    }
    with tqdm(total=sum(counts.values()), desc=spec.description, unit="img") as bar:
        for split in SPLITS:
            (out / split).mkdir()
            images: list[dict[str, Any]] = []
            annotations: list[dict[str, Any]] = []
            for i in range(counts[split]):
                image = spec.render(image_rng(spec.meta["seed"], split, i))
                file_name = f"{i + 1:06d}.png"
                Image.fromarray(image.pixels).save(out / split / file_name, compress_level=1)
                height, width = image.pixels.shape[:2]
                images.append(
                    {"id": i + 1, "file_name": file_name, "height": height, "width": width}
                    | dict(image.image_fields)
                )
                first_id = len(annotations) + 1
                annotations += [
                    coco_annotation(o, i + 1, first_id + k) for k, o in enumerate(image.objects)
                ]
                bar.update()
            coco = {
                "info": info,
                "images": images,
                "annotations": annotations,
                "categories": [dict(c) for c in spec.categories],
            }
            (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    (out / META_FILE).write_text(json.dumps(dict(spec.meta), sort_keys=True))


def coco_annotation(obj: GeneratedObject, image_id: int, ann_id: int) -> dict[str, Any]:
    """The COCO annotation (``bbox`` as float ``[x, y, w, h]``, ``iscrowd: 0``) of ``obj``."""
    x1, y1, x2, y2 = obj.box
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj.category_id,
        "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
        "area": float(obj.area),
        "iscrowd": 0,
    }


# --- drawing helpers -------------------------------------------------------------------------


def tight_crop(mask: np.ndarray) -> np.ndarray:
    """``mask`` cropped to the rows and columns that hold a ``True`` pixel (non-empty mask)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``float64 (M, N)``: IoU of every xyxy box in ``a (M, 4)`` with every box in ``b (N, 4)``
    (non-empty boxes)."""
    a, b = np.asarray(a, dtype=np.float64)[:, None, :], np.asarray(b, dtype=np.float64)[None]
    iw = (np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])).clip(0)
    ih = (np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])).clip(0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter)


def hue_family_colour(
    rng: np.random.Generator, background: np.ndarray, base_hue: float, hue_jitter: float
) -> np.ndarray:
    """``float32 (3,)`` RGB of hue ``base_hue +- hue_jitter`` (fractions of the colour wheel),
    saturation and value in ``[0.55, 1]``, at least 150 (L1 over RGB) away from the mean
    ``background`` colour; after 20 misses, the last try with its brightness pushed away from
    the background."""
    colour = np.zeros(3, dtype=np.float32)
    for _ in range(20):
        hue = (base_hue + rng.uniform(-hue_jitter, hue_jitter)) % 1.0
        rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
        colour = np.array(rgb, dtype=np.float32) * 255.0
        if np.abs(colour - background).sum() >= 150:
            return colour
    return np.where(background.mean() < 128, colour.clip(96, 255), colour * 0.35).astype(np.float32)


def smooth_field_with_stripes(
    rng: np.random.Generator, grid: np.ndarray, height: int, width: int
) -> np.ndarray:
    """``float32 (H, W, 3)``: the ``uint8 (h, w, 3)`` colour ``grid`` resized bilinearly to the
    image, plus faint stripes (random direction, period 6..30 px, amplitude 0..20)."""
    field_ = Image.fromarray(grid.astype(np.uint8)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    canvas = np.asarray(field_, dtype=np.float32).copy()
    xx = np.arange(width, dtype=np.float32)[None, :]
    yy = np.arange(height, dtype=np.float32)[:, None]
    direction = rng.uniform(0, np.pi)
    period = rng.uniform(6, 30)
    phase = (xx * np.cos(direction) + yy * np.sin(direction)) * (2 * np.pi / period)
    canvas += (rng.uniform(0, 20) * np.sin(phase))[..., None]
    return canvas
