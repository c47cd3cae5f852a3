"""VOC-format dataset: coordinates, difficult/zero-area/unknown handling; shared VOC data."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

from detector.data.voc import VOC_CLASSES, VOCDetection
from tests.helpers import voc_object, write_voc_image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BCCD = SHARED / "data" / "bccd"
VOC_MINI = SHARED / "data" / "voc2012_mini"


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True)
    write_voc_image(
        tmp_path,
        "a",
        40,
        30,
        [
            voc_object("cat", (1, 2, 10, 12)),
            voc_object("dog", (5, 5, 20, 20), difficult=1),
            voc_object("bird", (3, 3, 9, 9)),
            voc_object("cat", (7, 4, 7, 9)),  # zero width
        ],
    )
    write_voc_image(tmp_path, "b", 40, 30, [voc_object("dog", (11, 1, 40, 30))])
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n\n")
    return tmp_path


def test_one_based_coordinates_become_zero_based(tiny: Path) -> None:
    dataset = VOCDetection(root=tiny, split="train", class_names=["cat", "dog"])
    assert len(dataset) == 2
    image, target = dataset[0]
    assert image.shape == (3, 30, 40)
    assert torch.equal(target["boxes"], torch.tensor([[0.0, 1.0, 10.0, 12.0]]))
    assert target["labels"].tolist() == [1]
    assert target["image_id"] == 1 and target["orig_size"] == (30, 40)
    _, target = dataset[1]
    assert torch.equal(target["boxes"], torch.tensor([[10.0, 0.0, 40.0, 30.0]]))
    assert target["labels"].tolist() == [2] and target["image_id"] == 2


def test_skips_are_counted_and_named(tiny: Path, caplog) -> None:
    with caplog.at_level(logging.INFO):
        dataset = VOCDetection(root=tiny, split="train", class_names=["cat", "dog"])
    assert dataset.load_report == (
        "VOCDetection(" + tiny.name + "/train): 2 images, 2 boxes kept; 3 boxes dropped: "
        "class not in class_names ('bird')=1, difficult (kept in coco_gt as iscrowd)=1, "
        "zero-area=1"
    )
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert any("a.xml" in m and "zero-area" in m for m in warnings)
    assert any("'bird'" in m for m in warnings)


def test_keep_difficult(tiny: Path) -> None:
    dataset = VOCDetection(
        root=tiny, split="train", class_names=["cat", "dog"], keep_difficult=True
    )
    _, target = dataset[0]
    assert target["boxes"].tolist() == [[0.0, 1.0, 10.0, 12.0], [4.0, 4.0, 20.0, 20.0]]
    assert target["labels"].tolist() == [1, 2]


def test_coco_gt_marks_difficult_as_crowd(tiny: Path) -> None:
    gt = VOCDetection(root=tiny, split="train", class_names=["cat", "dog"]).coco_gt()
    assert gt["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert [(i["id"], i["file_name"], i["height"], i["width"]) for i in gt["images"]] == [
        (1, "a.jpg", 30, 40),
        (2, "b.jpg", 30, 40),
    ]
    assert gt["annotations"] == [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "bbox": [0.0, 1.0, 10.0, 11.0],
            "area": 110.0,
            "iscrowd": 0,
        },
        {
            "id": 2,
            "image_id": 1,
            "category_id": 2,
            "bbox": [4.0, 4.0, 16.0, 16.0],
            "area": 256.0,
            "iscrowd": 1,
        },
        {
            "id": 3,
            "image_id": 2,
            "category_id": 2,
            "bbox": [10.0, 0.0, 30.0, 30.0],
            "area": 900.0,
            "iscrowd": 0,
        },
    ]


def test_cocoeval_ignores_difficult(tiny: Path) -> None:
    """Perfect detections of the non-difficult objects only must give AP@0.5 = 1."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_dict = VOCDetection(root=tiny, split="train", class_names=["cat", "dog"]).coco_gt()
    coco = COCO()
    coco.dataset = gt_dict
    coco.createIndex()
    detections = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in gt_dict["annotations"]
        if not a["iscrowd"]
    ]
    evaluator = COCOeval(coco, coco.loadRes(detections), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[1] == pytest.approx(1.0)


def test_missing_split_lists_the_available_ones(tiny: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"val\.txt.*\['train'\]"):
        VOCDetection(root=tiny, split="val", class_names=["cat"])


def test_missing_annotation_is_named(tiny: Path) -> None:
    (tiny / "Annotations" / "b.xml").unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.xml"):
        VOCDetection(root=tiny, split="train", class_names=["cat"])


def test_voc_classes() -> None:
    assert len(VOC_CLASSES) == 20 and len(set(VOC_CLASSES)) == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[14] == "person"
    assert VOC_CLASSES[-1] == "tvmonitor"


def _objects_in_xml(root: Path, names: list[str]) -> int:
    return sum(
        len(re.findall(r"<object>", (root / "Annotations" / f"{n}.xml").read_text())) for n in names
    )


@pytest.mark.skipif(not BCCD.is_dir(), reason="../shared/data/bccd not available")
@pytest.mark.parametrize(
    ("split", "zero_area"),
    [
        ("train", ["BloodImage_00343.xml"]),
        ("val", ["BloodImage_00338.xml"]),
        ("test", []),
        ("trainval", ["BloodImage_00338.xml", "BloodImage_00343.xml"]),
    ],
)
def test_bccd(split: str, zero_area: list[str], caplog) -> None:
    names = (BCCD / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    with caplog.at_level(logging.WARNING):
        dataset = VOCDetection(root=BCCD, split=split, class_names=["RBC", "WBC", "Platelets"])
    assert len(dataset) == len(names)
    kept = sum(len(r.gt_labels) for r in dataset.records)
    assert kept == _objects_in_xml(BCCD, names) - len(zero_area)
    skipped = sorted(m.split(" in ")[1].split(":")[0] for m in caplog.messages if "zero-area" in m)
    assert skipped == zero_area
    assert dataset.image_sizes() == [(480, 640)] * len(names)
    assert len(dataset.coco_gt()["annotations"]) == kept


@pytest.mark.skipif(not BCCD.is_dir(), reason="../shared/data/bccd not available")
def test_bccd_total_and_one_box() -> None:
    train = VOCDetection(root=BCCD, split="trainval", class_names=["RBC", "WBC", "Platelets"])
    test = VOCDetection(root=BCCD, split="test", class_names=["RBC", "WBC", "Platelets"])
    assert len(train) + len(test) == 364
    assert sum(len(r.gt_labels) for r in train.records + test.records) == 4888 - 2
    # BloodImage_00338.xml, first object: RBC xmin=453 ymin=81 xmax=555 ymax=182
    index = next(i for i, r in enumerate(train.records) if r.path.stem == "BloodImage_00338")
    image, target = train[index]
    assert image.shape == (3, 480, 640)
    assert target["boxes"][0].tolist() == [452.0, 80.0, 555.0, 182.0]
    assert target["labels"][0].item() == 1


@pytest.mark.skipif(not VOC_MINI.is_dir(), reason="../shared/data/voc2012_mini not available")
def test_voc2012_mini() -> None:
    dataset = VOCDetection(root=VOC_MINI, split="trainval", class_names=VOC_CLASSES)
    names = (VOC_MINI / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    assert len(dataset) == len(names) == 100
    gt = dataset.coco_gt()
    assert len(gt["annotations"]) == _objects_in_xml(VOC_MINI, names) == 273
    assert sum(a["iscrowd"] for a in gt["annotations"]) == 38
    assert sum(len(r.gt_labels) for r in dataset.records) == 273 - 38
    assert {a["category_id"] for a in gt["annotations"]} == set(range(1, 21))
    # 2007_000027.xml: person xmin=174 ymin=101 xmax=349 ymax=351, image 486x500
    index = names.index("2007_000027")
    image, target = dataset[index]
    assert image.shape == (3, 500, 486) and target["orig_size"] == (500, 486)
    assert target["boxes"].tolist() == [[173.0, 100.0, 349.0, 351.0]]
    assert dataset.class_names[target["labels"][0] - 1] == "person"
    portrait = sum(w < h for h, w in dataset.image_sizes())
    assert 0 < portrait < 100
