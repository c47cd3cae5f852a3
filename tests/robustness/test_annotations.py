"""Bad annotations (COCO json, VOC XML): boxes clipped or dropped, images skipped, all counted."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from detector.data.base import DatasetError
from detector.data.coco import CocoDetection
from detector.data.voc import VOCDetection
from tests.robustness.files import (
    coco_ann,
    coco_image,
    solid,
    voc_object,
    write_coco,
    write_split,
    write_voc_image,
)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Three 30x20 images a.png, b.png, c.png."""
    for name in ("a", "b", "c"):
        solid(30, 20).save(tmp_path / f"{name}.png")
    return tmp_path


def _coco(root: Path, images: list, anns: list, **kwargs) -> CocoDetection:
    return CocoDetection(image_dir=root, ann_file=write_coco(root, images, anns), **kwargs)


def test_coco_bad_boxes_are_clipped_or_dropped(images: Path, caplog) -> None:
    anns = [
        coco_ann(1, 1, [2, 3, 10, 5]),  # fine
        coco_ann(2, 1, [4, 4, 0, 5]),  # zero width
        coco_ann(3, 1, [4, 4, -3, 5]),  # negative width
        coco_ann(4, 1, [float("nan"), 4, 3, 5]),  # NaN
        coco_ann(5, 1, [25, -5, 10, 10]),  # partly outside: clipped to [25, 0, 30, 5]
        coco_ann(6, 1, [40, 40, 5, 5]),  # fully outside
        coco_ann(7, 1, [1, 1, 2, 2], category_id=9),  # unknown category id
        coco_ann(9, 1, [1, 1, 2, 2], category_id=[1]),  # not an id at all
        coco_ann(8, 99, [1, 1, 2, 2]),  # unknown image id
    ]
    with caplog.at_level(logging.WARNING):
        dataset = _coco(images, [coco_image(1, "a.png", 30, 20)], anns)
    _, target = dataset[0]
    assert torch.equal(
        target["boxes"], torch.tensor([[2.0, 3.0, 12.0, 8.0], [25.0, 0.0, 30.0, 5.0]])
    )
    assert dataset.load_report == (
        "CocoDetection(ann.json): 1 images, 2 boxes kept; 7 boxes dropped: malformed bbox=1, "
        "non-positive width/height=2, outside the image=1, unknown category_id=2, "
        "unknown image_id=1"
    )
    assert dataset.load_fixes.endswith("box clipped to the image=1")
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("a.png" in m for m in warnings) == 6
    assert any("ann.json" in m and "has image_id 99" in m for m in warnings)


@pytest.mark.parametrize(
    ("bbox", "image_id", "category_id", "pattern"),
    [
        ([4, 4, -3, 5], 1, 1, r"a\.png: non-positive width/height"),
        ([1, 1, 2, 2], 1, 9, r"a\.png: unknown category_id"),
        ([1, 1, 2, 2], 99, 1, r"ann\.json: unknown image_id"),
    ],
)
def test_coco_strict_mode_raises(images: Path, bbox, image_id, category_id, pattern) -> None:
    anns = [coco_ann(1, image_id, bbox, category_id=category_id)]
    with pytest.raises(DatasetError, match=pattern):
        _coco(images, [coco_image(1, "a.png", 30, 20)], anns, strict=True)


def test_coco_strict_mode_accepts_crowd_boxes(images: Path) -> None:
    crowd = dict(coco_ann(1, 1, [1, 1, 5, 5]), iscrowd=1)
    dataset = _coco(images, [coco_image(1, "a.png", 30, 20)], [crowd], strict=True)
    assert "iscrowd (kept in coco_gt)=1" in dataset.load_report


def test_coco_duplicate_image_ids_skip_every_entry_of_that_id(images: Path, caplog) -> None:
    entries = [coco_image(1, "a.png", 30, 20), coco_image(1, "b.png", 30, 20)]
    entries.append(coco_image(2, "c.png", 30, 20))
    anns = [coco_ann(1, 1, [1, 1, 5, 5]), coco_ann(2, 2, [1, 1, 5, 5])]
    with caplog.at_level(logging.WARNING):
        dataset = _coco(images, entries, anns)
    assert [r.image_id for r in dataset.records] == [2]
    assert [i["id"] for i in dataset.coco_gt()["images"]] == [2]
    assert "2 images dropped: duplicate image id=2" in dataset.load_report
    assert "in a skipped image=2" in dataset.load_report  # the id-1 box, once per entry
    assert "a.png" in caplog.text and "b.png" in caplog.text


def test_coco_missing_size_is_read_from_the_header(images: Path) -> None:
    entry = {"id": 1, "file_name": "a.png"}
    dataset = _coco(images, [entry], [coco_ann(1, 1, [25, 15, 10, 10])])
    assert dataset.records[0].height == 20 and dataset.records[0].width == 30
    assert torch.equal(dataset[0][1]["boxes"], torch.tensor([[25.0, 15.0, 30.0, 20.0]]))
    assert dataset.coco_gt()["images"][0]["width"] == 30
    assert "size read from the image header=1" in dataset.load_fixes


