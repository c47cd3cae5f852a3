"""The minimal training loop; logging, checkpoints and evaluation are hooks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from detector.engine.amp import MixedPrecision
from detector.engine.distributed import all_reduce_mean, unwrap
from detector.engine.hooks import HookBase, check_finite
from detector.engine.storage import ScalarStorage

Batch = tuple[list[Tensor], list[dict[str, Any]]]


class Trainer:
    """Runs SGD steps up to ``max_iter`` over an infinite batch iterator, calling hooks.

    One step: forward under ``precision.autocast()``, losses averaged over the ranks (one
    all-reduce, for logging and the NaN/inf guard, so every rank stops together), backward
    through ``precision.scaler``, optional gradient-norm clipping (on unscaled gradients),
    optimizer and scheduler step. With ``DistributedDataParallel`` the gradients are averaged
    over the ranks in backward.

    Args:
        model: the detector, or its ``DistributedDataParallel`` wrapper.
        data: yields ``(images, targets)`` batches (this rank's share of the total batch).
        start_iter: steps already taken (resume); ``iter`` counts finished steps.
        clip_grad_norm: max L2 norm of all gradients together (``None``/0: no clipping).
        precision: autocast + grad scaler (default: disabled, float32).
    """

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
        precision: MixedPrecision | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.data = data
        self.max_iter = max_iter
        self.device = device
        self.iter = start_iter
        self.clip_grad_norm = clip_grad_norm
        self.precision = precision or MixedPrecision(enabled=False, dtype="float16", device=device)
        self.storage = ScalarStorage()
        self.latest_losses: dict[str, float] = {}
        self.metrics: dict[str, Any] = {}
        self.hooks = list(hooks)
        for h in self.hooks:
            h.trainer = self

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group (the next step's)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def run_step(self) -> None:
        images, targets = next(self.data)
        images = [img.to(self.device, non_blocking=True) for img in images]
        targets = [
            {k: (v.to(self.device) if isinstance(v, Tensor) else v) for k, v in t.items()}
            for t in targets
        ]
        with self.precision.autocast():
            losses = self.model(images, targets)
        total = sum(losses.values())
        values = all_reduce_mean({k: v.detach() for k, v in losses.items()})
        check_finite(values, self.iter + 1)
        self.optimizer.zero_grad(set_to_none=True)
        scaler = self.precision.scaler
        scaler.scale(total).backward()
        if self.clip_grad_norm:
            scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        scaler.step(self.optimizer)
        scaler.update()
        self.latest_losses = values
        self.scheduler.step()

    def _record(self, lr: float) -> None:
        for name, value in self.latest_losses.items():
            self.storage.put(f"train/{name}", value, self.iter)
        self.storage.put("train/total_loss", sum(self.latest_losses.values()), self.iter)
        self.storage.put("train/lr", lr, self.iter)

    def train(self) -> dict[str, Any]:
        """Run the loop from ``iter`` to ``max_iter``; returns ``metrics`` (set by hooks)."""
        self.model.train()
        for h in self.hooks:
            h.before_train()
        try:
            while self.iter < self.max_iter:
                for h in self.hooks:
                    h.before_step()
                lr = self.lr  # the step's own lr; run_step advances the scheduler
                self.run_step()
                self.iter += 1
                self._record(lr)
                for h in self.hooks:
                    h.after_step()
        finally:
            for h in self.hooks:
                h.after_train()
        return self.metrics

    def state_dict(self) -> dict[str, Any]:
        """Model (unwrapped from DDP), optimizer, scheduler, grad scaler, iteration and the
        hooks' states (keyed by class name)."""
        hooks = {type(h).__name__: h.state_dict() for h in self.hooks}
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.precision.scaler.state_dict(),
            "iteration": self.iter,
            "hooks": {k: v for k, v in hooks.items() if v},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict` (the model's weights must match exactly). A
        ``LambdaLR``'s schedule function keeps its configured shape (``max_iter``, steps), so
        a resumed run may be extended; position and base LRs come from ``state``."""
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        scheduler = dict(state["scheduler"])
        if "lr_lambdas" in scheduler:  # LambdaLR: the schedule's shape comes from the config
            scheduler["lr_lambdas"] = [None] * len(scheduler["lr_lambdas"])
        self.scheduler.load_state_dict(scheduler)
        if state.get("grad_scaler"):
            self.precision.scaler.load_state_dict(state["grad_scaler"])
        self.iter = int(state["iteration"])
        for h in self.hooks:
            h.load_state_dict(state.get("hooks", {}).get(type(h).__name__, {}))
