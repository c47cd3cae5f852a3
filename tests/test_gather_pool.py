"""RoIAlign as a weighted gather (detector.modeling.gather_pool): torchvision's numbers to float
rounding, for every argument a detector passes, and a hand-computed value."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from detector.modeling.fuse import optimize_for_inference
from detector.modeling.gather_pool import (
    GatherMultiScaleRoIAlign,
    gather_applies,
    roi_align_gather,
)
from detector.modeling.poolers import SingleLevelRoIPooler, use_gather_pooling
from tests.helpers import build_model_from_config

ATOL = 1e-5


def _rois(n: int, images: int, size: tuple[int, int], scale: float, seed: int) -> torch.Tensor:
    """RoIs in input pixels: inside, straddling and beyond the map, tiny, large, degenerate."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    extent = torch.tensor([w, h]) / scale
    xy = (torch.rand(n, 2, generator=g) * 1.4 - 0.2) * extent
    wh = torch.rand(n, 2, generator=g) ** 3 * extent * 1.2
    wh[:4] = 0.0  # empty boxes
    wh[4:8] = 0.3 / scale  # below one feature pixel
    batch = torch.randint(0, images, (n, 1), generator=g).float()
    return torch.cat([batch, xy, xy + wh], dim=1)


@pytest.mark.parametrize("sampling_ratio", [2, 1, 0, -1])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_torchvision_roi_align(
    sampling_ratio: int, aligned: bool, channels_last: bool
) -> None:
    g = torch.Generator().manual_seed(sampling_ratio + 10 * aligned)
    for scale, size, out in ((1.0, (11, 17), 7), (0.25, (23, 19), (5, 3)), (1 / 16, (9, 14), 4)):
        x = torch.randn(2, 6, *size, generator=g)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        rois = _rois(60, 2, size, scale, seed=sampling_ratio + 3)
        expected = roi_align(x, rois, out, scale, sampling_ratio, aligned)
        got = roi_align_gather(x, rois, out, scale, sampling_ratio, aligned)
        assert got.shape == expected.shape
        if channels_last:  # gathered: channels-last out, equal to float rounding
            assert gather_applies(x)
            assert got.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
        else:  # an NCHW map: torchvision's kernel (on all threads), bit for bit
            assert not gather_applies(x)
            assert torch.equal(got, expected)
        assert expected[:4].abs().sum() > 0 or aligned, "empty unaligned RoIs pool one pixel"


def test_hand_computed_value_on_a_linear_map() -> None:
    # f(y, x) = 10 y + x is linear, so bilinear samples are exact and a bin's average is f at
    # the mean sample position. aligned=True, RoI (0, 0)-(2, 2), one bin, 2x2 samples: the RoI
    # starts at -0.5 and is 2 wide, samples at 0 and 1 on each axis, mean 0.5: f = 5.5.
    ys, xs = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    x = (10 * ys + xs)[None, None].contiguous(memory_format=torch.channels_last)
    assert gather_applies(x)
    rois = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0]])
    got = roi_align_gather(x, rois, 1, 1.0, 2, aligned=True)
    assert got.flatten().tolist() == [5.5]
    # 2x2 bins of the RoI (1, 1)-(3, 3) unaligned, 1 sample per bin at the bin centres
    # 1.5 and 2.5: f = 16.5, 17.5, 26.5, 27.5
    got = roi_align_gather(x, torch.tensor([[0.0, 1.0, 1.0, 3.0, 3.0]]), 2, 1.0, 1)
    assert got.flatten().tolist() == [16.5, 17.5, 26.5, 27.5]
    # the border rules, one sample each: x = 4.0 (= the width) still counts and clamps to the
    # last column: f(1, 3) = 13; x = -1.0 still counts and clamps to 0: f(1, 0) = 10; x = 4.5
    # and -1.5 are beyond: 0
    for box, value in (([3, 0, 5, 2], 13.0), ([-3, 0, 1, 2], 10.0), ([4, 0, 5, 2], 0.0)):
        rois = torch.tensor([[0.0, *box]])
        assert roi_align_gather(x, rois, 1, 1.0, 1).item() == value, box
        assert roi_align(x, rois, 1, 1.0, 1).item() == value, box
    rois = torch.tensor([[0.0, -5.0, 0.0, 2.0, 2.0]])  # sample at x = -1.5
    assert roi_align_gather(x, rois, 1, 1.0, 1).item() == 0.0


