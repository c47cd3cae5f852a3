"""ConcatDetection: index mapping, class checks, shared transforms, merged ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.data.coco import CocoDetection
from detector.data.concat import ConcatDetection
from detector.data.loader import build_train_loader
from detector.data.voc import VOCDetection
from tests.helpers import voc_object, write_voc_image


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    """Split ``one``: image a (40x30: cat, difficult dog); split ``two``: b (30x50: dog), c."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True)
    write_voc_image(
        tmp_path,
        "a",
        40,
        30,
        [voc_object("cat", (1, 2, 10, 12)), voc_object("dog", (5, 5, 20, 20), 1)],
    )
    write_voc_image(tmp_path, "b", 30, 50, [voc_object("dog", (11, 1, 30, 30))])
    write_voc_image(tmp_path, "c", 20, 10, [voc_object("cat", (2, 2, 5, 5))])
    (tmp_path / "ImageSets" / "Main" / "one.txt").write_text("a\n")
    (tmp_path / "ImageSets" / "Main" / "two.txt").write_text("b\nc\n")
    return tmp_path


def _voc(root: Path, split: str, names: tuple[str, ...] = ("cat", "dog"), **kw) -> VOCDetection:
    return VOCDetection(root=root, split=split, class_names=list(names), **kw)


def test_indices_follow_the_parts_in_order(voc: Path) -> None:
    concat = ConcatDetection(datasets=[_voc(voc, "one"), _voc(voc, "two")])
    assert len(concat) == 3
    assert concat.class_names == ["cat", "dog"] and concat.num_classes == 2
    assert concat.label_to_cat_id == {1: 1, 2: 2}
    image, target = concat[1]  # first image of part "two": b, dog (11, 1, 30, 30) 1-based
    assert image.shape == (3, 50, 30)
    assert target["boxes"].tolist() == [[10.0, 0.0, 30.0, 30.0]]
    assert target["labels"].tolist() == [2]
    assert concat.image_sizes() == [(30, 40), (50, 30), (10, 20)]
    np.testing.assert_allclose(concat.aspect_ratios(), [40 / 30, 30 / 50, 20 / 10])
    assert [r.path.stem for r in concat.records] == ["a", "b", "c"]


def test_class_mismatch_names_both_datasets(voc: Path) -> None:
    with pytest.raises(
        ValueError, match=r"dataset 1 VOCDetection\(root=.*split=two\).*\['dog', 'cat'\]"
    ):
        ConcatDetection(datasets=[_voc(voc, "one"), _voc(voc, "two", ("dog", "cat"))])
    with pytest.raises(ValueError, match="at least one dataset"):
        ConcatDetection(datasets=[])


def test_transforms_replace_the_parts_transforms(voc: Path) -> None:
    def halve(image, boxes, labels):
        return torch.zeros(3, 1, 1), boxes / 2, labels

    concat = ConcatDetection(datasets=[_voc(voc, "one"), _voc(voc, "two")], transforms=halve)
    image, target = concat[2]  # c: cat (2, 2, 5, 5) -> 0-based (1, 1, 5, 5) -> halved
    assert image.shape == (3, 1, 1)
    assert target["boxes"].tolist() == [[0.5, 0.5, 2.5, 2.5]]
    nested = ConcatDetection(datasets=[concat, _voc(voc, "one")], transforms=None)
    assert nested[0][1]["boxes"].tolist() == [[0.0, 0.5, 5.0, 6.0]]  # a's cat, halved


def test_keep_difficult_applies_per_part(voc: Path) -> None:
    plain = ConcatDetection(datasets=[_voc(voc, "one"), _voc(voc, "two")])
    hard = ConcatDetection(datasets=[_voc(voc, "one", keep_difficult=True), _voc(voc, "two")])
    assert [len(r.gt_labels) for r in plain.records] == [1, 1, 1]
    assert [len(r.gt_labels) for r in hard.records] == [2, 1, 1]


def test_voc_parts_share_image_ids_so_coco_gt_refuses(voc: Path) -> None:
    concat = ConcatDetection(datasets=[_voc(voc, "one"), _voc(voc, "two")])
    with pytest.raises(ValueError, match="image id 1 is in dataset 0 .* and dataset 1"):
        concat.coco_gt()


def _coco_part(root: Path, name: str, image_ids: list[int], cat_ids: list[int]) -> CocoDetection:
    (root / name).mkdir(parents=True)
    images, annotations = [], []
    for image_id in image_ids:
        Image.new("RGB", (20, 10)).save(root / name / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 10, "width": 20})
        annotations.append(
            {"id": 1, "image_id": image_id, "category_id": cat_ids[0], "bbox": [1, 1, 4, 4]}
        )
    categories = [{"id": c, "name": f"c{c}"} for c in cat_ids]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / f"{name}.json").write_text(json.dumps(data))
    return CocoDetection(image_dir=root / name, ann_file=root / f"{name}.json")


def test_coco_parts_with_disjoint_ids_merge_their_ground_truth(tmp_path: Path) -> None:
    first = _coco_part(tmp_path, "train", [5, 9], [3, 17])
    second = _coco_part(tmp_path, "val35k", [2], [3, 17])
    gt = ConcatDetection(datasets=[first, second]).coco_gt()
    assert [img["id"] for img in gt["images"]] == [5, 9, 2]
    assert [a["id"] for a in gt["annotations"]] == [1, 2, 3]  # renumbered: all were 1
    assert [a["image_id"] for a in gt["annotations"]] == [5, 9, 2]
    assert gt["categories"] == [{"id": 3, "name": "c3"}, {"id": 17, "name": "c17"}]


def test_coco_parts_with_other_category_ids_are_rejected(tmp_path: Path) -> None:
    first = _coco_part(tmp_path, "a", [1], [3, 17])
    second = _coco_part(tmp_path, "b", [2], [3, 18])
    with pytest.raises(ValueError, match="classes"):
        ConcatDetection(datasets=[first, second])


def test_grouped_training_loader_over_a_concatenation(voc: Path) -> None:
    concat = ConcatDetection(datasets=[_voc(voc, "one"), _voc(voc, "two")])
    loader = build_train_loader(concat, batch_size=2, num_workers=0, seed=0)
    images, targets = next(iter(loader))
    # a (40x30) and c (20x10) are the only landscape pair; b is portrait and alone
    assert sorted(tuple(i.shape[1:]) for i in images) == [(10, 20), (30, 40)]
    assert len(targets) == 2
