"""Synthetic shapes dataset: determinism, caching/regeneration, annotation validity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.data.synthetic import (
    META_FILE,
    SHAPE_CLASSES,
    SyntheticShapesDetection,
    ensure_synthetic_dataset,
    shape_mask,
)

SMALL = {"num_train": 6, "num_val": 3, "image_size": 64, "seed": 3}


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("syn") / "shapes", **SMALL)


def test_same_arguments_give_identical_bytes(small_root: Path, tmp_path: Path) -> None:
    again = ensure_synthetic_dataset(tmp_path / "other", **SMALL)
    first, second = _tree(small_root), _tree(again)
    assert len(first) == SMALL["num_train"] + SMALL["num_val"] + 3  # + 2 json + meta
    assert first == second


def test_other_seed_gives_other_images(small_root: Path, tmp_path: Path) -> None:
    other = ensure_synthetic_dataset(tmp_path / "other", **{**SMALL, "seed": 4})
    assert (other / "train" / "000001.png").read_bytes() != (
        small_root / "train" / "000001.png"
    ).read_bytes()


def test_first_images_do_not_depend_on_num_train(small_root: Path, tmp_path: Path) -> None:
    fewer = ensure_synthetic_dataset(tmp_path / "fewer", **{**SMALL, "num_train": 2})
    for name in ("000001.png", "000002.png"):
        assert (fewer / "train" / name).read_bytes() == (small_root / "train" / name).read_bytes()
    assert not (fewer / "train" / "000003.png").exists()


def test_cached_then_regenerated_when_arguments_change(tmp_path: Path) -> None:
    root = ensure_synthetic_dataset(tmp_path / "shapes", **SMALL)
    marker = root / "marker.txt"
    marker.write_text("kept while the arguments match")
    assert ensure_synthetic_dataset(tmp_path / "shapes", **SMALL) == root
    assert marker.exists()

    ensure_synthetic_dataset(tmp_path / "shapes", **{**SMALL, "num_val": 1})
    assert not marker.exists()
    assert json.loads((root / META_FILE).read_text())["num_val"] == 1
    assert len(list((root / "val").iterdir())) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]  # no temp dirs left behind


def test_refuses_to_overwrite_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="mine"):
        ensure_synthetic_dataset(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "data.txt").read_text() == "precious"


@pytest.mark.parametrize("bad", [{"num_train": -1}, {"image_size": 32}, {"seed": 1.5}])
def test_invalid_arguments(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        ensure_synthetic_dataset(tmp_path / "x", **{**SMALL, **bad})


def test_annotations_are_valid(small_root: Path) -> None:
    for split, count in (("train", SMALL["num_train"]), ("val", SMALL["num_val"])):
        coco = _load(small_root, split)
        assert [c["name"] for c in coco["categories"]] == list(SHAPE_CLASSES)
        assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4]
        assert [i["id"] for i in coco["images"]] == list(range(1, count + 1))
        ann_ids = [a["id"] for a in coco["annotations"]]
        assert ann_ids == list(range(1, len(ann_ids) + 1))
        sizes = {i["id"]: (i["height"], i["width"]) for i in coco["images"]}
        for image in coco["images"]:
            with Image.open(small_root / split / image["file_name"]) as img:
                assert img.size == (image["width"], image["height"])
            assert max(image["height"], image["width"]) == SMALL["image_size"]
            assert min(image["height"], image["width"]) >= SMALL["image_size"] * 3 // 4
        per_image: dict[int, int] = {}
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            height, width = sizes[ann["image_id"]]
            assert x >= 0 and y >= 0 and x + w <= width and y + h <= height
            assert 8 <= w <= 90 and 8 <= h <= 90
            assert 0 < ann["area"] <= w * h
            assert ann["category_id"] in (1, 2, 3, 4) and ann["iscrowd"] == 0
            per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
        assert all(1 <= n <= 6 for n in per_image.values())


@pytest.mark.parametrize("category_id", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [15, 40, 90])
def test_shape_masks_are_cropped_tight(category_id: int, size: int) -> None:
    mask = shape_mask(category_id, size, np.random.default_rng(size))
    assert mask.dtype == bool and max(mask.shape) <= size and min(mask.shape) >= size // 2
    assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()


def test_circle_mask_is_round() -> None:
    mask = shape_mask(1, 41, np.random.default_rng(0))
    assert mask.shape == (41, 41)
    assert mask[20, 20] and not mask[0, 0] and not mask[40, 40]
    assert abs(mask.sum() - np.pi * 20.5**2) < 0.05 * mask.sum()


def test_dataset_class_generates_and_loads(tmp_path: Path) -> None:
    dataset = SyntheticShapesDetection(root=tmp_path / "shapes", split="val", **SMALL)
    assert len(dataset) == SMALL["num_val"]
    assert dataset.class_names == list(SHAPE_CLASSES)
    assert dataset.label_to_cat_id == {1: 1, 2: 2, 3: 3, 4: 4}
    image, target = dataset[0]
    assert image.shape[0] == 3 and target["orig_size"] == tuple(image.shape[1:])
    with pytest.raises(ValueError, match="split"):
        SyntheticShapesDetection(root=tmp_path / "shapes", split="test", **SMALL)
