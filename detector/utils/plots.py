"""Training curves from ``metrics.jsonl`` files, drawn to a PNG (``tools/plot_metrics.py``).

Each run directory's ``metrics.jsonl`` (one JSON object per logged iteration, see
:class:`detector.engine.writers.PeriodicLogger`) gives one line per run in each panel: the
total training loss, the learning rate (log scale) and, where the run evaluated periodically,
the validation AP. Dashed vertical lines mark the learning-rate steps of the first run, so a
reader sees whether the loss had flattened before them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The records of ``run`` (a run directory or its ``metrics.jsonl``), by iteration.

    Raises:
        FileNotFoundError: no ``metrics.jsonl`` there; ValueError: a line is not JSON.
    """
    path = Path(run)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl at {path}")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as err:
            raise ValueError(f"{path}:{number}: not a JSON line ({err})") from err
    return sorted(records, key=lambda r: r["iteration"])


def series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(iterations, values) of the records that have a finite ``key``."""
    points = [
        (int(r["iteration"]), float(r[key]))
        for r in records
        if isinstance(r.get(key), int | float) and math.isfinite(float(r[key]))
    ]
    return [p[0] for p in points], [p[1] for p in points]


def lr_steps(records: Sequence[dict[str, Any]]) -> list[int]:
    """Iterations where the logged learning rate dropped (after warmup), i.e. the steps."""
    iterations, lrs = series(records, "train/lr")
    return [it for it, prev, now in zip(iterations[1:], lrs, lrs[1:]) if now < 0.5 * prev]


def plot_runs(
    runs: Sequence[str | Path],
    output: str | Path,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    smooth: int = 1,
) -> Path:
    """Draw the curves of ``runs`` into ``output`` (PNG); returns its path.

    Args:
        labels: one per run (default: the run folder names).
        smooth: average the loss over this many consecutive logged points.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    labels = list(labels) if labels else [Path(r).name for r in runs]
    if len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
    data = [read_metrics(r) for r in runs]
    has_val = any(series(d, "val/AP")[0] for d in data)
    fig, axes = plt.subplots(1, 3 if has_val else 2, figsize=(15 if has_val else 10, 4))
    for records, label in zip(data, labels):
        its, loss = series(records, "train/total_loss")
        if smooth > 1 and len(loss) >= smooth:
            loss = [sum(loss[i : i + smooth]) / smooth for i in range(len(loss) - smooth + 1)]
            its = its[smooth - 1 :]
        axes[0].plot(its, loss, label=label)
        axes[1].plot(*series(records, "train/lr"), label=label)
        if has_val:
            axes[2].plot(*series(records, "val/AP"), marker="o", label=label)
    for ax, name in zip(axes, ("training loss (total)", "learning rate", "val AP")):
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        for step in lr_steps(data[0]):
            ax.axvline(step, color="grey", linestyle="--", linewidth=0.8)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output
