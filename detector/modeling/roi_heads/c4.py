"""The paper's C4 per-region head: RoI pooling on res4, then res5 and global average pooling."""

from __future__ import annotations

from torch import Tensor, nn


class Res5BoxHead(nn.Module):
    """``forward(pooled: (R, C4, S, S)) -> (R, C5)``: res5 (first block stride 2) + GAP."""

    def __init__(self, *, res5: nn.Module) -> None:
        super().__init__()
        self.res5 = res5
        last = res5[-1]
        self.out_channels: int = (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.res5(x).mean(dim=(2, 3))
