"""The minimal training loop; logging, checkpoints and evaluation are hooks."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from detector.engine.amp import MixedPrecision
from detector.engine.distributed import all_reduce_mean, unwrap
from detector.engine.hooks import HookBase, check_finite
from detector.engine.storage import ScalarStorage

logger = logging.getLogger(__name__)
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
        except BaseException:
            self._after_train(reraise=False)  # the loop's error is the one to report
            raise
        self._after_train(reraise=True)
        return self.metrics

    def _after_train(self, *, reraise: bool) -> None:
        """Every hook's ``after_train``, even when an earlier one fails (the final checkpoint
        is saved before the final evaluation runs, and the writers still close); the first
        error is raised afterwards when ``reraise``."""
        errors: list[BaseException] = []
        for h in self.hooks:
            try:
                h.after_train()
            except Exception as err:  # noqa: BLE001 - re-raised below, after the other hooks
                logger.error("%s.after_train failed: %s", type(h).__name__, err)
                errors.append(err)
        if errors and reraise:
            raise errors[0]

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

    def load_state_dict(self, state: dict[str, Any]) -> list[str]:
        """Inverse of :meth:`state_dict` (the model's weights must match exactly).

        The solver settings this trainer was built with win over the checkpoint's: the
        optimizer's hyper-parameters (``lr``, ``momentum``, ``weight_decay``, ...) and the
        schedule (a ``LambdaLR``'s base LRs and shape: ``max_iter``, steps), so a resumed run
        may lower its learning rate or be extended. The optimizer's state (momentum buffers)
        and the schedule's position come from ``state``. Returns one line per setting that
        differs from the checkpoint's (``"lr: 0.02 -> 0.005"``)."""
        unwrap(self.model).load_state_dict(state["model"])
        configured = [
            {k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups
        ]
        base_lrs = list(getattr(self.scheduler, "base_lrs", []))
        self.optimizer.load_state_dict(state["optimizer"])
        scheduler = dict(state["scheduler"])
        if "lr_lambdas" in scheduler:  # LambdaLR: the schedule's shape comes from the config
            scheduler["lr_lambdas"] = [None] * len(scheduler["lr_lambdas"])
        self.scheduler.load_state_dict(scheduler)
        changes = self._apply_configured_solver(configured, base_lrs)
        if state.get("grad_scaler"):
            self.precision.scaler.load_state_dict(state["grad_scaler"])
        self.iter = int(state["iteration"])
        for h in self.hooks:
            h.load_state_dict(state.get("hooks", {}).get(type(h).__name__, {}))
        return changes

    def _apply_configured_solver(
        self, configured: list[dict[str, Any]], base_lrs: list[float]
    ) -> list[str]:
        """Put the configured hyper-parameters and base LRs back after a checkpoint's were
        loaded; the current LR is recomputed from the schedule at the resumed position."""
        changes: list[str] = []
        for i, (group, conf) in enumerate(zip(self.optimizer.param_groups, configured)):
            for key, value in conf.items():
                if key in ("lr", "initial_lr") or group.get(key) == value:
                    continue
                changes.append(f"param group {i} {key}: {group.get(key)} -> {value}")
                group[key] = value
        lambdas = getattr(self.scheduler, "lr_lambdas", None)
        if lambdas is None or len(base_lrs) != len(self.optimizer.param_groups):
            return changes
        step = self.scheduler.last_epoch
        for i, (group, base, lam) in enumerate(zip(self.optimizer.param_groups, base_lrs, lambdas)):
            if self.scheduler.base_lrs[i] != base:
                changes.append(f"param group {i} base lr: {self.scheduler.base_lrs[i]} -> {base}")
            group["initial_lr"] = base
            group["lr"] = base * lam(step)
        self.scheduler.base_lrs = list(base_lrs)
        return changes
