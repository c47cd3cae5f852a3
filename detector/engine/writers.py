"""Rank-0 hooks that report training: a progress bar, periodic log lines (console and
``metrics.jsonl`` in the run directory) and TensorBoard scalars.

The writers read the trainer's :class:`~detector.engine.storage.ScalarStorage`: names are
``train/loss_*``, ``train/total_loss``, ``train/lr``, ``train/time``,
``train/images_per_sec`` and ``val/<metric>`` (e.g. ``val/AP``).
"""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path
from typing import Any

from tqdm import tqdm

from detector.engine.hooks import HookBase

logger = logging.getLogger(__name__)

#: Validation metrics shown in the log line (all of them go to the files).
SHOWN_VAL = ("val/AP", "val/AP50", "val/AP75", "val/voc/mAP")


class ProgressBar(HookBase):
    """tqdm bar over iterations with smoothed losses, lr and the bar's own ETA."""

    def __init__(self, *, smoothing: float = 0.9) -> None:
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

    def after_train(self) -> None:
        if self._bar is not None:
            self._bar.close()


class PeriodicLogger(HookBase):
    """Every ``period`` iterations (and at the end): one log line (mean losses over the
    period, lr, images/s, ETA) and one JSON object appended to ``path`` holding every scalar
    recorded since the previous line (means over the period; ``val/*`` as recorded).

    Scalars recorded at the iteration of the line written last (the final evaluation's, at
    the last iteration) are merged into that line: one line per iteration.

    On resume, lines of ``path`` past the starting iteration (written after the checkpoint
    by the interrupted run) are dropped first, so the file reads as one uninterrupted run.
    """

    def __init__(self, *, period: int, path: str | Path | None) -> None:
        if period <= 0:
            raise ValueError(f"train.log_period must be positive, got {period}")
        self.period = period
        self.path = Path(path) if path is not None else None
        self._cursor = 0
        self._last: dict[str, Any] | None = None  # the record on the file's last line
        self._last_offset = 0

    def before_train(self) -> None:
        if self.path is not None and self.path.is_file():
            lines = self.path.read_text().splitlines()
            kept = [ln for ln in lines if _iteration(ln) <= self.trainer.iter]
            self.path.write_text("".join(f"{ln}\n" for ln in kept))

    def after_step(self) -> None:
        t = self.trainer
        if t.iter % self.period == 0:
            self._write()

    def after_train(self) -> None:
        self._write()

    def _record(self, new: dict[str, list[tuple[int, float]]]) -> dict[str, Any]:
        t = self.trainer
        record: dict[str, Any] = {"iteration": t.iter}
        for name, points in new.items():
            values = [v for _, v in points]
            last_only = name == "train/lr" or name.startswith("val/")
            record[name] = values[-1] if last_only else sum(values) / len(values)
        if "train/time" in record:
            record["eta_seconds"] = record["train/time"] * (t.max_iter - t.iter)
        return record

    def _write(self) -> None:
        t = self.trainer
        new, self._cursor = t.storage.since(self._cursor)
        if not new:
            return
        record = self._record(new)
        logger.info(format_line(record, t.max_iter))
        if self.path is None:
            return
        if self._last is not None and self._last["iteration"] == record["iteration"]:
            # e.g. the final evaluation's metrics, recorded at the last iteration: one line
            record = {**self._last, **record}
            with self.path.open("r+") as f:
                f.truncate(self._last_offset)
        with self.path.open("a") as f:
            self._last_offset = f.tell()
            f.write(json.dumps(record) + "\n")
        self._last = record


def _iteration(line: str) -> float:
    """The ``iteration`` of a ``metrics.jsonl`` line; ``inf`` for a line a kill cut short."""
    try:
        return float(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


def format_line(record: dict[str, Any], max_iter: int) -> str:
    """``iter 20/300  eta 0:00:41  total_loss 1.2345  loss_cls 0.5 ...  lr 2.00e-02
    images/s 3.1  AP 0.123``."""
    parts = [f"iter {record['iteration']}/{max_iter}"]
    if "eta_seconds" in record:
        parts.append(f"eta {datetime.timedelta(seconds=round(record['eta_seconds']))}")
    for name, value in record.items():
        if name.startswith("train/") and "loss" in name:
            parts.append(f"{name.removeprefix('train/')} {value:.4f}")
    if "train/lr" in record:
        parts.append(f"lr {record['train/lr']:.3e}")
    if "train/images_per_sec" in record:
        parts.append(f"images/s {record['train/images_per_sec']:.2f}")
    parts += [f"{n.removeprefix('val/')} {record[n]:.4f}" for n in SHOWN_VAL if n in record]
    return "  ".join(parts)


class TensorBoardWriter(HookBase):
    """Every scalar of the storage as a TensorBoard scalar (tag = storage name, step =
    iteration), written every ``period`` iterations and at the end, into ``log_dir``.

    Needs the optional ``tensorboard`` package (``pip install -e ".[tensorboard]"``);
    constructing the hook without it raises ``ImportError`` saying so.
    """

    def __init__(self, *, log_dir: str | Path, period: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError(
                "TensorBoard logging needs the optional 'tensorboard' package: "
                'pip install -e ".[tensorboard]" (or set train.tensorboard=false)'
            ) from err
        self._writer_cls = SummaryWriter
        self.log_dir = Path(log_dir)
        self.period = period
        self._writer: Any = None
        self._cursor = 0

    def before_train(self) -> None:
        start = self.trainer.iter
        # purge_step hides the events an interrupted run wrote after the resumed checkpoint
        purge = start + 1 if start > 0 else None
        self._writer = self._writer_cls(log_dir=str(self.log_dir), purge_step=purge)

    def _write(self) -> None:
        new, self._cursor = self.trainer.storage.since(self._cursor)
        for name, points in new.items():
            for iteration, value in points:
                self._writer.add_scalar(name, value, iteration)
        self._writer.flush()

    def after_step(self) -> None:
        if self.trainer.iter % self.period == 0:
            self._write()

    def after_train(self) -> None:
        if self._writer is not None:
            self._write()
            self._writer.close()
