"""Unit tests of the Pascal VOC evaluation (devkit rules), with hand-computed answers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.evaluation.voc_eval import (
    ClassGroundTruth,
    VOCEvaluator,
    devkit_iou,
    evaluate_voc_class,
    format_voc_table,
    score_voc_results,
    voc_ap,
)
from detector.evaluation.voc_io import VOCDetections, read_voc_results_file


def _gt(boxes: list[list[float]], difficult: list[bool] | None = None) -> ClassGroundTruth:
    difficult = difficult if difficult is not None else [False] * len(boxes)
    return ClassGroundTruth(
        boxes=np.array(boxes, dtype=np.float64).reshape(-1, 4),
        difficult=np.array(difficult, dtype=bool),
    )


def _dets(rows: list[tuple[str, float, list[float]]]) -> VOCDetections:
    return VOCDetections(
        image_ids=[r[0] for r in rows],
        scores=np.array([r[1] for r in rows]),
        boxes=np.array([r[2] for r in rows], dtype=np.float64).reshape(-1, 4),
    )


# --- voc_ap -----------------------------------------------------------------------------


# 3 positives; ranked detections TP, FP, TP.
RECALL = np.array([1 / 3, 1 / 3, 2 / 3])
PRECISION = np.array([1.0, 1 / 2, 2 / 3])


def test_voc_ap_all_point_on_tiny_curve() -> None:
    # envelope: precision 1 on recall (0, 1/3], 2/3 on (1/3, 2/3], nothing beyond
    assert voc_ap(RECALL, PRECISION, use_07_metric=False) == pytest.approx(
        1 / 3 + (1 / 3) * (2 / 3)
    )


def test_voc_ap_11_point_on_tiny_curve() -> None:
    # t = 0, .1, .2, .3 -> 1; t = .4, .5, .6 -> 2/3; t = .7 ... 1 -> 0
    assert voc_ap(RECALL, PRECISION, use_07_metric=True) == pytest.approx((4 + 3 * 2 / 3) / 11)


def test_voc_ap_perfect_and_empty_curves() -> None:
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]), use_07_metric=True) == 1.0
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]), use_07_metric=False) == 1.0
    assert voc_ap(np.zeros(0), np.zeros(0), use_07_metric=True) == 0.0
    assert voc_ap(np.zeros(0), np.zeros(0), use_07_metric=False) == 0.0


def _reference_voc07_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """py-faster-rcnn ``voc_eval.voc_ap(rec, prec, use_07_metric=True)``, written out again
    (also detectron2's ``pascal_voc_evaluation.voc_ap`` and MMDetection's ``average_precision``
    with ``mode='11points'``)."""
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
        ap = ap + p / 11.0
    return ap


def test_voc_ap_11_point_thresholds_match_py_faster_rcnn() -> None:
    # np.arange(0, 1.1, 0.1) holds 0.30000000000000004, 0.6000000000000001, 0.7000000000000001:
    # a recall of exactly 3/10 or 7/10 does not reach those thresholds
    assert voc_ap(np.array([3 / 10]), np.array([1.0]), use_07_metric=True) == pytest.approx(3 / 11)
    assert voc_ap(np.array([6 / 10]), np.array([1.0]), use_07_metric=True) == pytest.approx(6 / 11)
    assert voc_ap(np.array([7 / 10]), np.array([1.0]), use_07_metric=True) == pytest.approx(7 / 11)
    assert voc_ap(np.array([4 / 10]), np.array([1.0]), use_07_metric=True) == pytest.approx(5 / 11)


def test_voc07_ap_with_ten_positives_matches_the_reference_formula() -> None:
    """A fixture with 10 positives whose recall stops exactly at 0.3 and at 0.6.

    One box per image; ranked detections TP TP TP FP FP TP TP TP FP FP: recall .1 .2 .3 .3 .3
    .4 .5 .6 .6 .6, precision 1 1 1 3/4 3/5 4/6 5/7 6/8 6/9 6/10. With the reference
    thresholds t = 0, .1, .2 -> 1; t = .30000000000000004, .4, .5 -> max(4/6, 5/7, 6/8) = 3/4;
    t = .6000000000000001 ... 1 -> 0: AP = (3 + 3 * 3/4) / 11. (Exact tenths would give
    (4 + 3 * 3/4) / 11 + 3/4 / 11 = 7/11.)
    """
    gt = {f"im{i}": _gt([[1, 1, 10, 10]]) for i in range(10)}
    hit = [1, 1, 10, 10]
    miss = [50, 50, 60, 60]
    pattern = [True, True, True, False, False, True, True, True, False, False]
    rows, next_image = [], 0
    for rank, is_tp in enumerate(pattern):
        rows.append((f"im{next_image}", 1.0 - rank / 20, hit if is_tp else miss))
        next_image += is_tp
    result = evaluate_voc_class(_dets(rows), gt, use_07_metric=True)
    assert result.num_positives == 10
    np.testing.assert_allclose(result.recall, [0.1, 0.2, 0.3, 0.3, 0.3, 0.4, 0.5, 0.6, 0.6, 0.6])
    assert result.ap == pytest.approx((3 + 3 * 0.75) / 11)
    assert result.ap == pytest.approx(_reference_voc07_ap(result.recall, result.precision))


@pytest.mark.parametrize("num_positives", [10, 20, 30])
def test_voc07_ap_equals_the_reference_on_random_curves(num_positives: int) -> None:
    rng = np.random.default_rng(num_positives)
    for _ in range(50):
        num_hits = int(rng.integers(1, num_positives + 1))
        flags = rng.permutation(np.r_[np.ones(num_hits), np.zeros(int(rng.integers(0, 20)))])
        tp, fp = np.cumsum(flags), np.cumsum(1.0 - flags)
        recall, precision = tp / num_positives, tp / (tp + fp)
        expected = _reference_voc07_ap(recall, precision)
        assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx(expected, abs=1e-12)


def test_voc_ap_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="equal length"):
        voc_ap(np.zeros(3), np.zeros(2), use_07_metric=True)


# --- IoU with the +1 pixel convention ---------------------------------------------------


def test_devkit_iou_uses_plus_one_pixel_widths() -> None:
    box = np.array([1.0, 1.0, 10.0, 10.0])  # 10 x 10 pixels (inclusive)
    others = np.array([[1.0, 1.0, 10.0, 10.0], [6.0, 1.0, 15.0, 10.0], [10.0, 1.0, 19.0, 10.0]])
    iou = devkit_iou(box, others)
    # half overlap: 5 x 10 / (100 + 100 - 50); touching column: 1 x 10 / (200 - 10)
    np.testing.assert_allclose(iou, [1.0, 1 / 3, 1 / 19])


def test_devkit_iou_disjoint_is_zero() -> None:
    iou = devkit_iou(np.array([1.0, 1.0, 10.0, 10.0]), np.array([[20.0, 20.0, 30.0, 30.0]]))
    assert iou.tolist() == [0.0]


def test_threshold_is_inclusive_with_plus_one_areas() -> None:
    # IoU is exactly 1/3 with +1 widths (it would be 36/126 = 0.286 without)
    gt = {"im": _gt([[1, 1, 10, 10]])}
    dets = _dets([("im", 0.9, [6, 1, 15, 10])])
    assert evaluate_voc_class(dets, gt, iou_thresh=1 / 3).ap == 1.0
    assert evaluate_voc_class(dets, gt, iou_thresh=0.34).ap == 0.0


# --- matching rules ---------------------------------------------------------------------


def test_difficult_ground_truth_is_neither_tp_nor_fp() -> None:
    gt = {"im": _gt([[1, 1, 50, 50], [100, 100, 150, 150]], difficult=[False, True])}
    dets = _dets([("im", 0.9, [100, 100, 150, 150]), ("im", 0.8, [1, 1, 50, 50])])
    result = evaluate_voc_class(dets, gt, iou_thresh=0.5, use_07_metric=False)
    assert result.num_positives == 1
    # had the difficult hit been a FP the precision would end at 1/2 and AP would be 0.5
    assert result.precision[-1] == 1.0
    assert result.ap == 1.0


def test_duplicate_detections_are_false_positives() -> None:
    gt = {"im": _gt([[1, 1, 50, 50], [100, 100, 150, 150]])}
    dets = _dets(
        [
            ("im", 0.9, [1, 1, 50, 50]),
            ("im", 0.8, [2, 2, 50, 50]),  # duplicate of the first box
            ("im", 0.7, [100, 100, 150, 150]),
        ]
    )
    # TP, FP, TP: recall (.5, .5, 1), precision (1, .5, 2/3)
    all_point = evaluate_voc_class(dets, gt, use_07_metric=False)
    np.testing.assert_allclose(all_point.precision, [1.0, 0.5, 2 / 3])
    assert all_point.ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    eleven = evaluate_voc_class(dets, gt, use_07_metric=True)
    assert eleven.ap == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)


def test_duplicate_is_fp_even_if_another_gt_overlaps_it() -> None:
    # the devkit matches only the best-IoU box; box B (IoU 80/120 with the detection) stays missed
    gt = {"im": _gt([[1, 1, 10, 10], [3, 1, 12, 10]])}
    dets = _dets([("im", 0.9, [1, 1, 10, 10]), ("im", 0.8, [1, 1, 10, 10])])
    result = evaluate_voc_class(dets, gt, use_07_metric=False)
    np.testing.assert_allclose(result.recall, [0.5, 0.5])
    assert result.ap == pytest.approx(0.5)


def test_detection_in_image_without_that_class_is_fp() -> None:
    gt = {"a": _gt([[1, 1, 10, 10]]), "b": _gt([])}
    dets = _dets([("b", 0.9, [1, 1, 10, 10]), ("a", 0.8, [1, 1, 10, 10])])
    result = evaluate_voc_class(dets, gt, use_07_metric=False)
    np.testing.assert_allclose(result.precision, [0.0, 0.5])
    assert result.ap == pytest.approx(0.5)


def test_ties_keep_input_order() -> None:
    # equal scores: the earlier detection (a FP) is ranked first, as MATLAB's stable sort
    gt = {"im": _gt([[1, 1, 10, 10]])}
    dets = _dets([("im", 0.5, [50, 50, 60, 60]), ("im", 0.5, [1, 1, 10, 10])])
    np.testing.assert_allclose(evaluate_voc_class(dets, gt).precision, [0.0, 0.5])


def test_class_without_positives_has_nan_ap() -> None:
    result = evaluate_voc_class(_dets([]), {"im": _gt([[1, 1, 5, 5]], difficult=[True])})
    assert result.num_positives == 0
    assert math.isnan(result.ap)


# --- VOCEvaluator -----------------------------------------------------------------------

CLASSES = ["cat", "dog"]
# 0-based continuous boxes: XML (xmin, ymin, xmax, ymax) -> (xmin - 1, ymin - 1, xmax, ymax)
GT = {
    "img1": {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]]),
        "labels": torch.tensor([1, 2]),
        "difficult": torch.tensor([False, False]),
    },
    "img2": {
        "boxes": np.array([[0.0, 0.0, 30.0, 30.0], [50.0, 50.0, 60.0, 60.0]]),
        "labels": np.array([1, 1]),
        "difficult": np.array([False, True]),
    },
}


def _output(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def _evaluator(**kwargs: object) -> VOCEvaluator:
    return VOCEvaluator(class_names=CLASSES, gt=GT, **kwargs)  # type: ignore[arg-type]


def test_voc_evaluator_perfect_detections() -> None:
    evaluator = _evaluator()
    evaluator.process(
        ["img1", "img2"],
        [
            _output([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.8], [1, 2]),
            _output([[0, 0, 30, 30], [50, 50, 60, 60]], [0.7, 0.95], [1, 1]),
        ],
    )
    metrics = evaluator.evaluate()
    assert metrics["per_class_AP"] == {"cat": 1.0, "dog": 1.0}
    assert metrics["mAP"] == 1.0


def test_voc_evaluator_partial_and_two_thresholds() -> None:
    evaluator = _evaluator(iou_thresholds=(0.5, 0.75), use_07_metric=False)
    evaluator.process(
        ["img1", "img2"],
        [
            # cat: 0-based [5, 0, 15, 10] vs [0, 0, 10, 10] -> IoU 50 / 150 = 1/3 (a FP)
            _output([[5, 0, 15, 10], [20, 20, 40, 40]], [0.9, 0.8], [1, 2]),
            # cat: [0, 0, 30, 27] vs [0, 0, 30, 30] -> IoU 0.9: TP at both thresholds
            _output([[0, 0, 30, 27]], [0.6], [1]),
        ],
    )
    metrics = evaluator.evaluate()
    # cat: FP then TP over 2 positives -> recall (0, .5), precision (0, .5) -> AP 0.25
    assert metrics["per_iou"][0.5]["per_class_AP"] == pytest.approx({"cat": 0.25, "dog": 1.0})
    assert metrics["mAP"] == pytest.approx(0.625)
    assert metrics["per_iou"][0.75]["mAP"] == pytest.approx(0.625)
    table = format_voc_table(metrics)
    assert "AP@0.75" in table and "62.50" in table and "all-point" in table


def test_voc_evaluator_scores_only_processed_images() -> None:
    evaluator = _evaluator()
    evaluator.process(["img2"], [_output([[0, 0, 30, 30]], [0.9], [1])])
    metrics = evaluator.evaluate()
    assert metrics["per_class_AP"]["cat"] == 1.0
    assert math.isnan(metrics["per_class_AP"]["dog"])  # no dog in img2: left out of the mAP
    assert metrics["mAP"] == 1.0


def test_voc_evaluator_rejects_bad_input() -> None:
    evaluator = _evaluator()
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluator.process(["nope"], [_output([], [], [])])
    with pytest.raises(ValueError, match=r"labels \[3\] outside 1..2"):
        evaluator.process(["img1"], [_output([[0, 0, 1, 1]], [0.5], [3])])
    evaluator.process(["img1"], [_output([], [], [])])
    with pytest.raises(ValueError, match="already processed"):
        evaluator.process(["img1"], [_output([], [], [])])
    with pytest.raises(ValueError, match=r"labels must be in 1..2"):
        VOCEvaluator(class_names=CLASSES, gt={"x": {"boxes": np.zeros((1, 4)), "labels": [0]}})
    with pytest.raises(RuntimeError, match="before any process"):
        _evaluator().evaluate()


# --- files: XML annotations, devkit results ---------------------------------------------


def _write_xml(path: Path, objects: list[tuple[str, list[int], int]]) -> None:
    body = "".join(
        f"<object><name>{name}</name><difficult>{diff}</difficult><bndbox>"
        f"<xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax>"
        "</bndbox></object>"
        for name, b, diff in objects
    )
    path.write_text(f"<annotation><filename>{path.stem}.jpg</filename>{body}</annotation>")


def test_evaluator_results_files_round_trip_through_xml(tmp_path: Path) -> None:
    """Saved devkit files scored against equivalent XML give the evaluator's numbers."""
    ann_dir = tmp_path / "Annotations"
    ann_dir.mkdir()
    # XML = 0-based GT boxes with xmin + 1, ymin + 1
    _write_xml(ann_dir / "img1.xml", [("cat", [1, 1, 10, 10], 0), ("dog", [21, 21, 40, 40], 0)])
    _write_xml(ann_dir / "img2.xml", [("cat", [1, 1, 30, 30], 0), ("cat", [51, 51, 60, 60], 1)])
    evaluator = _evaluator(use_07_metric=False)
    evaluator.process(
        ["img1", "img2"],
        [
            _output([[5, 0, 15, 10], [20, 20, 40, 40]], [0.9, 0.8], [1, 2]),
            _output([[0, 0, 30, 27], [50, 50, 60, 60]], [0.6, 0.3], [1, 1]),
        ],
    )
    files = evaluator.save_results(tmp_path / "results")
    assert files["cat"].name == "comp4_det_test_cat.txt"
    assert files["cat"].read_text().splitlines()[0] == "img1 0.900000 6.00 1.00 15.00 10.00"
    scored = score_voc_results(
        ann_dir, tmp_path / "results", class_names=CLASSES, use_07_metric=False
    )
    assert scored["per_class_AP"] == pytest.approx(evaluator.evaluate()["per_class_AP"])
    assert scored["per_class_AP"] == pytest.approx({"cat": 0.25, "dog": 1.0})