def test_coco_empty_annotation_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "zero.json").write_text("")
    with pytest.raises(ValueError, match=r"zero\.json: the annotation file is empty"):
        CocoDetection(image_dir=tmp_path, ann_file=tmp_path / "zero.json")
    (tmp_path / "none.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": []})
    )
    with pytest.raises(DatasetError, match=r"none\.json: lists no images"):
        CocoDetection(image_dir=tmp_path, ann_file=tmp_path / "none.json")


def test_coco_no_usable_image_left_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"0 images.*image file not found=1.*no usable image"):
        _coco(tmp_path, [coco_image(1, "gone.png", 30, 20)], [])


CLASSES = ["cat", "dog"]


def test_voc_bad_boxes_and_unknown_classes(tmp_path: Path, caplog) -> None:
    objects = [
        voc_object("cat", (3, 4, 12, 10)),  # fine: 0-based [2, 3, 12, 10]
        voc_object("cat", (5, 5, 5, 9)),  # zero width
        voc_object("dog", (9, 5, 4, 9)),  # negative width
        voc_object("dog", ("nan", 5, 8, 9)),  # NaN
        voc_object("dog", ("", 5, 8, 9)),  # missing coordinate
        voc_object("dog", ("x", 5, 8, 9)),  # not a number
        voc_object("dog", (21, 11, 40, 30)),  # partly outside: clipped to [20, 10, 30, 20]
        voc_object("dog", (41, 1, 50, 5)),  # fully outside
        voc_object("bird", (1, 1, 5, 5)),  # class not in class_names
        voc_object("bird", (2, 2, 5, 5)),
    ]
    write_voc_image(tmp_path, "a", objects, (30, 20), solid(30, 20))
    write_split(tmp_path, ["a"])
    with caplog.at_level(logging.WARNING):
        dataset = VOCDetection(root=tmp_path, split="train", class_names=CLASSES)
    _, target = dataset[0]
    assert torch.equal(
        target["boxes"], torch.tensor([[2.0, 3.0, 12.0, 10.0], [20.0, 10.0, 30.0, 20.0]])
    )
    assert target["labels"].tolist() == [1, 2]
    assert dataset.load_report.endswith(
        "1 images, 2 boxes kept; 8 boxes dropped: class not in class_names ('bird')=2, "
        "malformed bndbox=3, outside the image=1, zero-area=2"
    )
    assert dataset.load_fixes.endswith("box clipped to the image=1")
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("a.xml" in m for m in warnings) == 7  # the second 'bird' is counted, not warned


@pytest.mark.parametrize("size", [(0, 0), None])
def test_voc_zero_or_missing_size_is_read_from_the_header(tmp_path: Path, size) -> None:
    write_voc_image(tmp_path, "a", [voc_object("cat", (21, 11, 40, 30))], size, solid(30, 20))
    write_split(tmp_path, ["a"])
    dataset = VOCDetection(root=tmp_path, split="train", class_names=CLASSES)
    image, target = dataset[0]
    assert image.shape == (3, 20, 30) and target["orig_size"] == (20, 30)
    assert torch.equal(target["boxes"], torch.tensor([[20.0, 10.0, 30.0, 20.0]]))
    assert "size read from the image header=1" in dataset.load_fixes


def test_voc_malformed_xml_and_missing_image_skip_the_image(tmp_path: Path) -> None:
    write_voc_image(tmp_path, "a", [voc_object("cat", (1, 1, 5, 5))], (30, 20), solid(30, 20))
    write_voc_image(tmp_path, "b", [], (30, 20), solid(30, 20))
    (tmp_path / "Annotations" / "b.xml").write_text("")  # empty XML
    write_voc_image(tmp_path, "c", [voc_object("cat", (1, 1, 5, 5))], (30, 20), solid(30, 20))
    (tmp_path / "JPEGImages" / "c.jpg").unlink()
    write_split(tmp_path, ["a", "b", "c"])
    dataset = VOCDetection(root=tmp_path, split="train", class_names=CLASSES)
    assert [r.path.name for r in dataset.records] == ["a.jpg"]
    assert dataset.load_report.endswith(
        "1 images, 1 boxes kept; 1 boxes dropped: in a skipped image=1; 2 images dropped: "
        "image file not found=1, malformed XML=1"
    )
    with pytest.raises(DatasetError, match=r"b\.xml: malformed XML"):
        VOCDetection(root=tmp_path, split="train", class_names=CLASSES, strict=True)


@pytest.mark.parametrize(
    ("obj", "pattern"),
    [
        (voc_object("bird", (1, 1, 5, 5)), r"a\.xml: class not in class_names \('bird'\)"),
        (voc_object("cat", ("nan", 1, 5, 5)), r"a\.xml: malformed bndbox"),
        (voc_object("cat", (5, 1, 5, 5)), r"a\.xml: zero-area"),
    ],
)
def test_voc_strict_mode_raises(tmp_path: Path, obj: str, pattern: str) -> None:
    write_voc_image(tmp_path, "a", [obj], (30, 20), solid(30, 20))
    write_split(tmp_path, ["a"])
    with pytest.raises(DatasetError, match=pattern):
        VOCDetection(root=tmp_path, split="train", class_names=CLASSES, strict=True)


def test_voc_empty_split_is_an_error(tmp_path: Path) -> None:
    write_split(tmp_path, [""])
    with pytest.raises(DatasetError, match=r"train\.txt: lists no images"):
        VOCDetection(root=tmp_path, split="train", class_names=CLASSES)
