"""The FPN per-region head: multi-level RoIAlign 7x7 and two fully connected layers.

The MLP keeps torchvision's parameter names (``fc6``, ``fc7``) for checkpoint compatibility.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class TwoMLPHead(nn.Module):
    """``forward(pooled: (R, C, S, S)) -> (R, representation_size)``."""

    def __init__(self, *, in_channels: int, resolution: int, representation_size: int = 1024):
        super().__init__()
        self.fc6 = nn.Linear(in_channels * resolution * resolution, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.out_channels = representation_size

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(start_dim=1)))))