def test_boxes_as_a_list_per_image_and_no_rois() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 10, 12, generator=g).contiguous(memory_format=torch.channels_last)
    boxes = [torch.tensor([[1.0, 1.0, 8.0, 6.0]]), torch.tensor([[0.0, 2.0, 11.0, 9.0]] * 2)]
    torch.testing.assert_close(
        roi_align_gather(x, boxes, 3, 1.0, 2), roi_align(x, boxes, 3, 1.0, 2), atol=ATOL, rtol=0
    )
    empty = roi_align_gather(x, torch.zeros(0, 5), 3, 1.0, 2)
    assert empty.shape == (0, 3, 3, 3)


def test_falls_back_to_torchvision_where_it_does_not_apply() -> None:
    x = torch.randn(1, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    assert gather_applies(x)
    assert not gather_applies(x.contiguous())  # NCHW
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not gather_applies(x)
    assert not gather_applies(x.to(torch.bfloat16))
    assert not gather_applies(torch.empty(1, 4, 8, 8, device="meta"))
    rois = torch.tensor([[0.0, 1.0, 1.0, 6.0, 6.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # torchvision's own kernel, bit for bit
        assert torch.equal(roi_align_gather(x, rois, 2, 1.0, 2), roi_align(x, rois, 2, 1.0, 2))


def _fpn_features(seed: int) -> OrderedDict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (
            name,
            torch.randn(2, 8, s, s + 3, generator=g).contiguous(memory_format=torch.channels_last),
        )
        for name, s in zip("0123", (64, 32, 16, 8), strict=True)
    )


def test_multiscale_pooler_matches_torchvision_on_every_level() -> None:
    features = _fpn_features(0)
    g = torch.Generator().manual_seed(1)
    boxes = []
    for _ in range(2):
        xy = torch.rand(40, 2, generator=g) * 200
        wh = torch.rand(40, 2, generator=g) ** 2 * 250 + 1
        boxes.append(torch.cat([xy, xy + wh], dim=1))
    sizes = [(256, 268)] * 2
    reference = MultiScaleRoIAlign(list("0123"), 7, 2)
    gather = GatherMultiScaleRoIAlign.from_module(reference)
    got = gather(features, boxes, sizes)  # infers the scales on its first call
    expected = reference(features, boxes, sizes)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert gather.scales == reference.scales == [0.25, 0.125, 0.0625, 0.03125]
    nchw = {name: f.contiguous() for name, f in features.items()}  # torchvision's, bit for bit
    assert torch.equal(gather(nchw, boxes, sizes), reference(nchw, boxes, sizes))
    assert len(set(reference.map_levels(boxes).tolist())) >= 3, "cover several levels"


def test_c4_pooler_gathers_with_adaptive_sampling() -> None:
    g = torch.Generator().manual_seed(2)
    features = {
        "res4": torch.randn(2, 16, 20, 25, generator=g).contiguous(
            memory_format=torch.channels_last
        )
    }
    boxes = [_rois(30, 1, (20, 25), 1 / 16, seed=s)[:, 1:] for s in (4, 5)]
    pooler = SingleLevelRoIPooler(feature_name="res4", output_size=14, stride=16)
    expected = pooler(features, boxes, [(320, 400)] * 2)
    pooler.gather = True
    torch.testing.assert_close(
        pooler(features, boxes, [(320, 400)] * 2), expected, atol=ATOL, rtol=0
    )


def test_optimised_models_gather_unless_told_not_to() -> None:
    fpn = build_model_from_config(
        "faster_rcnn_r50_fpn", num_classes=3, overrides={"model.depth": 18}
    )
    pooler = optimize_for_inference(fpn).roi_heads.box_roi_pool
    assert isinstance(pooler, GatherMultiScaleRoIAlign) and pooler.workers is None
    serial = optimize_for_inference(fpn, parallel_pool=False).roi_heads.box_roi_pool
    assert isinstance(serial, GatherMultiScaleRoIAlign) and serial.workers == 1
    assert type(fpn.roi_heads.box_roi_pool) is MultiScaleRoIAlign
    c4 = build_model_from_config("faster_rcnn_r18_c4", num_classes=3, overrides={})
    assert optimize_for_inference(c4).roi_heads.box_roi_pool.gather is True
    assert c4.roi_heads.box_roi_pool.gather is False
    assert optimize_for_inference(c4, gather_pool=False).roi_heads.box_roi_pool.gather is False


def test_large_groups_are_pooled_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import detector.modeling.gather_pool as gather_pool

    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 12, 12, generator=g).contiguous(memory_format=torch.channels_last)
    rois = _rois(25, 1, (12, 12), 1.0, seed=9)
    expected = roi_align_gather(x, rois, 3, 1.0, 2)
    monkeypatch.setattr(gather_pool, "MAX_ENTRIES", 3 * 3 * 2 * 2 * 4 * 4)  # 4 RoIs a chunk
    torch.testing.assert_close(roi_align_gather(x, rois, 3, 1.0, 2), expected, atol=0, rtol=0)


def test_no_gradient_flows_into_the_boxes() -> None:
    x = torch.randn(1, 3, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    rois = torch.tensor([[0.0, 1.0, 1.0, 6.0, 5.0]], requires_grad=True)
    roi_align_gather(x, rois, 2, 1.0, 2).sum().backward()
    assert rois.grad is None and x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("sampling_ratio", [2, 0])
@pytest.mark.parametrize("aligned", [True, False])
def test_gradients_match_torchvision(sampling_ratio: int, aligned: bool) -> None:
    # channels-last training (train.channels_last=true) pools by the gather, forward and backward
    g = torch.Generator().manual_seed(4)
    base = torch.randn(2, 5, 13, 16, generator=g)
    rois = _rois(40, 2, (13, 16), 0.5, seed=6)
    grad_out = torch.randn(40, 5, 4, 4, generator=g)
    grads = []
    for x, fn in (
        (base, roi_align),
        (base.contiguous(memory_format=torch.channels_last), roi_align_gather),
    ):
        x = x.detach().requires_grad_()
        fn(x, rois, 4, 0.5, sampling_ratio, aligned).backward(grad_out)
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=ATOL, rtol=0)
    assert grads[0].abs().sum() > 0


def test_use_gather_pooling_swaps_in_place() -> None:
    fpn = build_model_from_config(
        "faster_rcnn_r50_fpn", num_classes=3, overrides={"model.depth": 18}
    )
    assert use_gather_pooling(fpn) == 1
    pooler = fpn.roi_heads.box_roi_pool
    assert isinstance(pooler, GatherMultiScaleRoIAlign) and pooler.workers == 1
    assert use_gather_pooling(fpn) == 1 and fpn.roi_heads.box_roi_pool is pooler  # idempotent
    # an optimised copy of a channels-last-trained model: the gather, its fallback threaded
    fast = optimize_for_inference(fpn).roi_heads.box_roi_pool
    assert isinstance(fast, GatherMultiScaleRoIAlign) and fast.workers is None
    c4 = build_model_from_config("faster_rcnn_r18_c4", num_classes=3, overrides={})
    assert use_gather_pooling(c4) == 1 and c4.roi_heads.box_roi_pool.gather is True
