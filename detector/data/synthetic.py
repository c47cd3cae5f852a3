"""A small, deterministic synthetic detection dataset ("shapes") in COCO format.

Layout written by :func:`ensure_synthetic_dataset`::

    root/train/000001.png ...            root/val/000001.png ...
    root/annotations/instances_train.json, instances_val.json
    root/meta.json                       generator arguments and version

Each image has its longer side equal to ``image_size`` and its shorter side drawn from
``[3/4, 1] * image_size`` (landscape or portrait), a textured background (smooth colour field +
stripes + noise) and 0..6 shapes of the four :data:`SHAPE_CLASSES` (category ids 1..4), 15..90
pixels across, in colours of a per-class hue family (+-32 degrees, random saturation and
brightness) that stand out from the background. Shapes may overlap (box IoU up to
0.3); larger shapes are drawn first so every smaller shape stays fully visible, and every box is
the tight box of the full shape mask. About 4% of the images are empty.

Image ``i`` of a split depends only on ``(seed, split, i)``, so the output is bit-for-bit
reproducible and the first images do not change when ``num_train`` grows.
"""

from __future__ import annotations

import colorsys
import fcntl
import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from detector.data.base import DetectionTransform
from detector.data.coco import CocoDetection

logger = logging.getLogger(__name__)

#: Category names; category id ``i + 1`` is ``SHAPE_CLASSES[i]``.
SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
#: Bump when the rendering changes so that cached datasets are regenerated.
GENERATOR_VERSION = 2
META_FILE = "meta.json"
SPLITS = ("train", "val")

MIN_OBJECT_SIZE, MAX_OBJECT_SIZE = 15, 90
MAX_OBJECTS = 6
EMPTY_IMAGE_PROB = 0.04
MAX_BOX_IOU = 0.3
#: Centre hue (fraction of the colour wheel) of each class's colour family, and its jitter.
CLASS_HUES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
HUE_JITTER = 0.09


@dataclass(frozen=True)
class ShapeInstance:
    """One rendered shape: category id ``1..4``, tight xyxy box (ints, exclusive max), mask area."""

    category_id: int
    box: tuple[int, int, int, int]
    area: int


