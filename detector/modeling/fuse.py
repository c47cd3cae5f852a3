"""Inference-optimised copies of a detector: frozen BatchNorm folded into convolutions,
channels-last weights, and ReLU (and residual additions) fused into the convolutions.

At test time a frozen (or eval-mode) BatchNorm is a constant per-channel affine map, so
``bn(conv(x)) == conv'(x)`` with ``W' = W * s`` and ``b' = (b - mean) * s + beta``,
``s = gamma / sqrt(var + eps)``. Folding removes one read-modify-write pass over every
activation of the trunk (two for torchvision's ``FrozenBatchNorm2d``, which multiplies and adds
in separate kernels). The folded model returns the same detections up to float rounding.

Which BatchNorm follows which convolution is read from the data flow, not from names: each
module that owns a BatchNorm child is traced with :mod:`torch.fx` (its children as leaves), and a
``conv -> bn`` pair is folded only when the convolution's output feeds that BatchNorm and
nothing else, and both are called exactly once. Modules that cannot be traced (the detector
itself, the RPN) are skipped; their BatchNorm children, if any, stay as they are.

On CPU, :class:`FusedResidualBlock` and :class:`ConvReLU` then run ``relu(conv(x))`` and
``relu(conv(x) + identity)`` as single oneDNN convolutions with post-ops
(``torch.ops.mkldnn._convolution_pointwise``, the kernels ``torch.compile`` uses for CPU), which
saves a read-modify-write pass over every activation per ReLU and per residual addition.
:class:`FusedTwoMLPHead` does the same for the FPN box head's two fully connected layers
(``torch.ops.mkldnn._linear_pointwise`` with a ReLU post-op): oneDNN's matrix multiply also
runs at the CPU's full vector width where MKL's does not (on an AVX-512 AMD EPYC, fc6 at 1000
RoIs took 140 ms against 329 ms with ``F.linear``; docs/benchmarks.md). Where
those kernels do not apply (CUDA, other dtypes, autocast, autograd, builds without oneDNN) they
fall back to the eager ``conv`` + ``relu``.

The source model is never modified: :func:`optimize_for_inference` works on a deep copy, and the
copy is put in eval mode. Do not train the copy: folding changes the parameterisation.
"""

from __future__ import annotations

import copy
import logging
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

from detector.modeling.parallel_pool import ParallelMultiScaleRoIAlign
from detector.modeling.poolers import SingleLevelRoIPooler, use_gather_pooling
from detector.modeling.roi_heads.fpn import TwoMLPHead

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=nn.Module)
_BN_TYPES = (FrozenBatchNorm2d, nn.BatchNorm2d)


class _ChildrenAsLeaves(fx.Tracer):
    """Traces one module's own ``forward`` and keeps every sub-module call opaque."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _is_foldable_bn(module: nn.Module) -> bool:
    if isinstance(module, FrozenBatchNorm2d):
        return True
    # trainable BatchNorm uses its running statistics only in eval mode
    return (
        isinstance(module, nn.BatchNorm2d)
        and module.track_running_stats
        and module.running_mean is not None
        and not module.training
    )


def conv_bn_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Names ``(conv, bn)`` of the direct children of ``module`` where the BatchNorm is applied
    to the convolution's output and to nothing else (read from an fx trace of ``forward``).

    Returns an empty list when ``module.forward`` cannot be traced symbolically.
    """
    children = dict(module.named_children())
    if not any(isinstance(c, _BN_TYPES) for c in children.values()):
        return []
    try:
        graph = _ChildrenAsLeaves().trace(module)
    except Exception as err:  # fx raises many error types on data-dependent control flow
        logger.debug("not folding inside %s: not traceable (%s)", type(module).__name__, err)
        return []
    calls = [n for n in graph.nodes if n.op == "call_module"]
    call_count: dict[str, int] = {}
    for node in calls:
        call_count[node.target] = call_count.get(node.target, 0) + 1
    pairs = []
    for node in calls:
        bn = children.get(node.target)
        if not isinstance(bn, _BN_TYPES) or not _is_foldable_bn(bn):
            continue
        source = node.args[0] if node.args else None
        if not isinstance(source, fx.Node) or source.op != "call_module":
            continue
        conv = children.get(source.target)
        if (
            isinstance(conv, nn.Conv2d)
            and len(source.users) == 1
            and call_count[source.target] == 1
            and call_count[node.target] == 1
        ):
            pairs.append((str(source.target), str(node.target)))
    return pairs


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.Module) -> None:
    """Fold ``bn`` into ``conv`` in place (computed in float64, stored in conv's dtype)."""
    to64 = lambda t: None if t is None else t.detach().double()  # noqa: E731
    weight, bias = fuse_conv_bn_weights(
        to64(conv.weight),
        to64(conv.bias),
        to64(bn.running_mean),
        to64(bn.running_var),
        float(bn.eps),
        to64(bn.weight),
        to64(bn.bias),
    )
    conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)


