"""torchvision's ``FasterRCNN`` built as a twin of our detector, and what the comparison needs.

:func:`torchvision_twin` gives torchvision's detector the structure, settings and weights of
ours; :func:`randomize_weights` and :func:`calibrate_classifier` make random weights behave like
trained ones where it matters for timing and for the checks; :func:`benchmark_images` and
:func:`benchmark_targets` are the fixed inputs; :func:`compare_detections` measures how far two
detectors' outputs are apart.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

from detector.modeling.meta_arch import FasterRCNN
from detector.modeling.poolers import SingleLevelRoIPooler

Detections = list[dict[str, Tensor]]
Targets = list[dict[str, Tensor]]


def randomize_weights(model: FasterRCNN, *, seed: int) -> None:
    """Give frozen BatchNorm non-trivial statistics and affine parameters, in place.

    Randomly initialised BatchNorm is the identity; folding it would prove nothing.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                n = m.running_mean.numel()
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


@torch.no_grad()
def calibrate_classifier(
    model: FasterRCNN, images: list[Tensor], *, logit_std: float = 3.0, seed: int = 0
) -> None:
    """Rescale random classifier weights so that region logits have about ``logit_std``
    standard deviation on ``images``, in place.

    A trained detector keeps up to ``detections_per_img`` boxes per image; random logits near
    zero give a flat softmax below the score threshold and no detections at all, which would
    make post-processing (and the detection check) trivial.
    """
    features: list[Tensor] = []
    hook = model.roi_heads.box_head.register_forward_hook(
        lambda _m, _args, out: features.append(out.flatten(1))
    )
    was_training = model.training
    try:
        model.eval()(images)
    finally:
        hook.remove()
        model.train(was_training)
    rms = float(features[0].float().pow(2).mean().sqrt().clamp(min=1e-6))
    cls_score = model.roi_heads.box_predictor.cls_score
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(cls_score.weight.shape, generator=g)
    scale = logit_std / (rms * cls_score.in_features**0.5)
    cls_score.weight.copy_(weight * scale)
    cls_score.bias.zero_()


def _resnet_depth(trunk: nn.Module) -> int:
    """Depth of a torchvision ResNet trunk, from its blocks per stage."""
    blocks = tuple(len(getattr(trunk, f"layer{i}")) for i in range(1, 5))
    bottleneck = hasattr(trunk.layer1[0], "conv3")
    depths = {
        ((2, 2, 2, 2), False): 18,
        ((3, 4, 6, 3), False): 34,
        ((3, 4, 6, 3), True): 50,
        ((3, 4, 23, 3), True): 101,
        ((3, 8, 36, 3), True): 152,
    }
    if (blocks, bottleneck) not in depths:
        raise ValueError(f"not a standard ResNet trunk: blocks {blocks}, bottleneck {bottleneck}")
    return depths[(blocks, bottleneck)]


def _torchvision_fpn_backbone(ours: BackboneWithFPN) -> BackboneWithFPN:
    """torchvision's own ``resnet_fpn_backbone`` with our depth and frozen stages."""
    body = ours.body
    if not isinstance(body.layer4[0].bn1, FrozenBatchNorm2d):
        raise ValueError(
            "the torchvision twin of an FPN model is built with frozen BatchNorm, as torchvision "
            f"builds it for pre-trained weights; this model has {type(body.layer4[0].bn1).__name__}"
            " (use model.norm=frozen_bn)"
        )
    frozen = 0  # leading stages without trainable parameters: our freeze_at
    for name in ("conv1", "layer1", "layer2", "layer3", "layer4"):
        if any(p.requires_grad for p in getattr(body, name).parameters()):
            break
        frozen += 1
    return resnet_fpn_backbone(
        backbone_name=f"resnet{_resnet_depth(body)}",
        weights=None,
        norm_layer=FrozenBatchNorm2d,
        trainable_layers=5 - frozen,
    )


def torchvision_pooler(pooler: nn.Module) -> nn.Module:
    """torchvision's ``MultiScaleRoIAlign`` on the single map our C4 ``pooler`` reads, when it
    computes the same numbers; otherwise a copy of ``pooler``.

    ``MultiScaleRoIAlign`` always calls ``roi_align(..., aligned=False)`` and infers the map's
    scale (a power of 2) from the feature and image heights, which is 1/16 for res4 when the
    images are at least 76 px high (size-divisibility padding adds under 32 px). So it is a
    twin of a RoIAlign :class:`~detector.modeling.poolers.SingleLevelRoIPooler` with
    ``aligned=False`` and stride 16 (``+model.net.roi_heads.box_roi_pool.aligned=false``, as
    the C4 benchmark presets set).
    Our default C4 pooler (``aligned=True``, detectron2's half-pixel correction) and RoIPool
    have no torchvision counterpart; their twin pools with a copy of ours.
    """
    if (
        isinstance(pooler, SingleLevelRoIPooler)
        and pooler.pool_type == "align"
        and not pooler.aligned
        and pooler.spatial_scale == 1 / 16
    ):
        return MultiScaleRoIAlign(
            [pooler.feature_name], list(pooler.output_size), pooler.sampling_ratio
        )
    return copy.deepcopy(pooler)


