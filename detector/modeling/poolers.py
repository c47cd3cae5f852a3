"""RoI feature extractors with one call signature: ``pooler(features, boxes, image_sizes)``.

``features`` is the backbone's dict of maps, ``boxes`` a list of (R_i, 4) xyxy boxes in input
image coordinates, ``image_sizes`` a list of (H, W). The result is (sum R_i, C, S, S).
For FPN models use torchvision's ``MultiScaleRoIAlign`` directly (same signature).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import MultiScaleRoIAlign, roi_pool

from detector.modeling.gather_pool import GatherMultiScaleRoIAlign, roi_align_gather
from detector.modeling.parallel_pool import ParallelMultiScaleRoIAlign, parallel_roi_align

POOL_TYPES = ("align", "pool")


class SingleLevelRoIPooler(nn.Module):
    """RoIAlign (default) or the paper's RoIPool on one feature map of known stride."""

    def __init__(
        self,
        *,
        feature_name: str,
        output_size: int,
        stride: int,
        pool_type: str = "align",
        sampling_ratio: int = 0,
        aligned: bool = True,
        workers: int | None = 1,
        gather: bool = False,
    ) -> None:
        super().__init__()
        if pool_type not in POOL_TYPES:
            raise ValueError(f"unknown pool_type {pool_type!r}; allowed: {', '.join(POOL_TYPES)}")
        self.feature_name = feature_name
        self.output_size = (output_size, output_size)
        self.spatial_scale = 1.0 / stride
        self.pool_type = pool_type
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.workers = workers  # RoIAlign threads (None: torch's count); same result for any
        # RoIAlign as one weighted gather over channels-last features (detector.modeling.
        # gather_pool): the same numbers to float rounding, much faster on CPU
        self.gather = gather

    def forward(
        self,
        features: dict[str, torch.Tensor],
        boxes: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> torch.Tensor:
        x = features[self.feature_name]
        boxes = [b.to(x.dtype) for b in boxes]
        if self.pool_type == "pool":
            return roi_pool(x, boxes, self.output_size, self.spatial_scale)
        align = roi_align_gather if self.gather else parallel_roi_align
        return align(
            x,
            boxes,
            self.output_size,
            spatial_scale=self.spatial_scale,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
            workers=self.workers,
        )


def use_gather_pooling(model: nn.Module) -> int:
    """Make ``model``'s RoIAlign poolers (in place) pool channels-last maps by one weighted
    gather (:mod:`detector.modeling.gather_pool`), forward and backward; NCHW maps are pooled
    as before. Returns the number of RoIAlign poolers that now gather (also those that did)."""
    changed = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (MultiScaleRoIAlign, ParallelMultiScaleRoIAlign):
                # where the gather does not apply, pool as before: on all threads only if the
                # pooler was already parallel
                workers = child.workers if isinstance(child, ParallelMultiScaleRoIAlign) else 1
                setattr(parent, name, GatherMultiScaleRoIAlign.from_module(child, workers))
                changed += 1
            elif isinstance(child, GatherMultiScaleRoIAlign):  # gathers already
                changed += 1
            elif isinstance(child, SingleLevelRoIPooler) and child.pool_type == "align":
                child.gather = True
                changed += 1
    return changed
