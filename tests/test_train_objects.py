"""The training object sizes that multi-scale testing's ``train_objects`` target and bound come
from, on a hand-made VOC folder with known boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.engine.build import (
    _target_range_or_none,
    build_model,
    build_test_model,
    train_object_range,
    train_object_sides,
    train_object_size,
)
from tests.helpers import compose_config, voc_object, write_voc_image


def _config(root, *extra: str):
    return compose_config(
        "eval",
        [
            "dataset=voc_folder",
            f"dataset.root={root}",
            "dataset.class_names=[cat]",
            "dataset.num_classes=1",
            "dataset.val_fraction=0.5",
            "dataset.train_split=all",
            "dataset.input.min_sizes_train=[50]",
            "dataset.input.max_size_train=1000",
            *extra,
        ],
    )


@pytest.fixture()
def voc(tmp_path):
    """Two 200x100 images (shorter side 100): boxes of side 10, 20 / 40 and a 10x40 box (side
    20); trained at shorter side 50, so every side is halved."""
    root = tmp_path / "voc"
    for sub in ("JPEGImages", "Annotations"):
        (root / sub).mkdir(parents=True)
    write_voc_image(
        root,
        "a",
        200,
        100,
        [voc_object("cat", (1, 1, 10, 10)), voc_object("cat", (21, 21, 40, 40))],
    )
    write_voc_image(
        root, "b", 200, 100, [voc_object("cat", (1, 1, 40, 40)), voc_object("cat", (51, 1, 60, 40))]
    )
    return root


def test_sides_size_and_range(voc):
    voc = _config(voc)
    sides = np.sort(train_object_sides(voc))
    assert sides == pytest.approx([5.0, 10.0, 10.0, 20.0])
    assert train_object_size(voc) == pytest.approx(10.0)  # (5 * 10 * 10 * 20) ** (1 / 4)
    # linear interpolation: 5 + 0.3 * (10 - 5) and 10 + 0.7 * (20 - 10)
    assert train_object_range(voc) == pytest.approx([6.5, 17.0])


def test_the_bound_reaches_the_test_model(voc):
    """The default multi-scale test: the paper's 224 px at 600, bounded by the training objects."""
    cfg = _config(voc, "test=multiscale_paper", "model=faster_rcnn_r18_c4_quick")
    model = build_model(cfg, torch.device("cpu")).eval()
    test_model = build_test_model(cfg, model)
    assert test_model.target_range == pytest.approx((6.5, 17.0))
    assert test_model.target_size == 224 and test_model.reference_scale == 600
    assert test_model.levels_in_range is True
    # 224 px scaled to a 50-px image is 18.7 px: bounded to the training objects' 17 px
    assert test_model.target((50, 100)) == pytest.approx(17.0)


def test_a_train_objects_target_is_not_scaled_with_the_image(voc):
    """target_size=train_objects is in the pixels the head trained on: the same target (10 px)
    for every test image, although the pyramid is scaled by reference_scale."""
    cfg = _config(
        voc,
        "test=multiscale_paper",
        "model=faster_rcnn_r18_c4_quick",
        "test.per_model.target_size=train_objects",
    )
    test_model = build_test_model(cfg, build_model(cfg, torch.device("cpu")).eval())
    assert test_model.target_size == pytest.approx(10.0)
    for size in ((50, 100), (600, 800), (1200, 1600)):
        assert test_model.target(size) == pytest.approx(10.0)
    # the pinned [10, 10] range only fixes the target: the levels are not restricted to it
    assert test_model.levels_in_range is False


def test_an_unreadable_train_split_leaves_the_target_unbounded(voc, tmp_path, caplog):
    voc = _config(voc)
    voc.dataset.root = str(tmp_path / "missing")
    assert _target_range_or_none(voc) is None
    assert "target is not bounded" in caplog.text
