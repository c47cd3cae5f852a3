"""BatchNorm folding and the inference-optimised copy (detector.modeling.fuse).

Tolerance of the detection checks: the optimised model computes the same function in another
order (BN folded into the weights in float64 then rounded to float32; channels-last kernels),
so boxes may move by float rounding only: same number of detections and labels, boxes within
1e-2 pixels and scores within 1e-4 (measured: about 6e-5 px and 4e-6).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FrozenBatchNorm2d

from detector.benchmarks.twin import (
    benchmark_images,
    calibrate_classifier,
    compare_detections,
    detections_match,
    randomize_weights,
)
from detector.modeling.fuse import (
    ConvReLU,
    FusedResidualBlock,
    FusedTwoMLPHead,
    conv_bn_pairs,
    count_batchnorm,
    fold_batchnorm,
    optimize_for_inference,
)
from detector.modeling.roi_heads.fpn import TwoMLPHead
from tests.helpers import build_model_from_config

BOX_ATOL, SCORE_ATOL = 1e-2, 1e-4
#: few regions per image, and C4's res5 on 7x7 instead of 14x14 regions: ~30x cheaper heads
FEW_REGIONS = {"model.rpn_post_nms_top_n": {"training": 64, "testing": 32}}
SMALL_C4 = {**FEW_REGIONS, "model.pooler_resolution": 7}
SMALL_FPN = {**FEW_REGIONS, "model.depth": 18}


def _random_frozen_bn(channels: int, seed: int) -> FrozenBatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = FrozenBatchNorm2d(channels)
    bn.running_mean.copy_(torch.randn(channels, generator=g))
    bn.running_var.copy_(torch.rand(channels, generator=g) + 0.5)
    bn.weight.copy_(torch.randn(channels, generator=g))
    bn.bias.copy_(torch.randn(channels, generator=g))
    return bn


class ConvBn(nn.Module):
    def __init__(self, bias: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
        self.bn = _random_frozen_bn(4, seed=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class BnBeforeConv(ConvBn):
    def __init__(self) -> None:
        super().__init__()
        self.bn = _random_frozen_bn(3, seed=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


class ConvOutputReused(ConvBn):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y  # folding would change the second use of y


class SharedConv(ConvBn):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.conv(x)


@pytest.mark.parametrize("bias", [False, True])
def test_folding_matches_hand_computed_affine(bias: bool) -> None:
    module = ConvBn(bias=bias).eval()
    x = torch.randn(2, 3, 9, 11)
    bn = module.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    expected = torch.relu(
        (module.conv(x) - bn.running_mean[:, None, None]) * scale[:, None, None]
        + bn.bias[:, None, None]
    )
    folded, count = fold_batchnorm(module)
    assert count == 1 and isinstance(folded.bn, nn.Identity)
    assert isinstance(module.bn, FrozenBatchNorm2d), "the source must stay untouched"
    torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(module(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("module_type", [BnBeforeConv, ConvOutputReused, SharedConv])
def test_pairs_come_from_the_data_flow_not_from_names(module_type: type[nn.Module]) -> None:
    module = module_type().eval()
    assert conv_bn_pairs(module) == []
    folded, count = fold_batchnorm(module)
    assert count == 0
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(folded(x), module(x))


def test_trainable_batchnorm_folds_only_in_eval_mode() -> None:
    module = ConvBn()
    module.bn = nn.BatchNorm2d(4)
    module.bn.running_mean.uniform_(-1, 1)
    module.bn.running_var.uniform_(0.5, 2)
    assert fold_batchnorm(module.train())[1] == 0
    folded, count = fold_batchnorm(module.eval())
    x = torch.randn(2, 3, 8, 8)
    assert count == 1
    torch.testing.assert_close(folded(x), module(x), atol=1e-5, rtol=1e-5)


def _block(kind: type[nn.Module], stride: int) -> nn.Module:
    width = 8 if kind is BasicBlock else 2
    out = width * (1 if kind is BasicBlock else 4)
    downsample = nn.Sequential(nn.Conv2d(8, out, 1, stride=stride), _random_frozen_bn(out, 5))
    block = kind(8, width, stride=stride, downsample=downsample, norm_layer=FrozenBatchNorm2d)
    for i, bn in enumerate(m for m in block.modules() if isinstance(m, FrozenBatchNorm2d)):
        bn.load_state_dict(_random_frozen_bn(bn.weight.numel(), seed=10 + i).state_dict())
    return block.eval()


@pytest.mark.parametrize("kind", [BasicBlock, Bottleneck])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_residual_blocks_compute_the_same_function(
    kind: type[nn.Module], channels_last: bool
) -> None:
    block = nn.Sequential(_block(kind, stride=2), nn.Conv2d(8, 8, 3), nn.ReLU())
    fast = optimize_for_inference(block, channels_last=channels_last)
    assert isinstance(fast[0], FusedResidualBlock) and isinstance(fast[1], ConvReLU)
    assert isinstance(fast[2], nn.Identity)
    x = torch.randn(2, 8, 13, 10)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), block(x), atol=1e-5, rtol=1e-5)
    # under autograd (no fused kernel) the eager fallback computes the same
    x.requires_grad_(True)
    torch.testing.assert_close(fast(x), block(x), atol=1e-5, rtol=1e-5)


def test_fused_mlp_head_computes_the_same_function() -> None:
    torch.manual_seed(0)
    head = TwoMLPHead(in_channels=4, resolution=3, representation_size=16).eval()
    fast = optimize_for_inference(nn.Sequential(head))
    assert isinstance(fast[0], FusedTwoMLPHead) and fast[0].out_channels == 16
    x = torch.randn(5, 4, 3, 3)
    expected = torch.relu(head.fc7(torch.relu(head.fc6(x.reshape(5, 36)))))
    assert (expected == 0).any() and (expected > 0).any(), "both sides of the ReLU are exercised"
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), expected, atol=1e-5, rtol=1e-5)
    # the eager fallback (autograd) computes the same
    torch.testing.assert_close(fast(x.requires_grad_(True)), expected, atol=1e-5, rtol=1e-5)


def test_blocks_with_unfolded_batchnorm_are_not_fused() -> None:
    fast = optimize_for_inference(_block(Bottleneck, stride=1), fold_bn=False)
    assert isinstance(fast, Bottleneck) and count_batchnorm(fast) == 4


def test_optimised_copy_is_eval_channels_last_and_leaves_the_source_alone() -> None:
    model = build_model_from_config("faster_rcnn_r18_c4", num_classes=3, overrides=SMALL_C4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize_for_inference(model)
    assert model.training and count_batchnorm(model) == 20
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not fast.training and count_batchnorm(fast) == 0
    assert not any(p.requires_grad for p in fast.parameters())
    assert all(isinstance(b, FusedResidualBlock) for b in fast.roi_heads.box_head.res5)
    conv = fast.backbone.layer1[0].conv1
    assert conv.bias is not None and conv.weight.is_contiguous(memory_format=torch.channels_last)


ALL_LEVERS = (
    {"channels_last": False, "fuse_relu": False},  # folding alone
    {"fold_bn": False, "fuse_relu": False},  # channels-last alone
    # the gathering RoIAlign alone (its own tests: tests/test_gather_pool.py)
    {"fold_bn": False, "channels_last": False, "fuse_relu": False, "parallel_pool": False},
    {},  # everything (ReLU fusion: test_fused_residual_blocks_compute_the_same_function)
)


@pytest.mark.parametrize(
    ("name", "overrides", "variants"),
    [
        ("faster_rcnn_r18_c4", SMALL_C4, ALL_LEVERS),
        ("faster_rcnn_r50_fpn", SMALL_FPN, ({},)),
    ],
)
def test_optimised_model_returns_the_same_detections(
    name: str, overrides: dict, variants: tuple[dict, ...]
) -> None:
    torch.manual_seed(0)
    model = build_model_from_config(name, num_classes=5, overrides=overrides)
    randomize_weights(model, seed=0)
    images = benchmark_images(
        batch_size=2, image_size=128, max_size=256, device=torch.device("cpu"), seed=0
    )
    images[1] = images[1][:, :, :128]  # two sizes in one batch: padding is exercised
    calibrate_classifier(model, images)
    model.eval()
    with torch.inference_mode():
        expected = model(images)
        for kwargs in variants:
            got = optimize_for_inference(model, **kwargs)(images)
            report = compare_detections(got, expected)
            assert report["num_detections"] > 20, "parity on empty outputs would prove nothing"
            assert detections_match(report, box_atol=BOX_ATOL, score_atol=SCORE_ATOL), report


def test_eval_optimize_model_wraps_an_optimised_copy() -> None:
    from detector.engine.build import build_test_model
    from detector.inference.box_refinement import BoxRefinement
    from tests.helpers import compose_config

    torch.manual_seed(0)
    model = build_model_from_config("faster_rcnn_r18_c4", num_classes=5, overrides=SMALL_C4)
    randomize_weights(model, seed=0)
    images = benchmark_images(
        batch_size=1, image_size=128, max_size=256, device=torch.device("cpu"), seed=0
    )
    calibrate_classifier(model, images)
    model.eval()
    plain_cfg = compose_config("eval", ["test=box_refinement"])
    fast_cfg = compose_config("eval", ["test=box_refinement", "eval.optimize_model=true"])
    plain, fast = build_test_model(plain_cfg, model), build_test_model(fast_cfg, model)
    assert isinstance(fast, BoxRefinement) and fast.model is not model
    assert count_batchnorm(fast.model) == 0 and count_batchnorm(model) == 20
    with torch.inference_mode():
        report = compare_detections(fast(images), plain(images))
    assert report["num_detections"] > 10
    assert detections_match(report, box_atol=BOX_ATOL, score_atol=SCORE_ATOL), report


def test_channels_last_only_where_it_pays() -> None:
    """channels_last=None picks the layout by the test images' shorter side."""
    model = build_model_from_config("faster_rcnn_r18_c4", num_classes=5, overrides=SMALL_C4)
    conv = "backbone.conv1.weight"

    def is_nhwc(m: torch.nn.Module) -> bool:
        w = dict(m.named_parameters())[conv]
        return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()

    assert not is_nhwc(optimize_for_inference(model, channels_last=None, image_size=192))
    assert is_nhwc(optimize_for_inference(model, channels_last=None, image_size=600))
    assert not is_nhwc(optimize_for_inference(model, channels_last=None))  # size unknown
    assert is_nhwc(optimize_for_inference(model))  # explicit default stays on
