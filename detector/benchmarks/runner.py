"""Run benchmark tasks, print their tables and save their results as JSON.

A task is any object with a ``name`` and ``run() -> dict`` returning JSON-serialisable
results that include a readable ``"table"`` (see :class:`Benchmark`); ``configs/benchmark.yaml``
lists them as Hydra ``_target_`` nodes under ``tasks`` and selects some with ``run``.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

logger = logging.getLogger(__name__)


class Benchmark(Protocol):
    """One benchmark task: ``run()`` returns JSON-serialisable results with a ``"table"``."""

    name: str

    def run(self) -> dict[str, Any]: ...


def environment() -> dict[str, Any]:
    """Where the numbers were measured (they mean little without it)."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpu_threads": torch.get_num_threads(),
    }


def run_benchmarks(
    tasks: Mapping[str, Benchmark], names: Sequence[str], *, output_dir: str | Path
) -> dict[str, Any]:
    """Run ``tasks[name]`` for each of ``names`` in order; print each table; write
    ``<output_dir>/<name>.json`` per task and ``<output_dir>/benchmark.json`` for all.

    Raises:
        KeyError: a name that is not among ``tasks`` (the message lists the known ones).
    """
    unknown = [n for n in names if n not in tasks]
    if unknown:
        raise KeyError(f"unknown benchmark task(s) {unknown}; known: {sorted(tasks)}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"environment": environment(), "tasks": {}}
    for name in names:
        logger.info("benchmark %s", name)
        result = tasks[name].run()
        print(f"\n== {name} ==\n{result['table']}", flush=True)
        (out / f"{name}.json").write_text(json.dumps(result, indent=2))
        report["tasks"][name] = result
    (out / "benchmark.json").write_text(json.dumps(report, indent=2))
    logger.info("wrote %s", out / "benchmark.json")
    return report
