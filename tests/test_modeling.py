"""Model construction, staged API, frozen BN, weights loading and torchvision parity."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FrozenBatchNorm2d

from detector.modeling.backbone import resnet as resnet_module
from detector.modeling.backbone.resnet import build_res5, build_resnet_trunk, freeze_stages
from detector.modeling.meta_arch import FasterRCNN
from detector.modeling.rpn import build_rpn
from tests.helpers import build_model_from_config


def _bottleneck_stage(in_c: int, width: int, blocks: int) -> int:
    """Conv weights of a torchvision Bottleneck stage (no conv bias; BN is frozen -> buffers)."""
    out = 4 * width
    first = in_c * width + 9 * width * width + width * out + in_c * out  # + downsample
    rest = (blocks - 1) * (out * width + 9 * width * width + width * out)
    return first + rest


def test_r101_c4_parameter_count_matches_hand_computation():
    k = 80
    model = build_model_from_config("faster_rcnn_r101_c4", num_classes=k)
    stem = 3 * 64 * 7 * 7
    res2 = _bottleneck_stage(64, 64, 3)
    res3 = _bottleneck_stage(256, 128, 4)
    res4 = _bottleneck_stage(512, 256, 23)
    res5 = _bottleneck_stage(1024, 512, 3)
    anchors = 15
    rpn = (9 * 1024 * 1024 + 1024) + (1024 * anchors + anchors) + (1024 * 4 * anchors + 4 * anchors)
    predictor = (2048 * (k + 1) + (k + 1)) + (2048 * 4 * (k + 1) + 4 * (k + 1))
    expected = stem + res2 + res3 + res4 + res5 + rpn + predictor
    assert sum(p.numel() for p in model.parameters()) == expected
    # conv1..res2 frozen (freeze_at=2): their weights are not trainable
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == expected - stem - res2
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    assert bns and all(isinstance(m, FrozenBatchNorm2d) for m in bns)
    assert isinstance(model.roi_heads.box_head.res5[0].conv2, nn.Conv2d)
    assert model.roi_heads.box_head.res5[0].conv2.stride == (2, 2)


def test_frozen_bn_unchanged_after_training_step():
    model = build_model_from_config(
        "faster_rcnn_r101_c4",
        num_classes=3,
        overrides={
            "model.rpn_post_nms_top_n": {"training": 64, "testing": 32},
            "model.roi_batch_size_per_image": 16,
        },
    )
    model.train()
    before = {
        k: v.clone() for k, v in model.state_dict().items() if "bn" in k or "downsample.1" in k
    }
    assert before
    params_before = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    images = [torch.rand(3, 128, 160)]
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 90.0, 100.0]]), "labels": torch.tensor([1])}]
    losses = model(images, targets)
    sum(losses.values()).backward()
    opt.step()
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{k} changed during training"
    changed = [
        k
        for k, p in model.named_parameters()
        if p.requires_grad and not torch.equal(params_before[k], p.detach())
    ]
    assert changed, "the optimizer step changed nothing: the test would be vacuous"


@pytest.mark.parametrize("name", ["faster_rcnn_r18_c4", "faster_rcnn_r50_fpn"])
def test_train_losses_and_eval_outputs_with_empty_targets(name):
    torch.manual_seed(0)
    # a small RoI batch: the C4 res5 head on 512 RoIs/image costs ~15 s on 2 CPU cores
    model = build_model_from_config(
        name, num_classes=4, overrides={"model.roi_batch_size_per_image": 32}
    )
    images = [torch.rand(3, 128, 160), torch.rand(3, 96, 128)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 80.0, 90.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        dets = model(images)
    assert len(dets) == 2
    for det, img in zip(dets, images):
        assert det["boxes"].shape[1] == 4 and len(det["boxes"]) <= 100
        assert det["labels"].min() >= 1 and det["labels"].max() <= 4
        assert (det["boxes"][:, 2] <= img.shape[2]).all() and (
            det["boxes"][:, 3] <= img.shape[1]
        ).all()
        assert torch.all(det["scores"][:-1] >= det["scores"][1:])


def test_staged_api_reproduces_forward():
    torch.manual_seed(0)
    model = build_model_from_config("faster_rcnn_r18_c4", num_classes=3).eval()
    images = [torch.rand(3, 128, 128)]
    with torch.no_grad():
        direct = model(images)[0]
        il = model.preprocess(images)
        feats = model.features(il)
        props, losses = model.proposals(il, feats)
        assert losses == {}
        assert len(props[0]) <= 300
        probs, boxes = model.predict(feats, props, il.image_sizes)
        assert probs[0].shape == (len(props[0]), 4) and boxes[0].shape == (len(props[0]), 4, 4)
        staged = model.postprocess(probs, boxes, il.image_sizes)[0]
    assert torch.equal(direct["boxes"], staged["boxes"])
    assert torch.equal(direct["labels"], staged["labels"])


def test_bad_targets_are_rejected_with_clear_message():
    model = build_model_from_config("faster_rcnn_r18_c4", num_classes=3).train()
    images = [torch.rand(3, 64, 64)]
    with pytest.raises(ValueError, match="non-positive width or height"):
        model(
            images,
            [{"boxes": torch.tensor([[10.0, 10.0, 10.0, 20.0]]), "labels": torch.tensor([1])}],
        )
    with pytest.raises(ValueError, match=r"labels must be in 1\.\.3"):
        model(
            images, [{"boxes": torch.tensor([[1.0, 1.0, 10.0, 20.0]]), "labels": torch.tensor([4])}]
        )
    with pytest.raises(ValueError, match="expected a float tensor"):
        model.eval()([torch.zeros(1, 64, 64)])


def test_fpn_matches_torchvision_fasterrcnn_resnet50_fpn():
    """Same weights (torchvision model, random init, fixed seed, randomised BN statistics so
    the frozen-BN path is exercised) -> same detections as torchvision."""
    torch.manual_seed(0)
    k = 3
    tv = fasterrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=k + 1,
        min_size=320,
        max_size=512,
        box_score_thresh=0.01,
    )
    g = torch.Generator().manual_seed(1)
    for m in tv.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.25)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    tv.eval()
    ours = build_model_from_config(
        "faster_rcnn_r50_fpn", num_classes=k, overrides={"model.net.roi_heads.score_thresh": 0.01}
    )
    ours.load_state_dict(tv.state_dict(), strict=True)
    ours.eval()
    # shorter side already 320 so torchvision's own resize is the identity
    images = [torch.rand(3, 320, 400), torch.rand(3, 352, 320)]
    with torch.no_grad():
        expected = tv(images)
        got = ours(images)
    for e, o in zip(expected, got):
        assert len(e["boxes"]) > 10, "parity on empty outputs would prove nothing"
        assert e["boxes"].shape == o["boxes"].shape
        assert torch.equal(e["labels"], o["labels"])
        torch.testing.assert_close(o["boxes"], e["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(o["scores"], e["scores"], atol=1e-4, rtol=0)


def test_weights_from_local_file_and_missing_file(tmp_path):
    ref = build_resnet_trunk(depth=18, norm="frozen_bn")
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(1.0)
    state = {k: v for k, v in ref.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 512)
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    loaded = build_resnet_trunk(depth=18, norm="frozen_bn", weights=str(path))
    assert torch.equal(loaded.conv1.weight, ref.conv1.weight)
    assert torch.equal(loaded.layer4[1].bn2.running_var, ref.layer4[1].bn2.running_var)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_resnet_trunk(depth=18, weights=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="allowed: 18, 34, 50, 101, 152"):
        build_resnet_trunk(depth=42)
    with pytest.raises(ValueError, match="unknown norm"):
        build_resnet_trunk(depth=18, norm="group")


def test_freeze_at_converts_trainable_bn_in_frozen_stages():
    trunk = build_resnet_trunk(depth=18, norm="bn")
    freeze_stages(trunk, 2)
    assert isinstance(trunk.bn1, FrozenBatchNorm2d)
    assert isinstance(trunk.layer1[0].bn1, FrozenBatchNorm2d)
    assert isinstance(trunk.layer2[0].bn1, nn.BatchNorm2d)
    assert not trunk.conv1.weight.requires_grad and not trunk.layer1[0].conv1.weight.requires_grad
    assert trunk.layer2[0].conv1.weight.requires_grad


def test_model_type():
    assert isinstance(build_model_from_config("faster_rcnn_r18_c4", num_classes=2), FasterRCNN)


def test_rpn_head_anchor_count_is_derived_from_the_generator():
    """C4: all sizes x ratios on one level; FPN: one size per level x the ratios. Nothing in
    the YAML states the count, so changing the anchor lists cannot desynchronise the head."""
    c4 = build_model_from_config(
        "faster_rcnn_r18_c4", num_classes=2, overrides={"model.anchor_sizes": [32, 64]}
    )
    assert c4.rpn.head.cls_logits.out_channels == 2 * 3
    fpn = build_model_from_config(
        "faster_rcnn_r50_fpn", num_classes=2, overrides={"model.aspect_ratios": [1.0]}
    )
    assert fpn.rpn.head.cls_logits.out_channels == 1
    uneven = AnchorGenerator(sizes=((16,), (32, 64)), aspect_ratios=((1.0,), (1.0,)))
    with pytest.raises(ValueError, match="same count on every level"):
        build_rpn(
            anchor_generator=uneven,
            in_channels=8,
            pre_nms_top_n={"training": 10, "testing": 10},
            post_nms_top_n={"training": 10, "testing": 10},
        )


def test_res5_is_built_alone_and_loads_layer4_weights(tmp_path, monkeypatch):
    trunk = build_resnet_trunk(depth=18, norm="frozen_bn")
    torch.save(trunk.state_dict(), tmp_path / "r18.pth")

    def no_trunk(*args, **kwargs):
        raise AssertionError("build_res5 built a whole ResNet")

    monkeypatch.setattr(resnet_module, "build_resnet_trunk", no_trunk)
    for name in ("resnet18", "resnet50"):
        monkeypatch.setattr(resnet_module.tv_resnet, name, no_trunk)
    res5 = build_res5(depth=18, norm="frozen_bn", weights=str(tmp_path / "r18.pth"))
    expected = trunk.layer4.state_dict()
    assert res5.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in res5.state_dict().items())
    random = build_res5(depth=50, norm="bn")
    assert random[0].conv1.stride == (1, 1) and random[0].conv2.stride == (2, 2)
    assert len(random) == 3 and random[-1].conv3.out_channels == 2048
