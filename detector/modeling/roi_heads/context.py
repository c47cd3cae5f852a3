"""Global context (ResNet paper, appendix B): the whole image as one more RoI.

For every image the full-image box ``[0, 0, W, H]`` is pooled on the same feature map(s) by the
same ``box_roi_pool`` and run through the same post-RoI layers (res5 + GAP for C4, the two-layer
MLP for FPN). Its feature is concatenated with each RoI's feature before the sibling classifier
and box regressor, which therefore take ``2 * D`` inputs (:class:`GlobalContextPredictor`).
The whole-image boxes are pooled in the same call as the RoIs, so a trainable BatchNorm in the
head normalises both with the same batch statistics, and the context path is trained end to end.

Parameter names are those of the plain head; only the predictor's input width doubles. A
checkpoint of a plain model therefore loads into a plain model exactly as before, and loading it
into a context model fails with a shape mismatch on ``box_predictor`` only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detector.modeling.roi_heads.base import FastRCNNPredictor, StandardRoIHeads


class GlobalContextPredictor(FastRCNNPredictor):
    """Sibling layers on ``[region feature (D) | global feature (D)]``.

    ``in_channels`` is the width ``D`` of one region feature, as for the plain predictor (so the
    config of a plain head only changes its ``_target_``); the linear layers take ``2 * D``.
    ``forward(x: (R, 2D)) -> (class_logits (R, K+1), box_deltas (R, (K+1)*4))``.
    """

    def __init__(self, *, in_channels: int, num_classes: int) -> None:
        super().__init__(in_channels=2 * in_channels, num_classes=num_classes)
        self.region_channels = in_channels


def whole_image_boxes(image_sizes: list[tuple[int, int]], like: Tensor) -> list[Tensor]:
    """One ``(1, 4)`` box ``[0, 0, W, H]`` per image, with the dtype and device of ``like``."""
    return [like.new_tensor([[0.0, 0.0, float(w), float(h)]]) for h, w in image_sizes]


class GlobalContextRoIHeads(StandardRoIHeads):
    """:class:`StandardRoIHeads` whose region feature is ``[RoI feature | image feature]``.

    ``box_features(features, boxes, image_sizes) -> (sum R_i, 2D)`` is split in two public steps
    so that test-time tricks that pool features themselves (multi-scale testing) keep the
    context: :meth:`rois_to_pool` lists the boxes to pool and :meth:`features_from_pooled_rois`
    turns their pooled maps into region features.
    """

    def __init__(self, *, box_predictor: FastRCNNPredictor, **kwargs) -> None:
        super().__init__(box_predictor=box_predictor, **kwargs)
        width = getattr(self.box_head, "out_channels", None)
        expected = box_predictor.cls_score.in_features
        if width is not None and 2 * int(width) != expected:
            raise ValueError(
                f"global context concatenates two {width}-d features, so the box predictor "
                f"needs {2 * int(width)} inputs but has {expected}; use "
                "detector.modeling.roi_heads.context.GlobalContextPredictor with "
                f"in_channels={width}"
            )

    def rois_to_pool(self, boxes: list[Tensor], image_sizes: list[tuple[int, int]]) -> list[Tensor]:
        """Per image its ``R_i`` boxes followed by its whole-image box: (R_i + 1, 4)."""
        if len(boxes) != len(image_sizes):
            raise ValueError(f"{len(boxes)} box lists for {len(image_sizes)} images")
        whole = whole_image_boxes(image_sizes, boxes[0] if boxes else torch.zeros(0, 4))
        return [torch.cat([b, w.to(b.dtype)]) for b, w in zip(boxes, whole)]

    def features_from_pooled_rois(self, pooled: Tensor, boxes: list[Tensor]) -> Tensor:
        """Pooled maps of :meth:`rois_to_pool`'s boxes, (sum (R_i + 1), C, S, S), to region
        features (sum R_i, 2D): each RoI's feature next to its image's global feature."""
        feats = self.features_from_pooled(pooled)
        counts = [len(b) + 1 for b in boxes]
        if feats.shape[0] != sum(counts):
            raise ValueError(
                f"expected {sum(counts)} pooled regions (the RoIs plus one whole-image box per "
                f"image), got {feats.shape[0]}"
            )
        out = []
        for per_image in feats.split(counts):
            rois, image = per_image[:-1], per_image[-1:]
            out.append(torch.cat([rois, image.expand(rois.shape[0], -1)], dim=1))
        return torch.cat(out)

    def box_features(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> Tensor:
        """Pool the RoIs and the whole images together, run the post-RoI layers once, and
        concatenate: (sum R_i, 2D)."""
        pooled = self.box_roi_pool(features, self.rois_to_pool(boxes, image_sizes), image_sizes)
        return self.features_from_pooled_rois(pooled, boxes)
