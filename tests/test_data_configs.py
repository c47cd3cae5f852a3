"""Dataset configs: every one composes; the VOC / COCO layouts instantiate on fake data roots.

The fake roots mirror the documented layouts under the data root (``DETECTOR_DATA_ROOT``):
``voc/VOCdevkit/VOC2007``, ``voc/VOCdevkit/VOC2012`` and ``coco/annotations/instances_*.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from detector.data.concat import ConcatDetection
from detector.data.voc import VOC_CLASSES
from tests.helpers import CONFIG_DIR, compose_config, voc_object, write_voc_image

DATASETS = sorted(p.stem for p in (Path(CONFIG_DIR) / "dataset").glob("*.yaml"))
VOC_FOLDER = ["dataset.root=/nowhere", "dataset.class_names=[a,b]", "dataset.num_classes=2"]


def _devkit_year(root: Path, splits: dict[str, list[str]]) -> None:
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    names = sorted({n for images in splits.values() for n in images})
    for i, name in enumerate(names):
        write_voc_image(
            root,
            name,
            40,
            30,
            [voc_object("cat", (1, 1, 10, 10)), voc_object("dog", (2, 2, 9, 9), i % 2)],
        )
    for split, images in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(images) + "\n")


def _coco_file(
    root: Path, name: str, image_dir: str, image_ids: list[int], empty: set[int]
) -> None:
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, annotations = [], []
    for image_id in image_ids:
        Image.new("RGB", (16, 12)).save(root / image_dir / f"{image_id}.jpg")
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 12, "width": 16})
        if image_id not in empty:
            annotations.append(
                {"id": image_id, "image_id": image_id, "category_id": 90, "bbox": [1, 1, 5, 5]}
            )
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person"}, {"id": 90, "name": "toothbrush"}],
    }
    (root / "annotations" / f"instances_{name}.json").write_text(json.dumps(data))


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    devkit = tmp_path / "voc" / "VOCdevkit"
    _devkit_year(devkit / "VOC2007", {"trainval": ["07a", "07b"], "test": ["07c"]})
    _devkit_year(
        devkit / "VOC2012",
        {"trainval": ["12a", "12b", "12c"], "train": ["12a"], "val": ["12b", "12c"]},
    )
    coco = tmp_path / "coco"
    _coco_file(coco, "train2014", "train2014", [1, 2, 3], empty={3})
    _coco_file(coco, "valminusminival2014", "val2014", [10, 11], empty=set())
    _coco_file(coco, "minival2014", "val2014", [20, 21], empty={21})
    monkeypatch.setenv("DETECTOR_DATA_ROOT", str(tmp_path))
    return tmp_path


def _cfg(dataset: str, *overrides: str):
    return compose_config("train", [f"dataset={dataset}", *overrides])


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_config_composes(dataset: str) -> None:
    cfg = _cfg(dataset, *(VOC_FOLDER if dataset == "voc_folder" else []))
    OmegaConf.resolve(cfg)
    assert cfg.model.num_classes == cfg.dataset.num_classes
    assert cfg.eval.type in ("coco", "voc", "both")
    for split in ("train", "val"):
        assert "_target_" in cfg.dataset[split]


def test_required_dataset_configs_exist() -> None:
    for name in ("coco", "coco2014", "coco_trainval35k", "voc07", "voc12", "voc0712", "voc_folder"):
        assert name in DATASETS


@pytest.mark.parametrize(
    ("dataset", "eval_type", "use_07"),
    [("voc07", "both", True), ("voc0712", "both", True), ("voc12", "both", False),
     ("coco", "coco", False), ("synthetic", "coco", True)],
)  # fmt: skip
def test_eval_defaults_come_from_the_dataset(dataset: str, eval_type: str, use_07: bool) -> None:
    cfg = _cfg(dataset)
    assert cfg.eval.type == eval_type and cfg.eval.voc.use_07_metric is use_07
    assert _cfg(dataset, "eval.type=voc").eval.type == "voc"


def test_coco_year_selects_the_split_files() -> None:
    for dataset, year in (("coco", 2017), ("coco2014", 2014), ("coco dataset.year=2014", 2014)):
        name, *extra = dataset.split()
        val = _cfg(name, *extra).dataset.val
        assert val.image_dir.endswith(f"coco/val{year}")
        assert val.ann_file.endswith(f"coco/annotations/instances_val{year}.json")


def test_voc07_trains_on_trainval_and_tests_on_test(data_root: Path) -> None:
    cfg = _cfg("voc07")
    train = instantiate(cfg.dataset.train, _convert_="all")
    val = instantiate(cfg.dataset.val, _convert_="all")
    assert train.class_names == list(VOC_CLASSES)
    assert [r.path.stem for r in train.records] == ["07a", "07b"]
    assert [r.path.stem for r in val.records] == ["07c"]
    assert str(train.root).endswith("voc/VOCdevkit/VOC2007")
    # 07b's dog is difficult: out of training unless keep_difficult, always in the val truth
    assert [len(r.gt_labels) for r in train.records] == [2, 1]
    hard = instantiate(_cfg("voc07", "dataset.keep_difficult=true").dataset.train, _convert_="all")
    assert [len(r.gt_labels) for r in hard.records] == [2, 2]


def test_voc12_and_voc0712_splits(data_root: Path) -> None:
    cfg = _cfg("voc12")
    assert [r.path.stem for r in instantiate(cfg.dataset.train).records] == ["12a"]
    assert [r.path.stem for r in instantiate(cfg.dataset.val).records] == ["12b", "12c"]
    cfg = _cfg("voc0712", "dataset.keep_difficult=true")
    train = instantiate(cfg.dataset.train, _convert_="all")
    assert isinstance(train, ConcatDetection) and len(train) == 5
    assert [r.path.stem for r in train.records] == ["07a", "07b", "12a", "12b", "12c"]
    assert sum(len(r.gt_labels) for r in train.records) == 10  # difficult kept in both parts
    image, target = train[3]  # 12b through the shared training transforms (600 px)
    assert image.shape[1] == 600 and len(target["boxes"]) == 2
    val = instantiate(cfg.dataset.val, _convert_="all")
    assert [r.path.stem for r in val.records] == ["07c"]


def test_coco_trainval35k(data_root: Path) -> None:
    cfg = _cfg("coco_trainval35k")
    train = instantiate(cfg.dataset.train, _convert_="all")
    assert isinstance(train, ConcatDetection)
    assert [r.image_id for r in train.records] == [1, 2, 10, 11]  # empty image 3 dropped
    assert train.label_to_cat_id == {1: 1, 2: 90}
    assert len(train.coco_gt()["images"]) == 4
    kept = instantiate(_cfg("coco_trainval35k", "dataset.drop_empty=false").dataset.train)
    assert [r.image_id for r in kept.records] == [1, 2, 3, 10, 11]
    val = instantiate(cfg.dataset.val, _convert_="all")
    assert [r.image_id for r in val.records] == [20, 21]  # minival keeps its empty image
    assert val.records[0].path == data_root / "coco" / "val2014" / "20.jpg"


def test_voc_folder_takes_any_root_and_class_list(data_root: Path) -> None:
    root = data_root / "voc" / "VOCdevkit" / "VOC2012"
    cfg = _cfg(
        "voc_folder",
        f"dataset.root={root}",
        "dataset.class_names=[dog]",
        "dataset.num_classes=1",
        "dataset.val_split=val",
    )
    val = instantiate(cfg.dataset.val, _convert_="all")
    assert val.class_names == ["dog"] and len(val) == 2
    assert cfg.eval.type == "both"
