"""Multi-scale testing as in the ResNet paper (appendix B), for the Fast R-CNN step only.

The RPN runs at the single test scale. Features are computed on an image pyramid (shorter side
in ``scales``); for each RoI the two adjacent scales of SPP-net's rule are chosen
(:func:`~detector.inference.scale_selection.select_scale_pairs`), the RoI is pooled on both and
the two maps are merged by element-wise max (maxout) before the per-region head.

The wrapper is itself a staged detector, so box refinement and the proposal-sharing ensemble
run on top of it. The pyramid is made by resizing the image the wrapper is given (the dataset's
test-scale image), not the original file.

A head that pools more than the RoIs (global context adds the whole-image box) says so with
``rois_to_pool(boxes, image_sizes)`` and ``features_from_pooled_rois(pooled, boxes)``. With
``context_scale="pyramid"`` (default) those extra boxes go through the same scale choice and
maxout as any RoI; with ``"test"`` they are pooled once, on the test-scale features, as in
training (the SPP-net rule sends a whole-image box to the small end of the pyramid, a view a
single-scale model never saw; docs/ablation_synthetic.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_area

from detector.inference.resize import box_scale, resize_image
from detector.inference.scale_selection import maxout_pool, select_scale_pairs
from detector.inference.staged import Detections, staged_inference


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


class MultiScaleMaxout(nn.Module):
    """Staged detector: RPN at the test scale, per-RoI maxout over two pyramid scales.

    Args:
        model: a trained FasterRCNN (its ``roi_heads`` provides ``box_roi_pool``,
            ``features_from_pooled``, ``box_predictor`` and ``decode``).
        scales: pyramid shorter sides in pixels, strictly increasing (paper: 200..1000).
        max_size: cap on the longer side of a pyramid level (``None``: no cap).
        target_size: SPP-net's target RoI side (224: "closest to 224 x 224 pixels").
        context_scale: where a head's extra boxes (global context's whole image) are pooled:
            ``"pyramid"`` (scale choice + maxout, like every RoI) or ``"test"`` (the test-scale
            features only).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        scales: Sequence[int] = (200, 400, 600, 800, 1000),
        max_size: int | None = None,
        target_size: float = 224.0,
        context_scale: str = "pyramid",
    ) -> None:
        super().__init__()
        if context_scale not in CONTEXT_SCALES:
            raise ValueError(
                f"unknown context_scale {context_scale!r}; allowed: {', '.join(CONTEXT_SCALES)}"
            )
        self.context_scale = context_scale
        scales = [int(s) for s in scales]
        if not scales or any(b <= a for a, b in zip(scales, scales[1:])) or min(scales) <= 0:
            raise ValueError(f"scales must be positive and strictly increasing, got {scales}")
        for name in ("roi_heads", "preprocess", "features", "proposals", "postprocess"):
            if not hasattr(model, name):
                raise TypeError(
                    f"multi-scale testing (paper) needs a FasterRCNN-like model with "
                    f"{name!r}; got {type(model).__name__}"
                )
        self.model = model
        self.scales = scales
        self.max_size = max_size
        self.target_size = float(target_size)

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    # ----------------------------------------------------------------- stages
    def preprocess(self, images: Sequence[Tensor]) -> PyramidImages:
        base = self.model.preprocess(images)
        levels = []
        for s in self.scales:
            resized = [resize_image(img, s, self.max_size) for img in images]
            levels.append(self.model.preprocess(resized))
        return PyramidImages(base=base, levels=levels)

    def features(self, images: PyramidImages) -> PyramidFeatures:
        base = self.model.features(images.base)
        levels = []
        for level in images.levels:
            same = level.image_sizes == images.base.image_sizes
            same = same and level.tensors.shape == images.base.tensors.shape
            levels.append(base if same else self.model.features(level))
        return PyramidFeatures(
            base=base,
            levels=levels,
            base_sizes=list(images.base.image_sizes),
            level_sizes=[list(level.image_sizes) for level in images.levels],
        )

    def proposals(self, images: PyramidImages, features: PyramidFeatures, targets=None):
        return self.model.proposals(images.base, features.base, targets)

    def predict(
        self, features: PyramidFeatures, boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image probs (R_i, K+1) and boxes (R_i, K+1, 4) in test-scale coordinates."""
        head = self.model.roi_heads
        to_pool = getattr(head, "rois_to_pool", None)
        pool_boxes = to_pool(boxes, image_sizes) if to_pool is not None else list(boxes)
        if to_pool is not None and self.context_scale == "test":
            pooled = self.pool_extra_at_test_scale(features, list(boxes), pool_boxes)
        else:
            pooled = self.pool(features, pool_boxes)
        from_pooled = getattr(head, "features_from_pooled_rois", None)
        if from_pooled is not None:
            region = from_pooled(pooled, boxes)
        else:
            region = head.features_from_pooled(pooled)
        logits, deltas = head.box_predictor(region)
        return head.decode(logits, deltas, boxes)

    def postprocess(
        self, probs: list[Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> Detections:
        return self.model.postprocess(probs, boxes, image_sizes)

    def forward(self, images: Sequence[Tensor]) -> Detections:
        return staged_inference(self, images)

    # ----------------------------------------------------------------- pooling
    def scale_pairs(self, features: PyramidFeatures, boxes: list[Tensor]) -> Tensor:
        """(sum R_i, 2) pyramid level indices of every box (SPP-net rule, image by image)."""
        pairs = []
        for i, b in enumerate(boxes):
            h, w = features.base_sizes[i]
            factors = [(lvl[i][0] * lvl[i][1] / (h * w)) ** 0.5 for lvl in features.level_sizes]
            pairs.append(
                select_scale_pairs(box_area(b), torch.tensor(factors), target_size=self.target_size)
            )
        return torch.cat(pairs).to(boxes[0].device)

    def pool(self, features: PyramidFeatures, boxes: list[Tensor]) -> Tensor:
        """Maxout-pooled maps (sum R_i, C, S, S) of per-image test-scale ``boxes``."""
        all_boxes = torch.cat(boxes)
        image_of = torch.cat(
            [torch.full((len(b),), i, dtype=torch.long) for i, b in enumerate(boxes)]
        ).to(all_boxes.device)

        def pool_at_scale(s: int, idx: Tensor) -> Tensor:
            sizes = features.level_sizes[s]
            per_image = []
            for i in range(len(boxes)):
                chosen = all_boxes[idx[image_of[idx] == i]]
                per_image.append(chosen * box_scale(features.base_sizes[i], sizes[i], chosen))
            return self.model.roi_heads.box_roi_pool(features.levels[s], per_image, sizes)

        return maxout_pool(self.scale_pairs(features, boxes), pool_at_scale)

    def pool_extra_at_test_scale(
        self, features: PyramidFeatures, boxes: list[Tensor], pool_boxes: list[Tensor]
    ) -> Tensor:
        """Pooled maps in ``pool_boxes`` order: each image's RoIs (scale pairs + maxout), then
        the boxes the head appended to them (pooled on the test-scale features)."""
        for b, p in zip(boxes, pool_boxes):
            if len(p) < len(b) or not torch.equal(p[: len(b)], b.to(p.dtype)):
                raise ValueError("rois_to_pool must return each image's RoIs first")
        extra = [p[len(b) :] for b, p in zip(boxes, pool_boxes)]
        rois = self.pool(features, boxes)
        head_pool = self.model.roi_heads.box_roi_pool
        more = head_pool(features.base, extra, features.base_sizes)
        pieces, r, e = [], 0, 0
        for b, x in zip(boxes, extra):
            pieces += [rois[r : r + len(b)], more[e : e + len(x)]]
            r, e = r + len(b), e + len(x)
        return torch.cat(pieces)