def _parent_counts(model: nn.Module) -> dict[int, int]:
    counts: dict[int, int] = {}
    for parent in model.modules():
        for child in parent.children():
            counts[id(child)] = counts.get(id(child), 0) + 1
    return counts


def fold_batchnorm(model: M) -> tuple[M, int]:
    """Deep copy of ``model`` with every traceable ``conv -> bn`` pair folded (the BatchNorm
    becomes ``nn.Identity``); returns the copy and the number of folded pairs.

    Folds ``FrozenBatchNorm2d`` and eval-mode ``nn.BatchNorm2d`` (running statistics; a
    BatchNorm in training mode is left alone). A module reachable from two parents is shared
    and is never folded.
    """
    model = copy.deepcopy(model)
    return model, _fold_in_place(model)


def _fold_in_place(model: nn.Module) -> int:
    shared = {k for k, v in _parent_counts(model).items() if v > 1}
    folded = 0
    for parent in list(model.modules()):
        for conv_name, bn_name in conv_bn_pairs(parent):
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            if id(conv) in shared or id(bn) in shared:
                continue
            _fold(conv, bn)
            setattr(parent, bn_name, nn.Identity())
            folded += 1
    return folded


def count_batchnorm(model: nn.Module) -> int:
    """Number of ``FrozenBatchNorm2d`` / ``nn.BatchNorm2d`` modules left in ``model``."""
    return sum(isinstance(m, _BN_TYPES) for m in model.modules())


# --------------------------------------------------------------------------- ReLU fusion
def _onednn_op_available(name: str) -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, name)


_ONEDNN_POINTWISE = _onednn_op_available("_convolution_pointwise")
_ONEDNN_LINEAR = _onednn_op_available("_linear_pointwise")


def _fused_kernel_applies(weight: Tensor, x: Tensor) -> bool:
    """Whether a fused oneDNN kernel (no autograd, float32, CPU) may replace the eager layer
    of ``weight`` applied to ``x``, here."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not torch.is_autocast_enabled("cpu")
    )


def _use_onednn(conv: nn.Conv2d, x: Tensor) -> bool:
    """Whether the fused oneDNN kernel computes exactly what ``conv`` would, here."""
    return (
        _ONEDNN_POINTWISE
        and _fused_kernel_applies(conv.weight, x)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def _conv_args(conv: nn.Conv2d) -> tuple[list[int], list[int], list[int], int]:
    return list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups  # type: ignore[arg-type]


def conv_relu(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``relu(conv(x))``, one oneDNN kernel on CPU."""
    if _use_onednn(conv, x):
        return torch.ops.mkldnn._convolution_pointwise(
            x, conv.weight, conv.bias, *_conv_args(conv), "relu", [], ""
        )
    return F.relu(conv(x))


