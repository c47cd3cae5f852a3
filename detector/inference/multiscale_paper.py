"""Multi-scale testing as in the ResNet paper (appendix B), for the Fast R-CNN step only.

The RPN runs at the single test scale. Features are computed on an image pyramid (shorter side
in ``scales``); for each RoI the two adjacent scales of SPP-net's rule are chosen
(:func:`~detector.inference.scale_selection.select_scale_pairs`), the RoI is pooled on both and
the two maps are merged by element-wise max (maxout) before the per-region head.

The wrapper is itself a staged detector, so box refinement and the proposal-sharing ensemble
run on top of it. The pyramid is made by resizing the image the wrapper is given (the dataset's
test-scale image), not the original file.

The wrapper plugs into the detector's pooling seam (:mod:`detector.modeling.staged`): its
``predict`` hands the wrapped model's ``predict`` a pool that pools every region the head asks
for on the pyramid, so it works with any head that pools through the seam (plain, global
context) and around a proposal ensemble (one pyramid pool per member). A global-context head
asks for the whole-image box with ``whole_image=True``: with ``context_scale="pyramid"``
(default) it goes through the same scale choice and maxout as any RoI; with ``"test"`` it is
pooled once, on the test-scale features, as in training (the SPP-net rule sends a whole-image
box to the small end of the pyramid, a view a single-scale model never saw;
docs/ablation_synthetic.md). With ``levels_in_range`` a box that lies above the training
objects' sizes at every smaller level (on the studies' images, the whole-image box) stays at the
test scale; one that fits them at a smaller level goes there alone
(:func:`~detector.inference.scale_selection.levels_within`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_area

from detector.inference.resize import box_scale, resize_image
from detector.inference.scale_selection import levels_within, maxout_pool, select_scale_pairs
from detector.modeling.postprocess import Detections
from detector.modeling.staged import Pool, PoolingDetector, require_staged, staged_inference

logger = logging.getLogger(__name__)


@dataclass
class PyramidImages:
    """The test-scale batch (for the RPN) and one batch per pyramid scale."""

    base: ImageList
    levels: list[ImageList]

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        return self.base.image_sizes


@dataclass
class PyramidFeatures:
    """Backbone features of the test-scale batch and of every pyramid level, with the image
    sizes they were computed from."""

    base: dict[str, Tensor]
    levels: list[dict[str, Tensor]]
    base_sizes: list[tuple[int, int]]
    level_sizes: list[list[tuple[int, int]]]


CONTEXT_SCALES = ("pyramid", "test")


class PyramidPool:
    """A :data:`~detector.modeling.staged.Pool` over an image pyramid: each box is pooled at
    its two SPP-net scales (``level_pools``, one per level, taking boxes in that level's
    coordinates) and the two maps are merged by element-wise max; whole-image boxes go to
    ``base_pool`` instead when ``context_scale == "test"``."""

    def __init__(
        self,
        *,
        level_pools: Sequence[Pool],
        base_pool: Pool,
        base_sizes: list[tuple[int, int]],
        level_sizes: list[list[tuple[int, int]]],
        target_sizes: list[float],
        context_scale: str,
        size_range: tuple[float, float] | None = None,
    ) -> None:
        self.level_pools = list(level_pools)
        self.base_pool = base_pool
        self.base_sizes = base_sizes
        self.level_sizes = level_sizes
        self.target_sizes = target_sizes  # per image, in its test-scale pixels
        self.context_scale = context_scale
        self.size_range = size_range  # levels restricted to it (levels_in_range), or None

    def scale_pairs(self, boxes: list[Tensor]) -> Tensor:
        """(sum R_i, 2) pyramid level indices of every box (SPP-net rule, image by image)."""
        pairs = []
        for i, b in enumerate(boxes):
            h, w = self.base_sizes[i]
            factors = torch.tensor(
                [(lvl[i][0] * lvl[i][1] / (h * w)) ** 0.5 for lvl in self.level_sizes]
            )
            areas = box_area(b)
            allowed = None
            if self.size_range is not None:
                allowed = levels_within(areas, factors, self.size_range)
            target = self.target_sizes[i]
            pairs.append(select_scale_pairs(areas, factors, target_size=target, allowed=allowed))
        return torch.cat(pairs).to(boxes[0].device)

    def __call__(self, boxes: list[Tensor], whole_image: bool = False) -> Tensor:
        """Maxout-pooled maps (sum R_i, C, S, S) of per-image test-scale ``boxes``."""
        if whole_image and self.context_scale == "test":
            return self.base_pool(boxes, whole_image=True)
        all_boxes = torch.cat(boxes)
        image_of = torch.cat(
            [torch.full((len(b),), i, dtype=torch.long) for i, b in enumerate(boxes)]
        ).to(all_boxes.device)

        def pool_at_scale(s: int, idx: Tensor) -> Tensor:
            sizes = self.level_sizes[s]
            per_image = []
            for i in range(len(boxes)):
                chosen = all_boxes[idx[image_of[idx] == i]]
                per_image.append(chosen * box_scale(self.base_sizes[i], sizes[i], chosen))
            return self.level_pools[s](per_image, whole_image=whole_image)

        return maxout_pool(self.scale_pairs(boxes), pool_at_scale)


def pyramid_pool(
    level_pools: Sequence[Any], base_pool: Any, **options: Any
) -> PyramidPool | list[Any]:
    """:class:`PyramidPool` over the model's per-level pools; for a proposal ensemble, whose
    pool is one pool per member, a list of one pyramid pool per member."""
    if isinstance(base_pool, list):
        return [
            pyramid_pool([level[m] for level in level_pools], member, **options)
            for m, member in enumerate(base_pool)
        ]
    return PyramidPool(level_pools=level_pools, base_pool=base_pool, **options)


class MultiScaleMaxout(nn.Module):
    """Staged detector: RPN at the test scale, per-RoI maxout over two pyramid scales.

    Args:
        model: a staged detector with the pooling seam (``pooler`` and ``predict(...,
            pool=...)``): a FasterRCNN or a proposal ensemble.
        scales: pyramid shorter sides in pixels, strictly increasing (paper: 200..1000).
        max_size: cap on the longer side of a pyramid level (``None``: no cap).
        target_size: SPP-net's target RoI side (224: "closest to 224 x 224 pixels").
        context_scale: where whole-image boxes (global context) are pooled: ``"pyramid"``
            (scale choice + maxout, like every RoI) or ``"test"`` (the test-scale features).
        reference_scale: ``None``: ``scales`` and ``target_size`` are pixels, used as they are
            (absolute); a number (the paper: 600): they were written for a test image of that
            shorter side and are scaled by the given image's shorter side over it (relative:
            the paper's geometry carried to another image size). docs/tricks.md discusses the
            carry-over; ``target_size`` may also come from the object sizes the model trained
            on (``test.per_model.target_size=train_objects``, resolved when the test model is
            built).
        target_range: ``None``, or ``[low, high]`` pixels that bound the (scaled) target: the
            sizes the per-region head was trained on (``target_range=train_objects``: the
            10th-90th percentile of the training object sides), so that the scale rule never
            aims a RoI at a size the head hardly saw.
        levels_in_range: with ``target_range``, also restrict each RoI's two levels to those
            at which its side lies within ``target_range``, the test scale itself (where
            training showed the head objects of every size) and, for a RoI below the range, the
            enlarged levels that move it toward it
            (:func:`~detector.inference.scale_selection.levels_within`): a RoI whose neighbour
            level would be a size the head hardly saw is pooled at one scale. Without it the
            bounded target still picks the closest level, and its neighbour can lie outside the
            range.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        scales: Sequence[int] = (200, 400, 600, 800, 1000),
        max_size: int | None = None,
        target_size: float = 224.0,
        context_scale: str = "pyramid",
        reference_scale: float | None = None,
        target_range: Sequence[float] | None = None,
        levels_in_range: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(target_range, str):
            raise ValueError(
                f"target_range must be [low, high] pixels or null, got {target_range!r} (the "
                "config value train_objects is resolved by the engine when it builds the test model)"
            )
        if target_range is not None:
            target_range = tuple(float(v) for v in target_range)
            if len(target_range) != 2 or not 0 < target_range[0] <= target_range[1]:
                raise ValueError(
                    f"target_range must be [low, high] with 0 < low <= high, got {target_range}"
                )
        self.target_range = target_range
        self.levels_in_range = bool(levels_in_range)
        if self.levels_in_range and target_range is None:
            logger.info("multi-scale testing: levels_in_range has no effect without target_range")
        self._warned_no_test_level = False
        if reference_scale is not None and reference_scale <= 0:
            raise ValueError(f"reference_scale must be positive or null, got {reference_scale}")
        if float(target_size) <= 0:
            raise ValueError(f"target_size must be positive, got {target_size}")
        self.reference_scale = reference_scale
        if context_scale not in CONTEXT_SCALES:
            raise ValueError(
                f"unknown context_scale {context_scale!r}; allowed: {', '.join(CONTEXT_SCALES)}"
            )
        self.context_scale = context_scale
        scales = [int(s) for s in scales]
        if not scales or any(b <= a for a, b in zip(scales, scales[1:])) or min(scales) <= 0:
            raise ValueError(f"scales must be positive and strictly increasing, got {scales}")
        self.model = require_staged(model, "multi-scale testing (paper)", PoolingDetector)
        self.scales = scales
        self.max_size = max_size
        self.target_size = float(target_size)

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    # ----------------------------------------------------------------- stages
    def factor(self, image_size: tuple[int, int]) -> float:
        """How much ``scales`` and ``target_size`` are scaled for a test image of
        ``image_size`` (H, W): 1 when absolute, else its shorter side / ``reference_scale``."""
        if self.reference_scale is None:
            return 1.0
        return min(image_size) / float(self.reference_scale)

    def target(self, image_size: tuple[int, int]) -> float:
        """SPP-net's target side for a test image of ``image_size``: ``target_size`` scaled by
        :meth:`factor`, then bounded by ``target_range``."""
        target = self.target_size * self.factor(image_size)
        if self.target_range is not None:
            target = min(max(target, self.target_range[0]), self.target_range[1])
        return target

    def preprocess(self, images: Sequence[Tensor]) -> PyramidImages:
        base = self.model.preprocess(images)
        factors = [self.factor((int(img.shape[-2]), int(img.shape[-1]))) for img in images]
        levels = []
        for s in self.scales:
            resized = [
                resize_image(img, max(1, round(s * f)), self.max_size)
                for img, f in zip(images, factors)
            ]
            levels.append(self.model.preprocess(resized))
        return PyramidImages(base=base, levels=levels)

    def features(self, images: PyramidImages) -> PyramidFeatures:
        base = self.model.features(images.base)
        levels = [
            base if level.image_sizes == images.base.image_sizes else self.model.features(level)
            for level in images.levels
        ]
        return PyramidFeatures(
            base=base,
            levels=levels,
            base_sizes=list(images.base.image_sizes),
            level_sizes=[list(level.image_sizes) for level in images.levels],
        )

    def proposals(self, images: PyramidImages, features: PyramidFeatures, targets=None):
        return self.model.proposals(images.base, features.base, targets)

    def pooler(self, features: PyramidFeatures, image_sizes: list[tuple[int, int]]) -> Any:
        """The pyramid pool (see :func:`pyramid_pool`) of ``features``."""
        if self.levels_in_range and self.target_range is not None:
            self._check_test_level(features)
        return pyramid_pool(
            [self.model.pooler(f, s) for f, s in zip(features.levels, features.level_sizes)],
            self.model.pooler(features.base, features.base_sizes),
            base_sizes=features.base_sizes,
            level_sizes=features.level_sizes,
            target_sizes=[self.target(s) for s in features.base_sizes],
            context_scale=self.context_scale,
            size_range=self.target_range if self.levels_in_range else None,
        )

    def _check_test_level(self, features: PyramidFeatures) -> None:
        """Warn (once) when an image's test scale is not a pyramid level: ``levels_in_range``
        then has no test scale to keep a RoI at, and a RoI with no level in range falls back
        to SPP-net's pair over all levels."""
        if self._warned_no_test_level:
            return
        for i, size in enumerate(features.base_sizes):
            if all(tuple(level[i]) != tuple(size) for level in features.level_sizes):
                logger.warning(
                    "multi-scale testing: the test image size %s is not a pyramid level (scales "
                    "%s, reference_scale %s, max_size %s); RoIs with no level within the "
                    "training sizes use SPP-net's pair over all levels",
                    tuple(size),
                    self.scales,
                    self.reference_scale,
                    self.max_size,
                )
                self._warned_no_test_level = True
                return

    def predict(
        self,
        features: PyramidFeatures,
        boxes: list[Tensor],
        image_sizes: list[tuple[int, int]],
        *,
        pool: Any = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image probs (R_i, K+1) and boxes (R_i, K+1, 4) in test-scale coordinates."""
        pool = self.pooler(features, image_sizes) if pool is None else pool
        return self.model.predict(features.base, boxes, image_sizes, pool=pool)

    def postprocess(
        self, probs: list[Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> Detections:
        return self.model.postprocess(probs, boxes, image_sizes)

    def forward(self, images: Sequence[Tensor]) -> Detections:
        return staged_inference(self, images)
