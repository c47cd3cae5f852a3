"""The speed benchmark's pieces at tiny sizes (the benchmark itself, with its targets, is no test).

What must hold whatever the machine's speed: the torchvision twin returns exactly our detections
and first-step losses (same weights, same settings), timings interleave the contenders, the
detection comparison flags real differences, and a full tiny run returns every expected key.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from detector.benchmarks.data_speed import time_data_loading
from detector.benchmarks.runner import run_benchmarks
from detector.benchmarks.speed import LEVERS, OURS, TORCHVISION, format_result, paired_ratio
from detector.benchmarks.timing import Throughput, time_interleaved
from detector.benchmarks.twin import (
    benchmark_images,
    benchmark_targets,
    calibrate_classifier,
    compare_detections,
    detections_match,
    randomize_weights,
    torchvision_twin,
)
from detector.data.synthetic import SyntheticShapesDetection
from detector.data.transforms import build_transforms
from detector.modeling.fuse import optimize_for_inference
from tests.helpers import build_model_from_config, compose_config

CPU = torch.device("cpu")
#: few regions per image: the per-region heads (res5; a 12544 x 1024 layer for FPN) dominate
FEW_REGIONS = {
    "model.rpn_post_nms_top_n": {"training": 64, "testing": 32},
    "model.roi_batch_size_per_image": 32,
}
SMALL_C4 = {**FEW_REGIONS, "model.pooler_resolution": 7}
SMALL_FPN = {**FEW_REGIONS, "model.depth": 18}


def test_time_interleaved_rotates_the_order_and_counts_calls() -> None:
    calls: list[str] = []
    fns = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    seconds = time_interleaved(fns, warmup=1, repeats=3, device=CPU)
    assert calls == list("abc" + "abc" + "bca" + "cab")
    assert {k: len(v) for k, v in seconds.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(s >= 0 for v in seconds.values() for s in v)
    with pytest.raises(ValueError, match="repeats >= 1"):
        time_interleaved(fns, warmup=0, repeats=0, device=CPU)


def test_paired_ratio_cancels_load_shared_by_a_round() -> None:
    # per round: 2.0, 2.5, 1.5 -> 2.0; the ratio of the medians (3.0 / 2.0) would say 1.5
    ours, reference = [4.0, 1.0, 2.0], [8.0, 2.5, 3.0]
    assert paired_ratio(ours, reference) == 2.0
    assert paired_ratio([1.0, 2.0, 4.0], [2.0, 2.0, 2.0]) == 1.0
    with pytest.raises(ValueError):
        paired_ratio([1.0], [1.0, 2.0])


def _dets(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict:
    return {
        "boxes": torch.tensor(boxes).reshape(-1, 4),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def test_compare_detections_flags_differences() -> None:
    a = [_dets([[0, 0, 10, 10], [5, 5, 20, 30]], [0.9, 0.5], [1, 2])]
    same = compare_detections(a, a)
    assert same == {
        "num_detections": 2,
        "same_counts": True,
        "same_labels": True,
        "box_diff": 0.0,
        "score_diff": 0.0,
    }
    assert detections_match(same, box_atol=0.0, score_atol=0.0)
    moved = [_dets([[0, 0, 10, 10.5], [5, 5, 20, 30]], [0.9, 0.5], [1, 2])]
    report = compare_detections(moved, a)
    assert report["box_diff"] == pytest.approx(0.5)
    assert not detections_match(report, box_atol=0.01, score_atol=1.0)
    relabelled = [_dets([[0, 0, 10, 10], [5, 5, 20, 30]], [0.9, 0.5], [1, 3])]
    assert not compare_detections(relabelled, a)["same_labels"]
    fewer = [_dets([[0, 0, 10, 10]], [0.9], [1])]
    assert not compare_detections(fewer, a)["same_counts"]
    empty = [_dets([], [], [])]
    assert not detections_match(compare_detections(empty, empty), box_atol=1, score_atol=1)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("faster_rcnn_r18_c4", SMALL_C4), ("faster_rcnn_r50_fpn", SMALL_FPN)],
)
def test_torchvision_twin_gives_the_same_detections_and_losses(name: str, overrides: dict) -> None:
    torch.manual_seed(0)
    ours = build_model_from_config(name, num_classes=5, overrides=overrides)
    randomize_weights(ours, seed=0)
    images = benchmark_images(batch_size=2, image_size=96, max_size=128, device=CPU, seed=0)
    calibrate_classifier(ours, images)
    twin = torchvision_twin(ours, min_size=96, max_size=128)
    with torch.no_grad():
        report = compare_detections(ours.eval()(images), twin.eval()(images))
    assert report["num_detections"] > 20
    assert detections_match(report, box_atol=0.0, score_atol=0.0), report
    targets = benchmark_targets(images, num_classes=5, boxes_per_image=3, seed=0)
    twin.transform.torch_choice = lambda sizes: sizes[0]  # keep the RNG streams aligned
    ours.train(), twin.train()
    torch.manual_seed(1)
    ours_losses = ours(images, targets)
    torch.manual_seed(1)
    tv_losses = twin(images, targets)
    names = {"loss_rpn_cls": "loss_objectness", "loss_rpn_box": "loss_rpn_box_reg"}
    names |= {"loss_cls": "loss_classifier", "loss_box": "loss_box_reg"}
    for ours_name, tv_name in names.items():
        torch.testing.assert_close(ours_losses[ours_name], tv_losses[tv_name], rtol=0, atol=1e-6)


def test_twin_of_a_trainable_bn_fpn_model_is_refused() -> None:
    ours = build_model_from_config(
        "faster_rcnn_r50_fpn", num_classes=2, overrides={"model.depth": 18, "model.norm": "bn"}
    )
    with pytest.raises(ValueError, match="frozen BatchNorm"):
        torchvision_twin(ours, min_size=128, max_size=192)


def test_lever_rows_are_valid_optimisations_and_are_tabulated() -> None:
    module = nn.Sequential(nn.Conv2d(3, 4, 3), FrozenBatchNorm2d(4), nn.ReLU())
    for kwargs in LEVERS.values():
        optimize_for_inference(module, **kwargs)  # every lever is an accepted combination
    seconds = {OURS: [1.0, 1.0], TORCHVISION: [2.0, 2.0]} | {k: [1.5, 1.5] for k in LEVERS}
    inference = {
        "detections": compare_detections(
            [_dets([[0, 0, 1, 1]], [0.5], [1])] * 2, [_dets([[0, 0, 1, 1]], [0.5], [1])] * 2
        ),
        "identical": True,
        "image_shape": [3, 8, 8],
        "throughput": {k: Throughput(v, 1).as_dict() for k, v in seconds.items()},
    }
    result = {"settings": {"device": "cpu", "threads": 2, "amp": False, "weights": "x"}}
    table = format_result({**result, "inference": inference})
    assert "| ours, + BN folded " in table and "1.33x" in table and "2.00x" in table


def test_data_loading_speed_reports_the_configured_size(tmp_path: Path) -> None:
    dataset = SyntheticShapesDetection(
        root=tmp_path / "syn",
        split="train",
        num_train=6,
        num_val=1,
        transforms=build_transforms(train=True, min_sizes=[160], max_size=400),
    )
    out = time_data_loading(dataset, batch_size=2, num_workers=0, batches=2, repeats=2)
    assert len(out["images_per_s"]) == 2 and out["median_images_per_s"] > 0
    assert out["short_side_range"] == [160, 160] and max(out["mean_image_size"]) > 160
    with pytest.raises(ValueError, match="batches >= 1"):
        time_data_loading(dataset, batch_size=2, num_workers=0, batches=0)


def test_speed_benchmark_tiny_run_returns_every_part(tmp_path: Path) -> None:
    cfg = compose_config(
        "benchmark",
        [
            "model.depth=18",
            "model.rpn_post_nms_top_n={training:64,testing:32}",
            "model.roi_batch_size_per_image=32",
            "image_size=64",
            "max_size=96",
            f"dataset.root={tmp_path / 'syn'}",
            "dataset.generator.num_train=4",
            "dataset.generator.num_val=1",
            "tasks.speed.inference.warmup=0",
            "tasks.speed.inference.repeats=1",
            "tasks.speed.training.warmup=0",
            "tasks.speed.training.repeats=1",
            "tasks.speed.training.batch_size=1",
            "tasks.speed.training.boxes_per_image=2",
            "tasks.speed.data_loading.num_workers=0",
            "tasks.speed.data_loading.batches=1",
            "tasks.speed.data_loading.repeats=1",
            "tasks.speed.data_loading.warmup_batches=0",
            "tasks.coco_eval.num_images=4",
            "tasks.coco_eval.dets_per_image=3",
            "tasks.coco_eval.repeats=1",
        ],
    )
    task = instantiate(cfg.tasks.speed, _convert_="all")
    report = run_benchmarks({"speed": task}, ["speed"], output_dir=tmp_path)
    result = report["tasks"]["speed"]
    inference = result["inference"]
    assert inference["identical"] and inference["image_shape"] == [3, 64, 85]
    assert set(inference["throughput"]) == {OURS, TORCHVISION}
    training = result["training"]
    assert training["losses"]["abs_diff"] < 1e-5  # our default layout: the same numbers
    assert "channels_last_abs_diff" in training["losses"]  # the timed copy is NHWC
    assert training["box_head"]["module"] == "TwoMLPHead" and training["box_head"]["share"] > 0
    assert result["data_loading"]["short_side_range"] == [64, 64]
    assert result["coco_eval"]["speedup_vs_baseline"]["pycocotools"] == 1.0
    pairs = [r["what"].split(" ")[0] for r in result["ratios"]]
    assert pairs == ["inference", "training", "data-loading", "COCO"]
    for row in result["ratios"]:
        assert row["ratio_of_medians"] == pytest.approx(row["ours"] / row["reference"])
    inference_row = result["ratios"][0]
    seconds = inference["throughput"]
    assert inference_row["ratio"] == paired_ratio(
        seconds[OURS]["seconds"], seconds[TORCHVISION]["seconds"]
    )
    assert "identical" in result["table"] and ">= 1.3x" in result["table"]
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert saved["settings"]["inference"]["image_size"] == 64
