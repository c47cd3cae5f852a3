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
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

from detector.benchmarks.data_speed import time_data_loading
from detector.benchmarks.runner import run_benchmarks
from detector.benchmarks.speed import (
    LEVERS,
    OURS,
    TORCHVISION,
    format_result,
    model_label,
    paired_ratio,
)
from detector.benchmarks.timing import Throughput, time_interleaved
from detector.benchmarks.twin import (
    benchmark_images,
    benchmark_targets,
    calibrate_classifier,
    compare_detections,
    detections_match,
    randomize_weights,
    torchvision_pooler,
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
#: torchvision's MultiScaleRoIAlign computes RoIAlign with aligned=False
UNALIGNED = {"model.net.roi_heads.box_roi_pool.aligned": False}
#: tiny yardstick and convolution peak for the tiny benchmark runs
TINY_CONTEXT = [
    "yardstick.repeats=1",
    "yardstick.warmup=0",
    "tasks.speed.conv_peak.shapes=[[1,16,8]]",
    "tasks.speed.conv_peak.warmup=0",
    "tasks.speed.conv_peak.repeats=1",
]


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
    ("name", "overrides", "twin_pooler"),
    [
        ("faster_rcnn_r18_c4", SMALL_C4, "SingleLevelRoIPooler"),  # aligned: a copy of ours
        ("faster_rcnn_r18_c4", {**SMALL_C4, **UNALIGNED}, "MultiScaleRoIAlign"),
        ("faster_rcnn_r18_c4_quick", UNALIGNED, "MultiScaleRoIAlign"),  # the default job's
        ("faster_rcnn_r50_fpn", SMALL_FPN, "MultiScaleRoIAlign"),
    ],
)
def test_torchvision_twin_gives_the_same_detections_and_losses(
    name: str, overrides: dict, twin_pooler: str
) -> None:
    torch.manual_seed(0)
    ours = build_model_from_config(name, num_classes=5, overrides=overrides)
    randomize_weights(ours, seed=0)
    images = benchmark_images(batch_size=2, image_size=96, max_size=128, device=CPU, seed=0)
    calibrate_classifier(ours, images)
    twin = torchvision_twin(ours, min_size=96, max_size=128)
    assert type(twin.roi_heads.box_roi_pool).__name__ == twin_pooler
    if "c4" in name:  # the same trunk and res5 head, as modules of torchvision's FasterRCNN
        assert twin.backbone.out_channels == ours.backbone.out_channels
        assert type(twin.roi_heads.box_head) is type(ours.roi_heads.box_head)
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


def test_torchvision_pooler_only_replaces_what_it_computes_exactly() -> None:
    ours = build_model_from_config("faster_rcnn_r18_c4", num_classes=2, overrides=UNALIGNED)
    pooler = torchvision_pooler(ours.roi_heads.box_roi_pool)
    assert isinstance(pooler, MultiScaleRoIAlign)
    assert pooler.featmap_names == ["res4"] and pooler.output_size == (14, 14)
    assert pooler.sampling_ratio == 0
    features = {"res4": torch.randn(2, 8, 12, 16)}
    boxes = [torch.tensor([[3.0, 5.0, 90.0, 60.0]]), torch.tensor([[0.0, 0.0, 255.0, 191.0]])]
    sizes = [(192, 256), (180, 250)]
    expected = ours.roi_heads.box_roi_pool(features, boxes, sizes)
    assert torch.equal(pooler(features, boxes, sizes), expected)
    for overrides in ({}, {"model.pool_type": "pool"}):  # aligned RoIAlign, RoIPool: a copy
        other = build_model_from_config("faster_rcnn_r18_c4", num_classes=2, overrides=overrides)
        assert not isinstance(torchvision_pooler(other.roi_heads.box_roi_pool), MultiScaleRoIAlign)


def test_model_label_names_depth_and_layout() -> None:
    names = {"faster_rcnn_r18_c4": "R18-C4", "faster_rcnn_r50_c4": "R50-C4"}
    for config, label in names.items():
        assert model_label(build_model_from_config(config, num_classes=2)) == label
    fpn = build_model_from_config("faster_rcnn_r50_fpn", num_classes=2, overrides=SMALL_FPN)
    assert model_label(fpn) == "R18-FPN"


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
            *TINY_CONTEXT,
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
    pairs = [" ".join(r["what"].split(" ")[:2]) for r in result["ratios"]]
    assert pairs == [
        "R18-FPN inference",
        "R18-FPN training",
        "data-loading images/s",
        "COCO evaluations/s,",
    ]
    yardstick_s = result["yardstick"]["median_s"]
    for row in result["ratios"]:
        assert row["ratio_of_medians"] == pytest.approx(row["ours"] / row["reference"])
        assert row["ours_yardsticks"] == pytest.approx(1 / row["ours"] / yardstick_s)
        assert row["reference_yardsticks"] == pytest.approx(1 / row["reference"] / yardstick_s)
    _check_share_of_peak(result)
    assert "yardstick" not in result["coco_eval"]  # measured once, by the speed task
    inference_row = result["ratios"][0]
    seconds = inference["throughput"]
    assert inference_row["ratio"] == paired_ratio(
        seconds[OURS]["seconds"], seconds[TORCHVISION]["seconds"]
    )
    assert "identical" in result["table"] and ">= 1.3x" in result["table"]
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert saved["settings"]["inference"]["image_size"] == 64


