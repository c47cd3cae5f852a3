"""The ablation's statistics and the look-alike pair metrics, on hand-computed cases."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from detector.engine.ablate import (
    checkpoint_list,
    diagnostic_selected,
    paired_delta,
    row_runs,
    summarize,
)
from detector.evaluation.pairs import pair_metrics
from tests.helpers import compose_config

GT = {
    "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
    "categories": [{"id": 1, "name": "boat"}, {"id": 2, "name": "car"}, {"id": 3, "name": "ball"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 10, 10], "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10], "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [80, 80, 10, 10], "iscrowd": 0},
        {"id": 5, "image_id": 2, "category_id": 3, "bbox": [30, 30, 10, 10], "iscrowd": 0},
    ],
}


def test_pair_accuracy_hand_computed():
    results = [
        # box 1 (boat): boat 0.9 beats car 0.8 -> told apart
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [1, 0, 10, 10], "score": 0.8},
        # box 2 (car): only a boat detection overlaps -> confused
        {"image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.6},
        # box 3 (car): car 0.7 beats a boat that does not overlap enough (IoU 0.33)
        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.7},
        {"image_id": 2, "category_id": 1, "bbox": [5, 0, 10, 10], "score": 0.95},
        # box 4 (boat): not found; the ball is not a pair class
        {"image_id": 2, "category_id": 3, "bbox": [30, 30, 10, 10], "score": 0.9},
    ]
    m = pair_metrics(GT, results, [["boat", "car"]], per_class_ap={"boat": 0.4, "car": 0.2})
    assert m["pair_boxes"] == 4
    assert m["pair_recall"] == pytest.approx(3 / 4)
    assert m["pair_accuracy"] == pytest.approx(2 / 3)
    assert m["pair_AP"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="two class names"):
        pair_metrics(GT, results, [["boat", "plane"]])


def test_summary_and_paired_differences():
    runs = [{"AP": 0.30, "APl": -1.0}, {"AP": 0.40, "APl": -1.0}]
    base = [{"AP": 0.20}, {"AP": 0.34}]
    s = summarize(runs, ["AP", "APl"])
    assert s["AP"]["mean"] == pytest.approx(0.35) and s["AP"]["spread"] == pytest.approx(0.05)
    assert "APl" not in s  # COCO's -1: no such objects
    d = paired_delta(runs, base, "AP")  # per seed +0.10 and +0.06
    assert d["mean"] == pytest.approx(0.08) and d["spread"] == pytest.approx(0.02)
    assert paired_delta(runs, base[:1], "AP") is None
    assert summarize([{"AP": math.nan}], ["AP"]) == {}
    # a trick that costs AP: the differences are negative and still counted
    worse = paired_delta(base, runs, "AP")  # per seed -0.10 and -0.06
    assert worse["mean"] == pytest.approx(-0.08) and worse["values"] == pytest.approx([-0.1, -0.06])
    # a pair with COCO's -1 on either side is left out, the rest kept
    assert paired_delta(runs, [{"APl": 0.5}, {"APl": 0.2}], "APl") is None
    mixed = paired_delta([{"APl": -1.0}, {"APl": 0.3}], [{"APl": 0.5}, {"APl": 0.2}], "APl")
    assert mixed["values"] == pytest.approx([0.1]) and mixed["spread"] == 0.0


def test_diagnostics_select_rows_by_name():
    name = "diag: box voting only, no refinement pass"
    for chosen, expected in ((False, False), (True, True), ("voting", True), ("VOTING", True)):
        assert diagnostic_selected(OmegaConf.create({"diagnostics": chosen}), name) is expected
    assert diagnostic_selected(OmegaConf.create({"diagnostics": "context"}), name) is False
    assert diagnostic_selected(OmegaConf.create({"diagnostics": ["x", "only,"]}), name) is True


def test_rows_run_per_seed_and_ensembles_join_the_seeds():
    cfg = OmegaConf.create(
        {"checkpoints": {"baseline": ["p0", "p1"], "context": "c0", "more": ["c1", "c2"]}}
    )
    assert checkpoint_list(cfg, "context") == ["c0"]
    assert row_runs(cfg, {"checkpoint": "baseline"}) == [("p0", []), ("p1", [])]
    ens = {"checkpoint": "context", "ensemble": "shared_proposals", "members": ["more"]}
    assert row_runs(cfg, ens) == [("c0", ["c1", "c2"])]


def test_the_papers_constants_are_the_config_defaults():
    """Tricks are not tuned to a dataset: the test group's defaults are the paper's numbers."""
    refine = compose_config("eval", ["test=box_refinement"]).test.wrapper
    assert (refine.nms_thresh, refine.vote_thresh, refine.iterations) == (0.3, 0.5, 1)
    ms = compose_config("eval", ["test=multiscale_paper"]).test.per_model
    assert list(ms.scales) == [200, 400, 600, 800, 1000]
    assert (ms.target_size, ms.reference_scale) == (224, 600)
    # the carry-over to other sizes: bounded by the training objects (at 600 px on COCO the
    # bound, 17-347 px, holds 224 px, and every RoI below ~520 px keeps SPP-net's pair)
    assert ms.target_range == "train_objects" and ms.levels_in_range is True
    paper = compose_config("eval", ["test=paper"]).test
    assert paper.per_model.target_size == 224 and paper.wrapper.nms_thresh == 0.3
    for model in ("faster_rcnn_r101_c4", "faster_rcnn_r50_c4", "faster_rcnn_r18_c4"):
        assert compose_config("train", [f"model={model}"]).model.rpn_post_nms_top_n.testing == 300
    for study in ("scenes", "bccd"):
        cfg = compose_config("train", [f"+experiment={study}"])
        assert cfg.model.rpn_post_nms_top_n.testing == 300
    pyramid = compose_config("ablate", ["checkpoints.baseline=x"]).pyramid
    assert list(pyramid.scales) == list(ms.scales) and pyramid.target_size == ms.target_size
    assert pyramid.reference_scale == ms.reference_scale
    assert pyramid.target_range == ms.target_range
    assert pyramid.levels_in_range == ms.levels_in_range
