"""Synthetic "scenes": look-alike classes that only the whole image tells apart (COCO format).

A mechanism dataset for the ResNet paper's detection tricks: global context (pairs of classes
that look the same and differ only by the scene around them), multi-scale testing (an 8x range
of object sizes) and box refinement with box voting (crowds of close, similar objects).
:func:`ensure_scenes_dataset` writes it with the machinery of :mod:`detector.data.generated`
(``root/{train,val}/000001.png``, ``root/annotations/instances_{train,val}.json``,
``root/meta.json``; image ``i`` depends only on ``(seed, split, i)``). Every switch below is a
field of :class:`ScenesConfig`, i.e. a key of the ``generator:`` node of
``configs/dataset/synthetic_scenes.yaml``.

**Layout.** Longer side ``image_size``, shorter side drawn from ``[3/4, 1] * image_size``
(landscape or portrait). Each image has one of the :data:`SCENE_TYPES`. Its top 25..35 % is a
horizon band painted in the scene's colours and texture: water (blues, horizontal waves), road
(greys, a dashed lane line and a solid edge line), grass (greens, fine vertical strokes), desert
(tans and oranges, smooth dunes). The ground below is drawn from one distribution for every
scene: a smooth field of near-grey colours with faint stripes. Gaussian noise covers the whole
image. Objects lie entirely on the ground, at least ``context_gap`` pixels below the band
(default ``None``: 10 % of ``image_size``), so the pixels near an object do not reveal the
scene; only the whole image does. COCO image entries carry ``scene``, ``band_height`` and
``crowded``.

**Classes and look-alike pairs.** Six classes (:data:`SCENE_CLASSES`, category ids 1..6) in
four appearance groups (:data:`APPEARANCE_GROUPS`; a glyph and a hue family each): ``hull``
(2:1 capsule, reds) -> boat, car; ``peak`` (chevron, yellow-greens) -> cow, camel; ``ball``
(disc, cyans) -> ball; ``cross`` (plus sign, violets) -> sign. Objects are rendered from their
group, never their class (:func:`paint_objects`), so the two classes of a pair
(:data:`LOOKALIKE_PAIRS`) have the same pixels for the same RNG state. With ``scene_context``
(default) boat occurs only on water, car only on roads, cow only on grass, camel only in deserts
(:data:`CLASS_SCENES`), ball and sign anywhere; with ``scene_context=False`` (the control) every
class occurs in every scene and nothing separates a pair. Either way each class is 1/6 of the
objects in expectation (:func:`class_weights`).

**Scales.** An object's size (its glyph's longer side) is drawn log-uniformly from
``[min_object_size, max_object_size]`` (14..112 px at 256 px, 8x), the top of the range cut
down in an image whose ground is too small for it.

**Crowds.** With probability ``crowd_prob`` an image is a crowd: ``crowd_min_objects ..
crowd_max_objects`` objects of one class valid for its scene, sizes within +-20 % of one base
size from ``[crowd_min_size, crowd_max_size]`` (capped so that the crowd fits in about half the
ground, members kept within the object size range), each placed at the free spot nearest to the
cluster's centre among random spots next to a member. Other images have ``1..max_objects``
objects, or none with probability ``empty_prob``. An object without a free spot is left out.

**Overlap.** Object masks never touch anywhere in the dataset (at least one background pixel
between two masks, diagonals included), so every object is fully visible and its box is the
tight box of its full mask. Boxes may overlap: up to IoU ``crowd_max_iou`` within a crowd, up to
:data:`MAX_BOX_IOU` otherwise. Only chevrons, whose boxes are mostly empty, nest closely enough
to reach box IoU above 0.3 without touching; discs, plus signs and capsules stay below ~0.15.

**The scene-swap diagnostic.** ``swap_pair_scenes=True`` renders every image with the other
scene of its pair (:data:`PAIR_SCENES`: water <-> road, grass <-> desert; ball and sign images
of those scenes too). The band and the pair classes change; not one pixel below the band does.
On such a split a detector that labels a pair from the object's pixels keeps its labels, which
are now wrong, so its pair accuracy falls from ``p`` to ``1 - p``; one that reads the scene keeps
``p``. Generate it under its own ``root`` (e.g. ``num_train=0`` and the val split only).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from detector.data.base import DetectionTransform
from detector.data.coco import CocoDetection
from detector.data.generated import (
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

#: Scene types, in the order their index is drawn.
SCENE_TYPES: tuple[str, ...] = ("water", "road", "grass", "desert")
#: Category names; category id ``i + 1`` is ``SCENE_CLASSES[i]``.
SCENE_CLASSES: tuple[str, ...] = ("boat", "car", "cow", "camel", "ball", "sign")
#: Pairs of classes drawn alike; with ``scene_context`` only the scene tells them apart.
LOOKALIKE_PAIRS: tuple[tuple[str, str], ...] = (("boat", "car"), ("cow", "camel"))
#: Class -> appearance group: the glyph and hue family it is rendered with.
APPEARANCE_GROUPS: Mapping[str, str] = {
    "boat": "hull",
    "car": "hull",
    "cow": "peak",
    "camel": "peak",
    "ball": "ball",
    "sign": "cross",
}
#: Class -> the scene types it occurs in when ``scene_context`` is on.
CLASS_SCENES: Mapping[str, tuple[str, ...]] = {
    "boat": ("water",),
    "car": ("road",),
    "cow": ("grass",),
    "camel": ("desert",),
    "ball": SCENE_TYPES,
    "sign": SCENE_TYPES,
}
#: Centre hue (fraction of the colour wheel) of each group's colour family, and its jitter.
GROUP_HUES: Mapping[str, float] = {"hull": 0.0, "peak": 0.25, "ball": 0.5, "cross": 0.75}
HUE_JITTER = 0.09
#: Largest height / width of each group's glyph (a size must fit the ground at this aspect).
GROUP_MAX_ASPECT: Mapping[str, float] = {"hull": 1 / 1.8, "peak": 0.95, "ball": 1.0, "cross": 1.0}
#: Scene type -> the scene of the other class of its look-alike pair (water <-> road, grass <->
#: desert); the ``swap_pair_scenes`` diagnostic renders every image with it.
PAIR_SCENES: Mapping[str, str] = {
    CLASS_SCENES[a][0]: CLASS_SCENES[b][0]
    for pair in LOOKALIKE_PAIRS
    for a, b in (pair, pair[::-1])
}
#: Bump when the rendering changes so that cached datasets are regenerated.
GENERATOR_VERSION = 1
BAND_FRACTION = (0.25, 0.35)
#: Box IoU cap between objects outside crowds.
MAX_BOX_IOU = 0.3
CROWD_SIZE_JITTER = 0.2
_PLACE_TRIES = 40
_CLUSTER_TRIES = 80


@dataclass(frozen=True)
class ScenesConfig:
    """Generator arguments (see the module doc); sizes and ``context_gap`` in pixels,
    ``context_gap=None`` meaning ``round(0.1 * image_size)``. The probabilities and
    ``crowd_max_iou`` are stored as floats (``crowd_prob=0`` becomes ``0.0``), so the
    ``meta.json`` cache key does not depend on how a number was written.

    Raises:
        ValueError: a value of the wrong type or out of range, or a ground too small to hold
            an object of ``min_object_size`` in the smallest image.
    """

    num_train: int = 2000
    num_val: int = 300
    image_size: int = 256
    seed: int = 0
    scene_context: bool = True
    context_gap: int | None = None
    min_object_size: int = 14
    max_object_size: int = 112
    max_objects: int = 6
    empty_prob: float = 0.03
    crowd_prob: float = 0.25
    crowd_min_objects: int = 6
    crowd_max_objects: int = 12
    crowd_min_size: int = 14
    crowd_max_size: int = 40
    crowd_max_iou: float = 0.5
    swap_pair_scenes: bool = False

    def __post_init__(self) -> None:
        if self.context_gap is None:
            object.__setattr__(self, "context_gap", round(0.1 * self.image_size))
        for name in ("scene_context", "swap_pair_scenes"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.swap_pair_scenes and not self.scene_context:
            raise ValueError("swap_pair_scenes needs scene_context: without it no scene has a pair")
        for name, low in (
            ("num_train", 0),
            ("num_val", 0),
            ("image_size", 64),
            ("seed", 0),
            ("context_gap", 0),
            ("min_object_size", 4),
            ("max_object_size", self.min_object_size),
            ("max_objects", 1),
            ("crowd_min_objects", 2),
            ("crowd_max_objects", self.crowd_min_objects),
            ("crowd_min_size", self.min_object_size),
            ("crowd_max_size", self.crowd_min_size),
        ):
            check_int(name, getattr(self, name), low)
        for name, high in (("empty_prob", 1.0), ("crowd_prob", 1.0), ("crowd_max_iou", 0.99)):
            object.__setattr__(self, name, _check_fraction(name, getattr(self, name), high))
        if self.crowd_max_size > self.max_object_size:
            raise ValueError(
                f"crowd_max_size must be <= max_object_size, got {self.crowd_max_size}"
            )
        if self.max_object_size > self.image_size:
            raise ValueError(f"max_object_size must be <= image_size, got {self.max_object_size}")
        short = self.image_size * 3 // 4
        ground = short - round(BAND_FRACTION[1] * short) - self.context_gap
        if ground - 1 < self.min_object_size:
            raise ValueError(
                f"context_gap={self.context_gap} leaves a {ground} px ground in a {short} px "
                f"high image, too small for min_object_size={self.min_object_size}"
            )


def _check_fraction(name: str, value: object, high: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= high:
        raise ValueError(f"{name} must be a number in [0, {high}], got {value!r}")
    return float(value)


@dataclass(frozen=True, eq=False)
class SceneInstance:
    """One object: category id ``1..6``, tight xyxy box (ints, exclusive max), mask area and the
    ``bool (y2 - y1, x2 - x1)`` mask inside the box (every border row and column is hit)."""

    category_id: int
    box: Box
    area: int
    mask: np.ndarray


@dataclass(frozen=True, eq=False)
class SceneImage:
    """One rendered image: ``uint8 (H, W, 3)`` pixels, scene type, band height in rows, whether
    it is a crowd image, and its objects."""

    pixels: np.ndarray
    scene: str
    band_height: int
    crowded: bool
    instances: list[SceneInstance] = field(default_factory=list)

    def as_generated(self) -> GeneratedImage:
        """The writer's view: objects and the extra COCO image keys."""
        fields = {"scene": self.scene, "band_height": self.band_height, "crowded": self.crowded}
        return GeneratedImage(pixels=self.pixels, objects=self.instances, image_fields=fields)


