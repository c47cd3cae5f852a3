"""Training hooks: everything around the minimal training step (detectron2's HookBase idea).

Writers (progress bar, log file, TensorBoard) are in :mod:`detector.engine.writers`. Hooks
that take part in collectives (evaluation, checkpointing) run on every rank; writers only on
rank 0.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import nn

from detector.engine.checkpoint import BEST_NAME, FINAL_NAME, Checkpointer, prune_checkpoints
from detector.engine.storage import ScalarStorage

logger = logging.getLogger(__name__)


class TrainerState(Protocol):
    """What hooks see of the trainer (:class:`detector.engine.trainer.Trainer`)."""

    model: nn.Module
    device: torch.device
    iter: int
    max_iter: int
    storage: ScalarStorage
    latest_losses: dict[str, float]
    metrics: dict[str, Any]

    @property
    def lr(self) -> float: ...

    def state_dict(self) -> dict[str, Any]: ...


class HookBase:
    """Called by the trainer around the loop; ``self.trainer`` is set before ``before_train``.

    ``trainer.iter`` is the number of finished steps: in ``after_step`` it counts the step
    just taken. ``state_dict`` / ``load_state_dict`` carry a hook's state through checkpoints.
    """

    trainer: TrainerState

    def before_train(self) -> None: ...

    def before_step(self) -> None: ...

    def after_step(self) -> None: ...

    def after_train(self) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def check_finite(losses: Mapping[str, float], iteration: int) -> None:
    """Raise ``FloatingPointError`` naming the bad losses when one is NaN or infinite."""
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(
            f"non-finite loss in iteration {iteration}: {bad}; training stopped before the "
            "weights were updated. Lower solver.optimizer.lr, add solver warmup or "
            "train.clip_grad_norm, or check the data."
        )


class IterationTimer(HookBase):
    """Records ``train/time`` (seconds per step) and ``train/images_per_sec`` (all ranks'
    images, ``images_per_step`` = the total batch)."""

    def __init__(self, *, images_per_step: int) -> None:
        self.images_per_step = images_per_step
        self._start = 0.0

    def before_step(self) -> None:
        self._start = time.perf_counter()

    def after_step(self) -> None:
        seconds = time.perf_counter() - self._start
        t = self.trainer
        t.storage.put("train/time", seconds, t.iter)
        t.storage.put("train/images_per_sec", self.images_per_step / max(seconds, 1e-9), t.iter)


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metrics dict as ``{"a/b": value}`` (lists, strings and
    booleans are left out)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, prefix=f"{name}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class PeriodicEvaluation(HookBase):
    """Run ``evaluate(iteration)`` every ``period`` iterations (0: never) and once training
    has finished; its metrics are recorded as ``val/<name>`` and the last ones become
    ``trainer.metrics``.

    Evaluation runs under a forked RNG, so it never shifts the training random stream (which
    would break exact resume), and puts the model back into training mode.
    """

    def __init__(self, *, evaluate: Callable[[int], dict[str, Any]], period: int = 0) -> None:
        self.evaluate = evaluate
        self.period = period
        self._done_at = -1
        self._metrics: dict[str, Any] = {}

    def _run(self) -> None:
        t = self.trainer
        devices = [t.device] if t.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self._metrics = self.evaluate(t.iter)
        t.model.train()
        self._done_at = t.iter
        for name, value in flatten_metrics(self._metrics).items():
            t.storage.put(f"val/{name}", value, t.iter)

    def after_step(self) -> None:
        t = self.trainer
        if self.period > 0 and t.iter % self.period == 0 and t.iter < t.max_iter:
            self._run()

    def after_train(self) -> None:
        t = self.trainer
        if t.iter >= t.max_iter:
            if self._done_at != t.iter:
                self._run()
            t.metrics = self._metrics


class PeriodicCheckpointer(HookBase):
    """Save ``model_{iter:07d}.pth`` every ``period`` iterations (0: never), keeping the newest
    ``keep_last`` (0: all), and ``model_final.pth`` when training has finished."""

    def __init__(self, *, checkpointer: Checkpointer, period: int, keep_last: int = 0) -> None:
        self.checkpointer = checkpointer
        self.period = period
        self.keep_last = keep_last

    def after_step(self) -> None:
        t = self.trainer
        if self.period > 0 and t.iter % self.period == 0 and t.iter < t.max_iter:
            self.checkpointer.save(f"model_{t.iter:07d}.pth", t.state_dict())
            if self.checkpointer.is_main:
                for path in prune_checkpoints(self.checkpointer.output_dir, self.keep_last):
                    logger.info("removed old checkpoint %s", path)

    def after_train(self) -> None:
        t = self.trainer
        if t.iter >= t.max_iter:
            self.checkpointer.save(FINAL_NAME, t.state_dict())


class BestCheckpointer(HookBase):
    """Save ``model_best.pth`` whenever the validation ``metric`` (a storage name such as
    ``val/AP``) recorded at the current iteration beats the best so far (``mode`` ``max`` or
    ``min``). Runs after :class:`PeriodicEvaluation`."""

    def __init__(self, *, checkpointer: Checkpointer, metric: str, mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.checkpointer = checkpointer
        self.metric = metric
        self.mode = mode
        self.best: float | None = None
        self.best_iteration: int | None = None

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def _check(self) -> None:
        t = self.trainer
        latest = t.storage.latest(self.metric)
        if latest is None or latest[0] != t.iter or not math.isfinite(latest[1]):
            return
        if self._better(latest[1]):
            self.best, self.best_iteration = latest[1], t.iter
            self.checkpointer.save(BEST_NAME, t.state_dict())
            logger.info("new best %s %.4f at iteration %d", self.metric, self.best, t.iter)

    def after_step(self) -> None:
        self._check()

    def after_train(self) -> None:
        if self.trainer.iter >= self.trainer.max_iter:
            self._check()

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "best": self.best, "iteration": self.best_iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("metric") == self.metric:
            self.best, self.best_iteration = state.get("best"), state.get("iteration")