def test_malformed_results_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "comp4_det_test_cat.txt"
    path.write_text("img1 0.9 1 1 10 10\nimg1 0.8 1 1 10\n")
    with pytest.raises(ValueError, match=r"comp4_det_test_cat\.txt:2: expected 6 fields"):
        read_voc_results_file(path)
    path.write_text("\nimg1 high 1 1 10 10\n")
    with pytest.raises(ValueError, match=r"comp4_det_test_cat\.txt:2: non-numeric"):
        read_voc_results_file(path)


def test_score_voc_results_rejects_unknown_images_and_bad_xml(tmp_path: Path) -> None:
    _write_xml(tmp_path / "img1.xml", [("cat", [1, 1, 10, 10], 0)])
    results = tmp_path / "det_cat.txt"
    results.write_text("img9 0.9 1 1 10 10\n")
    with pytest.raises(ValueError, match=r"det_cat\.txt: image ids without annotation: \['img9'\]"):
        score_voc_results([tmp_path / "img1.xml"], {"cat": results}, class_names=["cat"])
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><object><name>cat</name></object></annotation>")
    with pytest.raises(ValueError, match=r"bad\.xml, object 0 \(cat\): missing <bndbox>"):
        score_voc_results([bad], {"cat": results}, class_names=["cat"])