def conv_add_relu(conv: nn.Conv2d, x: Tensor, other: Tensor) -> Tensor:
    """``relu(conv(x) + other)``, one oneDNN kernel on CPU (``other``: conv's output shape)."""
    if _use_onednn(conv, x) and other.dtype == torch.float32:
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, conv.weight, conv.bias, *_conv_args(conv), "add", 1.0, "relu", [], ""
        )
    return F.relu(conv(x) + other)


def linear_relu(fc: nn.Linear, x: Tensor) -> Tensor:
    """``relu(fc(x))`` for a 2-D ``x``, one oneDNN matrix multiply with a ReLU post-op on CPU."""
    if _ONEDNN_LINEAR and x.dim() == 2 and _fused_kernel_applies(fc.weight, x):
        return torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), fc.weight, fc.bias, "relu", [], ""
        )
    return F.relu(fc(x))


class ConvReLU(nn.Module):
    """Inference-only ``relu(conv(x))`` (see :func:`conv_relu`); keeps the name ``conv``."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        return conv_relu(self.conv, x)


class FusedResidualBlock(nn.Module):
    """Inference-only torchvision ``Bottleneck`` / ``BasicBlock`` whose BatchNorms are folded:
    ``relu(conv_last(... relu(conv1(x))) + identity)`` with every ReLU and the residual addition
    inside the convolutions (:func:`conv_relu`, :func:`conv_add_relu`). Keeps the block's
    ``conv1``.. ``conv3`` and ``downsample`` names."""

    def __init__(self, block: Bottleneck | BasicBlock) -> None:
        super().__init__()
        self.conv1, self.conv2 = block.conv1, block.conv2
        self.conv3 = getattr(block, "conv3", None)
        self.downsample = block.downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = conv_relu(self.conv1, x)
        if self.conv3 is None:
            return conv_add_relu(self.conv2, out, identity)
        return conv_add_relu(self.conv3, conv_relu(self.conv2, out), identity)


class FusedTwoMLPHead(nn.Module):
    """Inference-only :class:`~detector.modeling.roi_heads.fpn.TwoMLPHead`: both
    ``relu(fc(x))`` through :func:`linear_relu`. Keeps the names ``fc6``, ``fc7`` and
    ``out_channels``."""

    def __init__(self, head: TwoMLPHead) -> None:
        super().__init__()
        self.fc6, self.fc7, self.out_channels = head.fc6, head.fc7, head.out_channels

    def forward(self, x: Tensor) -> Tensor:
        return linear_relu(self.fc7, linear_relu(self.fc6, x.flatten(start_dim=1)))


def _is_folded_block(module: nn.Module) -> bool:
    if type(module) not in (Bottleneck, BasicBlock):  # subclasses may change forward
        return False
    bns = [getattr(module, name) for name in ("bn1", "bn2", "bn3") if hasattr(module, name)]
    return all(isinstance(bn, nn.Identity) for bn in bns) and isinstance(module.relu, nn.ReLU)


def _fuse_relu_in_place(model: nn.Module) -> int:
    """Replace folded residual blocks, ``Sequential(..., Conv2d, ReLU, ...)`` pairs and FPN box
    heads (:class:`FusedTwoMLPHead`); returns the number of ReLUs fused."""
    shared = {k for k, v in _parent_counts(model).items() if v > 1}
    fused = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_folded_block(child) and id(child) not in shared:
                setattr(parent, name, FusedResidualBlock(child))
                fused += 3 if hasattr(child, "conv3") else 2
            elif type(child) is TwoMLPHead and id(child) not in shared:
                setattr(parent, name, FusedTwoMLPHead(child))
                fused += 2
        if type(parent).forward is not nn.Sequential.forward:
            continue
        children = list(parent.named_children())
        for (first, conv), (second, relu) in zip(children, children[1:]):
            if (
                type(conv) is nn.Conv2d
                and type(relu) is nn.ReLU
                and not ({id(conv), id(relu)} & shared)
            ):
                setattr(parent, first, ConvReLU(conv))
                setattr(parent, second, nn.Identity())
                fused += 1
    return fused


def _parallelize_poolers_in_place(model: nn.Module) -> int:
    """RoIAlign poolers split their RoIs over torch's CPU threads (bit-identical results);
    returns the number of poolers changed."""
    changed = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is MultiScaleRoIAlign:
                setattr(parent, name, ParallelMultiScaleRoIAlign.from_module(child))
                changed += 1
            elif isinstance(child, ParallelMultiScaleRoIAlign) or (
                # a parallel (or gathering: channels-last training's) FPN pooler, or the C4 one
                isinstance(child, SingleLevelRoIPooler) and child.pool_type == "align"
            ):
                child.workers = None
                changed += 1
    return changed


#: Shorter image side (px) from which channels-last pays on CPU. Below it, the layout's
#: conversions cost more than its faster convolutions save (docs/benchmarks.md, "optimize_model
#: levers by image size"): the R18-C4 quick model at 192 px ran 0.90x with it, R50-FPN at 800 px
#: 1.26x.
CHANNELS_LAST_MIN_SIDE = 400


def optimize_for_inference(
    model: M,
    *,
    fold_bn: bool = True,
    channels_last: bool | None = True,
    fuse_relu: bool = True,
    parallel_pool: bool = True,
    gather_pool: bool = True,
    image_size: int | None = None,
) -> M:
    """An eval-mode copy of ``model`` tuned for inference; ``model`` itself is left untouched.

    Args:
        model: any module (a :class:`~detector.modeling.meta_arch.FasterRCNN` typically).
        fold_bn: fold BatchNorm into the preceding convolutions (:func:`fold_batchnorm`).
        channels_last: store 4-D weights as channels-last (NHWC); convolutions then produce
            channels-last activations, which oneDNN (CPU) and cuDNN (GPU, mixed precision) run
            without layout conversions. ``None``: only when ``image_size`` (the shorter side
            the model will see) is at least :data:`CHANNELS_LAST_MIN_SIDE`, where it pays.
        fuse_relu: run ReLUs and residual additions inside the convolutions on CPU
            (:class:`FusedResidualBlock`, :class:`ConvReLU`), and the FPN box head's fully
            connected layers with their ReLUs as oneDNN matrix multiplies
            (:class:`FusedTwoMLPHead`); residual blocks are fused only when their BatchNorms
            are folded.
        parallel_pool: RoIAlign poolers split their RoIs over torch's CPU threads
            (:mod:`detector.modeling.parallel_pool`; the same numbers, bit for bit).
        gather_pool: RoIAlign poolers pool channels-last maps by one weighted gather
            (:mod:`detector.modeling.gather_pool`; the same numbers to float rounding, about
            15x faster than torchvision's CPU kernel); NCHW maps (``channels_last`` off) are
            pooled as ``parallel_pool`` says.
        image_size: the test images' shorter side, for ``channels_last=None``.

    Returns:
        The optimised copy, in eval mode and with ``requires_grad=False`` everywhere.
    """
    fast = copy.deepcopy(model).eval().requires_grad_(False)
    if fold_bn:
        folded = _fold_in_place(fast)
        logger.info(
            "folded %d BatchNorm layers into convolutions (%d left)", folded, count_batchnorm(fast)
        )
    if fuse_relu:
        logger.info("fused %d ReLUs into convolutions", _fuse_relu_in_place(fast))
    if parallel_pool:
        logger.info(
            "%d RoIAlign poolers run on all CPU threads", _parallelize_poolers_in_place(fast)
        )
    if gather_pool:
        logger.info("%d RoIAlign poolers pool by a weighted gather", use_gather_pooling(fast))
    if channels_last is None:
        channels_last = image_size is not None and image_size >= CHANNELS_LAST_MIN_SIDE
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    return fast
