"""tools/plot_metrics.py: reading metrics.jsonl, finding the LR steps, writing the PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from detector.utils.plots import lr_steps, plot_runs, read_metrics, series
from tests.helpers import REPO_ROOT


def _run(root: Path, steps_at: tuple[int, ...] = (60,), with_val: bool = True) -> Path:
    root.mkdir(parents=True)
    lines = []
    for it in range(10, 101, 10):
        lr = 0.02 * 0.1 ** sum(it > s for s in steps_at)
        record = {"iteration": it, "train/total_loss": 2.0 / it, "train/lr": lr}
        if with_val and it % 50 == 0:
            record["val/AP"] = it / 200
        lines.append(json.dumps(record))
    lines.insert(3, json.dumps({"iteration": 35, "train/total_loss": float("nan")}))
    (root / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_series_and_lr_steps(tmp_path: Path):
    records = read_metrics(_run(tmp_path / "a", steps_at=(30, 70)))
    its, ap = series(records, "val/AP")
    assert its == [50, 100] and ap == [0.25, 0.5]
    assert 35 not in series(records, "train/total_loss")[0]  # NaN left out
    assert lr_steps(records) == [40, 80]  # the first logged iteration after each step


def test_plot_writes_a_png(tmp_path: Path):
    out = plot_runs(
        [_run(tmp_path / "a"), _run(tmp_path / "b", with_val=False)],
        tmp_path / "c.png",
        smooth=2,
    )
    assert Image.open(out).size == (1500, 400)
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        plot_runs([tmp_path / "missing"], tmp_path / "d.png")


def test_command_line(tmp_path: Path):
    run = _run(tmp_path / "a")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text("{not json\n")
    tool = str(REPO_ROOT / "tools" / "plot_metrics.py")
    ok = subprocess.run(
        [sys.executable, tool, str(run), "-o", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and (tmp_path / "x.png").is_file(), ok.stderr
    bad = subprocess.run(
        [sys.executable, tool, str(tmp_path / "bad"), "-o", str(tmp_path / "y.png")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "not a JSON line" in bad.stderr
