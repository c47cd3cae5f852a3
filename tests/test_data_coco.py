"""COCO-format dataset: id mapping, crowd/degenerate handling, coco_gt; coco128 when present."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.data.base import ImageDecodeError
from detector.data.coco import CocoDetection

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COCO128 = SHARED / "data" / "coco128"


def _write_tiny_coco(root: Path) -> dict:
    """Two images (a.png 20x30, b.png 10x10), three categories with non-contiguous ids."""
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (30, 20), (255, 0, 0)).save(root / "images" / "a.png")
    Image.new("L", (10, 10), 128).save(root / "images" / "b.png")  # grayscale on disk
    data = {
        "images": [
            {"id": 42, "file_name": "a.png", "height": 20, "width": 30},
            {"id": 7, "file_name": "b.png", "height": 10, "width": 10},
        ],
        "categories": [
            {"id": 7, "name": "c7"},
            {"id": 3, "name": "c3"},
            {"id": 11, "name": "c11"},
        ],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 7, "bbox": [2, 3, 10, 5], "iscrowd": 0},
            {"id": 2, "image_id": 42, "category_id": 11, "bbox": [0, 0, 5, 5], "iscrowd": 1},
            {"id": 3, "image_id": 42, "category_id": 3, "bbox": [1, 1, 0, 4], "iscrowd": 0},
            {"id": 4, "image_id": 42, "category_id": 3, "bbox": [25, 15, 10, 10], "iscrowd": 0},
        ],
    }
    (root / "ann.json").write_text(json.dumps(data))
    return data


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    _write_tiny_coco(tmp_path)
    return tmp_path


def _dataset(root: Path, **kwargs) -> CocoDetection:
    return CocoDetection(image_dir=root / "images", ann_file=root / "ann.json", **kwargs)


def test_category_ids_map_to_contiguous_labels_and_back(tiny: Path) -> None:
    dataset = _dataset(tiny)
    assert dataset.class_names == ["c3", "c7", "c11"]  # sorted by category id
    assert dataset.label_to_cat_id == {1: 3, 2: 7, 3: 11}
    for label, cat_id in dataset.label_to_cat_id.items():
        assert dataset.cat_id_to_label[cat_id] == label


def test_targets_exclude_crowd_and_degenerate_boxes(tiny: Path, caplog) -> None:
    with caplog.at_level(logging.INFO):
        dataset = _dataset(tiny)
    image, target = dataset[0]
    assert image.shape == (3, 20, 30) and image.dtype == torch.float32
    assert torch.allclose(image[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    # xywh [2, 3, 10, 5] -> xyxy; [25, 15, 10, 10] clipped to the 30x20 image
    expected = torch.tensor([[2.0, 3.0, 12.0, 8.0], [25.0, 15.0, 30.0, 20.0]])
    assert torch.equal(target["boxes"], expected)
    assert target["labels"].tolist() == [2, 1] and target["labels"].dtype == torch.int64
    assert target["image_id"] == 42 and target["orig_size"] == (20, 30)
    assert any("a.png" in r.message and "non-positive" in r.message for r in caplog.records)
    assert dataset.load_report.endswith(
        "2 images, 2 boxes kept; 2 boxes dropped: "
        "iscrowd (kept in coco_gt)=1, non-positive width/height=1"
    )
    assert dataset.load_report in caplog.text


def test_image_without_annotations_and_grayscale_file(tiny: Path) -> None:
    image, target = _dataset(tiny)[1]
    assert image.shape == (3, 10, 10)
    assert torch.allclose(image, torch.full((3, 10, 10), 128 / 255))
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,)


def test_coco_gt_keeps_every_annotation_in_original_form(tiny: Path) -> None:
    gt = _dataset(tiny).coco_gt()
    assert [i["id"] for i in gt["images"]] == [42, 7]
    assert [(c["id"], c["name"]) for c in gt["categories"]] == [(3, "c3"), (7, "c7"), (11, "c11")]
    by_id = {a["id"]: a for a in gt["annotations"]}
    assert sorted(by_id) == [1, 2, 3, 4]
    assert by_id[2]["iscrowd"] == 1 and by_id[2]["category_id"] == 11
    assert by_id[4]["bbox"] == [25.0, 15.0, 10.0, 10.0]  # not clipped
    assert by_id[1]["area"] == 50.0  # w * h when the file has no area


def test_coco_gt_is_accepted_by_pycocotools(tiny: Path) -> None:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = _dataset(tiny).coco_gt()
    coco.createIndex()
    assert coco.getAnnIds(imgIds=[42], iscrowd=False) == [1, 3, 4]
    assert coco.getCatIds() == [3, 7, 11]


def test_drop_empty(tiny: Path, caplog) -> None:
    dataset = _dataset(tiny, drop_empty=True)
    assert len(dataset) == 1 and dataset[0][1]["image_id"] == 42
    assert [i["id"] for i in dataset.coco_gt()["images"]] == [42]
    assert "1 images dropped: no training box (drop_empty)=1" in dataset.load_report


def test_class_names_select_and_order_categories(tiny: Path) -> None:
    dataset = _dataset(tiny, class_names=["c11", "c7"])
    assert dataset.label_to_cat_id == {1: 11, 2: 7}
    assert dataset[0][1]["labels"].tolist() == [2]
    assert "category not in class_names=2" in dataset.load_report
    gt = dataset.coco_gt()
    assert {a["category_id"] for a in gt["annotations"]} == {7, 11}
    with pytest.raises(ValueError, match="nope"):
        _dataset(tiny, class_names=["c3", "nope"])


def test_size_mismatch_names_the_file(tiny: Path) -> None:
    dataset = _dataset(tiny)  # the file changes after load: caught when decoded
    Image.new("RGB", (31, 20)).save(tiny / "images" / "a.png")
    with pytest.raises(ImageDecodeError, match=r"a\.png.*31x20"):  # an OSError
        dataset[0]


def test_missing_files_are_reported(tiny: Path) -> None:
    (tiny / "images" / "b.png").unlink()
    dataset = _dataset(tiny)  # skipped and counted; strict mode: tests/robustness
    assert len(dataset) == 1 and "1 images dropped: image file not found=1" in dataset.load_report
    with pytest.raises(FileNotFoundError, match="missing.json"):
        CocoDetection(image_dir=tiny / "images", ann_file=tiny / "missing.json")


def test_duplicate_annotation_ids_are_renumbered(tiny: Path) -> None:
    data = json.loads((tiny / "ann.json").read_text())
    for ann in data["annotations"]:
        ann["id"] = 0
    (tiny / "ann.json").write_text(json.dumps(data))
    assert [a["id"] for a in _dataset(tiny).coco_gt()["annotations"]] == [1, 2, 3, 4]


def test_transforms_receive_original_boxes(tiny: Path) -> None:
    seen = {}

    def spy(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray):
        seen.update(shape=image.shape, dtype=image.dtype, boxes=boxes.copy(), labels=labels.copy())
        return torch.zeros(3, 4, 5), boxes[:1] / 2, labels[:1]

    image, target = _dataset(tiny, transforms=spy)[0]
    assert seen["shape"] == (20, 30, 3) and seen["dtype"] == np.uint8
    assert seen["boxes"].tolist() == [[2, 3, 12, 8], [25, 15, 30, 20]]
    assert image.shape == (3, 4, 5)
    assert target["boxes"].tolist() == [[1.0, 1.5, 6.0, 4.0]] and target["orig_size"] == (20, 30)


@pytest.mark.skipif(not COCO128.is_dir(), reason="../shared/data/coco128 not available")
def test_coco128() -> None:
    ann_file = COCO128 / "annotations" / "instances_train2017.json"
    dataset = CocoDetection(image_dir=COCO128 / "train2017", ann_file=ann_file)
    raw = json.loads(ann_file.read_text())
    assert len(dataset) == 128
    assert dataset.num_classes == 80 and dataset.label_to_cat_id[80] == 90
    kept = sum(len(r.gt_labels) for r in dataset.records)
    assert kept == 939 - 10
    assert sum(len(r.gt_labels) == 0 for r in dataset.records) == 2
    gt = dataset.coco_gt()
    assert len(gt["annotations"]) == 939 and sum(a["iscrowd"] for a in gt["annotations"]) == 10
    assert "929 boxes kept; 10 boxes dropped: iscrowd (kept in coco_gt)=10" in dataset.load_report

    # image 9: first annotation has bbox xywh [1.08, 187.69, 611.59, 285.84]
    index = next(i for i, r in enumerate(dataset.records) if r.image_id == 9)
    image, target = dataset[index]
    assert image.shape == (3, 480, 640)
    assert torch.allclose(target["boxes"][0], torch.tensor([1.08, 187.69, 612.67, 473.53]))
    assert dataset.class_names[target["labels"][0] - 1] == "bowl"

    crowd_images = {a["image_id"] for a in raw["annotations"] if a["iscrowd"]}
    for record in dataset.records:
        n_plain = sum(
            1 for a in raw["annotations"] if a["image_id"] == record.image_id and not a["iscrowd"]
        )
        assert len(record.gt_labels) == n_plain, record.path
    assert crowd_images
