"""Benchmark: glibc's default allocator against ``cpu_allocator=retain``, in one process.

:class:`AllocatorBenchmark` (the ``allocator`` task of ``configs/benchmark.yaml``) times the
speed task's inference pair, our optimised detector and torchvision's twin
(:mod:`detector.benchmarks.speed`), under two settings of the C library's allocator
(:mod:`detector.utils.cpu_memory`):

- ``system``: glibc's steady state, large blocks mmapped and freed memory returned to the kernel
  (:func:`~detector.utils.cpu_memory.glibc_default_malloc`), so every call page-faults its
  activations in again;
- ``retain``: freed memory kept (:func:`~detector.utils.cpu_memory.retain_freed_memory`), what
  every ``tools/`` entry point sets by default.

The settings alternate round by round, in an order that flips each round; after each switch
every contender makes one untimed call (it refills or releases the heap), then one timed call
whose minor page faults are counted. The table gives per contender and setting the median
seconds, yardsticks and page faults per call, and the speed-up of ``retain`` (the median of
per-round ratios). At the end the process goes back to ``retain`` if it was retaining, else it
keeps glibc's steady-state thresholds (fixed, where an untouched process's adapt). Where the C
library is not glibc there is nothing to switch and the table says so.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from detector.benchmarks.speed import OURS, TORCHVISION, benchmark_model
from detector.benchmarks.timing import num_threads
from detector.benchmarks.twin import benchmark_images, torchvision_twin
from detector.modeling.fuse import optimize_for_inference
from detector.utils import cpu_memory
from detector.utils.tables import format_table
from detector.utils.yardstick import in_yardsticks, yardstick_line, yardstick_report

logger = logging.getLogger(__name__)

MODES = ("system", "retain")


def _set_mode(mode: str) -> None:
    if mode == "retain":
        cpu_memory.retain_freed_memory()
    else:
        cpu_memory.glibc_default_malloc()


def time_modes(
    fns: Mapping[str, Callable[[], object]], *, rounds: int
) -> dict[str, dict[str, dict[str, list[Any]]]]:
    """``{mode: {contender: {"seconds": [...], "faults": [...]}}}`` over ``rounds`` rounds.

    Round ``r`` runs the modes in the order of :data:`MODES`, reversed on odd rounds; under each
    mode every contender makes one untimed call, then one timed call. Leaves the allocator in
    the mode of the last round's second half.
    """
    if rounds < 1:
        raise ValueError(f"need rounds >= 1, got {rounds}")
    out: dict[str, dict[str, dict[str, list[Any]]]] = {
        m: {name: {"seconds": [], "faults": []} for name in fns} for m in MODES
    }
    for r in range(rounds):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            _set_mode(mode)
            for name, fn in fns.items():
                fn()
                before = cpu_memory.minor_page_faults()
                start = time.perf_counter()
                fn()
                seconds = time.perf_counter() - start
                after = cpu_memory.minor_page_faults()
                out[mode][name]["seconds"].append(seconds)
                out[mode][name]["faults"].append(
                    None if before is None or after is None else after - before
                )
            logger.info("allocator: round %d/%d, %s done", r + 1, rounds, mode)
    return out


def same_outputs_in_both_modes(fn: Callable[[], list[dict[str, Tensor]]]) -> bool:
    """Whether ``fn()`` returns bit-identical detections under both settings."""
    outputs = []
    for mode in MODES:
        _set_mode(mode)
        outputs.append(fn())
    a, b = outputs
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b, strict=True)
    )


class AllocatorBenchmark:
    """Inference of our optimised detector and torchvision's twin with glibc's default
    allocator and with ``cpu_allocator=retain`` (see the module doc; a Hydra ``_target_``).

    Args:
        net: the model's Hydra node (``${model.net}``); seeded random weights (as the speed task).
        image_size, max_size, batch_size: the images of each call (4:3, as the speed task's).
        rounds: alternations of the two settings (each: one untimed and one timed call per
            contender and setting).
        yardstick: ``repeats`` and ``warmup`` of the yardstick measured first (``None``: skip).
        threads: torch CPU threads (``None``: torch's default).
    """

    name = "allocator"

    def __init__(
        self,
        *,
        net: Any,
        image_size: int = 800,
        max_size: int = 1333,
        batch_size: int = 1,
        rounds: int = 5,
        seed: int = 0,
        yardstick: Mapping[str, int] | None = None,
        threads: int | None = None,
    ) -> None:
        self.net = net
        self.image_size, self.max_size, self.batch_size = image_size, max_size, batch_size
        self.rounds = rounds
        self.seed = seed
        self.yardstick = dict(yardstick) if yardstick is not None else None
        self.threads = threads

    def settings(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "max_size": self.max_size,
            "batch_size": self.batch_size,
            "rounds": self.rounds,
            "seed": self.seed,
        }

    def run(self) -> dict[str, Any]:
        result: dict[str, Any] = {"name": self.name, "settings": self.settings()}
        if not cpu_memory.glibc_available():
            result["skipped"] = "the C library is not glibc: no allocator setting to compare"
            result["table"] = result["skipped"]
            return result
        start_mode = cpu_memory.current_mode()
        with num_threads(self.threads):
            result["settings"]["threads"] = torch.get_num_threads()
            try:
                cpu_memory.glibc_default_malloc()
                if self.yardstick is not None:
                    result["yardstick"] = yardstick_report(**self.yardstick)
                result.update(self._measure())
            finally:
                _set_mode(start_mode)
        result["table"] = format_result(result)
        return result

    def _measure(self) -> dict[str, Any]:
        images: list[Tensor] = benchmark_images(
            batch_size=self.batch_size,
            image_size=self.image_size,
            max_size=self.max_size,
            device=torch.device("cpu"),
            seed=self.seed,
        )
        model = benchmark_model(self.net, images, seed=self.seed, device=torch.device("cpu"))
        ours = optimize_for_inference(model)
        twin = torchvision_twin(model, min_size=self.image_size, max_size=self.max_size).eval()
        with torch.inference_mode():
            identical = same_outputs_in_both_modes(lambda: ours(images))
            times = time_modes(
                {OURS: lambda: ours(images), TORCHVISION: lambda: twin(images)},
                rounds=self.rounds,
            )
        return {"image_shape": list(images[0].shape), "identical": identical, "times": times}


def _median(values: list[Any]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def summary_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per contender and setting: median seconds, yardsticks, faults per call, and the speed-up
    of ``retain`` over ``system`` (median of per-round ratios) on the ``retain`` rows."""
    times = result["times"]
    yardstick_s = result.get("yardstick", {}).get("median_s")
    rows = []
    for name in times["system"]:
        system_s = times["system"][name]["seconds"]
        retain_s = times["retain"][name]["seconds"]
        speedup = statistics.median(a / b for a, b in zip(system_s, retain_s, strict=True))
        for mode in MODES:
            seconds = statistics.median(times[mode][name]["seconds"])
            rows.append(
                {
                    "contender": name,
                    "mode": mode,
                    "median_s": seconds,
                    "yardsticks": None
                    if yardstick_s is None
                    else in_yardsticks(seconds, yardstick_s),
                    "faults_per_call": _median(times[mode][name]["faults"]),
                    "speedup": speedup if mode == "retain" else None,
                }
            )
    return rows


def format_result(result: dict[str, Any]) -> str:
    """The readable table of :meth:`AllocatorBenchmark.run`'s result."""
    rows = summary_rows(result)
    result["rows"] = rows
    s = result["settings"]
    h, w = result["image_shape"][1:]
    lines = []
    if "yardstick" in result:
        lines.append(yardstick_line(result["yardstick"]) + " (under glibc's default allocator)")
    lines.append(
        f"inference, batch {s['batch_size']} at {h}x{w}, {s['threads']} CPU threads; "
        f"{s['rounds']} rounds alternating the allocator settings"
    )
    lines.append(
        format_table(
            ["contender", "allocator", "median s", "yardsticks", "page faults / call", "speed-up"],
            [
                [
                    r["contender"],
                    r["mode"],
                    f"{r['median_s']:.3f}",
                    "" if r["yardsticks"] is None else f"{r['yardsticks']:.2f}",
                    "n/a" if r["faults_per_call"] is None else f"{r['faults_per_call']:,.0f}",
                    "" if r["speedup"] is None else f"{r['speedup']:.2f}x",
                ]
                for r in rows
            ],
        )
    )
    same = "bit-identical" if result["identical"] else "NOT identical"
    lines.append(f"our detections under the two settings: {same}")
    return "\n".join(lines)
