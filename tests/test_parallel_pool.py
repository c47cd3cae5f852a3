"""RoIAlign split over threads (detector.modeling.parallel_pool): torchvision's numbers, bit for
bit, in every mode a detector calls it in."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from detector.modeling.fuse import optimize_for_inference
from detector.modeling.parallel_pool import (
    ParallelMultiScaleRoIAlign,
    boxes_to_rois,
    parallel_roi_align,
)
from detector.modeling.poolers import SingleLevelRoIPooler
from tests.helpers import build_model_from_config


def _boxes(n: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h, w = size
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.9, h * 0.9])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5]) + 1
    return torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w - 1.0, h - 1.0]))], dim=1)


def test_boxes_to_rois_prefixes_the_image_index() -> None:
    rois = boxes_to_rois([torch.tensor([[1.0, 2, 3, 4]]), torch.tensor([[5.0, 6, 7, 8]] * 2)])
    assert rois.tolist() == [[0, 1, 2, 3, 4], [1, 5, 6, 7, 8], [1, 5, 6, 7, 8]]
    with pytest.raises(ValueError, match="empty list"):
        boxes_to_rois([])


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("workers", [2, 3])
def test_same_result_as_roi_align_bit_for_bit(
    aligned: bool, sampling_ratio: int, workers: int
) -> None:
    features = torch.randn(2, 16, 24, 32)
    boxes = [_boxes(101, (96, 128), seed=0), _boxes(57, (96, 128), seed=1)]
    expected = roi_align(features, boxes, (7, 7), 0.25, sampling_ratio, aligned)
    with torch.inference_mode():
        got = parallel_roi_align(
            features, boxes, (7, 7), 0.25, sampling_ratio, aligned, workers=workers
        )
        assert got.is_inference()  # the caller's inference mode reached the threads
    assert torch.equal(got, expected)
    rois = boxes_to_rois(boxes)
    small = parallel_roi_align(features, rois[:40], 7, 0.25, workers=2)  # under 2 x 32: one call
    assert torch.equal(small, roi_align(features, rois[:40], 7, 0.25))


def test_gradients_match_roi_align() -> None:
    g = torch.Generator().manual_seed(5)  # seeded: the draws must not depend on earlier tests
    features = torch.randn(1, 8, 20, 20, generator=g).requires_grad_()
    rois = boxes_to_rois([_boxes(90, (80, 80), seed=2)])
    weights = torch.randn(90, 8, 5, 5, generator=g)
    (parallel_roi_align(features, rois, 5, 0.25, 2, workers=2) * weights).sum().backward()
    got = features.grad.clone()
    features.grad = None
    (roi_align(features, rois, 5, 0.25, 2) * weights).sum().backward()
    # the two chunks' gradients are summed in another order: equal up to float rounding
    torch.testing.assert_close(got, features.grad, rtol=1e-5, atol=1e-6)


def test_multiscale_pooler_matches_torchvision() -> None:
    names = ["0", "1", "2", "3"]
    sizes = [(200, 272), (100, 136), (50, 68), (25, 34)]
    features = OrderedDict((n, torch.randn(2, 8, h, w)) for n, (h, w) in zip(names, sizes))
    image_sizes = [(800, 1067), (760, 1000)]
    boxes = [_boxes(300, image_sizes[0], seed=3), _boxes(200, image_sizes[1], seed=4)]
    boxes[0][:40, 2:] = boxes[0][:40, :2] + 600  # large boxes: the coarse levels get RoIs too
    boxes[0][:40, 2:] = torch.minimum(boxes[0][:40, 2:], torch.tensor([1066.0, 799]))
    reference = MultiScaleRoIAlign(names, 7, 2)
    parallel = ParallelMultiScaleRoIAlign.from_module(MultiScaleRoIAlign(names, 7, 2), workers=2)
    expected = reference(features, boxes, image_sizes)
    with torch.inference_mode():
        got = parallel(features, boxes, image_sizes)
    assert torch.equal(got, expected)
    assert parallel.scales == reference.scales == [0.25, 0.125, 0.0625, 0.03125]
    levels = reference.map_levels(boxes)
    assert len(set(levels.tolist())) >= 3, "the check should cover several levels"


def test_optimised_models_pool_in_parallel_and_the_source_does_not() -> None:
    fpn = build_model_from_config(
        "faster_rcnn_r50_fpn", num_classes=3, overrides={"model.depth": 18}
    )
    # gather_pool (on by default) replaces the RoIAlign poolers again: tests/test_gather_pool.py
    fast = optimize_for_inference(fpn, gather_pool=False)
    assert isinstance(fast.roi_heads.box_roi_pool, ParallelMultiScaleRoIAlign)
    assert type(fpn.roi_heads.box_roi_pool) is MultiScaleRoIAlign
    off = optimize_for_inference(fpn, parallel_pool=False, gather_pool=False)
    assert type(off.roi_heads.box_roi_pool) is MultiScaleRoIAlign
    c4 = build_model_from_config("faster_rcnn_r18_c4", num_classes=3, overrides={})
    pooler = c4.roi_heads.box_roi_pool
    assert isinstance(pooler, SingleLevelRoIPooler) and pooler.workers == 1
    assert optimize_for_inference(c4, gather_pool=False).roi_heads.box_roi_pool.workers is None