def ensure_synthetic_dataset(
    root: str | Path,
    *,
    num_train: int = 400,
    num_val: int = 100,
    image_size: int = 192,
    seed: int = 0,
) -> Path:
    """Return ``root`` holding the synthetic dataset for these arguments, generating it first
    when missing or generated with other arguments.

    Generation writes into a temporary sibling folder and renames it to ``root`` (an existing
    stale ``root`` is moved aside and deleted only after the swap); a file lock serialises
    concurrent callers.

    Raises:
        ValueError: invalid arguments.
        FileExistsError: ``root`` is a non-empty folder that this function did not write.
    """
    root = Path(root).absolute()
    meta = _meta(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    with _FileLock(root):
        if _read_meta(root) == meta:
            return root
        if root.exists() and not (root / META_FILE).is_file() and any(root.iterdir()):
            raise FileExistsError(
                f"{root} exists, is not empty and has no {META_FILE}: not a synthetic dataset "
                "written by ensure_synthetic_dataset; refusing to overwrite it"
            )
        logger.info("generating the synthetic shapes dataset in %s (%s)", root, meta)
        tmp = Path(tempfile.mkdtemp(prefix=f"{root.name}.tmp-", dir=root.parent))
        try:
            _write_dataset(tmp, meta)
            _swap_into_place(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


class SyntheticShapesDetection(CocoDetection):
    """One split of the synthetic dataset, generated on first use (a Hydra ``_target_``).

    Args:
        root: dataset folder (see :func:`ensure_synthetic_dataset`).
        split: ``"train"`` or ``"val"``.
        transforms, drop_empty, strict: as for :class:`~detector.data.coco.CocoDetection`.
        num_train, num_val, image_size, seed: generator arguments.
    """

    #: Files are written on first use, so a missing ``root`` is not a config error
    #: (:func:`detector.config_checks.check_config`).
    generates_data = True

    def __init__(
        self,
        *,
        root: str | Path,
        split: str,
        transforms: DetectionTransform | None = None,
        drop_empty: bool = False,
        num_train: int = 400,
        num_val: int = 100,
        image_size: int = 192,
        seed: int = 0,
        strict: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        path = ensure_synthetic_dataset(
            root, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed
        )
        super().__init__(
            image_dir=path / split,
            ann_file=path / "annotations" / f"instances_{split}.json",
            transforms=transforms,
            drop_empty=drop_empty,
            strict=strict,
        )


def _meta(*, num_train: int, num_val: int, image_size: int, seed: int) -> dict[str, int]:
    for name, value, low in (
        ("num_train", num_train, 0),
        ("num_val", num_val, 0),
        ("image_size", image_size, 64),
        ("seed", seed, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return {
        "generator_version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "seed": seed,
    }


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


def _write_dataset(out: Path, meta: dict[str, int]) -> None:
    (out / "annotations").mkdir()
    counts = {"train": meta["num_train"], "val": meta["num_val"]}
    with tqdm(total=sum(counts.values()), desc="synthetic shapes", unit="img") as bar:
        for split_index, split in enumerate(SPLITS):
            (out / split).mkdir()
            images, annotations = [], []
            for i in range(counts[split]):
                rng = np.random.default_rng([meta["seed"], split_index, i])
                pixels, shapes = render_image(rng, image_size=meta["image_size"])
                file_name = f"{i + 1:06d}.png"
                Image.fromarray(pixels).save(out / split / file_name, compress_level=1)
                images.append(
                    {
                        "id": i + 1,
                        "file_name": file_name,
                        "height": pixels.shape[0],
                        "width": pixels.shape[1],
                    }
                )
                first_id = len(annotations) + 1
                annotations += [
                    _coco_annotation(s, i + 1, first_id + k) for k, s in enumerate(shapes)
                ]
                bar.update()
            coco = {
                "info": {"description": "synthetic shapes", "generator_version": GENERATOR_VERSION},
                "images": images,
                "annotations": annotations,
                "categories": [
                    {"id": k + 1, "name": name, "supercategory": "shape"}
                    for k, name in enumerate(SHAPE_CLASSES)
                ],
            }
            (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    (out / META_FILE).write_text(json.dumps(meta, sort_keys=True))


def _coco_annotation(shape: ShapeInstance, image_id: int, ann_id: int) -> dict[str, Any]:
    x1, y1, x2, y2 = shape.box
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": shape.category_id,
        "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
        "area": float(shape.area),
        "iscrowd": 0,
    }


def render_image(
    rng: np.random.Generator, *, image_size: int
) -> tuple[np.ndarray, list[ShapeInstance]]:
    """Render one image: ``uint8 (H, W, 3)`` and its shapes (see the module doc)."""
    short = int(rng.integers(image_size * 3 // 4, image_size + 1))
    height, width = (short, image_size) if rng.random() < 0.5 else (image_size, short)
    canvas = _background(rng, height, width)
    num_objects = 0 if rng.random() < EMPTY_IMAGE_PROB else int(rng.integers(1, MAX_OBJECTS + 1))
    max_size = min(MAX_OBJECT_SIZE, int(0.6 * short))
    sizes = sorted(
        rng.integers(MIN_OBJECT_SIZE, max_size + 1, size=num_objects).tolist(), reverse=True
    )
    shapes: list[ShapeInstance] = []
    for size in sizes:
        category_id = int(rng.integers(1, len(SHAPE_CLASSES) + 1))
        mask = shape_mask(category_id, size, rng)
        origin = _place(rng, mask.shape, height, width, [s.box for s in shapes])
        if origin is None:
            continue
        y0, x0 = origin
        region = canvas[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
        region[mask] = _object_colour(rng, region.reshape(-1, 3).mean(axis=0), category_id)
        box = (x0, y0, x0 + mask.shape[1], y0 + mask.shape[0])
        shapes.append(ShapeInstance(category_id=category_id, box=box, area=int(mask.sum())))
    canvas += rng.normal(0.0, rng.uniform(2.0, 10.0), size=canvas.shape).astype(np.float32)
    return np.clip(canvas, 0, 255).round().astype(np.uint8), shapes


def shape_mask(category_id: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of one shape about ``size`` pixels across, cropped tight (every border row
    and column of the returned array contains a shape pixel)."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    name = SHAPE_CLASSES[category_id - 1]
    if name == "circle":
        draw.ellipse((0, 0, size - 1, size - 1), fill=255)
    else:
        draw.polygon(_polygon(name, size, rng), fill=255)
    mask = np.asarray(canvas) > 0
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _polygon(name: str, size: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Vertices of a rotated square / triangle / cross scaled to fit a ``size`` square."""
    if name == "square":
        points = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64)
        angle = rng.uniform(-20, 20)
    elif name == "triangle":
        theta = np.deg2rad([90, 210, 330])
        points = np.stack([np.cos(theta), np.sin(theta)], axis=1)
        angle = rng.uniform(0, 360)
    else:  # cross: a plus sign with arms one third as thick as it is long
        t = 1 / 3
        points = np.array(
            [
                (-t, -1),
                (t, -1),
                (t, -t),
                (1, -t),
                (1, t),
                (t, t),
                (t, 1),
                (-t, 1),
                (-t, t),
                (-1, t),
                (-1, -t),
                (-t, -t),
            ]
        )
        angle = rng.uniform(-20, 20)
    a = np.deg2rad(angle)
    points = points @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    points -= points.min(axis=0)
    points *= (size - 1) / points.max()
    return [(float(x), float(y)) for x, y in points]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """``float32 (H, W, 3)``: a smooth random colour field plus faint stripes."""
    grid = rng.integers(30, 226, size=(int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3))
    field = Image.fromarray(grid.astype(np.uint8)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    canvas = np.asarray(field, dtype=np.float32).copy()
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    direction = rng.uniform(0, np.pi)
    period = rng.uniform(6, 30)
    phase = (xx * np.cos(direction) + yy * np.sin(direction)) * (2 * np.pi / period)
    canvas += (rng.uniform(0, 20) * np.sin(phase))[..., None]
    return canvas


def _place(
    rng: np.random.Generator,
    shape: tuple[int, int],
    height: int,
    width: int,
    boxes: list[tuple[int, int, int, int]],
    tries: int = 30,
) -> tuple[int, int] | None:
    """Top-left ``(y, x)`` keeping the shape inside the image and its box IoU with every placed
    box at most :data:`MAX_BOX_IOU`; ``None`` when no such spot was found."""
    h, w = shape
    for _ in range(tries):
        y0 = int(rng.integers(0, height - h + 1))
        x0 = int(rng.integers(0, width - w + 1))
        if all(_iou((x0, y0, x0 + w, y0 + h), b) <= MAX_BOX_IOU for b in boxes):
            return y0, x0
    return None


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _object_colour(
    rng: np.random.Generator, background: np.ndarray, category_id: int
) -> np.ndarray:
    """A colour of the class's hue family, at least 150 (L1 over RGB) away from the mean
    ``background`` colour.

    Each class has a hue family (:data:`CLASS_HUES`, jittered by +-:data:`HUE_JITTER` of the
    colour wheel) with random saturation and brightness, so colour is a cue to the class but
    not a label: backgrounds use every hue, and shape still tells instances from texture.
    """
    base = CLASS_HUES[category_id - 1]
    colour = np.zeros(3, dtype=np.float32)
    for _ in range(20):
        hue = (base + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 1.0
        rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
        colour = np.array(rgb, dtype=np.float32) * 255.0
        if np.abs(colour - background).sum() >= 150:
            return colour
    # keep the hue, push brightness away from the background
    return np.where(background.mean() < 128, colour.clip(96, 255), colour * 0.35).astype(np.float32)
