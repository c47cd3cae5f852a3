"""The evaluation path end to end: dataset -> detector outputs -> COCO / VOC metrics and files.

A stand-in detector returns fixed detections, so every number is hand-computed (VOC) or exact
(perfect detections give COCO AP 1). The files written by the evaluation are scored again
without a model (``tools/eval.py results=...``) and must give the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from detector.data.coco import CocoDetection
from detector.data.voc import VOCDetection
from detector.engine.score_results import score_results
from detector.engine.validation import evaluate_model
from detector.evaluation.coco_eval import score_coco_results_file
from detector.evaluation.dataset_eval import (
    DetectionEvaluator,
    coco_results_to_outputs,
    evaluation_options,
)
from tests.helpers import compose_config, voc_object, write_voc_image

CPU = torch.device("cpu")


class FixedDetector:
    """Returns ``outputs[i]`` for the i-th image it sees (the test loader keeps dataset order)."""

    def __init__(self, outputs: list[dict[str, torch.Tensor]]) -> None:
        self.outputs = outputs
        self.seen = 0

    def eval(self) -> FixedDetector:
        return self

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        batch = self.outputs[self.seen : self.seen + len(images)]
        self.seen += len(images)
        return batch


def _det(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    """VOC folder, split ``test``: a (cat (1,2,10,12), difficult dog), b (dog (11,1,40,30),
    cat (2,20,9,28))."""
    root = tmp_path / "voc"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    write_voc_image(
        root, "a", 40, 30, [voc_object("cat", (1, 2, 10, 12)), voc_object("dog", (5, 5, 20, 20), 1)]
    )
    write_voc_image(
        root, "b", 40, 30, [voc_object("dog", (11, 1, 40, 30)), voc_object("cat", (2, 20, 9, 28))]
    )
    (root / "ImageSets" / "Main" / "test.txt").write_text("a\nb\n")
    return root


def _voc_outputs() -> list[dict]:
    """Boxes are 0-based ``(xmin - 1, ymin - 1, xmax, ymax)`` of the XML boxes.

    cat (2 boxes): a false positive in b (0.9) ranks above the true cat in a (0.5), b's cat is
    missed: precision 0, 1/2 at recall 0, 1/2 -> 11-point AP 6 * 0.5 / 11 = 3/11 (thresholds
    0, 0.1, ..., 0.5), all-point AP 0.5 * 0.5 = 0.25. dog: the difficult dog in a (0.95) is
    ignored, b's dog (0.8) is a TP, its duplicate (0.7) an FP after full recall -> AP 1.
    """
    return [
        _det([[0, 1, 10, 12], [4, 4, 20, 20]], [0.5, 0.95], [1, 2]),
        _det([[10, 0, 40, 30], [10, 0, 40, 30], [0, 0, 8, 8]], [0.8, 0.7, 0.9], [2, 2, 1]),
    ]


@pytest.mark.parametrize(("use_07", "cat_ap"), [(True, 3 / 11), (False, 0.25)])
def test_voc_dataset_evaluates_with_hand_computed_ap(
    voc: Path, tmp_path: Path, use_07: bool, cat_ap: float
) -> None:
    dataset = VOCDetection(root=voc, split="test", class_names=["cat", "dog"], keep_difficult=True)
    out = tmp_path / "eval"
    metrics = evaluate_model(
        FixedDetector(_voc_outputs()),
        dataset,
        device=CPU,
        output_dir=out,
        eval_type="voc",
        voc_use_07_metric=use_07,
    )
    assert metrics["voc"]["per_class_AP"] == pytest.approx({"cat": cat_ap, "dog": 1.0})
    assert metrics["voc"]["mAP"] == pytest.approx((cat_ap + 1) / 2)
    assert "AP" not in metrics and metrics["num_images"] == 2
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["eval_type"] == "voc"
    assert saved["voc"]["per_iou"]["0.5"]["mAP"] == pytest.approx((cat_ap + 1) / 2)
    assert not (out / "coco_results.json").exists()
    # devkit files: image names and the XML's 1-based pixels
    lines = (out / "voc_results" / "comp4_det_test_dog.txt").read_text().splitlines()
    assert lines[0] == "a 0.950000 5.00 5.00 20.00 20.00"
    assert lines[1] == "b 0.800000 11.00 1.00 40.00 30.00"


def test_devkit_files_written_by_the_evaluation_score_again(voc: Path, tmp_path: Path) -> None:
    dataset = VOCDetection(root=voc, split="test", class_names=["cat", "dog"], keep_difficult=True)
    first = evaluate_model(
        FixedDetector(_voc_outputs()),
        dataset,
        device=CPU,
        output_dir=tmp_path / "eval",
        eval_type="both",
        voc_iou_thresholds=(0.5, 0.75),
        voc_use_07_metric=False,  # as the voc_folder config below
    )
    assert first["AP50"] == pytest.approx(
        score_coco_results_file(
            _coco_gt_file(dataset, tmp_path), tmp_path / "eval" / "coco_results.json"
        )["AP50"]
    )
    overrides = [
        "dataset=voc_folder",
        f"dataset.root={voc}",
        "dataset.class_names=[cat,dog]",
        "dataset.num_classes=2",
        "eval.voc.iou_thresholds=[0.5,0.75]",
        f"output_dir={tmp_path / 'scored'}",
    ]
    from_files = score_results(
        compose_config("eval", [*overrides, f"results={tmp_path / 'eval' / 'voc_results'}"])
    )
    assert _flat(from_files["voc"]) == pytest.approx(_flat(first["voc"]))
    assert json.loads((tmp_path / "scored" / "metrics.json").read_text())["eval_type"] == "voc"
    from_json = score_results(
        compose_config("eval", [*overrides, f"results={tmp_path / 'eval' / 'coco_results.json'}"])
    )
    assert _flat(from_json["voc"]) == pytest.approx(_flat(first["voc"]))
    assert from_json["AP"] == pytest.approx(first["AP"])


def _flat(voc_metrics: dict) -> dict:
    """``{(iou, class): AP}`` of VOC metrics (pytest.approx compares flat dicts only)."""
    per_iou = voc_metrics["per_iou"]
    flat = {(t, c): ap for t, m in per_iou.items() for c, ap in m["per_class_AP"].items()}
    assert len(flat) == 4  # 2 thresholds x 2 classes
    return flat


def _coco_gt_file(dataset, tmp_path: Path) -> Path:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(dataset.coco_gt()))
    return path


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    """COCO json with non-contiguous category ids 7, 3, 11 (labels 1..3 = ids 3, 7, 11)."""
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    for name in ("x.png", "y.png"):
        Image.new("RGB", (50, 40)).save(root / "images" / name)
    boxes = [(42, 7, [2, 3, 10, 5]), (42, 3, [20, 10, 25, 20]), (8, 11, [5, 5, 30, 30])]
    data = {
        "images": [
            {"id": 42, "file_name": "x.png", "height": 40, "width": 50},
            {"id": 8, "file_name": "y.png", "height": 40, "width": 50},
        ],
        "categories": [{"id": 7, "name": "c7"}, {"id": 3, "name": "c3"}, {"id": 11, "name": "c11"}],
        "annotations": [
            {"id": n, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for n, (i, c, b) in enumerate(boxes, start=1)
        ],
    }
    (root / "ann.json").write_text(json.dumps(data))
    return root


def test_coco_ids_round_trip_through_dataset_and_evaluator(coco: Path, tmp_path: Path) -> None:
    dataset = CocoDetection(image_dir=coco / "images", ann_file=coco / "ann.json")
    assert dataset.label_to_cat_id == {1: 3, 2: 7, 3: 11}
    # the dataset's own targets (contiguous labels) as detections
    outputs = [_det(t["boxes"].tolist(), [0.9] * len(t["labels"]), t["labels"].tolist())
               for _, t in dataset]  # fmt: skip
    out = tmp_path / "eval"
    metrics = evaluate_model(FixedDetector(outputs), dataset, device=CPU, output_dir=out)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["eval_type"] == "coco"
    results = json.loads((out / "coco_results.json").read_text())
    triples = sorted((r["image_id"], r["category_id"], r["bbox"]) for r in results)
    assert triples == [(8, 11, [5, 5, 30, 30]), (42, 3, [20, 10, 25, 20]), (42, 7, [2, 3, 10, 5])]
    for engine in ("faster_coco_eval", "pycocotools"):
        rescored = score_coco_results_file(
            coco / "ann.json", out / "coco_results.json", engine=engine
        )
        assert rescored["AP"] == pytest.approx(1.0)
    # the same detections with the labels of two classes swapped score 0 on those classes
    swapped = [dict(o, labels=torch.where(o["labels"] == 1, 2, torch.where(o["labels"] == 2, 1, o["labels"])))
               for o in outputs]  # fmt: skip
    wrong = evaluate_model(FixedDetector(swapped), dataset, device=CPU, output_dir=None)
    assert wrong["per_class_AP"] == pytest.approx({"c3": 0.0, "c7": 0.0, "c11": 1.0})


def test_coco_json_scored_from_the_dataset_config(coco: Path, tmp_path: Path) -> None:
    results = [
        {"image_id": 42, "category_id": 7, "bbox": [2, 3, 10, 5], "score": 0.9},
        {"image_id": 8, "category_id": 11, "bbox": [5, 5, 30, 30], "score": 0.8},
    ]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(results))
    cfg = compose_config(
        "eval",
        [
            "dataset=coco",
            f"dataset.val.ann_file={coco / 'ann.json'}",
            f"results={path}",
            "eval.type=both",
        ],
    )
    metrics = score_results(cfg)
    # c3 is missed: COCO AP (2/3 classes perfect) and VOC AP agree on 2/3
    assert metrics["AP"] == pytest.approx(2 / 3)
    assert metrics["voc"]["per_class_AP"] == pytest.approx({"c3": 0.0, "c7": 1.0, "c11": 1.0})
    scores = tmp_path / "dets.metrics.json"  # beside the results, under their name (issue 13)
    assert json.loads(scores.read_text())["voc"]["mAP"] == pytest.approx(2 / 3)


def test_coco_results_to_outputs_covers_every_image_and_converts_boxes(coco: Path) -> None:
    gt = json.loads((coco / "ann.json").read_text())
    ids, outputs = coco_results_to_outputs(
        [{"image_id": 8, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.5}],
        coco_gt=gt,
        label_to_cat_id={1: 3, 2: 7, 3: 11},
    )
    assert ids == [42, 8] and len(outputs[0]["boxes"]) == 0
    assert outputs[1]["boxes"].tolist() == [[1, 2, 4, 6]] and outputs[1]["labels"].tolist() == [1]
    with pytest.raises(ValueError, match=r"results\[0\]: category_id 3 has no model label"):
        coco_results_to_outputs(
            [{"image_id": 8, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.5}],
            coco_gt=gt,
            label_to_cat_id={1: 7},
        )


def test_bad_eval_options_fail_before_inference(coco: Path) -> None:
    gt = json.loads((coco / "ann.json").read_text())
    with pytest.raises(ValueError, match=r"unknown eval.type 'pascal'.*\['coco', 'voc', 'both'\]"):
        DetectionEvaluator(coco_gt=gt, label_to_cat_id={1: 3, 2: 7, 3: 11}, eval_type="pascal")
    options = evaluation_options(compose_config("eval", ["eval.type=voc"]).eval)
    assert options == {
        "engine": "faster_coco_eval",
        "eval_type": "voc",
        "voc_iou_thresholds": (0.5,),
        "voc_use_07_metric": True,
    }
    assert evaluation_options({"engine": "pycocotools"})["eval_type"] == "coco"  # old configs