def ensure_scenes_dataset(root: str | Path, **generator_args: Any) -> Path:
    """Return ``root`` holding the scenes dataset for ``generator_args`` (the fields of
    :class:`ScenesConfig`), generating it first when missing or generated with other arguments.

    Raises:
        ValueError: invalid arguments (an unknown name included).
        FileExistsError: ``root`` is a non-empty folder that was not generated.
    """
    try:
        config = ScenesConfig(**generator_args)
    except TypeError as e:  # an unknown keyword: a config typo, report it as a bad value
        raise ValueError(f"invalid scenes generator arguments: {e}") from e
    return ensure_generated_dataset(root, scenes_spec(config))


def _cache_fields(config: ScenesConfig) -> dict[str, Any]:
    """The config as ``meta.json`` records it. ``swap_pair_scenes`` (added after version 1 of
    the generator) enters only when set, so that datasets generated before it stay valid."""
    fields = asdict(config)
    if not fields["swap_pair_scenes"]:
        del fields["swap_pair_scenes"]
    return fields


def scenes_spec(config: ScenesConfig) -> GeneratorSpec:
    """What :func:`ensure_scenes_dataset` writes for ``config``."""
    return GeneratorSpec(
        description="synthetic scenes",
        meta={"generator_version": GENERATOR_VERSION, **_cache_fields(config)},
        categories=[
            {"id": k + 1, "name": name, "supercategory": APPEARANCE_GROUPS[name]}
            for k, name in enumerate(SCENE_CLASSES)
        ],
        render=lambda rng: render_scene(rng, config).as_generated(),
        info={
            "scene_types": list(SCENE_TYPES),
            "pairs": [list(pair) for pair in LOOKALIKE_PAIRS],
            "appearance_groups": dict(APPEARANCE_GROUPS),
            "scene_context": config.scene_context,
        },
    )


