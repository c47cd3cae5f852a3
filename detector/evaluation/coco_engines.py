"""Thin wrappers that run one COCO bbox evaluation with pycocotools or faster_coco_eval.

Both engines implement the same reference algorithm (faster_coco_eval re-implements
pycocotools' ``evaluateImg``/``accumulate`` in C++).  The wrappers give them one
interface, keep their progress chatter off stdout (``Loading and preparing results...``,
``DONE (t=0.01s)``) and capture the standard 12-line ``summarize()`` table as text.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ENGINES: tuple[str, ...] = ("faster_coco_eval", "pycocotools")
NUM_STATS = 12


@dataclass(frozen=True)
class EngineOutput:
    """What one engine run produced.

    Attributes:
        stats: (12,) the standard COCO bbox statistics, in ``summarize()`` order.
        precision: (T, R, K, A, M) the accumulated precision array (-1 where undefined):
            T IoU thresholds, R recall thresholds, K categories, A area ranges, M maxDets.
        category_ids: (K,) the category ids indexing axis 2 of ``precision``.
        summary: the engine's standard ``summarize()`` text.
    """

    stats: np.ndarray
    precision: np.ndarray
    category_ids: list[int]
    summary: str


def check_engine(engine: str) -> None:
    """Raise ``ValueError`` naming the allowed values if ``engine`` is unknown."""
    if engine not in ENGINES:
        raise ValueError(f"unknown COCO engine {engine!r}; allowed values: {list(ENGINES)}")


def _pycocotools_eval(gt: dict[str, Any], results: list[dict[str, Any]]) -> Any:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco_gt = COCO()  # COCO(path) only takes a file; fill the dataset directly instead
    coco_gt.dataset = gt
    coco_gt.createIndex()
    return COCOeval(coco_gt, coco_gt.loadRes(results), iouType="bbox")


def _faster_eval(gt: dict[str, Any], results: list[dict[str, Any]]) -> Any:
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt = COCO(gt, print_function=print)
    coco_dt = coco_gt.loadRes(results)
    return COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=print)


_BUILDERS: dict[str, Callable[[dict[str, Any], list[dict[str, Any]]], Any]] = {
    "pycocotools": _pycocotools_eval,
    "faster_coco_eval": _faster_eval,
}


def run_engine(
    gt: dict[str, Any],
    results: list[dict[str, Any]],
    *,
    engine: str,
    image_ids: Sequence[int] | None = None,
) -> EngineOutput:
    """Evaluate validated, non-empty ``results`` against ``gt`` with ``engine``.

    Args:
        gt: a validated COCO ground-truth dict (mutated by the engines: pass a copy).
        results: validated, non-empty COCO results entries (also mutated).
        engine: one of :data:`ENGINES`.
        image_ids: restrict evaluation to these images (default: all GT images).
    """
    check_engine(engine)
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter):
        evaluator = _BUILDERS[engine](gt, results)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    return EngineOutput(
        stats=np.asarray(evaluator.stats[:NUM_STATS], dtype=np.float64),
        precision=np.asarray(evaluator.eval["precision"], dtype=np.float64),
        category_ids=[int(c) for c in evaluator.params.catIds],
        summary=summary.getvalue(),
    )