def _check_share_of_peak(result: dict) -> None:
    """Every timed model path has a row per contender whose arithmetic holds."""
    peak = result["conv_peak"]["peak_gflops_per_s"]
    rows = result["share_of_peak"]
    assert [(r["path"].split(",")[0], r["contender"]) for r in rows] == [
        (f"{result['settings']['label']} {part}", who)
        for part in ("inference", "training")
        for who in (OURS, TORCHVISION)
    ]
    for row in rows:
        part = result[row["path"].split(",")[0].split(" ")[1]]
        assert row["gflops"] == part["flops"] / 1e9 > 0
        assert row["median_s"] == part["throughput"][row["contender"]]["median_s"]
        assert row["gflops_per_s"] == pytest.approx(row["gflops"] / row["median_s"])
        assert row["share_of_peak"] == pytest.approx(row["gflops_per_s"] / peak)
        assert row["yardsticks"] == pytest.approx(row["median_s"] / result["yardstick"]["median_s"])
    # a training step (forward + backward) costs more than inference on one image
    assert result["training"]["flops"] > result["inference"]["flops"]
    table = result["table"]
    assert "yardstick (one resnet18 training step" in table and "% of conv peak" in table
    assert "convolution peak:" in table


def test_c4_quick_preset_tiny_run_compares_with_the_c4_twin(tmp_path: Path) -> None:
    """The default job's model (preset c4_quick) against its torchvision twin, at 96 px."""
    cfg = compose_config(
        "benchmark",
        [
            "preset=c4_quick",
            "image_size=96",
            "max_size=128",
            "tasks.speed.inference.warmup=0",
            "tasks.speed.inference.repeats=1",
            "tasks.speed.inference.levers=false",
            "tasks.speed.training.warmup=0",
            "tasks.speed.training.repeats=1",
            "tasks.speed.training.batch_size=2",
            "tasks.speed.data_loading=null",
            *TINY_CONTEXT,
        ],
    )
    assert cfg.tasks.speed.coco_eval is None and cfg.model.num_classes == 4
    task = instantiate(cfg.tasks.speed, _convert_="all")
    result = run_benchmarks({"speed": task}, ["speed"], output_dir=tmp_path)["tasks"]["speed"]
    assert result["settings"]["label"] == "R18-C4"
    inference = result["inference"]
    assert inference["identical"] and inference["twin_pooler"] == "MultiScaleRoIAlign"
    assert inference["detections"]["num_detections"] > 0
    training = result["training"]
    assert training["losses"]["abs_diff"] < 1e-5
    assert training["box_head"]["module"] == "Res5BoxHead"
    rows = result["ratios"]
    assert [r["target"] for r in rows] == [None, None]  # the issue sets no C4 targets
    _check_share_of_peak(result)


@pytest.mark.parametrize(
    ("preset", "model", "image_size", "train_batch"),
    [("c4_600", "faster_rcnn_r50_c4", 600, 1), ("c4_quick", "faster_rcnn_r18_c4_quick", 192, 4)],
)
def test_presets_select_the_c4_model_and_size(
    preset: str, model: str, image_size: int, train_batch: int
) -> None:
    cfg = compose_config("benchmark", [f"preset={preset}"])
    own = compose_config("train", [f"model={model}"]).model
    assert cfg.model.depth == own.depth and cfg.model.pooler_resolution == own.pooler_resolution
    assert cfg.model.roi_batch_size_per_image == own.roi_batch_size_per_image
    assert cfg.model.rpn_post_nms_top_n == own.rpn_post_nms_top_n
    assert cfg.image_size == image_size and cfg.tasks.speed.inference.image_size == image_size
    assert cfg.tasks.speed.training.batch_size == train_batch
    assert cfg.model.net.roi_heads.box_roi_pool.aligned is False  # the twin's MultiScaleRoIAlign
