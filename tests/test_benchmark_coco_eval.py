"""Smoke test of the COCO-evaluation benchmark at a tiny size (the benchmark itself is no test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from detector.benchmarks.coco_eval import CocoEvalBenchmark, synthetic_coco_eval_data
from detector.benchmarks.runner import run_benchmarks
from detector.evaluation.coco_eval import STAT_NAMES, evaluate_coco
from tests.helpers import CONFIG_DIR

TINY = {"num_images": 12, "dets_per_image": 10, "gt_per_image": 3.0, "num_categories": 5}


def test_synthetic_data_is_deterministic_and_well_formed() -> None:
    gt, results = synthetic_coco_eval_data(**TINY, seed=3)
    again = synthetic_coco_eval_data(**TINY, seed=3)
    assert (gt, results) == again
    assert synthetic_coco_eval_data(**TINY, seed=4)[1] != results
    assert len(gt["images"]) == 12 and len(results) == 12 * 10
    cat_ids = [c["id"] for c in gt["categories"]]
    assert len(cat_ids) == 5 and set(cat_ids) <= set(range(1, 91))
    assert {r["category_id"] for r in results} <= set(cat_ids)
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and w > 0
        assert x + w <= 640 + 1e-9 and y + h <= 480 + 1e-9
    with pytest.raises(ValueError, match="num_categories"):
        synthetic_coco_eval_data(**{**TINY, "num_categories": 91}, seed=0)


def test_benchmark_times_both_engines_and_their_stats_agree(tmp_path: Path) -> None:
    task = CocoEvalBenchmark(**TINY, seed=0, repeats=2)
    report = run_benchmarks({"coco_eval": task}, ["coco_eval"], output_dir=tmp_path)
    result = report["tasks"]["coco_eval"]
    assert set(result["seconds"]) == {"faster_coco_eval", "pycocotools"}
    assert all(len(s) == 2 and min(s) > 0 for s in result["seconds"].values())
    assert result["speedup_vs_baseline"]["pycocotools"] == 1.0
    assert result["stats_max_abs_diff"] < 1e-12
    # the timed statistics are the ones the evaluation API reports for the same data
    gt, results = synthetic_coco_eval_data(**TINY, seed=0)
    reference = evaluate_coco(gt, results, engine="pycocotools", per_class=False)
    for name in STAT_NAMES:
        assert result["stats"]["faster_coco_eval"][name] == pytest.approx(
            reference[name], abs=1e-12
        )
    assert 0 < reference["AP"] < 1  # neither trivial nor empty
    assert "speed-up vs pycocotools" in result["table"] and "faster_coco_eval" in result["table"]
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert saved["tasks"]["coco_eval"]["num_detections"] == 120
    assert (tmp_path / "coco_eval.json").is_file()
    with pytest.raises(KeyError, match="unknown benchmark task"):
        run_benchmarks({"coco_eval": task}, ["model_speed"], output_dir=tmp_path)


def test_benchmark_config_instantiates_the_task() -> None:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("benchmark", overrides=["tasks.coco_eval.num_images=7"])
    assert "coco_eval" in cfg.tasks and all(name in cfg.tasks for name in cfg.run)
    task = instantiate(cfg.tasks.coco_eval, _convert_="all")
    assert isinstance(task, CocoEvalBenchmark) and task.name == "coco_eval"
    assert task.data_args["num_images"] == 7 and task.repeats == 3
    assert task.yardstick == {"repeats": 10, "warmup": 2}  # the shared yardstick settings
    with pytest.raises(ValueError, match="baseline"):
        CocoEvalBenchmark(engines=["faster_coco_eval"], baseline="pycocotools")


def test_benchmark_gives_times_in_yardsticks_when_asked(tmp_path: Path) -> None:
    task = CocoEvalBenchmark(**TINY, seed=0, repeats=1, yardstick={"repeats": 1, "warmup": 0})
    result = task.run()
    yardstick_s = result["yardstick"]["median_s"]
    assert yardstick_s > 0 and "yardstick (one resnet18 training step" in result["table"]
    for engine, median in result["median_seconds"].items():
        row = next(line for line in result["table"].splitlines() if f"| {engine} " in line)
        assert row.split("|")[3].strip() == f"{median / yardstick_s:.1f}"
