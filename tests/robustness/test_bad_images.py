"""Training through a truncated JPEG: skipped, counted, named; stopped past the bound."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest

from detector.data.base import DatasetError, bad_image_limit
from detector.data.coco import CocoDetection
from detector.data.loader import build_train_loader
from tests.robustness.files import (
    coco_ann,
    coco_image,
    solid,
    truncate,
    write_coco,
    write_noise_jpeg,
)

LANDSCAPE, PORTRAIT = (32, 24), (24, 32)


def _dataset(root: Path, bad: list[int], **kwargs) -> CocoDetection:
    """8 images, even indices landscape, odd portrait; those in ``bad`` are truncated JPEGs
    (their header is intact, so they pass the load-time check)."""
    images, anns = [], []
    for i in range(8):
        size = LANDSCAPE if i % 2 == 0 else PORTRAIT
        name = f"cut{i}.jpg" if i in bad else f"ok{i}.png"
        if i in bad:
            write_noise_jpeg(root / name, *size)
            truncate(root / name)
        else:
            solid(*size).save(root / name)
        images.append(coco_image(i + 1, name, *size))
        anns.append(coco_ann(i + 1, i + 1, [1, 1, 8, 8]))
    return CocoDetection(image_dir=root, ann_file=write_coco(root, images, anns), **kwargs)


def _batches(dataset: CocoDetection, num_workers: int, count: int):
    loader = build_train_loader(dataset, batch_size=2, num_workers=num_workers, seed=0)
    return loader, list(itertools.islice(iter(loader), count))


def test_bad_image_limit() -> None:
    assert bad_image_limit(10, 0.01, 50) == 1  # at least one
    assert bad_image_limit(10, 0.01, 500) == 5  # 1 % of the split
    assert bad_image_limit(10, 0.01, 50_000) == 10  # at most max_bad_images
    assert bad_image_limit(0, 0.5, 100) == 0  # 0: never skip
    with pytest.raises(ValueError, match="max_bad_fraction must be in"):
        bad_image_limit(10, 1.5, 100)


def test_truncated_jpeg_is_skipped_counted_and_named(tmp_path: Path, caplog) -> None:
    dataset = _dataset(tmp_path, bad=[2])
    with caplog.at_level(logging.WARNING, logger="detector.data.bad_images"):
        loader, batches = _batches(dataset, num_workers=0, count=8)  # 2 epochs
    cut = str(tmp_path / "cut2.jpg")
    assert list(loader.bad_images.bad) == [cut]
    assert "image file is truncated" in loader.bad_images.bad[cut]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1  # once per file, though it was met in both epochs
    assert warnings[0].startswith(
        f"CocoDetection(ann_file={tmp_path}/ann.json): skipped undecodable image {cut} (OSError: "
    )
    assert warnings[0].endswith(
        "another image of the split took its place (1 of at most 1 skipped images; "
        "max_bad_images=10, max_bad_fraction=0.01)"
    )
    ids = [t["image_id"] for _, targets in batches for t in targets]
    assert 3 not in ids  # image_id 3 is cut2.jpg
    for images, targets in batches:
        assert len(images) == 2 and all("skipped_images" not in t for t in targets)
        # the replacement comes from the same aspect-ratio group as the batch
        assert len({img.shape[1] < img.shape[2] for img in images}) == 1


def test_more_bad_images_than_the_bound_stop_the_run(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, bad=[2, 5], max_bad_fraction=0.1)  # limit max(1, 0.8) = 1
    with pytest.raises(DatasetError) as excinfo:
        _batches(dataset, num_workers=0, count=8)
    message = str(excinfo.value)
    assert message.startswith(
        f"CocoDetection(ann_file={tmp_path}/ann.json): 2 images could not be decoded, more than "
        "the 1 a training run may skip (max_bad_images=10, max_bad_fraction=0.1 of 8 images): "
    )
    assert (
        "cut2.jpg (OSError: image file is truncated" in message and "cut5.jpg (OSError" in message
    )
    assert message.endswith(
        "List every bad file with `python tools/check_data.py dataset=...`, then fix or remove "
        "them, or raise dataset.max_bad_images / dataset.max_bad_fraction"
    )


def test_max_bad_images_0_keeps_the_error(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, bad=[2], max_bad_images=0)
    with pytest.raises(OSError, match=r"cannot decode image .*cut2\.jpg"):
        _batches(dataset, num_workers=0, count=8)


def test_worker_processes_skip_the_same_way(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, bad=[2])
    _, in_main = _batches(dataset, num_workers=0, count=4)
    loader, in_workers = _batches(dataset, num_workers=2, count=4)
    assert list(loader.bad_images.bad) == [str(tmp_path / "cut2.jpg")]  # seen in the main process
    ids = [[t["image_id"] for t in targets] for _, targets in in_workers]
    assert ids == [[t["image_id"] for t in targets] for _, targets in in_main]
