"""Training hooks: everything around the minimal training step (detectron2's HookBase idea)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from detector.engine.checkpoint import save_checkpoint

if TYPE_CHECKING:
    from detector.engine.trainer import Trainer

logger = logging.getLogger(__name__)


class HookBase:
    """Called by the trainer around the loop; ``self.trainer`` is set before ``before_train``."""

    trainer: Trainer

    def before_train(self) -> None: ...

    def after_step(self) -> None: ...

    def after_train(self) -> None: ...


class ProgressBar(HookBase):
    """tqdm bar over iterations with smoothed losses, lr and ETA; a log line every period."""

    def __init__(self, *, log_period: int = 20, smoothing: float = 0.9) -> None:
        self.log_period = log_period
        self.smoothing = smoothing
        self._avg: dict[str, float] = {}
        self._bar: tqdm | None = None

    def before_train(self) -> None:
        t = self.trainer
        self._bar = tqdm(
            total=t.max_iter, initial=t.iter, desc="train", dynamic_ncols=True, unit="it"
        )

    def after_step(self) -> None:
        t = self.trainer
        for k, v in t.latest_losses.items():
            prev = self._avg.get(k, v)
            self._avg[k] = self.smoothing * prev + (1 - self.smoothing) * v
        assert self._bar is not None
        shown = {k.removeprefix("loss_"): f"{v:.3f}" for k, v in self._avg.items()}
        shown["lr"] = f"{t.lr:.2e}"
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(1)
        if t.iter % self.log_period == 0 or t.iter == t.max_iter:
            total = sum(v for k, v in self._avg.items() if k.startswith("loss_"))
            logger.info(
                "iter %d/%d  total_loss %.4f  %s  lr %.3e",
                t.iter,
                t.max_iter,
                total,
                "  ".join(f"{k} {v:.4f}" for k, v in self._avg.items()),
                t.lr,
            )

    def after_train(self) -> None:
        if self._bar is not None:
            self._bar.close()


class PeriodicCheckpointer(HookBase):
    """Write ``model_{iter:07d}.pth`` every ``period`` iterations and ``model_final.pth`` at
    the end, atomically, each with the model, optimizer, scheduler, iteration and extras."""

    def __init__(self, *, output_dir: str | Path, period: int, extra: dict[str, Any]) -> None:
        self.output_dir = Path(output_dir)
        self.period = period
        self.extra = extra

    def _save(self, name: str) -> None:
        t = self.trainer
        path = save_checkpoint(
            self.output_dir / name,
            model=t.model,
            optimizer=t.optimizer.state_dict(),
            scheduler=t.scheduler.state_dict(),
            iteration=t.iter,
            **self.extra,
        )
        logger.info("saved checkpoint %s", path)

    def after_step(self) -> None:
        t = self.trainer
        if self.period > 0 and t.iter % self.period == 0 and t.iter < t.max_iter:
            self._save(f"model_{t.iter:07d}.pth")

    def after_train(self) -> None:
        if self.trainer.iter >= self.trainer.max_iter:
            self._save("model_final.pth")


class FinalEvaluation(HookBase):
    """Run ``evaluate()`` once training finishes and keep its metrics on the trainer."""

    def __init__(self, *, evaluate: Callable[[], dict[str, Any]]) -> None:
        self.evaluate = evaluate

    def after_train(self) -> None:
        if self.trainer.iter >= self.trainer.max_iter:
            self.trainer.metrics = self.evaluate()


def check_finite(losses: dict[str, float], iteration: int) -> None:
    """Stop with a clear message when a loss is NaN or infinite."""
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(
            f"non-finite loss at iteration {iteration}: {bad}. Lower solver.lr or check the "
            "data; the last good checkpoint in the run directory is kept."
        )
