"""Batching: an infinite, seeded, aspect-ratio-grouped training stream and an ordered test loader.

A batch is ``(images, targets)``: ``list[Tensor (3, H_i, W_i)]`` and ``list[dict]`` (the
dataset contract of :mod:`detector.data.base`); images keep their own sizes, padding is the
model's job.

Determinism of the training stream: the order of indices comes from
:class:`GroupedInfiniteBatchSampler`'s own ``torch.Generator`` seeded with ``seed``; the random
augmentations draw from torch's global RNG, which the DataLoader seeds in each worker from a
generator seeded with ``seed`` (``num_workers > 0``), or which :class:`InfiniteLoader` swaps for
a private, seeded state around each batch (``num_workers == 0``). The same ``seed`` and
``num_workers`` therefore give the same batches, whatever else uses the global RNG.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler

Batch = tuple[list[torch.Tensor], list[dict[str, Any]]]

LANDSCAPE, PORTRAIT = 0, 1


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> Batch:
    """``[(image, target), ...]`` -> ``([image, ...], [target, ...])`` (no stacking)."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


def aspect_ratio_groups(image_sizes: Sequence[tuple[int, int]]) -> list[int]:
    """Group id per image: ``LANDSCAPE`` (0) when ``width >= height``, else ``PORTRAIT`` (1)."""
    return [LANDSCAPE if w >= h else PORTRAIT for h, w in image_sizes]


class GroupedInfiniteBatchSampler(Sampler[list[int]]):
    """Endless batches of dataset indices; each batch holds indices of one group only.

    Indices are visited epoch by epoch in a fresh random permutation (drawn from a private
    generator seeded with ``seed``); each index goes to its group's bucket and a bucket is
    emitted as soon as it holds ``batch_size`` indices, so a batch may mix two epochs.

    Args:
        group_ids: group of every index (e.g. :func:`aspect_ratio_groups`); all equal: no grouping.
        batch_size: indices per batch.
        seed: seed of the permutation generator.
    """

    def __init__(self, *, group_ids: Sequence[int], batch_size: int, seed: int) -> None:
        if len(group_ids) == 0:
            raise ValueError("cannot sample batches from an empty dataset")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.seed = seed

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed)
        buckets: dict[int, list[int]] = {}
        while True:
            for index in torch.randperm(len(self.group_ids), generator=generator).tolist():
                bucket = buckets.setdefault(self.group_ids[index], [])
                bucket.append(index)
                if len(bucket) == self.batch_size:
                    yield bucket[:]
                    bucket.clear()


class InfiniteLoader:
    """Iterable over an endless stream of :data:`Batch` from a DataLoader with an infinite
    batch sampler; with ``num_workers == 0`` it isolates torch's global RNG (module doc).

    Each ``iter()`` restarts the same stream from its beginning.
    """

    def __init__(self, *, data_loader: DataLoader, seed: int) -> None:
        self.data_loader = data_loader
        self.seed = seed

    @property
    def dataset(self) -> Dataset:
        return self.data_loader.dataset

    @property
    def batch_size(self) -> int:
        return self.data_loader.batch_sampler.batch_size  # type: ignore[union-attr]

    def __iter__(self) -> Iterator[Batch]:
        if self.data_loader.num_workers > 0:
            # a fresh generator per iter(): every pass restarts the identical stream
            self.data_loader.generator = torch.Generator().manual_seed(self.seed)
            yield from self.data_loader
            return
        state = torch.Generator().manual_seed(self.seed).get_state()
        batches = iter(self.data_loader)
        while True:
            outer_state = torch.get_rng_state()
            torch.set_rng_state(state)
            try:
                batch = next(batches)
            finally:
                state = torch.get_rng_state()
                torch.set_rng_state(outer_state)
            yield batch


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed ``random`` and ``numpy`` from the worker's torch seed (which the
    DataLoader derives from its seeded generator and ``worker_id``)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def build_train_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    seed: int,
    aspect_ratio_grouping: bool = True,
) -> InfiniteLoader:
    """Endless, seeded training batches (see the module doc).

    Args:
        dataset: a dataset of the :mod:`detector.data.base` contract (``image_sizes()`` is
            needed when ``aspect_ratio_grouping``).
        batch_size: images per batch.
        num_workers: DataLoader worker processes (0: load in the main process).
        seed: seeds the index order and the augmentations.
        aspect_ratio_grouping: batches hold only landscape (``w >= h``) or only portrait images.
    """
    if aspect_ratio_grouping:
        group_ids = aspect_ratio_groups(dataset.image_sizes())  # type: ignore[attr-defined]
    else:
        group_ids = [0] * len(dataset)  # type: ignore[arg-type]
    sampler = GroupedInfiniteBatchSampler(group_ids=group_ids, batch_size=batch_size, seed=seed)
    data_loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )
    return InfiniteLoader(data_loader=data_loader, seed=seed)


def build_test_loader(dataset: Dataset, *, batch_size: int = 1, num_workers: int = 0) -> DataLoader:
    """Every image once, in dataset order, as :data:`Batch` es of up to ``batch_size``."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=SequentialSampler(dataset),  # type: ignore[arg-type]
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=False,
    )
