"""ResNet + feature pyramid, laid out exactly like torchvision's ``BackboneWithFPN``.

Keeping torchvision's module names (``body``, ``fpn``) makes our detector's state dict load
torchvision ``fasterrcnn_resnet*_fpn`` checkpoints directly.
"""

from __future__ import annotations

from torchvision.models import resnet as tv_resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detector.modeling.backbone.channels import resnet_out_channels
from detector.modeling.backbone.resnet import freeze_stages


def build_resnet_fpn_backbone(
    *, trunk: tv_resnet.ResNet, depth: int, freeze_at: int = 2, out_channels: int = 256
) -> BackboneWithFPN:
    """FPN over res2..res5 plus a max-pooled P6.

    ``forward(x: (B, 3, H, W)) -> {"0": P2 (stride 4), "1": P3, "2": P4, "3": P5, "pool": P6}``
    with ``out_channels`` channels each.
    """
    freeze_stages(trunk, freeze_at)
    channels = resnet_out_channels(depth)
    return BackboneWithFPN(
        trunk,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[channels[f"res{i}"] for i in range(2, 6)],
        out_channels=out_channels,
        extra_blocks=LastLevelMaxPool(),
    )
