"""``voc_folder`` on export layouts: a flat folder (labelImg), ``Annotations/`` + ``JPEGImages/``
without ``ImageSets/`` (CVAT), renamed folders, seeded train/val fractions, a root per split."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hydra.utils import instantiate

from detector.data.base import DatasetError
from detector.data.voc import VOCDetection
from detector.data.voc_layout import fraction_split, split_annotation_files
from tests.helpers import compose_config
from tests.robustness.files import voc_object, write_split, write_voc_pair

CAT = [voc_object("cat", (2, 2, 10, 10))]
NAMES = [f"img_{i:02d}" for i in range(10)]


def _flat(root: Path, names: list[str] = NAMES) -> Path:
    """labelImg: images and XML side by side; suffixes and <filename> vary."""
    for i, name in enumerate(names):
        image_file = f"{name}.{['jpg', 'png', 'jpeg', 'JPG'][i % 4]}"
        write_voc_pair(root, root, name, CAT, image_file=image_file)
    return root


def _voc(root: Path, split: str, **kwargs) -> VOCDetection:
    return VOCDetection(root=root, split=split, class_names=["cat"], **kwargs)


def test_flat_folder_every_xml_is_an_image(tmp_path: Path) -> None:
    dataset = _voc(_flat(tmp_path), "all")
    assert [r.path.name for r in dataset.records] == [
        "img_00.jpg",
        "img_01.png",
        "img_02.jpeg",
        "img_03.JPG",
        *[f"img_{i:02d}.{['jpg', 'png', 'jpeg', 'JPG'][i % 4]}" for i in range(4, 10)],
    ]
    assert dataset.load_report.endswith("10 images, 10 boxes kept; 0 boxes dropped: none")


def test_fraction_split_is_disjoint_covering_and_deterministic(tmp_path: Path) -> None:
    root = _flat(tmp_path)
    train = [r.path.stem for r in _voc(root, "train", val_fraction=0.3, split_seed=1).records]
    val = [r.path.stem for r in _voc(root, "val", val_fraction=0.3, split_seed=1).records]
    assert len(val) == 3 and len(train) == 7
    assert sorted(train + val) == NAMES
    # the same split again, and under the trainval / test names
    assert [
        r.path.stem for r in _voc(root, "trainval", val_fraction=0.3, split_seed=1).records
    ] == (train)
    assert [r.path.stem for r in _voc(root, "test", val_fraction=0.3, split_seed=1).records] == val
    other = fraction_split(NAMES, "val", val_fraction=0.3, seed=2)
    assert other != val  # another seed, another choice (fixed for these names)


def test_fraction_split_rules() -> None:
    names = [f"n{i}" for i in range(7)]
    assert fraction_split(names, "all", val_fraction=0.5, seed=0) == names
    assert len(fraction_split(names, "val", val_fraction=0.01, seed=0)) == 1  # at least one
    assert len(fraction_split(names, "train", val_fraction=0.99, seed=0)) == 1  # one left
    # adding a file moves at most that file into the held-out part
    before = set(fraction_split(names, "val", val_fraction=0.3, seed=0))
    after = set(fraction_split([*names, "n7"], "val", val_fraction=0.3, seed=0))
    assert len(before - after) <= 1
    with pytest.raises(ValueError, match=r"split 'holdout': without a split file the split"):
        fraction_split(names, "holdout", val_fraction=0.2, seed=0)
    with pytest.raises(DatasetError, match=r"split 'val' is empty: no split file, and"):
        fraction_split(names, "val", val_fraction=0.0, seed=0)


def test_annotations_and_images_without_imagesets(tmp_path: Path) -> None:
    # CVAT: the image is found by <filename> even when its stem differs from the XML's
    write_voc_pair(tmp_path / "Annotations", tmp_path / "JPEGImages", "a", CAT)
    write_voc_pair(
        tmp_path / "Annotations", tmp_path / "JPEGImages", "b", CAT, image_file="IMG_0002.PNG"
    )
    dataset = _voc(tmp_path, "all")
    assert [r.path.relative_to(tmp_path).as_posix() for r in dataset.records] == [
        "JPEGImages/a.jpg",
        "JPEGImages/IMG_0002.PNG",
    ]


def test_renamed_folders(tmp_path: Path) -> None:
    for name in ("x", "y"):
        write_voc_pair(tmp_path / "labels", tmp_path / "images", name, CAT, filename="")
    write_split(tmp_path, ["y"], split="train")  # ImageSets/Main/train.txt is used when asked
    kwargs = {"annotations_dir": "labels", "images_dir": "images"}
    assert [r.path.name for r in _voc(tmp_path, "train", **kwargs).records] == ["y.jpg"]
    sets = {"imagesets_dir": None}
    assert len(_voc(tmp_path, "all", **kwargs, **sets)) == 2  # split files ignored
    with pytest.raises(FileNotFoundError) as excinfo:
        _voc(tmp_path, "val", **kwargs)
    assert str(excinfo.value) == (
        f"VOC split file not found: {tmp_path}/ImageSets/Main/val.txt (available: ['train']; "
        "imagesets_dir=null ignores split files and splits the XML files by val_fraction)"
    )


def test_missing_image_names_what_was_tried(tmp_path: Path, caplog) -> None:
    _flat(tmp_path, ["a", "b"])
    (tmp_path / "b.png").unlink()
    with caplog.at_level(logging.WARNING):
        dataset = _voc(tmp_path, "all")
    assert len(dataset) == 1
    assert "image file not found=1" in dataset.load_report
    assert (
        f"skipped image {tmp_path}/b.xml: image file not found (no b.jpg, <filename> 'b.png' or "
        f"b.<jpg|jpeg|png|bmp|tif|tiff|webp> in {tmp_path}/JPEGImages or next to the XML)"
    ) in caplog.text


def test_no_xml_anywhere(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no VOC split file .*trainval\.txt and no \.xml"):
        _voc(tmp_path, "trainval")


def _cfg(*overrides: str):
    base = ["dataset=voc_folder", "dataset.class_names=[cat]", "dataset.num_classes=1"]
    return compose_config("train", [*base, *overrides])


def test_voc_folder_config_on_a_flat_folder(tmp_path: Path) -> None:
    cfg = _cfg(f"dataset.root={_flat(tmp_path)}", "dataset.val_fraction=0.3")
    train = instantiate(cfg.dataset.train, _convert_="all")
    val = instantiate(cfg.dataset.val, _convert_="all")  # val_split 'test': the held-out part
    assert len(train) == 7 and len(val) == 3
    assert not {r.path for r in train.records} & {r.path for r in val.records}


def test_voc_folder_config_with_a_root_per_split(tmp_path: Path) -> None:
    train_root, val_root = _flat(tmp_path / "train"), _flat(tmp_path / "val", ["v0", "v1"])
    cfg = _cfg(
        f"dataset.root={train_root}", f"dataset.val.root={val_root}", "dataset.val_split=all"
    )
    assert [r.path.stem for r in instantiate(cfg.dataset.val, _convert_="all").records] == [
        "v0",
        "v1",
    ]
    assert len(instantiate(cfg.dataset.train, _convert_="all")) == 8  # trainval: 10 - 2 held out


def test_split_annotation_files_follow_the_dataset(tmp_path: Path) -> None:
    root = _flat(tmp_path)
    node = {"root": root, "split": "test", "class_names": ["cat"], "val_fraction": 0.3}
    files = split_annotation_files(**node)
    assert [f.stem for f in files] == [r.path.stem for r in VOCDetection(**node).records]
    assert all(f.parent == root and f.suffix == ".xml" for f in files)
