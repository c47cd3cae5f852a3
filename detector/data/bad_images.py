"""Training through undecodable images: skip, count, name, and stop past a bound.

An image whose header is fine but whose pixels cannot be decoded (a truncated JPEG) is found
only when a sample is read, possibly in a DataLoader worker process. The training stream
handles it in two places:

- where the sample is read (worker or main process), :func:`load_or_replace` catches the
  :class:`~detector.data.base.ImageDecodeError`, reads a deterministic replacement instead
  (the next index of the same aspect-ratio group, cyclically; same sample seed, so a run stays
  reproducible and resumable) and marks the sample: ``target["skipped_images"]`` lists
  ``(path, reason)`` of the images it replaced. The batch keeps its size.
- in the main process, :class:`BadImageLog` (used by
  :class:`~detector.data.loader.InfiniteLoader`) takes the marks off every batch, warns once
  per new file with its path and reason, keeps every distinct bad file, and raises
  :class:`~detector.data.base.DatasetError` listing them once there are more than the
  dataset's ``bad_image_limit`` (:func:`detector.data.base.bad_image_limit`).

Workers keep no count of their own: the marks travel with the batches, so the bound holds for
any ``num_workers``. Evaluation loaders never replace an image: a wrong image there would be
scored against another image's ground truth, so an undecodable val image is an error
(``tools/check_data.py`` finds every one beforehand).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from detector.data.base import DatasetError, ImageDecodeError
from detector.data.concat import describe_dataset

logger = logging.getLogger(__name__)

#: Target key of a sample that replaces undecodable images: ``list[(path, reason)]``.
SKIPPED_KEY = "skipped_images"


def replacement_candidates(index: int, groups: Sequence[int]) -> Iterator[int]:
    """Indices to read instead of ``index``: the following ones (cyclically) of its group,
    then those of the other groups, each index once."""
    n = len(groups)
    following = [(index + k) % n for k in range(1, n)]
    yield from (i for i in following if groups[i] == groups[index])
    yield from (i for i in following if groups[i] != groups[index])


def too_many_message(
    name: str,
    bad: dict[str, str],
    *,
    limit: int,
    max_bad_images: int,
    max_bad_fraction: float,
    num_images: int,
) -> str:
    """The error once more than ``limit`` distinct images could not be decoded."""
    files = "; ".join(f"{path} ({reason})" for path, reason in bad.items())
    return (
        f"{name}: {len(bad)} images could not be decoded, more than the {limit} a training run "
        f"may skip (max_bad_images={max_bad_images}, max_bad_fraction={max_bad_fraction} of "
        f"{num_images} images): {files}. List every bad file with `python tools/check_data.py "
        "dataset=...`, then fix or remove them, or raise dataset.max_bad_images / "
        "dataset.max_bad_fraction"
    )


def load_or_replace(
    dataset: Any, index: int, *, limit: int, groups: Sequence[int]
) -> tuple[Any, dict[str, Any]]:
    """``dataset[index]``, or when that image cannot be decoded and ``limit > 0``, the first
    decodable replacement (:func:`replacement_candidates`) with ``target[SKIPPED_KEY]``.

    Raises:
        ImageDecodeError: ``limit == 0``.
        DatasetError: more than ``limit`` images in a row cannot be decoded.
    """
    skipped: dict[str, str] = {}
    candidates = replacement_candidates(index, groups)
    current = index
    while True:
        try:
            image, target = dataset[current]
        except ImageDecodeError as err:
            if limit == 0:
                raise
            skipped[err.path] = err.reason
            current = next(candidates, -1)
            if len(skipped) > limit or current < 0:
                raise DatasetError(
                    too_many_message(
                        describe_dataset(dataset),
                        skipped,
                        limit=limit,
                        max_bad_images=getattr(dataset, "max_bad_images", 0),
                        max_bad_fraction=getattr(dataset, "max_bad_fraction", 0.0),
                        num_images=len(groups),
                    )
                ) from err
            continue
        if skipped:
            target = {**target, SKIPPED_KEY: list(skipped.items())}
        return image, target


class BadImageLog:
    """Main-process record of the distinct images a training stream skipped (module doc).

    Args:
        name: the dataset, as messages name it.
        limit: distinct bad images allowed; one more raises.
        max_bad_images, max_bad_fraction, num_images: the settings behind ``limit`` (for the
            messages).

    Attributes:
        bad: path -> reason of every skipped image, in the order they were met.
    """

    def __init__(
        self,
        *,
        name: str,
        limit: int,
        max_bad_images: int,
        max_bad_fraction: float,
        num_images: int,
    ) -> None:
        self.name = name
        self.limit = limit
        self.settings = {
            "max_bad_images": max_bad_images,
            "max_bad_fraction": max_bad_fraction,
            "num_images": num_images,
        }
        self.bad: dict[str, str] = {}

    def take_marks(self, targets: Sequence[dict[str, Any]]) -> None:
        """Remove :data:`SKIPPED_KEY` from ``targets``, warn about each new file.

        Raises:
            DatasetError: more than ``limit`` distinct images skipped so far.
        """
        for target in targets:
            for path, reason in target.pop(SKIPPED_KEY, ()):
                if path not in self.bad:
                    self._add(path, reason)

    def _add(self, path: str, reason: str) -> None:
        self.bad[path] = reason
        if len(self.bad) > self.limit:
            raise DatasetError(
                too_many_message(self.name, self.bad, limit=self.limit, **self.settings)
            )
        logger.warning(
            "%s: skipped undecodable image %s (%s); another image of the split took its place "
            "(%d of at most %d skipped images; max_bad_images=%d, max_bad_fraction=%g)",
            self.name,
            path,
            reason,
            len(self.bad),
            self.limit,
            self.settings["max_bad_images"],
            self.settings["max_bad_fraction"],
        )
