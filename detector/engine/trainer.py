"""The minimal training loop; logging, checkpoints and evaluation are hooks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from detector.engine.hooks import HookBase, check_finite

Batch = tuple[list[Tensor], list[dict[str, Any]]]


class Trainer:
    """Runs ``max_iter`` SGD steps over an infinite batch iterator, calling hooks."""

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        data: Iterator[Batch],
        max_iter: int,
        device: torch.device,
        hooks: Sequence[HookBase] = (),
        start_iter: int = 0,
        clip_grad_norm: float | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.data = data
        self.max_iter = max_iter
        self.device = device
        self.iter = start_iter
        self.clip_grad_norm = clip_grad_norm
        self.latest_losses: dict[str, float] = {}
        self.metrics: dict[str, Any] = {}
        self.hooks = list(hooks)
        for h in self.hooks:
            h.trainer = self

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def run_step(self) -> None:
        images, targets = next(self.data)
        images = [img.to(self.device, non_blocking=True) for img in images]
        targets = [
            {k: (v.to(self.device) if isinstance(v, Tensor) else v) for k, v in t.items()}
            for t in targets
        ]
        losses = self.model(images, targets)
        total = sum(losses.values())
        values = {k: float(v.detach()) for k, v in losses.items()}
        check_finite(values, self.iter)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.clip_grad_norm:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.latest_losses = values

    def train(self) -> dict[str, Any]:
        self.model.train()
        for h in self.hooks:
            h.before_train()
        try:
            while self.iter < self.max_iter:
                self.run_step()
                self.iter += 1
                for h in self.hooks:
                    h.after_step()
        finally:
            for h in self.hooks:
                h.after_train()
        return self.metrics
