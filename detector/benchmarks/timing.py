"""Timing helpers of the benchmarks: interleaved repeats, medians, threads, autocast."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (CUDA runs asynchronously; CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    warmup: int,
    repeats: int,
    device: torch.device,
    desc: str | None = None,
) -> dict[str, list[float]]:
    """Seconds of each call of each function, the contenders interleaved.

    Every function runs ``warmup`` untimed times, then ``repeats`` timed rounds; round ``r``
    calls them in an order rotated by ``r`` so that no contender always follows the same one.
    ``desc``: show a progress bar with this title.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    names = list(fns)
    rounds = [names] * warmup + [
        names[r % len(names) :] + names[: r % len(names)] for r in range(repeats)
    ]
    calls = [(i >= warmup, name) for i, order in enumerate(rounds) for name in order]
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for timed, name in tqdm(calls, desc=desc, disable=desc is None, dynamic_ncols=True):
        synchronize(device)
        start = time.perf_counter()
        fns[name]()
        synchronize(device)
        if timed:
            seconds[name].append(time.perf_counter() - start)
    return seconds


@dataclass(frozen=True)
class Throughput:
    """Median seconds per call of ``items`` items (images or iterations) and its inverse rate."""

    seconds: list[float]
    items: int

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def per_s(self) -> float:
        return self.items / self.median_s

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "median_s": self.median_s, "per_s": self.per_s}


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """Run with ``torch.set_num_threads(threads)`` (``None``: leave torch's setting)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """Mixed precision (float16 on CUDA, bfloat16 on CPU) when ``amp``, else nothing."""
    if not amp:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


@dataclass(frozen=True)
class Timing:
    """Where and how to time: ``warmup`` untimed and ``repeats`` timed interleaved calls."""

    device: torch.device
    warmup: int = 1
    repeats: int = 5
    amp: bool = False
