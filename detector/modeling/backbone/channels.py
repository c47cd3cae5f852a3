"""ResNet stage widths, as plain arithmetic (no torch import: config resolvers use it)."""

from __future__ import annotations

#: The ResNet depths torchvision builds; 18 and 34 use BasicBlock, the others Bottleneck.
RESNET_DEPTHS: tuple[int, ...] = (18, 34, 50, 101, 152)


def check_depth(depth: int) -> None:
    """Raise ``ValueError`` naming the allowed depths when ``depth`` is not one of them."""
    if depth not in RESNET_DEPTHS:
        raise ValueError(
            f"unknown ResNet depth {depth!r}; allowed: {', '.join(map(str, RESNET_DEPTHS))}"
        )


def resnet_out_channels(depth: int) -> dict[str, int]:
    """Output channels of res2..res5 for a ResNet depth (BasicBlock for 18/34)."""
    check_depth(depth)
    expansion = 1 if depth in (18, 34) else 4
    return {f"res{i + 2}": 64 * 2**i * expansion for i in range(4)}
