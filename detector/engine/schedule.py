"""Learning-rate schedules as multiplicative factors of the base LR (for ``LambdaLR``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

SCHEDULES = ("multistep", "cosine")


@dataclass(frozen=True)
class WarmupSchedule:
    """Linear warmup from ``warmup_factor`` to 1 over ``warmup_iters``, then either
    multi-step decay (``gamma`` at each of ``steps``) or cosine decay to 0 at ``max_iter``."""

    max_iter: int
    name: str = "multistep"
    steps: Sequence[int] = ()
    gamma: float = 0.1
    warmup_iters: int = 0
    warmup_factor: float = 0.001

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; allowed: {', '.join(SCHEDULES)}")
        if self.max_iter <= 0:
            raise ValueError(f"max_iter must be positive, got {self.max_iter}")
        if list(self.steps) != sorted(self.steps):
            raise ValueError(f"schedule steps must be increasing, got {list(self.steps)}")

    def __call__(self, it: int) -> float:
        if self.name == "multistep":
            factor = self.gamma ** sum(1 for s in self.steps if it >= s)
        else:
            factor = 0.5 * (1.0 + math.cos(math.pi * min(it, self.max_iter) / self.max_iter))
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor
