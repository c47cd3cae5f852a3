"""The whole-job benchmark with a tiny job: its arithmetic, its table and its config node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate

from detector.benchmarks.job import JobBenchmark, format_result
from detector.benchmarks.runner import run_benchmarks
from tests.helpers import TINY, compose_config

#: the tiny run with half the data and two iterations
TINY_JOB = [
    *(
        o
        for o in TINY
        if not o.startswith(("dataset.generator.num_", "solver.max_iter", "solver.steps"))
    ),
    "dataset.generator.num_train=4",
    "dataset.generator.num_val=2",
    "solver.max_iter=2",
    "solver.steps=[1]",
    "train.tensorboard=false",
]
TINY_YARDSTICK = {"repeats": 1, "warmup": 0}


def test_tiny_job_reports_wall_times_yardsticks_and_metrics(tmp_path: Path) -> None:
    overrides = [*TINY_JOB, f"dataset.root={tmp_path / 'data'}"]
    task = JobBenchmark(overrides=overrides, output_dir=str(tmp_path), yardstick=TINY_YARDSTICK)
    report = run_benchmarks({"job": task}, ["job"], output_dir=tmp_path / "bench")
    result = report["tasks"]["job"]
    sec, ys = result["seconds"], result["yardsticks"]
    assert sec["training"] > 0 and sec["evaluation"] > 0
    assert sec["total"] == sec["training"] + sec["evaluation"]  # preparation is not in it
    yardstick_s = result["yardstick"]["median_s"]
    after_s = result["yardstick_after"]["median_s"]
    for part in ("prepare_dataset", "training", "evaluation", "total"):
        assert ys[part] == pytest.approx(sec[part] / yardstick_s)
        assert result["yardsticks_after"][part] == pytest.approx(sec[part] / after_s)
    assert result["yardstick_after"]["median_s"] > 0
    assert set(result["metrics"]) == {"AP", "AP50", "AP75"}
    assert all(0 <= v <= 1 for v in result["metrics"].values())  # fractions, a real evaluation
    run = tmp_path / "job"
    assert (run / "model_final.pth").is_file() and (run / "metrics.json").is_file()
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["AP"] == pytest.approx(result["metrics"]["AP"])
    assert result["settings"]["max_iter"] == 2 and result["settings"]["batch_size"] == 2
    table = result["table"]
    assert "training (2 iterations of batch 2)" in table and "<= 800" in table
    assert json.loads((tmp_path / "bench" / "job.json").read_text())["seconds"] == sec


def test_job_table_arithmetic_by_hand() -> None:
    result = {
        "settings": {
            "config_name": "train",
            "overrides": ["solver.max_iter=300"],
            "max_iter": 300,
            "batch_size": 4,
            "targets": {"yardsticks": 800.0, "AP": 0.35, "AP50": 0.65},
        },
        "yardstick": {"description": "d", "threads": 2, "seconds": [0.5], "median_s": 0.5},
        "yardstick_after": {"median_s": 1.0},
        "seconds": {"prepare_dataset": 1.0, "training": 300.0, "evaluation": 50.0, "total": 350.0},
        "yardsticks_after": {
            "prepare_dataset": 1.0,
            "training": 300.0,
            "evaluation": 50.0,
            "total": 350.0,
        },
        "yardsticks": {
            "prepare_dataset": 2.0,
            "training": 600.0,
            "evaluation": 100.0,
            "total": 700.0,
        },
        "metrics": {"AP": 0.381, "AP50": 0.6132, "AP75": None},
    }
    table = format_result(result)
    rows = {
        cells[0]: cells[1:]
        for line in table.splitlines()
        if line.startswith("| ")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert rows["training (300 iterations of batch 4)"] == ["300.0", "600.0", "300.0", "", ""]
    assert rows["per iteration"] == ["1.0", "2.0", "1.0", "", ""]
    assert rows["final evaluation"] == ["50.0", "100.0", "50.0", "", ""]
    total = ["350.0", "700.0", "350.0", "<= 800", "yes"]  # judged on the yardstick before
    assert rows["total: training + final evaluation"] == total
    assert rows["AP"] == ["38.1", ">= 35", "yes"]
    assert rows["AP50"] == ["61.3", ">= 65", "NO"]
    assert rows["AP75"] == ["n/a", "", ""]
    assert "measured again after the job: 1.000 s" in table


def test_benchmark_config_job_node_instantiates() -> None:
    cfg = compose_config("benchmark", ['tasks.job.overrides=["solver.max_iter=20"]', "run=[job]"])
    task = instantiate(cfg.tasks.job, _convert_="all")
    assert isinstance(task, JobBenchmark) and task.overrides == ["solver.max_iter=20"]
    assert task.yardstick == {"repeats": 10, "warmup": 2}
    assert task.targets == {"yardsticks": 800, "AP": 0.35, "AP50": 0.65}
    with pytest.raises(ValueError, match="output_dir is null"):
        JobBenchmark().run()