def torchvision_twin(ours: FasterRCNN, *, min_size: int, max_size: int) -> TorchvisionFasterRCNN:
    """torchvision's ``FasterRCNN`` with the structure, settings and weights of ``ours``.

    FPN models: torchvision's ``resnet_fpn_backbone`` (frozen BatchNorm, as torchvision builds
    ``fasterrcnn_resnet50_fpn`` with pre-trained weights), ``MultiScaleRoIAlign`` and
    ``TwoMLPHead`` from ``FasterRCNN``'s defaults; the weights are loaded from ``ours``'s state
    dict, which must match key for key. C4 models, which torchvision does not build: a copy of
    ``ours``'s stem..res4 trunk as the backbone (``out_channels`` set) and of its res5 + GAP
    head as ``box_head``, pooled by torchvision's ``MultiScaleRoIAlign`` on the one res4 map
    (:func:`torchvision_pooler`: when ours is ``aligned=False`` RoIAlign, else a copy of ours),
    and a ``FastRCNNPredictor`` holding our predictor's weights, inside torchvision's
    ``FasterRCNN`` (its transform, ``RoIHeads`` and post-processing). Both: a copy of ``ours``'s
    RPN (torchvision's ``RegionProposalNetwork``, so the same proposal settings), the RoI-head
    settings of ``ours``, and a ``GeneralizedRCNNTransform(min_size, max_size)`` with our
    normalisation and size divisibility. Feed images whose shorter side is ``min_size`` (and
    longer side at most ``max_size``) so that its resize is the identity.
    """
    heads = ours.roi_heads
    fpn = isinstance(ours.backbone, BackboneWithFPN)
    backbone = _torchvision_fpn_backbone(ours.backbone) if fpn else copy.deepcopy(ours.backbone)
    predictor = None
    if not fpn:
        width = heads.box_predictor.cls_score.in_features
        predictor = FastRCNNPredictor(width, heads.num_classes + 1)
    twin = TorchvisionFasterRCNN(
        backbone,
        num_classes=heads.num_classes + 1 if fpn else None,
        min_size=min_size,
        max_size=max_size,
        image_mean=ours.pixel_mean.flatten().tolist(),
        image_std=ours.pixel_std.flatten().tolist(),
        size_divisible=ours.size_divisibility,
        box_predictor=predictor,
        box_score_thresh=heads.score_thresh,
        box_nms_thresh=heads.nms_thresh,
        box_detections_per_img=heads.detections_per_img,
        box_fg_iou_thresh=heads.proposal_matcher.high_threshold,
        box_bg_iou_thresh=heads.proposal_matcher.low_threshold,
        box_batch_size_per_image=heads.fg_bg_sampler.batch_size_per_image,
        box_positive_fraction=heads.fg_bg_sampler.positive_fraction,
        bbox_reg_weights=heads.box_coder.weights,
    )
    twin.rpn = copy.deepcopy(ours.rpn)
    if not fpn:  # the constructor's defaults are FPN's: set the C4 pooler and head here
        twin.roi_heads.box_roi_pool = torchvision_pooler(heads.box_roi_pool)
        twin.roi_heads.box_head = copy.deepcopy(heads.box_head)
    twin.load_state_dict(ours.state_dict(), strict=True)
    return twin.to(ours.pixel_mean.device)


def benchmark_images(
    *, batch_size: int, image_size: int, max_size: int, device: torch.device, seed: int
) -> list[Tensor]:
    """Random images of shorter side ``image_size`` and 4:3 aspect (COCO's most common),
    the longer side capped at ``max_size``: ``batch_size`` x (3, H, W) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    width = min(round(image_size * 4 / 3), max_size)
    return [torch.rand(3, image_size, width, generator=g).to(device) for _ in range(batch_size)]


def benchmark_targets(
    images: Sequence[Tensor], *, num_classes: int, boxes_per_image: int, seed: int
) -> Targets:
    """Random valid ground truth for ``images``: boxes 5%..50% of the image side."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for img in images:
        h, w = img.shape[-2:]
        size = torch.rand(boxes_per_image, 2, generator=g) * 0.45 + 0.05
        wh = size * torch.tensor([w, h])
        xy = torch.rand(boxes_per_image, 2, generator=g) * (torch.tensor([w, h]) - wh)
        boxes = torch.cat([xy, xy + wh], dim=1)
        labels = torch.randint(1, num_classes + 1, (boxes_per_image,), generator=g)
        targets.append({"boxes": boxes.to(img.device), "labels": labels.to(img.device)})
    return targets


def compare_detections(got: Detections, expected: Detections) -> dict[str, Any]:
    """How far two detectors' outputs for the same images are apart.

    Returns ``num_detections`` (of ``expected``), ``same_counts`` and ``same_labels`` (per image,
    in output order), and the largest absolute ``box_diff`` (pixels) and ``score_diff`` over
    images whose counts agree.
    """
    same_counts = all(len(g["boxes"]) == len(e["boxes"]) for g, e in zip(got, expected))
    same_labels, box_diff, score_diff = same_counts, 0.0, 0.0
    for g, e in zip(got, expected):
        if len(g["boxes"]) != len(e["boxes"]) or len(e["boxes"]) == 0:
            continue
        same_labels &= bool(torch.equal(g["labels"].cpu(), e["labels"].cpu()))
        box_diff = max(box_diff, float((g["boxes"] - e["boxes"]).abs().max()))
        score_diff = max(score_diff, float((g["scores"] - e["scores"]).abs().max()))
    return {
        "num_detections": sum(len(e["boxes"]) for e in expected),
        "same_counts": same_counts and len(got) == len(expected),
        "same_labels": same_labels,
        "box_diff": box_diff,
        "score_diff": score_diff,
    }


def detections_match(report: Mapping[str, Any], *, box_atol: float, score_atol: float) -> bool:
    """``compare_detections`` report within tolerance: same counts and labels, boxes within
    ``box_atol`` pixels and scores within ``score_atol``, and at least one detection."""
    return bool(
        report["num_detections"] > 0
        and report["same_counts"]
        and report["same_labels"]
        and report["box_diff"] <= box_atol
        and report["score_diff"] <= score_atol
    )
