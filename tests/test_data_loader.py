"""Loaders: collate, infinite seeded training stream, aspect-ratio grouping, ordered test loader."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from detector.data.loader import (
    GroupedInfiniteBatchSampler,
    aspect_ratio_groups,
    build_test_loader,
    build_train_loader,
    collate,
)
from detector.data.synthetic import SyntheticShapesDetection
from detector.data.transforms import build_transforms

# 7 landscape (or square) and 5 portrait images, as (height, width)
SIZES = [
    (4, 6),
    (6, 4),
    (5, 5),
    (3, 8),
    (8, 3),
    (4, 7),
    (7, 4),
    (2, 9),
    (9, 2),
    (6, 6),
    (4, 5),
    (5, 4),
]


class FakeDataset(Dataset):
    """Images of the given sizes; ``target["aug"]`` is a draw from torch's global RNG, standing
    in for a random augmentation."""

    def __init__(self, sizes: list[tuple[int, int]]) -> None:
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, index: int):
        height, width = self.sizes[index]
        target = {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.int64),
            "image_id": index,
            "orig_size": (height, width),
            "aug": torch.rand(()).item(),
        }
        return torch.zeros(3, height, width), target

    def image_sizes(self) -> list[tuple[int, int]]:
        return list(self.sizes)


class ResizedFake(FakeDataset):
    """Runs a real training transform; the random shorter side shows up in the image size."""

    def __init__(self, sizes: list[tuple[int, int]]) -> None:
        super().__init__(sizes)
        self.transforms = build_transforms(train=True, min_sizes=list(range(20, 40)), max_size=99)

    def __getitem__(self, index: int):
        image, target = super().__getitem__(index)
        pixels = np.zeros((*self.sizes[index], 3), dtype=np.uint8)
        image, _, _ = self.transforms(pixels, np.zeros((0, 4)), np.zeros(0, dtype=np.int64))
        return image, target


def _take(loader, n: int) -> list:
    return list(itertools.islice(iter(loader), n))


def _ids(batches: list) -> list[list[int]]:
    return [[t["image_id"] for t in targets] for _, targets in batches]


def test_collate_keeps_lists() -> None:
    a, b = torch.zeros(3, 2, 4), torch.ones(3, 5, 1)
    images, targets = collate([(a, {"image_id": 1}), (b, {"image_id": 2})])
    assert images[0] is a and images[1] is b
    assert targets == [{"image_id": 1}, {"image_id": 2}]


def test_aspect_ratio_groups() -> None:
    assert aspect_ratio_groups([(4, 6), (6, 4), (5, 5)]) == [0, 1, 0]


def test_batches_have_one_orientation() -> None:
    loader = build_train_loader(FakeDataset(SIZES), batch_size=3, num_workers=0, seed=0)
    batches = _take(loader, 40)  # 120 samples = 10 epochs: the stream does not stop
    for images, targets in batches:
        assert len(images) == len(targets) == 3
        orientations = {img.shape[2] >= img.shape[1] for img in images}
        assert len(orientations) == 1, [img.shape for img in images]
        for img, target in zip(images, targets, strict=True):
            assert tuple(img.shape[1:]) == SIZES[target["image_id"]]
    counts = torch.bincount(torch.tensor(sum(_ids(batches), [])), minlength=len(SIZES))
    assert counts.min() >= 8 and counts.max() <= 11  # every image, about once per epoch


def test_without_grouping_each_epoch_is_a_permutation() -> None:
    loader = build_train_loader(
        FakeDataset(SIZES), batch_size=4, num_workers=0, seed=5, aspect_ratio_grouping=False
    )
    ids = sum(_ids(_take(loader, 9)), [])
    for epoch in range(3):
        assert sorted(ids[12 * epoch : 12 * (epoch + 1)]) == list(range(12))
    assert ids[:12] != ids[12:24]


def test_same_seed_same_stream_regardless_of_global_rng() -> None:
    dataset = FakeDataset(SIZES)
    first = _take(build_train_loader(dataset, batch_size=2, num_workers=0, seed=3), 15)
    torch.manual_seed(1234)
    torch.rand(100)
    second = _take(build_train_loader(dataset, batch_size=2, num_workers=0, seed=3), 15)
    assert _ids(first) == _ids(second)
    assert [t["aug"] for _, ts in first for t in ts] == [t["aug"] for _, ts in second for t in ts]
    other = _take(build_train_loader(dataset, batch_size=2, num_workers=0, seed=4), 15)
    assert _ids(other) != _ids(first)


def test_loader_leaves_global_rng_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    _take(build_train_loader(FakeDataset(SIZES), batch_size=2, num_workers=0, seed=0), 5)
    assert torch.equal(torch.rand(3), expected)


def test_workers_are_seeded() -> None:
    dataset = FakeDataset(SIZES)
    runs = [
        _take(build_train_loader(dataset, batch_size=2, num_workers=2, seed=7), 8) for _ in range(2)
    ]
    augs = [[t["aug"] for _, ts in run for t in ts] for run in runs]
    assert _ids(runs[0]) == _ids(runs[1])
    assert augs[0] == augs[1]
    assert len(set(augs[0])) == len(augs[0])  # the two workers do not repeat each other
    in_process = _take(build_train_loader(dataset, batch_size=2, num_workers=0, seed=7), 8)
    assert _ids(in_process) == _ids(runs[0])  # the index order does not depend on workers


def test_augmentations_differ_between_workers_and_repeat_with_the_seed() -> None:
    def shorter_sides() -> list[list[int]]:
        squares = ResizedFake([(5, 5)] * 12)  # the shorter side is the drawn size
        loader = build_train_loader(squares, batch_size=2, num_workers=2, seed=1)
        return [[min(img.shape[1:]) for img in images] for images, _ in _take(loader, 8)]

    first = shorter_sides()
    assert shorter_sides() == first
    # batches alternate between the two workers; copies of one RNG state would pair them up
    assert any(first[k] != first[k + 1] for k in range(0, 8, 2))
    assert len({s for batch in first for s in batch}) > 4


def test_sampler_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="empty"):
        GroupedInfiniteBatchSampler(group_ids=[], batch_size=2, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        GroupedInfiniteBatchSampler(group_ids=[0], batch_size=0, seed=0)


def test_test_loader_is_ordered_and_finite() -> None:
    loader = build_test_loader(FakeDataset(SIZES), batch_size=5)
    batches = list(loader)
    assert _ids(batches) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    assert [tuple(img.shape[1:]) for img in batches[2][0]] == SIZES[10:]


def test_real_dataset_through_transforms_and_loader(tmp_path: Path) -> None:
    dataset = SyntheticShapesDetection(
        root=tmp_path / "shapes",
        split="train",
        transforms=build_transforms(train=True, min_sizes=[96, 128], max_size=160),
        num_train=8,
        num_val=0,
        image_size=64,
    )
    loader = build_train_loader(dataset, batch_size=2, num_workers=0, seed=0)
    for images, targets in _take(loader, 6):
        assert len({img.shape[2] >= img.shape[1] for img in images}) == 1
        for image, target in zip(images, targets, strict=True):
            assert image.dtype == torch.float32 and image.min() >= 0.0 and image.max() <= 1.0
            assert min(image.shape[1:]) in (96, 128) and max(image.shape[1:]) <= 160
            boxes = target["boxes"]
            assert boxes.dtype == torch.float32 and target["labels"].dtype == torch.int64
            assert len(boxes) == len(target["labels"])
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
            assert (boxes[:, 0::2] <= image.shape[2]).all() and (
                boxes[:, 1::2] <= image.shape[1]
            ).all()
            assert ((target["labels"] >= 1) & (target["labels"] <= 4)).all()
