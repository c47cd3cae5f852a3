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

from detector.modeling.backbone.channels import check_depth, resnet_out_channels

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


def _read_weights(weights: str, depth: int) -> tuple[dict[str, torch.Tensor], str]:
    """``(state dict of a whole torchvision ResNet, a description of its source)``."""
    if weights == "imagenet":
        return _load_imagenet_state(depth), f"torchvision ImageNet weights for ResNet-{depth}"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights file {str(path)!r} does not exist; "
            "use weights=null, weights=imagenet or a path to a .pth state dict"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state, str(path)


def _has_weights(weights: str | None) -> bool:
    return weights is not None and str(weights).lower() not in ("none", "null", "")


def _load_weights(
    module: nn.Module,
    weights: str,
    depth: int,
    *,
    prefix: str = "",
    ignored: set[str] = frozenset(),
) -> None:
    """Load the ResNet weights under ``prefix`` (e.g. ``layer4.``) into ``module``; missing and
    unexpected keys (except ``ignored`` ones and BN counters) are logged."""
    state, source = _read_weights(weights, depth)
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    result = module.load_state_dict(state, strict=False)
    unexpected = [k for k in result.unexpected_keys if k not in ignored]
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    logger.info("loaded %sweights from %s", prefix or "backbone ", source)
    if missing:
        logger.warning("weights %s: %d missing keys: %s", source, len(missing), missing)
    if unexpected:
        logger.warning("weights %s: %d unexpected keys: %s", source, len(unexpected), unexpected)


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
    check_depth(depth)
    trunk = _BUILDERS[depth](weights=None, norm_layer=_norm_layer(norm))
    if _has_weights(weights):
        _load_weights(trunk, str(weights), depth, ignored={"fc.weight", "fc.bias"})
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


#: Blocks per stage (res2..res5) of each depth, as torchvision builds them.
STAGE_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


def build_res5(
    *, depth: int, norm: str = "frozen_bn", weights: str | None = None, freeze: bool = False
) -> nn.Sequential:
    """The res5 stage of a ResNet alone (first block stride 2), the C4 per-region head.

    Built block by block as torchvision's ``layer4`` (same module names and initialisation,
    so ``weights`` load from a whole-ResNet state dict's ``layer4.*`` keys), without building
    the rest of a trunk.
    """
    check_depth(depth)
    block = tv_resnet.BasicBlock if depth in (18, 34) else tv_resnet.Bottleneck
    norm_layer = _norm_layer(norm)
    inplanes, planes = resnet_out_channels(depth)["res4"], 512
    out = planes * block.expansion
    downsample = nn.Sequential(tv_resnet.conv1x1(inplanes, out, 2), norm_layer(out))
    blocks = [block(inplanes, planes, 2, downsample, norm_layer=norm_layer)]
    blocks += [block(out, planes, norm_layer=norm_layer) for _ in range(STAGE_BLOCKS[depth][3] - 1)]
    res5 = nn.Sequential(*blocks)
    for m in res5.modules():  # torchvision's ResNet initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    if _has_weights(weights):
        _load_weights(res5, str(weights), depth, prefix="layer4.")
    if freeze:
        res5.requires_grad_(False)
        res5 = convert_to_frozen_bn(res5)
    return res5
