"""The region proposal network, built from its anchor generator (torchvision's RPN modules)."""

from __future__ import annotations

from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead


def build_rpn(
    *,
    anchor_generator: AnchorGenerator,
    in_channels: int,
    fg_iou_thresh: float = 0.7,
    bg_iou_thresh: float = 0.3,
    batch_size_per_image: int = 256,
    positive_fraction: float = 0.5,
    pre_nms_top_n: dict[str, int],
    post_nms_top_n: dict[str, int],
    nms_thresh: float = 0.7,
) -> RegionProposalNetwork:
    """torchvision's ``RegionProposalNetwork`` whose ``RPNHead`` predicts as many anchors per
    location as ``anchor_generator`` places (sizes x aspect ratios of one level), so the count
    is never written by hand. Module names are torchvision's (``head.conv``,
    ``head.cls_logits``, ``head.bbox_pred``), so its checkpoints load unchanged.

    Raises:
        ValueError: the generator places different anchor counts on different levels (one
            shared head cannot serve them).
    """
    counts = set(anchor_generator.num_anchors_per_location())
    if len(counts) != 1:
        raise ValueError(
            f"the anchor generator places {sorted(counts)} anchors per location on different "
            "feature levels; a shared RPN head needs the same count on every level"
        )
    return RegionProposalNetwork(
        anchor_generator=anchor_generator,
        head=RPNHead(in_channels, counts.pop()),
        fg_iou_thresh=fg_iou_thresh,
        bg_iou_thresh=bg_iou_thresh,
        batch_size_per_image=batch_size_per_image,
        positive_fraction=positive_fraction,
        pre_nms_top_n=pre_nms_top_n,
        post_nms_top_n=post_nms_top_n,
        nms_thresh=nms_thresh,
    )
