"""Synthetic scenes dataset: determinism, the look-alike pair promise, sizes, crowds, config.

The pair tests classify objects with a leave-one-out nearest-class-mean rule on colour
statistics: the object's box crop cannot tell boat from car (accuracy near chance), the horizon
band can (accuracy near 1), and with ``scene_context=false`` the band cannot either. The same
crop features do tell boat from ball, so a near-chance result is not just a weak classifier.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from torchvision.ops import box_iou

from detector.config_checks import check_config
from detector.data.generated import META_FILE, image_rng
from detector.data.scenes import (
    APPEARANCE_GROUPS,
    CLASS_SCENES,
    LOOKALIKE_PAIRS,
    PAIR_SCENES,
    SCENE_CLASSES,
    SCENE_TYPES,
    ScenesConfig,
    SyntheticScenesDetection,
    ensure_scenes_dataset,
    paint_objects,
    render_scene,
)
from tests.helpers import compose_config

#: Small 128 px images for the determinism and config tests.
SMALL: dict[str, Any] = {
    "num_train": 8,
    "num_val": 3,
    "image_size": 128,
    "seed": 1,
    "min_object_size": 8,
    "max_object_size": 64,
    "crowd_min_size": 8,
    "crowd_max_size": 20,
}
#: Default generator (256 px, sizes 14..112) with more crowds, for the statistical tests.
DEFAULT_SIZE: dict[str, Any] = {"num_train": 240, "num_val": 0, "seed": 5, "crowd_prob": 0.4}
CLASS_ID = {name: k + 1 for k, name in enumerate(SCENE_CLASSES)}


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _load(root: Path, split: str = "train") -> dict[str, Any]:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def _pixels(root: Path, image: dict[str, Any], split: str = "train") -> np.ndarray:
    with Image.open(root / split / image["file_name"]) as img:
        return np.asarray(img.convert("RGB"))


def _longer_side(ann: dict[str, Any]) -> float:
    return max(ann["bbox"][2], ann["bbox"][3])


def _xyxy(ann: dict[str, Any]) -> tuple[int, int, int, int]:
    x, y, w, h = (round(v) for v in ann["bbox"])
    return (x, y, x + w, y + h)


@pytest.fixture(scope="module")
def scenes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_scenes_dataset(tmp_path_factory.mktemp("scenes") / "ctx", **DEFAULT_SIZE)


@pytest.fixture(scope="module")
def control_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scenes") / "control"
    return ensure_scenes_dataset(root, **{**DEFAULT_SIZE, "num_train": 150}, scene_context=False)


# --- (a) one seed, one dataset ------------------------------------------------------------------


def test_same_arguments_give_identical_bytes_other_seed_other_images(tmp_path: Path) -> None:
    first = _tree(ensure_scenes_dataset(tmp_path / "a", **SMALL))
    assert first == _tree(ensure_scenes_dataset(tmp_path / "b", **SMALL))
    assert len(first) == SMALL["num_train"] + SMALL["num_val"] + 3  # + 2 json + meta
    other = _tree(ensure_scenes_dataset(tmp_path / "c", **{**SMALL, "seed": 2}))
    assert other["train/000001.png"] != first["train/000001.png"]
    assert other["annotations/instances_train.json"] != first["annotations/instances_train.json"]


def test_meta_holds_every_argument_and_changes_regenerate(tmp_path: Path) -> None:
    root = ensure_scenes_dataset(tmp_path / "s", **SMALL)
    meta = json.loads((root / META_FILE).read_text())
    assert meta["context_gap"] == round(0.1 * SMALL["image_size"])  # None resolved
    # swap_pair_scenes came after version 1: it is recorded only when on, so a dataset generated
    # before it (whose meta.json lacks the key) is still found valid
    assert set(meta) == {"generator_version", *ScenesConfig.__dataclass_fields__} - {
        "swap_pair_scenes"
    }
    (root / "marker.txt").write_text("kept while the arguments match")
    ensure_scenes_dataset(tmp_path / "s", **SMALL)
    assert (root / "marker.txt").exists()
    ensure_scenes_dataset(tmp_path / "s", **SMALL, scene_context=False)
    assert not (root / "marker.txt").exists()
    assert _load(root)["info"]["scene_context"] is False


@pytest.mark.parametrize(
    "bad",
    [{"crowd_prob": 1.5}, {"image_size": 32}, {"scene_context": "yes"}, {"context_gap": 80},
     {"crowd_max_size": 100}, {"min_object_szie": 8}, {"swap_pair_scenes": 1},
     {"swap_pair_scenes": True, "scene_context": False}],
)  # fmt: skip
def test_invalid_arguments(tmp_path: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        ensure_scenes_dataset(tmp_path / "x", **{**SMALL, **bad})
    assert not (tmp_path / "x").exists()


# --- (b) look-alike pairs -----------------------------------------------------------------------


def _paint(category_ids: list[int], seed: int) -> tuple[np.ndarray, list[Any]]:
    canvas = np.full((128, 160, 3), 120.0, dtype=np.float32)
    rng = np.random.default_rng(seed)
    sizes = [40, 30, 20]
    instances = paint_objects(
        canvas, category_ids=category_ids, sizes=sizes, top=20, max_iou=0.3, cluster=False, rng=rng
    )
    return canvas, instances


@pytest.mark.parametrize("pair", LOOKALIKE_PAIRS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_pair_renders_identically_from_the_same_rng_state(
    pair: tuple[str, str], seed: int
) -> None:
    first, second = ([CLASS_ID[name]] * 2 + [CLASS_ID["ball"]] for name in pair)
    canvas_a, objects_a = _paint(first, seed)
    canvas_b, objects_b = _paint(second, seed)
    assert len(objects_a) == 3
    assert canvas_a.tobytes() == canvas_b.tobytes()
    assert [o.box for o in objects_a] == [o.box for o in objects_b]
    assert [o.category_id for o in objects_b] == second
    # another group with the same RNG state does paint other pixels
    canvas_c, _ = _paint([CLASS_ID["sign"]] * 2 + [CLASS_ID["ball"]], seed)
    assert canvas_c.tobytes() != canvas_a.tobytes()


@pytest.mark.parametrize("pair", LOOKALIKE_PAIRS)
def test_forcing_the_other_scene_swaps_the_pair_class_and_nothing_else(
    pair: tuple[str, str],
) -> None:
    config = ScenesConfig(**SMALL)
    first, second = (CLASS_SCENES[name][0] for name in pair)
    swapped = 0
    for index in range(12):
        a = render_scene(image_rng(config.seed, "train", index), config, scene=first)
        b = render_scene(image_rng(config.seed, "train", index), config, scene=second)
        band = a.band_height
        assert (a.scene, b.scene, b.band_height) == (first, second, band)
        assert not np.array_equal(a.pixels[:band], b.pixels[:band])
        assert np.array_equal(a.pixels[band:], b.pixels[band:])
        assert [o.box for o in a.instances] == [o.box for o in b.instances]
        ids_a = [SCENE_CLASSES[o.category_id - 1] for o in a.instances]
        ids_b = [SCENE_CLASSES[o.category_id - 1] for o in b.instances]
        assert [{pair[0]: pair[1]}.get(n, n) for n in ids_a] == ids_b
        swapped += ids_a.count(pair[0])
    assert swapped >= 5


def test_the_scene_swapped_split_changes_the_band_and_the_pair_labels_only(tmp_path: Path) -> None:
    """The swap diagnostic's promise: every image is drawn with the other scene of its pair,
    the band differs, every pixel below it and every box is the same, and a pair object's label
    is the other class of its pair (ball and sign keep theirs)."""
    other_class = {a: b for pair in LOOKALIKE_PAIRS for a, b in (pair, pair[::-1])}
    plain = ensure_scenes_dataset(tmp_path / "plain", **SMALL)
    swapped = ensure_scenes_dataset(tmp_path / "swapped", **SMALL, swap_pair_scenes=True)
    assert json.loads((swapped / META_FILE).read_text())["swap_pair_scenes"] is True
    names = {c["id"]: c["name"] for c in _load(plain)["categories"]}
    flipped = 0
    for split in ("train", "val"):
        a, b = _load(plain, split), _load(swapped, split)
        assert len(a["images"]) == len(b["images"]) == SMALL[f"num_{split}"]
        for image_a, image_b in zip(a["images"], b["images"], strict=True):
            assert image_b["scene"] == PAIR_SCENES[image_a["scene"]]
            band = image_a["band_height"]
            assert image_b["band_height"] == band
            pixels_a, pixels_b = _pixels(plain, image_a, split), _pixels(swapped, image_b, split)
            assert not np.array_equal(pixels_a[:band], pixels_b[:band])
            assert np.array_equal(pixels_a[band:], pixels_b[band:])
        anns_a = sorted(a["annotations"], key=lambda ann: ann["id"])
        anns_b = sorted(b["annotations"], key=lambda ann: ann["id"])
        assert [ann["bbox"] for ann in anns_a] == [ann["bbox"] for ann in anns_b]
        for ann_a, ann_b in zip(anns_a, anns_b, strict=True):
            name_a = names[ann_a["category_id"]]
            assert names[ann_b["category_id"]] == other_class.get(name_a, name_a)
            flipped += name_a in other_class
    assert flipped >= 5


def test_pairs_are_one_group_each_and_tied_to_one_scene() -> None:
    for a, b in LOOKALIKE_PAIRS:
        assert APPEARANCE_GROUPS[a] == APPEARANCE_GROUPS[b]
        assert len(CLASS_SCENES[a]) == len(CLASS_SCENES[b]) == 1
        assert CLASS_SCENES[a] != CLASS_SCENES[b]
    groups = [APPEARANCE_GROUPS[a] for a, _ in LOOKALIKE_PAIRS]
    assert len(set(groups)) == len(groups)


def _samples(root: Path, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image, its first object of ``names[0]`` or ``names[1]`` (one sample per image keeps
    the samples independent; crowds would repeat one image): crop features, band features and
    labels 0/1."""
    coco = _load(root)
    first: dict[int, dict[str, Any]] = {}
    ids = {CLASS_ID[names[0]]: 0, CLASS_ID[names[1]]: 1}
    for ann in coco["annotations"]:
        if ann["category_id"] in ids:
            first.setdefault(ann["image_id"], ann)
    crops, bands, labels = [], [], []
    for image in coco["images"]:
        if image["id"] not in first:
            continue
        ann = first[image["id"]]
        pixels = _pixels(root, image).astype(np.float64)
        x1, y1, x2, y2 = _xyxy(ann)
        crops.append(_colour_stats(pixels[y1:y2, x1:x2]))
        bands.append(_colour_stats(pixels[: image["height"] // 5]))  # always inside the band
        labels.append(ids[ann["category_id"]])
    return np.array(crops), np.array(bands), np.array(labels)


def _colour_stats(pixels: np.ndarray) -> np.ndarray:
    flat = pixels.reshape(-1, 3)
    return np.concatenate([flat.mean(axis=0), flat.std(axis=0)])


def _nearest_mean_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out accuracy of a nearest-class-mean classifier on standardised features."""
    z = (features - features.mean(axis=0)) / (features.std(axis=0) + 1e-9)
    correct = 0
    for i in range(len(z)):
        rest = np.arange(len(z)) != i
        means = [z[rest & (labels == c)].mean(axis=0) for c in (0, 1)]
        correct += int(np.argmin([np.linalg.norm(z[i] - m) for m in means]) == labels[i])
    return correct / len(z)


def test_only_the_scene_tells_boat_from_car(scenes_root: Path) -> None:
    crops, bands, labels = _samples(scenes_root, ("boat", "car"))
    assert min(np.bincount(labels)) >= 40
    assert _nearest_mean_accuracy(crops, labels) <= 0.68  # chance 0.5, ~100 samples: sd 0.05
    assert _nearest_mean_accuracy(bands, labels) >= 0.95
    # the same crop features do separate two groups
    crops, _, labels = _samples(scenes_root, ("boat", "ball"))
    assert _nearest_mean_accuracy(crops, labels) >= 0.9


def test_pair_classes_occur_only_in_their_scene(scenes_root: Path) -> None:
    coco = _load(scenes_root)
    assert coco["info"]["pairs"] == [list(p) for p in LOOKALIKE_PAIRS]
    scene = {i["id"]: i["scene"] for i in coco["images"]}
    assert set(scene.values()) == set(SCENE_TYPES)
    for ann in coco["annotations"]:
        name = SCENE_CLASSES[ann["category_id"] - 1]
        assert scene[ann["image_id"]] in CLASS_SCENES[name]


def test_without_scene_context_the_scene_does_not_predict_the_pair(control_root: Path) -> None:
    coco = _load(control_root)
    scene = {i["id"]: i["scene"] for i in coco["images"]}
    boat_scenes = {scene[a["image_id"]] for a in coco["annotations"] if a["category_id"] == 1}
    assert boat_scenes == set(SCENE_TYPES)
    _, bands, labels = _samples(control_root, ("boat", "car"))
    assert min(np.bincount(labels)) >= 20
    assert _nearest_mean_accuracy(bands, labels) <= 0.7  # chance 0.5, ~60 samples: sd 0.065


# --- (c) sizes ----------------------------------------------------------------------------------


def test_sizes_stay_in_range_and_span_8x(scenes_root: Path) -> None:
    config = ScenesConfig(**DEFAULT_SIZE)
    coco = _load(scenes_root)
    sizes = np.array([_longer_side(a) for a in coco["annotations"]])
    assert sizes.min() >= config.min_object_size - 1 and sizes.max() <= config.max_object_size
    assert sizes.max() / sizes.min() >= 8.0
    assert np.median(sizes) < 40  # log-uniform sizes plus crowds: mostly small objects


# --- (d) crowds and overlap ---------------------------------------------------------------------


def _max_iou(groups: list[list[dict[str, Any]]]) -> list[float]:
    """Per group of annotations, the largest box IoU between two of them (0 for fewer than
    two); torchvision as the reference, one call for all groups."""
    boxes = torch.tensor([_xyxy(a) for anns in groups for a in anns], dtype=torch.float64)
    owner = torch.tensor([k for k, anns in enumerate(groups) for _ in anns])
    iou = box_iou(boxes, boxes).triu(diagonal=1)
    iou[owner[:, None] != owner[None, :]] = 0.0
    best = torch.zeros(len(groups), dtype=torch.float64)
    return best.scatter_reduce(0, owner, iou.max(dim=1).values, reduce="amax").tolist()


def test_crowds_pack_one_class_with_overlapping_boxes(scenes_root: Path) -> None:
    coco = _load(scenes_root)
    by_image: dict[int, list[dict[str, Any]]] = {i["id"]: [] for i in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    crowds = [by_image[i["id"]] for i in coco["images"] if i["crowded"]]
    normal = [by_image[i["id"]] for i in coco["images"] if not i["crowded"]]
    assert len(crowds) >= 30
    assert all(len({a["category_id"] for a in anns}) == 1 for anns in crowds)
    assert all(6 <= len(anns) <= 12 for anns in crowds)
    crowd_ious = _max_iou(crowds)
    assert sum(iou > 0.3 for iou in crowd_ious) >= 3 and max(crowd_ious) <= 0.5
    assert max(_max_iou(normal)) <= 0.3
    assert all(len(anns) <= 6 for anns in normal) and any(len(anns) == 0 for anns in normal)


def test_masks_never_touch_and_boxes_are_tight(scenes_root: Path) -> None:
    """Re-render every image: same pixels and boxes as the files, every mask tight in its box,
    on the ground, and at least one pixel (diagonals included) from every other mask."""
    config = ScenesConfig(**DEFAULT_SIZE)
    coco = _load(scenes_root)
    boxes: dict[int, list[tuple[int, int, int, int]]] = {i["id"]: [] for i in coco["images"]}
    for ann in coco["annotations"]:
        boxes[ann["image_id"]].append(_xyxy(ann))
    for index, image in enumerate(coco["images"]):
        scene = render_scene(image_rng(config.seed, "train", index), config)
        assert np.array_equal(scene.pixels, _pixels(scenes_root, image))
        assert [o.box for o in scene.instances] == boxes[image["id"]]
        owner = np.zeros(scene.pixels.shape[:2], dtype=np.int32)
        for k, obj in enumerate(scene.instances, start=1):
            x1, y1, x2, y2 = obj.box
            assert obj.mask.shape == (y2 - y1, x2 - x1) and obj.area == obj.mask.sum()
            assert obj.mask[0].any() and obj.mask[-1].any()
            assert obj.mask[:, 0].any() and obj.mask[:, -1].any()
            assert y1 >= image["band_height"] + config.context_gap
            owner[y1:y2, x1:x2][obj.mask] = k
        padded = np.pad(owner, 1)
        for k, obj in enumerate(scene.instances, start=1):
            x1, y1, x2, y2 = obj.box
            h, w = obj.mask.shape
            # owners of the 8 neighbours of every mask pixel (padded coordinates: +1)
            near = [padded[y1 + dy : y1 + dy + h, x1 + dx : x1 + dx + w][obj.mask]
                    for dy in range(3) for dx in range(3)]  # fmt: skip
            assert set(np.unique(np.concatenate(near))) <= {0, k}, f"{image['id']}: {k} touches"


# --- (e) config ---------------------------------------------------------------------------------


def test_config_composes_and_loads_through_hydra(tmp_path: Path) -> None:
    overrides = [f"dataset.generator.{k}={v}" for k, v in SMALL.items()]
    cfg = compose_config(
        "train", ["dataset=synthetic_scenes", f"dataset.root={tmp_path / 'scenes'}", *overrides]
    )
    assert cfg.model.num_classes == cfg.dataset.num_classes == len(SCENE_CLASSES)
    check_config(cfg)  # the root does not exist yet: fine for a generated dataset
    assert set(ScenesConfig.__dataclass_fields__) == set(cfg.dataset.generator)
    train = instantiate(cfg.dataset.train)
    assert isinstance(train, SyntheticScenesDetection) and len(train) == SMALL["num_train"]
    categories = _load(tmp_path / "scenes")["categories"]
    assert train.class_names == [c["name"] for c in categories] == list(cfg.dataset.class_names)
    assert train.label_to_cat_id == {k: k for k in range(1, 7)}
    val = instantiate(cfg.dataset.val, _convert_="all")
    assert len(val) == SMALL["num_val"]
    image, target = val[0]  # test transforms keep the native size
    assert target["orig_size"] == tuple(image.shape[1:])
    assert max(image.shape[1:]) == SMALL["image_size"]
    with pytest.raises(ValueError, match="split"):
        SyntheticScenesDetection(root=tmp_path / "scenes", split="test", generator=SMALL)