def test_results_directory_needs_one_file_per_class(tmp_path: Path) -> None:
    _write_xml(tmp_path / "img1.xml", [("cat", [1, 1, 10, 10], 0)])
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    (results_dir / "comp4_det_test_bobcat.txt").write_text("")
    with pytest.raises(ValueError, match="found \\[\\]"):
        score_voc_results([tmp_path / "img1.xml"], results_dir, class_names=["cat"])
    (results_dir / "comp4_det_test_cat.txt").write_text("img1 0.9 1 1 10 10\n")
    metrics = score_voc_results([tmp_path / "img1.xml"], results_dir, class_names=["cat"])
    assert metrics["mAP"] == 1.0


def test_from_coco_gt_treats_crowd_as_difficult() -> None:
    coco_gt = {
        "images": [{"id": 1}, {"id": 2}],
        "categories": [{"id": 3, "name": "dog"}, {"id": 7, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 10, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 50, 10, 10], "iscrowd": 1},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [20, 20, 20, 20], "iscrowd": 0},
        ],
    }
    evaluator = VOCEvaluator.from_coco_gt(coco_gt=coco_gt, label_to_cat_id={1: 7, 2: 3})
    assert evaluator.class_names == ["cat", "dog"]
    evaluator.process(
        [1, 2],
        [
            # hits on the crowd (difficult) box are ignored; the cat box is found
            _output([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8], [1, 1]),
            _output([[20, 20, 40, 40]], [0.5], [1]),  # a "cat" on the dog: FP for cat
        ],
    )
    metrics = evaluator.evaluate()
    # cat: ignored, TP, FP over 1 positive -> precision ends at 1/2, AP 1.0
    assert metrics["per_class_AP"]["cat"] == 1.0
    assert metrics["per_class_AP"]["dog"] == 0.0
    with pytest.raises(ValueError, match=r"annotations\[2\]: category_id 3 has no label"):
        VOCEvaluator.from_coco_gt(coco_gt=coco_gt, label_to_cat_id={1: 7})
