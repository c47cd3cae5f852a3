"""Global context (ResNet paper, appendix B): the whole image as one more RoI.

For every image the full-image box ``[0, 0, W, H]`` is pooled on the same feature map(s) by the
same ``box_roi_pool`` and run through the same post-RoI layers (res5 + GAP for C4, the two-layer
MLP for FPN). Its feature is concatenated with each RoI's feature before the sibling classifier
and box regressor, which therefore take ``2 * D`` inputs (:class:`GlobalContextPredictor`).
The whole-image boxes are pooled by the same pool as the RoIs (asked with ``whole_image=True``,
so a multi-scale pool may treat them differently) and go through the post-RoI layers in the
same call as the RoIs, so a trainable BatchNorm in the head normalises both with the same batch
statistics, and the context path is trained end to end.

Parameter names are those of the plain head; only the predictor's input width doubles. A
checkpoint of a plain model therefore loads into a plain model exactly as before, and loading it
into a context model fails with a shape mismatch on ``box_predictor`` only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detector.modeling.roi_heads.base import FastRCNNPredictor, StandardRoIHeads
from detector.modeling.staged import Pool


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
    """:class:`StandardRoIHeads` whose region feature is ``[RoI feature | image feature]``:
    ``region_features(boxes, image_sizes, pool) -> (sum R_i, 2D)``."""

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

    def region_features(
        self, boxes: list[Tensor], image_sizes: list[tuple[int, int]], pool: Pool
    ) -> Tensor:
        """Pool the RoIs and the whole images, run the post-RoI layers on both at once, and put
        each image's feature next to each of its RoIs' features: (sum R_i, 2D)."""
        if len(boxes) != len(image_sizes):
            raise ValueError(f"{len(boxes)} box lists for {len(image_sizes)} images")
        rois = pool(boxes)
        whole = pool(whole_image_boxes(image_sizes, boxes[0]), whole_image=True)
        feats = self.box_head(torch.cat([rois, whole.to(rois.dtype)])).flatten(start_dim=1)
        roi_feats, image_feats = feats[: len(rois)], feats[len(rois) :]
        counts = torch.tensor([len(b) for b in boxes], device=feats.device)
        per_roi = image_feats.repeat_interleave(counts, dim=0)
        return torch.cat([roi_feats, per_roi], dim=1)
