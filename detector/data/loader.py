"""Batching: an infinite, seeded, aspect-ratio-grouped training stream and an ordered test loader.

A batch is ``(images, targets)``: ``list[Tensor (3, H_i, W_i)]`` and ``list[dict]`` (the
dataset contract of :mod:`detector.data.base`); images keep their own sizes, padding is the
model's job.

Determinism of the training stream: the order of indices comes from
:class:`GroupedInfiniteBatchSampler`'s own ``torch.Generator`` seeded with ``seed``. Every sample
is loaded under its own seed, a function of ``(seed, batch number, position in the batch)``
(:class:`SeededSamples`): torch's, numpy's and python's global RNGs are seeded with it while the
dataset reads and augments that one sample, then restored. So the same ``seed`` gives the same
batches whatever ``num_workers`` is and whatever else uses the global RNGs, and the stream can
start at any batch without loading the earlier ones (``start``), which is how training resumes
exactly.

Undecodable images: the training stream replaces a sample whose image cannot be decoded by a
deterministic other one, and stops past the dataset's ``bad_image_limit``
(:mod:`detector.data.bad_images`); the test loader does not (an error names the file).

Distributed training: with ``num_shards = N`` the sampler builds global batches of
``N * batch_size`` indices and shard ``s`` yields slice ``s`` of each, so the N shards together
see exactly the batches (and augmentations) of one unsharded stream with ``N * batch_size``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler

from detector.data.bad_images import BadImageLog, load_or_replace
from detector.data.concat import describe_dataset

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
    emitted as soon as it holds ``num_shards * batch_size`` indices (a *global batch*), so a
    batch may mix two epochs. Shard ``shard`` yields the ``shard``-th slice of ``batch_size``
    indices of every global batch, from global batch number ``start`` on.

    Args:
        group_ids: group of every index (e.g. :func:`aspect_ratio_groups`); all equal: no grouping.
        batch_size: indices per yielded batch (per shard).
        seed: seed of the permutation generator.
        num_shards: number of shards (distributed processes) the global batch is split into.
        shard: which shard this sampler yields, in ``[0, num_shards)``.
        start: global batches to skip (cheap: no data is loaded), e.g. to resume training.
    """

    def __init__(
        self,
        *,
        group_ids: Sequence[int],
        batch_size: int,
        seed: int,
        num_shards: int = 1,
        shard: int = 0,
        start: int = 0,
    ) -> None:
        if len(group_ids) == 0:
            raise ValueError("cannot sample batches from an empty dataset")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_shards <= 0 or not 0 <= shard < num_shards:
            raise ValueError(f"shard must be in [0, num_shards={num_shards}), got {shard}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.seed = seed
        self.num_shards = num_shards
        self.shard = shard
        self.start = start

    @property
    def global_batch_size(self) -> int:
        """Indices per global batch: ``num_shards * batch_size``."""
        return self.num_shards * self.batch_size

    def global_batches(self) -> Iterator[list[int]]:
        """The unsharded stream of global batches, from batch number 0."""
        generator = torch.Generator().manual_seed(self.seed)
        buckets: dict[int, list[int]] = {}
        while True:
            for index in torch.randperm(len(self.group_ids), generator=generator).tolist():
                bucket = buckets.setdefault(self.group_ids[index], [])
                bucket.append(index)
                if len(bucket) == self.global_batch_size:
                    yield bucket[:]
                    bucket.clear()

    def __iter__(self) -> Iterator[list[int]]:
        lo = self.shard * self.batch_size
        batches = itertools.islice(self.global_batches(), self.start, None)
        for batch in batches:
            yield batch[lo : lo + self.batch_size]


def sample_seed(seed: int, batch_number: int, position: int) -> int:
    """The seed a sample is loaded under: a hash of the stream ``seed``, the global batch
    number and the position in the global batch (a 32-bit integer)."""
    return int(np.random.SeedSequence([seed, batch_number, position]).generate_state(1)[0])


class SeededBatchSampler(Sampler[list[tuple[int, int]]]):
    """Wraps a :class:`GroupedInfiniteBatchSampler`: each index becomes ``(index, seed)`` with
    the :func:`sample_seed` of its place in the global stream (see :class:`SeededSamples`)."""

    def __init__(self, *, sampler: GroupedInfiniteBatchSampler) -> None:
        self.sampler = sampler

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        s = self.sampler
        offset = s.shard * s.batch_size
        for number, batch in enumerate(s, start=s.start):
            yield [
                (index, sample_seed(s.seed, number, offset + k)) for k, index in enumerate(batch)
            ]


class SeededSamples(Dataset):
    """``dataset[(index, seed)]`` reads ``dataset[index]`` with torch's, numpy's and python's
    global RNGs seeded with ``seed``, restoring their previous states afterwards.

    An undecodable image is replaced by another of the same aspect-ratio group, up to the
    dataset's ``bad_image_limit`` (0 when it has none; :func:`~detector.data.bad_images.load_or_replace`).
    """

    def __init__(self, *, dataset: Dataset) -> None:
        self.dataset = dataset
        self.bad_image_limit = int(getattr(dataset, "bad_image_limit", 0))
        sizes = getattr(dataset, "image_sizes", None)
        self.groups = aspect_ratio_groups(sizes()) if sizes else [0] * len(dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
            try:
                return load_or_replace(
                    self.dataset, index, limit=self.bad_image_limit, groups=self.groups
                )
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class InfiniteLoader:
    """Iterable over an endless stream of :data:`Batch` from a DataLoader with an infinite
    batch sampler over :class:`SeededSamples` (module doc).

    Each ``iter()`` restarts the same stream from its beginning (the sampler's ``start``).
    ``bad_images`` (a :class:`~detector.data.bad_images.BadImageLog`) takes the marks of
    replaced undecodable images off every batch and keeps the distinct files (``.bad``).
    """

    def __init__(self, *, data_loader: DataLoader, seed: int) -> None:
        self.data_loader = data_loader
        self.seed = seed
        dataset = self.dataset
        self.bad_images = BadImageLog(
            name=describe_dataset(dataset),
            limit=int(getattr(dataset, "bad_image_limit", 0)),
            max_bad_images=int(getattr(dataset, "max_bad_images", 0)),
            max_bad_fraction=float(getattr(dataset, "max_bad_fraction", 0.0)),
            num_images=len(dataset),  # type: ignore[arg-type]
        )

    @property
    def dataset(self) -> Dataset:
        dataset = self.data_loader.dataset
        return dataset.dataset if isinstance(dataset, SeededSamples) else dataset

    @property
    def batch_size(self) -> int:
        return self.data_loader.batch_sampler.batch_size  # type: ignore[union-attr]

    def __iter__(self) -> Iterator[Batch]:
        # a fresh generator per iter(): the workers' base seeds repeat with every pass
        self.data_loader.generator = torch.Generator().manual_seed(self.seed)
        for images, targets in self.data_loader:
            self.bad_images.take_marks(targets)
            yield images, targets


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
    num_shards: int = 1,
    shard: int = 0,
    start: int = 0,
) -> InfiniteLoader:
    """Endless, seeded training batches (see the module doc).

    Args:
        dataset: a dataset of the :mod:`detector.data.base` contract (``image_sizes()`` is
            needed when ``aspect_ratio_grouping``).
        batch_size: images per batch of this loader (per shard).
        num_workers: DataLoader worker processes (0: load in the main process).
        seed: seeds the index order and the augmentations.
        aspect_ratio_grouping: batches hold only landscape (``w >= h``) or only portrait images.
        num_shards: distributed processes sharing each global batch of
            ``num_shards * batch_size`` images.
        shard: this process's shard (its rank).
        start: first global batch to yield; the ones before it are skipped without loading.
    """
    if aspect_ratio_grouping:
        group_ids = aspect_ratio_groups(dataset.image_sizes())  # type: ignore[attr-defined]
    else:
        group_ids = [0] * len(dataset)  # type: ignore[arg-type]
    sampler = GroupedInfiniteBatchSampler(
        group_ids=group_ids,
        batch_size=batch_size,
        seed=seed,
        num_shards=num_shards,
        shard=shard,
        start=start,
    )
    data_loader = DataLoader(
        SeededSamples(dataset=dataset),
        batch_sampler=SeededBatchSampler(sampler=sampler),
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
