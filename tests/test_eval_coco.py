"""Unit tests of the COCO evaluation wrappers on a tiny hand-made ground truth."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from detector.evaluation.coco_eval import (
    STAT_NAMES,
    COCOEvaluator,
    evaluate_coco,
    format_coco_table,
    score_coco_results_file,
)

ENGINES = ["faster_coco_eval", "pycocotools"]
LABEL_TO_CAT_ID = {1: 1, 2: 5, 3: 90}  # non-contiguous COCO ids, as in real COCO


def tiny_gt() -> dict[str, Any]:
    """Two 100x100 images; categories 1 ("a"), 5 ("b"), 90 ("c"); boxes in xywh.

    Areas: a = 400 and 900 (small), b = 900 (small), c = 1600 (medium); no large box.
    """
    boxes = [(1, 1, [10, 10, 20, 20]), (1, 5, [50, 50, 30, 30]), (2, 90, [0, 0, 40, 40])]
    boxes.append((2, 1, [60, 60, 30, 30]))
    return {
        "images": [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"} for i in (1, 2)],
        "categories": [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}, {"id": 90, "name": "c"}],
        "annotations": [
            {
                "id": n,
                "image_id": img,
                "category_id": cat,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": 0,
            }
            for n, (img, cat, box) in enumerate(boxes, start=1)
        ],
    }


def perfect_results() -> list[dict[str, Any]]:
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": list(a["bbox"]),
            "score": 0.9,
        }
        for a in tiny_gt()["annotations"]
    ]


@pytest.mark.parametrize("engine", ENGINES)
def test_perfect_detections_give_ap_one(engine: str) -> None:
    metrics = evaluate_coco(tiny_gt(), perfect_results(), engine=engine)
    for name in ["AP", "AP50", "AP75", "APs", "APm", "AR1", "AR10", "AR100", "ARs", "ARm"]:
        assert metrics[name] == pytest.approx(1.0), name
    assert metrics["APl"] == -1.0 and metrics["ARl"] == -1.0  # no large box: COCO's "undefined"
    assert metrics["per_class_AP"] == pytest.approx({"a": 1.0, "b": 1.0, "c": 1.0})


@pytest.mark.parametrize("engine", ENGINES)
def test_partial_detections_known_values(engine: str) -> None:
    results = [r for r in perfect_results() if r["category_id"] != 5]  # miss "b"
    # a false "a" in image 2, ranked above the true one: "a" precision is 1/2 then 2/3,
    # its interpolated precision is 2/3 at every recall level -> AP(a) = 2/3
    results.append({"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.95})
    metrics = evaluate_coco(tiny_gt(), results, engine=engine)
    assert metrics["per_class_AP"] == pytest.approx({"a": 2 / 3, "b": 0.0, "c": 1.0})
    assert metrics["AP"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert metrics["AP50"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert metrics["APs"] == pytest.approx((2 / 3 + 0) / 2)  # "c" has no small box
    assert metrics["APm"] == pytest.approx(1.0)
    assert metrics["AR100"] == pytest.approx(2 / 3)
    # one detection per image and class: the false "a" hides the true one in image 2
    assert metrics["AR1"] == pytest.approx((0.5 + 0 + 1) / 3)


def test_engines_agree_on_partial_case() -> None:
    results = perfect_results()[:3]
    results[0]["bbox"] = [12, 12, 20, 20]  # IoU 0.68: counts only at thresholds <= 0.65
    fast = evaluate_coco(tiny_gt(), results, engine="faster_coco_eval")
    ref = evaluate_coco(tiny_gt(), results, engine="pycocotools")
    for name in STAT_NAMES:
        assert fast[name] == pytest.approx(ref[name], abs=1e-12), name
    assert fast["per_class_AP"] == pytest.approx(ref["per_class_AP"])
    assert 0.0 < fast["per_class_AP"]["a"] < 0.5


def test_empty_results_give_zeros() -> None:
    gt = tiny_gt()
    gt["categories"].append({"id": 7, "name": "unused"})
    metrics = evaluate_coco(gt, [])
    assert all(metrics[name] == 0.0 for name in STAT_NAMES)
    assert metrics["per_class_AP"]["a"] == 0.0
    assert math.isnan(metrics["per_class_AP"]["unused"])


def test_inputs_are_not_mutated_and_engine_output_is_captured(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gt, results = tiny_gt(), perfect_results()
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    for engine in ENGINES:
        metrics = evaluate_coco(gt, results, engine=engine, per_class=False)
        assert "per_class_AP" not in metrics
        assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all" in metrics["summary"]
    assert gt == gt_before and results == results_before
    assert capsys.readouterr().out == ""


def test_unknown_engine_names_allowed_values() -> None:
    with pytest.raises(ValueError, match=r"'detectron'.*faster_coco_eval.*pycocotools"):
        evaluate_coco(tiny_gt(), perfect_results(), engine="detectron")


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}, r"missing key\(s\) \['score'\]"),
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 0.5}, "4 numbers"),
        (
            {"image_id": 1, "category_id": 1, "bbox": [0, float("nan"), 1, 1], "score": 0.5},
            "non-finite",
        ),
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": float("nan")}, "score"),
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 1], "score": 0.5}, "negative"),
        (
            {"image_id": 3, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5},
            "unknown image_id 3",
        ),
        (
            {"image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 0.5},
            "unknown category_id 2",
        ),
        ([1, 1, 0, 0, 1, 1, 0.5], "expected a dict"),
    ],
)
def test_malformed_entry_names_its_index(entry: Any, problem: str) -> None:
    results = [perfect_results()[0], entry]
    with pytest.raises(ValueError, match=rf"results\[1\]: .*{problem}"):
        evaluate_coco(tiny_gt(), results)


def test_results_file_errors_name_the_file(tmp_path: Path) -> None:
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(tiny_gt()))
    bad = tmp_path / "dets.json"
    bad.write_text(json.dumps([{"image_id": 1}]))
    with pytest.raises(ValueError, match=r"dets\.json: results\[0\]: missing key"):
        score_coco_results_file(gt_file, bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"dets\.json is not valid JSON"):
        score_coco_results_file(gt_file, bad)


# --- COCOEvaluator: model outputs -> results --------------------------------------------


def _outputs_from_gt(label_of: dict[int, int]) -> tuple[list[int], list[dict[str, torch.Tensor]]]:
    """Perfect xyxy outputs per image, labelled with ``label_of[category_id]``."""
    per_image: dict[int, list[tuple[list[float], int]]] = {1: [], 2: []}
    for ann in tiny_gt()["annotations"]:
        x, y, w, h = ann["bbox"]
        per_image[ann["image_id"]].append(([x, y, x + w, y + h], label_of[ann["category_id"]]))
    outputs = [
        {
            "boxes": torch.tensor([b for b, _ in dets], dtype=torch.float32),
            "scores": torch.full((len(dets),), 0.8),
            "labels": torch.tensor([lbl for _, lbl in dets]),
        }
        for dets in per_image.values()
    ]
    return list(per_image), outputs


def test_evaluator_maps_labels_to_non_contiguous_ids(tmp_path: Path) -> None:
    evaluator = COCOEvaluator(coco_gt=tiny_gt(), label_to_cat_id=LABEL_TO_CAT_ID)
    image_ids, outputs = _outputs_from_gt({1: 1, 5: 2, 90: 3})
    evaluator.process(image_ids, outputs)
    results = sorted(evaluator.results(), key=lambda r: (r["image_id"], r["category_id"]))
    assert [(r["image_id"], r["category_id"]) for r in results] == [(1, 1), (1, 5), (2, 1), (2, 90)]
    assert results[1]["bbox"] == [50.0, 50.0, 30.0, 30.0]  # xyxy (50, 50, 80, 80) -> xywh
    metrics = evaluator.evaluate()
    assert metrics["AP"] == pytest.approx(1.0)
    path = evaluator.save_results(tmp_path / "out" / "results.json")
    assert json.loads(path.read_text()) == evaluator.results()
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(tiny_gt()))
    assert score_coco_results_file(gt_file, path, engine="pycocotools")["AP"] == pytest.approx(1.0)


def test_evaluator_with_wrong_mapping_scores_zero() -> None:
    evaluator = COCOEvaluator(coco_gt=tiny_gt(), label_to_cat_id={1: 5, 2: 90, 3: 1})
    evaluator.process(*_outputs_from_gt({1: 1, 5: 2, 90: 3}))
    assert evaluator.evaluate()["AP"] == 0.0


def test_evaluator_scores_only_processed_images() -> None:
    image_ids, outputs = _outputs_from_gt({1: 1, 5: 2, 90: 3})
    evaluator = COCOEvaluator(
        coco_gt=tiny_gt(), label_to_cat_id=LABEL_TO_CAT_ID, engine="pycocotools"
    )
    evaluator.process(image_ids[:1], outputs[:1])
    metrics = evaluator.evaluate()
    assert metrics["AP"] == pytest.approx(1.0)
    assert math.isnan(metrics["per_class_AP"]["c"])  # "c" appears only in image 2
    # scored against every image, image 2's boxes are missed
    assert evaluate_coco(tiny_gt(), evaluator.results())["AP"] < 1.0


def test_evaluator_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"not in the ground truth: \{4: 7\}"):
        COCOEvaluator(coco_gt=tiny_gt(), label_to_cat_id={1: 1, 4: 7})
    evaluator = COCOEvaluator(coco_gt=tiny_gt(), label_to_cat_id=LABEL_TO_CAT_ID)
    bad_label = {"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([4])}
    with pytest.raises(ValueError, match=r"image 1 has labels \[4\]"):
        evaluator.process([1], [bad_label])
    inverted = {
        "boxes": torch.tensor([[5.0, 5.0, 1.0, 1.0]]),
        "scores": torch.ones(1),
        "labels": torch.ones(1),
    }
    with pytest.raises(ValueError, match="x2 < x1"):
        evaluator.process([1], [inverted])
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        evaluator.process(
            [1], [{"boxes": torch.zeros(2, 5), "scores": torch.ones(2), "labels": torch.ones(2)}]
        )
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluator.process([3], [bad_label])
    with pytest.raises(ValueError, match="2 image ids but 1 outputs"):
        evaluator.process([1, 2], [bad_label])
    with pytest.raises(RuntimeError, match="before any process"):
        evaluator.evaluate()
    image_ids, outputs = _outputs_from_gt({1: 1, 5: 2, 90: 3})
    with pytest.raises(ValueError, match=r"image 2 has labels \[4\]"):
        evaluator.process(image_ids, [outputs[0], bad_label])
    assert evaluator.results() == []  # the failed batch left nothing behind
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}
    evaluator.process([1], [empty])
    with pytest.raises(ValueError, match="already processed"):
        evaluator.process([1], [empty])
    assert evaluator.evaluate()["AP"] == 0.0


def test_format_coco_table_shows_numbers_and_classes() -> None:
    metrics = evaluate_coco(tiny_gt(), perfect_results()[:3])
    table = format_coco_table(metrics)
    for text in ["AP50", "AR100", "100.00", "| a ", "| c "]:
        assert text in table, text
    assert "-100" not in table and "n/a" in table  # APl = -1: no large box
    metrics["APl"], metrics["ARl"] = 0.25, 0.5
    metrics["per_class_AP"]["c"] = math.nan
    table = format_coco_table(metrics)
    assert "25.00" in table and "n/a" in table
