"""Evaluation against the shared fixtures with known answers (skipped without ../shared).

* ``fixtures/coco_eval``: 12 COCO statistics produced by the reference COCO API (1e-6).
* ``fixtures/voc_eval_cat``: VOC AP of one class at IoU 0.5 / 0.75, 11-point and
  all-point (1e-4).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.evaluation.coco_eval import STAT_NAMES, score_coco_results_file
from detector.evaluation.voc_eval import VOCEvaluator, score_voc_results
from detector.evaluation.voc_io import load_voc_annotations, read_voc_results_file

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COCO_DIR = SHARED / "fixtures" / "coco_eval"
VOC_DIR = SHARED / "fixtures" / "voc_eval_cat"

needs_coco = pytest.mark.skipif(not COCO_DIR.is_dir(), reason=f"{COCO_DIR} not available")
needs_voc = pytest.mark.skipif(not VOC_DIR.is_dir(), reason=f"{VOC_DIR} not available")

VOC_CASES = [
    (0.5, True, "iou_0.50", "voc07_11point"),
    (0.5, False, "iou_0.50", "all_point"),
    (0.75, True, "iou_0.75", "voc07_11point"),
    (0.75, False, "iou_0.75", "all_point"),
]


@needs_coco
@pytest.mark.parametrize("engine", ["faster_coco_eval", "pycocotools"])
def test_coco_fixture_reproduces_reference_stats(engine: str) -> None:
    expected = json.loads((COCO_DIR / "expected.json").read_text())
    metrics = score_coco_results_file(
        COCO_DIR / "ground_truth.json", COCO_DIR / "detections.json", engine=engine
    )
    for name in STAT_NAMES:
        assert metrics[name] == pytest.approx(expected["stats"][name], abs=expected["tolerance"]), (
            name
        )


@needs_voc
@pytest.mark.parametrize(("iou", "use_07", "iou_key", "metric_key"), VOC_CASES)
def test_voc_fixture_reproduces_reference_ap(
    iou: float, use_07: bool, iou_key: str, metric_key: str
) -> None:
    expected = json.loads((VOC_DIR / "expected.json").read_text())
    metrics = score_voc_results(
        VOC_DIR / "Annotations", VOC_DIR, class_names=["cat"], iou_thresh=iou, use_07_metric=use_07
    )
    want = expected["ap"][iou_key][metric_key]
    assert metrics["per_class_AP"]["cat"] == pytest.approx(want, abs=expected["tolerance"])


@needs_voc
@pytest.mark.parametrize("use_07", [True, False])
def test_voc_evaluator_on_0_based_boxes_matches_the_devkit(use_07: bool) -> None:
    """Convert XML and results to the project's 0-based boxes; the scores must not move."""
    expected = json.loads((VOC_DIR / "expected.json").read_text())
    shift = np.array([1.0, 1.0, 0.0, 0.0])  # XML (1-based) -> (xmin - 1, ymin - 1, xmax, ymax)
    gt = {
        image_id: {
            "boxes": np.array([o.box for o in objs]).reshape(-1, 4) - shift,
            "labels": np.ones(len(objs), dtype=np.int64),
            "difficult": np.array([o.difficult for o in objs], dtype=bool),
        }
        for image_id, objs in load_voc_annotations(VOC_DIR / "Annotations").items()
    }
    dets = read_voc_results_file(VOC_DIR / "comp4_det_test_cat.txt")
    evaluator = VOCEvaluator(
        class_names=["cat"], gt=gt, iou_thresholds=(0.5, 0.75), use_07_metric=use_07
    )
    for image_id in gt:
        keep = [i for i, d in enumerate(dets.image_ids) if d == image_id]
        output = {
            "boxes": torch.as_tensor(dets.boxes[keep] - shift).reshape(-1, 4),
            "scores": torch.as_tensor(dets.scores[keep]),
            "labels": torch.ones(len(keep), dtype=torch.int64),
        }
        evaluator.process([image_id], [output])
    metrics = evaluator.evaluate()
    metric_key = "voc07_11point" if use_07 else "all_point"
    for iou, iou_key in [(0.5, "iou_0.50"), (0.75, "iou_0.75")]:
        got = metrics["per_iou"][iou]["per_class_AP"]["cat"]
        assert got == pytest.approx(expected["ap"][iou_key][metric_key], abs=1e-4)
