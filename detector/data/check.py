"""A full data check: build the configured splits, decode every image, list the bad files.

Loading a dataset checks every image from its header only (:func:`detector.data.base.check_image`);
pixel data cut off after the header (a truncated JPEG) shows only when the image is decoded.
:func:`check_data` (``python tools/check_data.py dataset=...``) decodes every image of every
split, like training and evaluation would, and prints one table of the bad files: those skipped
when the split was loaded (missing, unreadable header, size differing from the annotation) and
those that fail to decode; also a split that cannot be built, and a ``train`` split that keeps no
box (:func:`detector.data.base.require_boxes`). The exit status is 1 when there is any problem.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from detector.data.base import (
    DatasetError,
    ImageDecodeError,
    ImageRecord,
    decode_record,
    require_boxes,
)
from detector.utils.tables import format_table

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BadFile:
    """One bad image: its split, file and what is wrong (``"skipped at load: ..."`` or
    ``"cannot decode: ..."``)."""

    split: str
    path: str
    problem: str


@dataclass
class SplitCheck:
    """The outcome of one split: its images (those loaded and those skipped at load), the
    bad files, and split-level errors (cannot be built, no training box)."""

    split: str
    num_images: int = 0
    bad: list[BadFile] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    built: bool = True


def _parts(dataset: Any) -> list[Any]:
    parts = getattr(dataset, "datasets", None)
    return [p for part in parts for p in _parts(part)] if parts is not None else [dataset]


def _decode_problem(record: ImageRecord) -> str:
    """``""`` when ``record`` decodes to its annotated size, else the reason."""
    try:
        decode_record(record)
    except ImageDecodeError as err:
        return err.reason
    return ""


def check_split(split: str, dataset: Any, *, workers: int = 4, progress: bool = True) -> SplitCheck:
    """Decode every image of ``dataset`` (``records``; a concatenation's parts too) with
    ``workers`` threads and collect the bad files, including those skipped at load (the
    datasets' ``load_skipped_images``)."""
    result = SplitCheck(split=split)
    for part in _parts(dataset):
        for path, reason in getattr(part, "load_skipped_images", []):
            result.bad.append(BadFile(split, path, f"skipped at load: {reason}"))
    records: Sequence[ImageRecord] = dataset.records
    result.num_images = len(records) + len(result.bad)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        problems: Iterable[str] = pool.map(_decode_problem, records)
        bar = tqdm(
            problems,
            total=len(records),
            desc=f"{split}: decoding",
            unit="img",
            disable=not progress,
            dynamic_ncols=True,
        )
        for record, problem in zip(records, bar, strict=True):
            if problem:
                result.bad.append(BadFile(split, str(record.path), f"cannot decode: {problem}"))
    return result


def format_report(checks: Sequence[SplitCheck]) -> str:
    """The table of bad files (when any) and a last summary line."""
    rows = [[b.split, b.path, b.problem] for c in checks for b in c.bad]
    rows += [[c.split, "-", error] for c in checks for error in c.errors]
    counts = "; ".join(
        f"{c.split}: {len(c.bad)} bad of {c.num_images} images"
        if c.built
        else f"{c.split}: not built"
        for c in checks
    )
    if not rows:
        return f"check_data: no problem ({counts})"
    table = format_table(["split", "file", "problem"], rows, align="lll")
    return f"{table}\ncheck_data: {len(rows)} problem(s) ({counts})"


def build_split(cfg: DictConfig, split: str) -> Any:
    """``cfg.dataset.<split>`` instantiated (as training builds it)."""
    node = cfg.dataset.get(split)
    if node is None:
        raise ValueError(f"dataset {cfg.dataset.get('name')!r} has no {split!r} split configured")
    return instantiate(node, _convert_="all")


def check_data(cfg: DictConfig) -> int:
    """Check ``cfg.splits`` (default ``[train, val]``) of ``cfg.dataset``; print the report.

    Returns:
        The exit status: 0 when every image of every split decodes, 1 otherwise.
    """
    workers = int(cfg.get("workers") or min(8, os.cpu_count() or 1))
    checks = [
        _check(cfg, split, workers) for split in map(str, cfg.get("splits", ["train", "val"]))
    ]
    print(format_report(checks), flush=True)
    return int(any(c.bad or c.errors for c in checks))


def _check(cfg: DictConfig, split: str, workers: int) -> SplitCheck:
    try:
        dataset = build_split(cfg, split)
    except (InstantiationException, OSError, ValueError) as err:  # DatasetError: a ValueError
        cause = err.__cause__ if isinstance(err, InstantiationException) else None
        return SplitCheck(split, errors=[f"cannot build the split: {cause or err}"], built=False)
    check = check_split(split, dataset, workers=workers)
    if split == "train":
        try:
            require_boxes(dataset, "dataset.train")
        except DatasetError as err:
            check.errors.append(str(err))
    return check
