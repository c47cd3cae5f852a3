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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from detector.data.base import DetectionTransform
from detector.data.coco import CocoDetection
from detector.data.generated import (
    META_FILE,
    SPLITS,
    Box,
    GeneratedImage,
    GeneratorSpec,
    box_iou_matrix,
    check_int,
    ensure_generated_dataset,
    hue_family_colour,
    smooth_field_with_stripes,
    tight_crop,
)

__all__ = [
    "GENERATOR_VERSION",
    "META_FILE",
    "SHAPE_CLASSES",
    "SPLITS",
    "ShapeInstance",
    "SyntheticShapesDetection",
    "ensure_synthetic_dataset",
    "render_image",
    "shape_mask",
]

#: Category names; category id ``i + 1`` is ``SHAPE_CLASSES[i]``.
SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
#: Bump when the rendering changes so that cached datasets are regenerated.
GENERATOR_VERSION = 2

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
    box: Box
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
    when missing or generated with other arguments (cached, locked and swapped into place as
    :func:`detector.data.generated.ensure_generated_dataset` describes).

    Raises:
        ValueError: invalid arguments.
        FileExistsError: ``root`` is a non-empty folder that this function did not write.
    """
    meta = {
        "generator_version": GENERATOR_VERSION,
        "num_train": check_int("num_train", num_train, 0),
        "num_val": check_int("num_val", num_val, 0),
        "image_size": check_int("image_size", image_size, 64),
        "seed": check_int("seed", seed, 0),
    }
    spec = GeneratorSpec(
        description="synthetic shapes",
        meta=meta,
        categories=[
            {"id": k + 1, "name": name, "supercategory": "shape"}
            for k, name in enumerate(SHAPE_CLASSES)
        ],
        render=lambda rng: GeneratedImage(*render_image(rng, image_size=image_size)),
    )
    return ensure_generated_dataset(root, spec)


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
    return tight_crop(np.asarray(canvas) > 0)


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
    return smooth_field_with_stripes(rng, grid, height, width)


def _place(
    rng: np.random.Generator,
    shape: tuple[int, int],
    height: int,
    width: int,
    boxes: list[Box],
    tries: int = 30,
) -> tuple[int, int] | None:
    """Top-left ``(y, x)`` keeping the shape inside the image and its box IoU with every placed
    box at most :data:`MAX_BOX_IOU`; ``None`` when no such spot was found."""
    h, w = shape
    for _ in range(tries):
        y0 = int(rng.integers(0, height - h + 1))
        x0 = int(rng.integers(0, width - w + 1))
        if not boxes or box_iou_matrix([(x0, y0, x0 + w, y0 + h)], boxes).max() <= MAX_BOX_IOU:
            return y0, x0
    return None


def _object_colour(
    rng: np.random.Generator, background: np.ndarray, category_id: int
) -> np.ndarray:
    """A colour of the class's hue family, at least 150 (L1 over RGB) away from the mean
    ``background`` colour.

    Each class has a hue family (:data:`CLASS_HUES`, jittered by +-:data:`HUE_JITTER` of the
    colour wheel) with random saturation and brightness, so colour is a cue to the class but
    not a label: backgrounds use every hue, and shape still tells instances from texture.
    """
    return hue_family_colour(rng, background, CLASS_HUES[category_id - 1], HUE_JITTER)
