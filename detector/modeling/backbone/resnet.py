"""ResNet trunks from torchvision with selectable normalisation, stage freezing and weights.

Stage names follow the paper: ``stem`` (conv1 + pool), ``res2`` .. ``res5`` are torchvision's
``layer1`` .. ``layer4``. The C4 detector uses stem..res4 as its shared backbone (stride 16) and
res5 as the per-region head; the FPN detector uses all stages.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.ops import FrozenBatchNorm2d

logger = logging.getLogger(__name__)

_BUILDERS: dict[int, Callable[..., tv_resnet.ResNet]] = {
    18: tv_resnet.resnet18,
    34: tv_resnet.resnet34,
    50: tv_resnet.resnet50,
    101: tv_resnet.resnet101,
    152: tv_resnet.resnet152,
}
_WEIGHTS = {
    18: tv_resnet.ResNet18_Weights.IMAGENET1K_V1,
    34: tv_resnet.ResNet34_Weights.IMAGENET1K_V1,
    50: tv_resnet.ResNet50_Weights.IMAGENET1K_V1,
    101: tv_resnet.ResNet101_Weights.IMAGENET1K_V1,
    152: tv_resnet.ResNet152_Weights.IMAGENET1K_V1,
}
NORMS = ("frozen_bn", "bn", "none")
#: torchvision attribute names of the stages, in order; ``freeze_at=k`` freezes the first k.
STAGE_MODULES: tuple[tuple[str, ...], ...] = (
    ("conv1", "bn1"),
    ("layer1",),
    ("layer2",),
    ("layer3",),
    ("layer4",),
)


def _norm_layer(norm: str) -> Callable[[int], nn.Module]:
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "none":
        return lambda num_features: nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; allowed: {', '.join(NORMS)}")


def resnet_out_channels(depth: int) -> dict[str, int]:
    """Output channels of res2..res5 for a ResNet depth (BasicBlock for 18/34)."""
    _check_depth(depth)
    expansion = 1 if depth in (18, 34) else 4
    return {f"res{i + 2}": 64 * 2**i * expansion for i in range(4)}


def _check_depth(depth: int) -> None:
    if depth not in _BUILDERS:
        raise ValueError(
            f"unknown ResNet depth {depth!r}; allowed: {', '.join(map(str, _BUILDERS))}"
        )


def imagenet_cache_path(depth: int) -> Path:
    """Where torch's hub cache keeps the torchvision ImageNet weights for ``depth``."""
    url = _WEIGHTS[depth].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _load_imagenet_state(depth: int) -> dict[str, torch.Tensor]:
    cached = imagenet_cache_path(depth)
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:
        return _WEIGHTS[depth].get_state_dict(progress=True, check_hash=True)
    except Exception as err:  # URLError, socket errors, hash mismatch...
        raise RuntimeError(
            f"could not obtain torchvision ImageNet weights for ResNet-{depth} ({err}). "
            f"This machine looks offline and the weights are not cached at {cached}. "
            f"Copy the file '{cached.name}' there, or pass a local file with "
            f"model.weights=/path/to/resnet{depth}.pth (or weights=null for random init)."
        ) from err


def _load_weights(trunk: nn.Module, weights: str, depth: int) -> None:
    if weights == "imagenet":
        state = _load_imagenet_state(depth)
        source = f"torchvision ImageNet weights for ResNet-{depth}"
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"backbone weights file {str(path)!r} does not exist; "
                "use weights=null, weights=imagenet or a path to a .pth state dict"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        source = str(path)
    result = trunk.load_state_dict(state, strict=False)
    expected_unused = {"fc.weight", "fc.bias"}
    unexpected = [k for k in result.unexpected_keys if k not in expected_unused]
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    logger.info("loaded backbone weights from %s", source)
    if missing:
        logger.warning("backbone weights %s: %d missing keys: %s", source, len(missing), missing)
    if unexpected:
        logger.warning(
            "backbone weights %s: %d unexpected keys: %s", source, len(unexpected), unexpected
        )


def build_resnet_trunk(
    *, depth: int, norm: str = "frozen_bn", weights: str | None = None
) -> tv_resnet.ResNet:
    """A torchvision ResNet without its classifier (``fc`` and ``avgpool`` become identities).

    Args:
        depth: 18, 34, 50, 101 or 152.
        norm: ``frozen_bn`` (constant scale and offset, the paper's choice), ``bn`` or ``none``.
        weights: ``None`` for random init, ``"imagenet"`` for torchvision's weights enum (local
            torch cache first, download when online), or a path to a local ``.pth`` state dict.
    """
    _check_depth(depth)
    trunk = _BUILDERS[depth](weights=None, norm_layer=_norm_layer(norm))
    if weights is not None and str(weights).lower() not in ("none", "null", ""):
        _load_weights(trunk, str(weights), depth)
    trunk.fc = nn.Identity()
    trunk.avgpool = nn.Identity()
    return trunk


def freeze_stages(trunk: nn.Module, freeze_at: int) -> None:
    """Freeze the first ``freeze_at`` stages (0: nothing, 1: stem, 2: stem+res2, ...).

    Frozen parameters stop receiving gradients; trainable BatchNorm inside a frozen stage is
    replaced by FrozenBatchNorm2d so its statistics stay fixed too.
    """
    if not 0 <= freeze_at <= len(STAGE_MODULES):
        raise ValueError(f"freeze_at must be in 0..{len(STAGE_MODULES)}, got {freeze_at}")
    for names in STAGE_MODULES[:freeze_at]:
        for name in names:
            module = getattr(trunk, name, None)
            if module is None:
                continue
            for p in module.parameters():
                p.requires_grad_(False)
            if isinstance(module, nn.BatchNorm2d):
                setattr(trunk, name, convert_to_frozen_bn(module))
            else:
                _replace_bn_in_place(module)


def convert_to_frozen_bn(module: nn.Module) -> nn.Module:
    """Return ``module`` with every ``nn.BatchNorm2d`` turned into ``FrozenBatchNorm2d``."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.track_running_stats:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    _replace_bn_in_place(module)
    return module


def _replace_bn_in_place(module: nn.Module) -> None:
    for name, child in module.named_children():
        setattr(module, name, convert_to_frozen_bn(child))


class ResNetC4Backbone(nn.Module):
    """Shared trunk of the C4 detector: stem, res2, res3, res4 (stride 16).

    ``forward(x: (B, 3, H, W)) -> {"res4": (B, C4, H/16, W/16)}``.
    """

    def __init__(self, *, trunk: tv_resnet.ResNet, freeze_at: int = 2) -> None:
        super().__init__()
        freeze_stages(trunk, freeze_at)
        self.conv1 = trunk.conv1
        self.bn1 = trunk.bn1
        self.relu = trunk.relu
        self.maxpool = trunk.maxpool
        self.layer1 = trunk.layer1
        self.layer2 = trunk.layer2
        self.layer3 = trunk.layer3
        last = trunk.layer3[-1]
        self.out_channels: int = (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels
        self.stride = 16

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return {"res4": x}


def build_res5(
    *, depth: int, norm: str = "frozen_bn", weights: str | None = None, freeze: bool = False
) -> nn.Sequential:
    """The res5 stage (first block stride 2) of a ResNet, used as the C4 per-region head."""
    trunk = build_resnet_trunk(depth=depth, norm=norm, weights=weights)
    res5 = trunk.layer4
    if freeze:
        res5.requires_grad_(False)
        res5 = convert_to_frozen_bn(res5)
    return res5
