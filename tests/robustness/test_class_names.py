"""A class list that matches nothing: stopped before training, with the annotated names listed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from detector.data.base import DatasetError, require_boxes, seen_class_counts
from detector.data.class_names import class_name_hints, count_listing
from detector.data.coco import CocoDetection
from detector.data.concat import ConcatDetection
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


def _voc(root: Path, objects_per_image: list[list[str]], **kwargs) -> VOCDetection:
    """One 30x20 image per entry, with those ``voc_object`` strings; split ``train``."""
    names = [f"im{i}" for i in range(len(objects_per_image))]
    for name, objects in zip(names, objects_per_image, strict=True):
        write_voc_image(root, name, objects, (30, 20), solid(30, 20))
    write_split(root, names)
    return VOCDetection(root=root, split="train", **kwargs)


RACCOONS = [[voc_object("raccoon", (2, 2, 10, 10))] * 2, [voc_object("raccoon", (3, 3, 9, 9))]]


def test_voc_class_list_matching_no_annotation_raises_with_a_hint(tmp_path: Path) -> None:
    objects = [*RACCOONS, [voc_object("dog", (1, 1, 5, 5))]]
    with pytest.raises(DatasetError) as excinfo:
        _voc(tmp_path, objects, class_names=["Raccoon"])
    assert str(excinfo.value) == (
        f"VOCDetection({tmp_path.name}/train): none of the 4 annotated objects is of a class in "
        "class_names ['Raccoon']; the annotations name: 'raccoon' (3), 'dog' (1); did you mean "
        "'raccoon' for 'Raccoon'? (class names must match the annotations exactly, case included)"
    )


def test_voc_records_every_annotated_name(tmp_path: Path) -> None:
    objects = [*RACCOONS, [voc_object("dog", (1, 1, 5, 5))]]
    dataset = _voc(tmp_path, objects, class_names=["dog"])
    assert dataset.seen_class_counts == {"raccoon": 3, "dog": 1}
    assert require_boxes(dataset, "dataset.train") == 1


def test_require_boxes_lists_names_and_the_drop_reasons(tmp_path: Path) -> None:
    # the class matches, but every box is degenerate: zero-area in the XML
    dataset = _voc(tmp_path, [[voc_object("cat", (5, 5, 5, 9))]], class_names=["cat"])
    with pytest.raises(DatasetError) as excinfo:
        require_boxes(dataset, "dataset.train")
    assert str(excinfo.value) == (
        "dataset.train: no box left to train on (class_names ['cat']); the annotations name: "
        f"'cat' (1); load report: VOCDetection({tmp_path.name}/train): 1 images, 0 boxes kept; "
        "1 boxes dropped: zero-area=1"
    )


def test_require_boxes_with_a_case_mismatch_next_to_a_match(tmp_path: Path, caplog) -> None:
    objects = [*RACCOONS, [voc_object("Dog", (1, 1, 5, 5))]]
    dataset = _voc(tmp_path, objects, class_names=["raccoon", "dog"])
    with caplog.at_level(logging.WARNING, logger="detector.data.base"):
        assert require_boxes(dataset, "dataset.train") == 3
    assert (
        "dataset.train: 1 of 2 classes have no training box: ['dog']; did you mean 'Dog' for 'dog'?"
    ) in caplog.text


def test_coco_class_names_with_no_annotation_raise(tmp_path: Path) -> None:
    solid(30, 20).save(tmp_path / "a.png")
    images = [coco_image(1, "a.png", 30, 20)]
    ann_file = write_coco(tmp_path, images, [coco_ann(1, 1, [1, 1, 5, 5], category_id=1)] * 1)
    with pytest.raises(DatasetError) as excinfo:
        CocoDetection(image_dir=tmp_path, ann_file=ann_file, class_names=["b"])
    assert str(excinfo.value) == (
        "CocoDetection(ann.json): none of the 1 annotations is of a category in class_names "
        "['b']; the annotations name: 'a' (1)"
    )
    with pytest.raises(ValueError, match=r"class_names \['A'\] not among .*did you mean 'a' for"):
        CocoDetection(image_dir=tmp_path, ann_file=ann_file, class_names=["A"])


def test_require_boxes_on_coco_where_every_box_is_crowd(tmp_path: Path) -> None:
    solid(30, 20).save(tmp_path / "a.png")
    crowd = dict(coco_ann(1, 1, [1, 1, 5, 5]), iscrowd=1)
    ann_file = write_coco(tmp_path, [coco_image(1, "a.png", 30, 20)], [crowd])
    dataset = CocoDetection(image_dir=tmp_path, ann_file=ann_file)
    assert dataset.seen_class_counts == {"a": 1}
    with pytest.raises(DatasetError, match=r"dataset\.train: no box left to train on.*iscrowd"):
        require_boxes(dataset, "dataset.train")


def test_concatenation_sums_the_parts_names(tmp_path: Path) -> None:
    parts = [
        _voc(tmp_path / "a", RACCOONS, class_names=["raccoon", "dog"]),
        _voc(tmp_path / "b", [[voc_object("dog", (1, 1, 5, 5))]], class_names=["raccoon", "dog"]),
    ]
    concat = ConcatDetection(datasets=parts)
    assert seen_class_counts(concat) == {"raccoon": 3, "dog": 1}
    assert require_boxes(concat, "dataset.train") == 4


def test_class_name_hints() -> None:
    seen = {"raccoon": 4, "diningtable": 2, "person": 1}
    hints = class_name_hints(["Raccoon", "dining table", "racoon", "zebra", "person"], seen)
    assert hints == {"Raccoon": "raccoon", "dining table": "diningtable", "racoon": "raccoon"}
    many = {f"c{i:02d}": 1 for i in range(25)}
    assert count_listing(many).endswith("'c19' (1), ... and 5 more")
