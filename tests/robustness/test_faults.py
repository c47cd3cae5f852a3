"""Faults at run time: a loader worker that fails mid-epoch, malformed evaluation results."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest

from detector.data.coco import CocoDetection
from detector.data.loader import build_test_loader, build_train_loader
from detector.evaluation import coco_eval
from detector.evaluation.coco_data import validate_coco_results
from tests.robustness.files import coco_ann, coco_image, solid, write_coco, write_noise_jpeg


@pytest.fixture
def dataset(tmp_path: Path) -> CocoDetection:
    """Two valid images; the second, ``second.jpg``, is corrupted by the tests after load."""
    solid(32, 24).save(tmp_path / "first.png")
    write_noise_jpeg(tmp_path / "second.jpg", 32, 24)
    images = [coco_image(1, "first.png", 32, 24), coco_image(2, "second.jpg", 32, 24)]
    ann_file = write_coco(tmp_path, images, [coco_ann(1, 1, [1, 1, 8, 8])])
    return CocoDetection(image_dir=tmp_path, ann_file=ann_file)


def _corrupt(path: Path) -> None:
    path.write_bytes(b"\x00" * 64)


def test_worker_error_mid_epoch_names_the_file(dataset: CocoDetection) -> None:
    _corrupt(dataset.records[1].path)
    batches = iter(build_test_loader(dataset, batch_size=1, num_workers=1))
    images, targets = next(batches)  # the first image still loads
    assert targets[0]["image_id"] == 1
    with pytest.raises(OSError, match=r"(?s)DataLoader worker.*cannot decode image .*second\.jpg"):
        next(batches)
    # torch takes ~5 s to stop a worker that has raised; pay it here, not in a later test
    del batches
    gc.collect()


def test_training_stream_error_names_the_file_and_image(dataset: CocoDetection) -> None:
    _corrupt(dataset.records[1].path)
    dataset.max_bad_images = 0  # no skipping (test_bad_images.py: the default skips it)
    loader = build_train_loader(
        dataset, batch_size=2, num_workers=0, seed=0, aspect_ratio_grouping=False
    )
    with pytest.raises(OSError, match=r"cannot decode image .*second\.jpg") as excinfo:
        next(iter(loader))
    assert any("second.jpg" in n and "image_id 2" in n for n in excinfo.value.__notes__)


GT = {
    "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0, "area": 25}
    ],
    "categories": [{"id": 1, "name": "a"}],
}
GOOD = {"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.9}


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ({k: v for k, v in GOOD.items() if k != "score"}, r"missing key\(s\) \['score'\]"),
        (dict(GOOD, bbox=[1, 1, float("nan"), 5]), "bbox has a non-finite"),
        (dict(GOOD, bbox=[1, 1, 5]), "bbox must be a list of 4 numbers"),
        (dict(GOOD, bbox=[1, 1, -5, 5]), "bbox has negative width/height"),
        (dict(GOOD, image_id=7), "unknown image_id 7"),
        (dict(GOOD, category_id=3), "unknown category_id 3"),
        (dict(GOOD, score="high"), "score must be a finite number"),
        ("not a dict", "expected a dict"),
    ],
)
def test_malformed_result_entries_are_named(bad, problem: str) -> None:
    with pytest.raises(ValueError, match=rf"results\[1\]: {problem}"):
        validate_coco_results([GOOD, bad, GOOD], GT)


def test_malformed_results_file_stops_before_scoring(tmp_path: Path, monkeypatch) -> None:
    def engine_must_not_run(*args, **kwargs):
        raise AssertionError("the COCO engine ran on malformed results")

    monkeypatch.setattr(coco_eval, "run_engine", engine_must_not_run)
    gt_file, results_file = tmp_path / "gt.json", tmp_path / "dets.json"
    gt_file.write_text(json.dumps(GT))
    results_file.write_text(json.dumps([GOOD, GOOD, dict(GOOD, bbox=[1, 1, 5, None])]))
    with pytest.raises(ValueError, match=r"dets\.json: results\[2\]: bbox has a non-finite"):
        coco_eval.score_coco_results_file(gt_file, results_file)