class SyntheticScenesDetection(CocoDetection):
    """One split of the scenes dataset, generated on first use (a Hydra ``_target_``).

    Args:
        root: dataset folder (see :func:`ensure_scenes_dataset`).
        split: ``"train"`` or ``"val"``.
        generator: :class:`ScenesConfig` fields (the config's ``generator:`` node); missing
            ones take their defaults.
        transforms, drop_empty, class_names, strict: as for
            :class:`~detector.data.coco.CocoDetection` (``class_names=None``: all six, in
            :data:`SCENE_CLASSES` order).
    """

    #: Files are written on first use, so a missing ``root`` is not a config error
    #: (:func:`detector.config_checks.check_config`).
    generates_data = True

    def __init__(
        self,
        *,
        root: str | Path,
        split: str,
        generator: Mapping[str, Any] | None = None,
        transforms: DetectionTransform | None = None,
        drop_empty: bool = False,
        class_names: Sequence[str] | None = None,
        strict: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        path = ensure_scenes_dataset(root, **dict(generator or {}))
        super().__init__(
            image_dir=path / split,
            ann_file=path / "annotations" / f"instances_{split}.json",
            transforms=transforms,
            drop_empty=drop_empty,
            class_names=class_names,
            strict=strict,
        )


def class_weights(scene: str, *, scene_context: bool) -> np.ndarray:
    """``float64 (6,)``: P(class | scene) in :data:`SCENE_CLASSES` order.

    With ``scene_context`` a class that occurs in ``scene`` weighs ``1 / (number of scenes it
    occurs in)`` (2/3 for the scene's pair class, 1/6 for ball and sign), which makes every class
    1/6 of the objects over uniformly drawn scenes; without, the weights are uniform.
    """
    if scene not in SCENE_TYPES:
        raise ValueError(f"scene must be one of {SCENE_TYPES}, got {scene!r}")
    if not scene_context:
        return np.full(len(SCENE_CLASSES), 1 / len(SCENE_CLASSES))
    weights = np.array(
        [1 / len(CLASS_SCENES[c]) if scene in CLASS_SCENES[c] else 0.0 for c in SCENE_CLASSES]
    )
    return weights / weights.sum()


def render_scene(
    rng: np.random.Generator, config: ScenesConfig, *, scene: str | None = None
) -> SceneImage:
    """Render one image (see the module doc); ``scene`` replaces the drawn scene type, and
    without it ``config.swap_pair_scenes`` replaces it by the other scene of its pair
    (:data:`PAIR_SCENES`).

    Layout, band, ground and objects draw from separate child streams of ``rng``, so the ground
    and the objects do not depend on the band painter. Forcing the other scene of a pair (water
    and road, grass and desert) therefore changes the band and the pair class of the objects,
    and nothing else: not one pixel below the band.
    """
    layout_rng, band_rng, ground_rng, object_rng = rng.spawn(4)
    size = config.image_size
    short = int(layout_rng.integers(size * 3 // 4, size + 1))
    height, width = (short, size) if layout_rng.random() < 0.5 else (size, short)
    drawn = SCENE_TYPES[int(layout_rng.integers(len(SCENE_TYPES)))]
    if scene is None:
        scene = PAIR_SCENES[drawn] if config.swap_pair_scenes else drawn
    elif scene not in SCENE_TYPES:
        raise ValueError(f"scene must be one of {SCENE_TYPES}, got {scene!r}")
    band_height = round(layout_rng.uniform(*BAND_FRACTION) * height)
    canvas = _ground(ground_rng, height, width)
    canvas[:band_height] = BAND_PAINTERS[scene](band_rng, band_height, width)
    top = band_height + (config.context_gap or 0)  # context_gap is resolved by ScenesConfig
    crowded = bool(object_rng.random() < config.crowd_prob)
    plan = _plan_crowd if crowded else _plan_objects
    category_ids, sizes = plan(object_rng, config, scene, height - top, width)
    instances = paint_objects(
        canvas,
        category_ids=category_ids,
        sizes=sizes,
        top=top,
        max_iou=config.crowd_max_iou if crowded else MAX_BOX_IOU,
        cluster=crowded,
        rng=object_rng,
    )
    sigma = ground_rng.uniform(2.0, 8.0)
    canvas += ground_rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(sigma)
    pixels = np.clip(canvas, 0, 255).round().astype(np.uint8)
    return SceneImage(pixels, scene, band_height, crowded, instances)


def _plan_objects(
    rng: np.random.Generator, config: ScenesConfig, scene: str, ground: int, width: int
) -> tuple[list[int], list[int]]:
    """Category ids and sizes of a normal image's objects, largest first (hardest to place)."""
    if rng.random() < config.empty_prob:
        return [], []
    count = int(rng.integers(1, config.max_objects + 1))
    weights = class_weights(scene, scene_context=config.scene_context)
    ids = (rng.choice(len(SCENE_CLASSES), size=count, p=weights) + 1).tolist()
    sizes = [
        _log_uniform(
            rng,
            config.min_object_size,
            min(config.max_object_size, _fit(_group(cid), ground, width)),
        )
        for cid in ids
    ]
    order = sorted(range(count), key=lambda k: -sizes[k])
    return [ids[k] for k in order], [sizes[k] for k in order]


def _plan_crowd(
    rng: np.random.Generator, config: ScenesConfig, scene: str, ground: int, width: int
) -> tuple[list[int], list[int]]:
    """Category ids and sizes of a crowd: one class, similar sizes, largest first. The base size
    is capped so that the crowd takes at most about half of the ground."""
    weights = class_weights(scene, scene_context=config.scene_context)
    category_id = int(rng.choice(len(SCENE_CLASSES), p=weights)) + 1
    count = int(rng.integers(config.crowd_min_objects, config.crowd_max_objects + 1))
    low, high = (
        config.min_object_size,
        min(config.max_object_size, _fit(_group(category_id), ground, width)),
    )
    room = int(math.sqrt(ground * width / (2 * count)) / (1 + CROWD_SIZE_JITTER))
    base_high = max(low, min(config.crowd_max_size, room, high))
    base = _log_uniform(rng, min(config.crowd_min_size, base_high), base_high)
    jitter = rng.uniform(1 - CROWD_SIZE_JITTER, 1 + CROWD_SIZE_JITTER, size=count)
    sizes = np.clip(np.round(base * jitter), low, high).astype(int).tolist()
    return [category_id] * count, sorted(sizes, reverse=True)


def _group(category_id: int) -> str:
    return APPEARANCE_GROUPS[SCENE_CLASSES[category_id - 1]]


def _fit(group: str, ground: int, width: int) -> int:
    """Largest size whose glyph fits a ``ground`` rows high, ``width`` wide area."""
    return min(width, int((ground - 1) / GROUP_MAX_ASPECT[group]))


def _log_uniform(rng: np.random.Generator, low: int, high: int) -> int:
    """An int in ``[low, high]``, log-uniform: each integer ``n`` gets the log-width of
    ``[n - 0.5, n + 0.5]``, the ends included."""
    value = math.exp(rng.uniform(math.log(low - 0.5), math.log(high + 0.5)))
    return int(np.clip(round(value), low, high))


def paint_objects(
    canvas: np.ndarray,
    *,
    category_ids: Sequence[int],
    sizes: Sequence[int],
    top: int,
    max_iou: float,
    cluster: bool,
    rng: np.random.Generator,
) -> list[SceneInstance]:
    """Place and paint objects into ``canvas`` (``float32 (H, W, 3)``, in place), in order.

    Each object lies in rows ``>= top``, its mask at least one pixel (diagonals included) away
    from every mask painted before, its box IoU with every earlier box ``<= max_iou``. With
    ``cluster``, an object goes to the free spot nearest the cluster's centre among random spots
    next to an earlier member and uniformly random ones; otherwise to the first free one of
    uniformly random spots. An object without a free spot is left out. Drawing uses only the
    appearance group of each class, so swapping a class for its look-alike (same RNG state)
    paints the same pixels.

    Returns:
        the painted objects, in order.
    """
    height, width = canvas.shape[:2]
    occupied = np.zeros((height + 2, width + 2), dtype=bool)  # masks so far, 1-pixel frame
    instances: list[SceneInstance] = []
    for category_id, size in zip(category_ids, sizes, strict=True):
        group = _group(category_id)
        mask = glyph_mask(group, size, rng)
        boxes = [i.box for i in instances]
        origin = _place(rng, mask, occupied, top, boxes, max_iou, cluster)
        if origin is None:
            continue
        y0, x0 = origin
        h, w = mask.shape
        region = canvas[y0 : y0 + h, x0 : x0 + w]
        region[mask] = object_colour(group, region.reshape(-1, 3).mean(axis=0), rng)
        occupied[y0 + 1 : y0 + 1 + h, x0 + 1 : x0 + 1 + w] |= mask
        box = (x0, y0, x0 + w, y0 + h)
        instances.append(SceneInstance(category_id, box, int(mask.sum()), mask))
    return instances


def _place(
    rng: np.random.Generator,
    mask: np.ndarray,
    occupied: np.ndarray,
    top: int,
    boxes: list[Box],
    max_iou: float,
    cluster: bool,
) -> tuple[int, int] | None:
    """Top-left ``(y, x)`` for ``mask`` as :func:`paint_objects` describes, or ``None``."""
    h, w = mask.shape
    height, width = occupied.shape[0] - 2, occupied.shape[1] - 2
    if h > height - top or w > width:
        return None
    ys = rng.integers(top, height - h + 1, size=_PLACE_TRIES)
    xs = rng.integers(0, width - w + 1, size=_PLACE_TRIES)
    order = np.arange(_PLACE_TRIES)
    if cluster and boxes:  # uniform spots stay in the pool: stragglers when the cluster is full
        near_ys, near_xs = _spots_next_to(
            rng, np.asarray(boxes, dtype=np.float64), h, w, top, height, width
        )
        ys, xs = np.concatenate([near_ys, ys]), np.concatenate([near_xs, xs])
        cy, cx = _centre(boxes)
        order = np.argsort((ys + h / 2 - cy) ** 2 + (xs + w / 2 - cx) ** 2, kind="stable")
    candidates = np.stack([xs, ys, xs + w, ys + h], axis=1)
    fits = (
        box_iou_matrix(candidates, boxes).max(axis=1) <= max_iou
        if boxes
        else np.ones(len(candidates), dtype=bool)
    )
    halo = _dilate(mask)
    for k in order[fits[order]]:
        y0, x0 = int(ys[k]), int(xs[k])
        if not occupied[y0 : y0 + h + 2, x0 : x0 + w + 2][halo].any():
            return y0, x0
    return None


def _centre(boxes: list[Box]) -> tuple[float, float]:
    """Mean ``(y, x)`` of the box centres."""
    array = np.asarray(boxes, dtype=np.float64)
    return float((array[:, 1] + array[:, 3]).mean() / 2), float(
        (array[:, 0] + array[:, 2]).mean() / 2
    )


def _spots_next_to(
    rng: np.random.Generator,
    boxes: np.ndarray,
    h: int,
    w: int,
    top: int,
    height: int,
    width: int,
) -> tuple[np.ndarray, np.ndarray]:
    """:data:`_CLUSTER_TRIES` random top-lefts ``(ys, xs)`` for an ``h x w`` box whose centre lies
    next to a random earlier box: 0.2..1.2 times the mean of the two boxes' longer sides away,
    half of them in a row or column with it (rows pack tight), clamped into the ground."""
    n = _CLUSTER_TRIES
    anchors = boxes[rng.integers(len(boxes), size=n)]
    in_line = rng.integers(4, size=n) * (np.pi / 2) + rng.uniform(-0.1, 0.1, size=n)
    angle = np.where(rng.random(n) < 0.5, in_line, rng.uniform(0, 2 * np.pi, size=n))
    extent = np.maximum(anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1])
    reach = rng.uniform(0.2, 1.2, size=n) * (max(h, w) + extent) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2 + reach * np.sin(angle)
    cx = (anchors[:, 0] + anchors[:, 2]) / 2 + reach * np.cos(angle)
    ys = np.clip(np.round(cy - h / 2), top, height - h).astype(np.int64)
    xs = np.clip(np.round(cx - w / 2), 0, width - w).astype(np.int64)
    return ys, xs


def _dilate(mask: np.ndarray) -> np.ndarray:
    """``bool (h + 2, w + 2)``: ``mask`` grown by one pixel in all 8 directions."""
    h, w = mask.shape
    out = np.zeros((h + 2, w + 2), dtype=bool)
    for dy in range(3):
        for dx in range(3):
            out[dy : dy + h, dx : dx + w] |= mask
    return out


def glyph_mask(group: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Tight ``bool`` mask of the group's glyph, longer side ``size`` (its width):

    - ``hull``: a horizontal capsule, width / height in [1.8, 2.2];
    - ``peak``: a chevron (an upright "Λ"), height 0.75..0.95 of the width, each leg
      0.10..0.15 of the width (at least 2 px) thick horizontally, inner edges parallel to the
      outer ones, so that copies shifted up or down nest without touching;
    - ``ball``: a disc;
    - ``cross``: an upright plus sign, arms 0.28..0.38 of the size thick.

    Raises:
        ValueError: unknown ``group``.
    """
    if group == "hull":
        h = max(2, round(size / rng.uniform(1.8, 2.2)))
        canvas = Image.new("L", (size, h), 0)
        ImageDraw.Draw(canvas).rounded_rectangle((0, 0, size - 1, h - 1), (h - 1) / 2, fill=255)
    elif group == "peak":
        h = max(3, round(size * rng.uniform(0.75, 0.95)))
        right, bottom = size - 1, h - 1
        leg = max(2.0, rng.uniform(0.10, 0.15) * right)
        inner = bottom * 2 * leg / right  # depth of the inner apex: inner edges stay parallel
        points = [(0, bottom), (right / 2, 0), (right, bottom)]
        points += [(right - leg, bottom), (right / 2, inner), (leg, bottom)]
        canvas = Image.new("L", (size, h), 0)
        ImageDraw.Draw(canvas).polygon(points, fill=255)
    elif group == "ball":
        canvas = Image.new("L", (size, size), 0)
        ImageDraw.Draw(canvas).ellipse((0, 0, size - 1, size - 1), fill=255)
    elif group == "cross":
        arm = max(2, round(rng.uniform(0.28, 0.38) * size))
        start = (size - arm) // 2
        canvas = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(canvas)
        draw.rectangle((start, 0, start + arm - 1, size - 1), fill=255)
        draw.rectangle((0, start, size - 1, start + arm - 1), fill=255)
    else:
        raise ValueError(f"group must be one of {sorted(GROUP_HUES)}, got {group!r}")
    return tight_crop(np.asarray(canvas) > 0)


def object_colour(group: str, background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``float32 (3,)``: a colour of the group's hue family (:data:`GROUP_HUES`), saturated
    enough to stand out from the near-grey ground (see
    :func:`detector.data.generated.hue_family_colour`)."""
    return hue_family_colour(rng, background, GROUP_HUES[group], HUE_JITTER)


# --- ground and horizon bands: float32 (rows, width, 3), noise is added over the whole image ----


def _hsv(
    rng: np.random.Generator,
    hue: tuple[float, float],
    sat: tuple[float, float],
    val: tuple[float, float],
) -> np.ndarray:
    """``float32 (3,)`` RGB in 0..255 of a colour drawn uniformly from HSV ranges."""
    rgb = colorsys.hsv_to_rgb(rng.uniform(*hue), rng.uniform(*sat), rng.uniform(*val))
    return np.array(rgb, dtype=np.float32) * 255.0


def _ground(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """The same for every scene: a smooth field of near-grey colours (grey 50..205, each channel
    tinted by +-18) with faint stripes."""
    shape = (int(rng.integers(2, 6)), int(rng.integers(2, 6)))
    grid = rng.uniform(50, 205, size=(*shape, 1)) + rng.uniform(-18, 18, size=(*shape, 3))
    return smooth_field_with_stripes(rng, np.clip(grid, 0, 255).round(), height, width)


def _water(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Blues with horizontal waves (period 4..9 rows) that sway gently along x."""
    base = _hsv(rng, (0.54, 0.62), (0.5, 0.9), (0.45, 0.85))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    sway = rng.uniform(0.1, 0.4) * np.sin(
        xx * (2 * np.pi / rng.uniform(20, 60)) + rng.uniform(0, 6.3)
    )
    waves = np.sin(2 * np.pi * (yy / rng.uniform(4, 9) + sway))
    return base + (rng.uniform(12, 28) * waves)[..., None] * np.float32([0.6, 0.8, 1.0])


def _road(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Grey asphalt with grain, a dashed lane line (white or yellow) across the middle and a
    solid white edge line near the bottom."""
    grey = rng.uniform(70, 140) + rng.uniform(-6, 6, size=3)
    canvas = np.empty((height, width, 3), dtype=np.float32)
    canvas[:] = grey + rng.normal(0, 6, size=(height, width, 1))
    thick = max(2, round(height / 14))
    line = np.float32([235, 235, 225]) if rng.random() < 0.5 else np.float32([230, 190, 40])
    dash, gap = int(rng.integers(8, 20)), int(rng.integers(6, 16))
    dashes = (np.arange(width) + int(rng.integers(0, dash + gap))) % (dash + gap) < dash
    row = round(rng.uniform(0.4, 0.6) * (height - thick))
    canvas[row : row + thick, dashes] = line
    canvas[height - 2 * thick : height - thick] = np.float32([230, 230, 230])
    return canvas


def _grass(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Greens with fine vertical strokes: each column a blade of its own brightness, growing from
    the bottom of the band up to a random row, darker towards the bottom."""
    base = _hsv(rng, (0.24, 0.36), (0.5, 0.85), (0.35, 0.7))
    blades = rng.normal(0, 1, size=width).astype(np.float32)
    tips = rng.uniform(0, 0.6, size=width) * height
    rows = np.arange(height, dtype=np.float32)[:, None]
    strokes = np.where(rows >= tips[None, :], blades[None, :], 0.0)
    depth = rows / max(height - 1, 1) * rng.uniform(10, 30)
    return base + (rng.uniform(12, 25) * strokes - depth)[..., None]


def _desert(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Tans and oranges with smooth dunes: a pale haze above a wavy ridge, sand below it that
    darkens smoothly with depth."""
    sand = _hsv(rng, (0.06, 0.12), (0.35, 0.65), (0.7, 0.95))
    x = np.arange(width, dtype=np.float32)
    ridge = height * (
        rng.uniform(0.25, 0.5)
        + 0.12 * np.sin(x * (2 * np.pi / rng.uniform(60, 160)) + rng.uniform(0, 6.3))
        + 0.06 * np.sin(x * (2 * np.pi / rng.uniform(25, 60)) + rng.uniform(0, 6.3))
    )
    depth = (np.arange(height, dtype=np.float32)[:, None] - ridge[None, :]) / height
    body = 1.0 - 0.3 * np.clip(depth * 2, 0, 1) - 0.08 * np.tanh(depth * 12)
    haze = np.clip(sand + 40, 0, 255)
    return np.where(depth[..., None] > 0, sand * body[..., None], haze)


#: Scene type -> painter of its horizon band ``(rng, rows, width) -> float32 (rows, width, 3)``.
BAND_PAINTERS: Mapping[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "water": _water,
    "road": _road,
    "grass": _grass,
    "desert": _desert,
}
