"""Benchmark: COCO bbox evaluation time of ``pycocotools`` vs ``faster_coco_eval``.

A large synthetic ground truth and results list (default: 5,000 images of 640x480, about 7
boxes each, 100 detections per image, 80 categories with COCO-like non-contiguous ids) is
generated deterministically from a seed, then each engine's full pipeline (ground-truth index,
``loadRes``, ``evaluate``, ``accumulate``, ``summarize``; :func:`run_engine`) is timed
``repeats`` times on fresh copies of the inputs. The table shows the median seconds and the
speed-up against the baseline engine, and checks that the engines' 12 statistics agree. With a
``yardstick`` it first measures :mod:`detector.utils.yardstick` and gives the times in its
units too.
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from detector.evaluation.coco_engines import ENGINES, check_engine, run_engine
from detector.evaluation.coco_eval import STAT_NAMES
from detector.utils.tables import format_table
from detector.utils.yardstick import in_yardsticks, yardstick_line, yardstick_report

IMAGE_WIDTH, IMAGE_HEIGHT = 640, 480
CROWD_FRACTION = 0.01


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 4)`` xywh boxes inside the image, sides log-uniform in [8, 400] (all COCO areas)."""
    w = np.exp(rng.uniform(np.log(8), np.log(400), n))
    h = np.clip(w * np.exp(rng.uniform(-0.7, 0.7, n)), 4, IMAGE_HEIGHT)
    w = np.minimum(w, IMAGE_WIDTH)
    x = rng.uniform(0, IMAGE_WIDTH - w)
    y = rng.uniform(0, IMAGE_HEIGHT - h)
    return np.stack([x, y, w, h], axis=1)


def _detections(
    rng: np.random.Generator, gt_boxes: np.ndarray, gt_cats: np.ndarray, cat_ids: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` detections of one image: two jittered copies of each ground-truth box (90% with
    its category) and random boxes for the rest. Returns boxes (n, 4) xywh, categories, scores."""
    near = np.repeat(gt_boxes, 2, axis=0)[:n]
    near_cats = np.repeat(gt_cats, 2)[:n]
    near = near + rng.normal(0, 0.08, near.shape) * np.tile(near[:, 2:], 2)  # sd 8% of w/h
    near[:, 2:] = np.maximum(near[:, 2:], 1.0)
    wrong = rng.random(len(near_cats)) < 0.1
    near_cats = np.where(wrong, rng.choice(cat_ids, len(near_cats)), near_cats)
    far = _random_boxes(rng, n - len(near))
    boxes = np.concatenate([near, far])
    cats = np.concatenate([near_cats, rng.choice(cat_ids, len(far))])
    scores = np.concatenate([rng.uniform(0.3, 1.0, len(near)), rng.uniform(0.0, 0.7, len(far))])
    return boxes, cats, scores


def synthetic_coco_eval_data(
    *, num_images: int, dets_per_image: int, gt_per_image: float, num_categories: int, seed: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A deterministic COCO ground truth and results list (same arguments, same data).

    Returns:
        ``(coco_gt, results)``: ``num_images`` images with Poisson(``gt_per_image``) boxes
        (1% crowd), categories drawn from ids 1..90; exactly ``dets_per_image`` results per image.
    """
    if not 1 <= num_categories <= 90:
        raise ValueError(f"num_categories must be in 1..90, got {num_categories}")
    if num_images <= 0 or dets_per_image <= 0 or gt_per_image < 0:
        raise ValueError("num_images and dets_per_image must be positive, gt_per_image >= 0")
    rng = np.random.default_rng(seed)
    cat_ids = np.sort(rng.choice(np.arange(1, 91), num_categories, replace=False))
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append(
            {
                "id": image_id,
                "file_name": f"{image_id:012d}.jpg",
                "width": IMAGE_WIDTH,
                "height": IMAGE_HEIGHT,
            }
        )
        gt_boxes = _random_boxes(rng, int(rng.poisson(gt_per_image)))
        gt_cats = rng.choice(cat_ids, len(gt_boxes))
        crowd = rng.random(len(gt_boxes)) < CROWD_FRACTION
        for box, cat, is_crowd in zip(gt_boxes.tolist(), gt_cats.tolist(), crowd.tolist()):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": int(is_crowd),
                }
            )
        boxes, cats, scores = _detections(rng, gt_boxes, gt_cats, cat_ids, dets_per_image)
        results.extend(
            {"image_id": image_id, "category_id": c, "bbox": b, "score": s}
            for b, c, s in zip(boxes.tolist(), cats.tolist(), scores.tolist())
        )
    categories = [{"id": int(c), "name": f"category_{int(c)}"} for c in cat_ids]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def time_engine(
    gt: dict[str, Any], results: list[dict[str, Any]], *, engine: str
) -> tuple[float, np.ndarray]:
    """Seconds of one full evaluation with ``engine`` (inputs copied first, untimed) and its
    (12,) statistics."""
    gt_copy = copy.deepcopy(gt)
    results_copy = [dict(r, bbox=list(r["bbox"])) for r in results]
    gc.collect()
    start = time.perf_counter()
    output = run_engine(gt_copy, results_copy, engine=engine)
    return time.perf_counter() - start, output.stats


class CocoEvalBenchmark:
    """Time COCO evaluation with each engine (a Hydra ``_target_`` of ``configs/benchmark.yaml``).

    Args:
        num_images, dets_per_image, gt_per_image, num_categories, seed: the synthetic data
            (see :func:`synthetic_coco_eval_data`).
        repeats: timed runs per engine; the median is reported.
        engines: engines to time (default both).
        baseline: engine the speed-ups are relative to.
        yardstick: ``repeats`` and ``warmup`` of the yardstick measured first; ``None`` skips it
            (the speed task, which measures its own).
    """

    name = "coco_eval"

    def __init__(
        self,
        *,
        num_images: int = 5000,
        dets_per_image: int = 100,
        gt_per_image: float = 7.0,
        num_categories: int = 80,
        seed: int = 0,
        repeats: int = 3,
        engines: Sequence[str] = ENGINES,
        baseline: str = "pycocotools",
        yardstick: Mapping[str, int] | None = None,
    ) -> None:
        for engine in [*engines, baseline]:
            check_engine(engine)
        if baseline not in engines:
            raise ValueError(f"baseline {baseline!r} must be one of engines {list(engines)}")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.data_args = {
            "num_images": num_images,
            "dets_per_image": dets_per_image,
            "gt_per_image": gt_per_image,
            "num_categories": num_categories,
            "seed": seed,
        }
        self.repeats = repeats
        self.engines = list(engines)
        self.baseline = baseline
        self.yardstick = dict(yardstick) if yardstick is not None else None

    def run(self) -> dict[str, Any]:
        """Generate the data, time every engine, return the results (with a ``"table"``)."""
        yardstick = yardstick_report(**self.yardstick) if self.yardstick is not None else None
        gt, results = synthetic_coco_eval_data(**self.data_args)
        seconds: dict[str, list[float]] = {e: [] for e in self.engines}
        stats: dict[str, np.ndarray] = {}
        runs = [(e, r) for r in range(self.repeats) for e in self.engines]  # interleaved
        for engine, _ in tqdm(runs, desc="coco_eval benchmark", dynamic_ncols=True):
            elapsed, stats[engine] = time_engine(gt, results, engine=engine)
            seconds[engine].append(elapsed)
        medians = {e: statistics.median(s) for e, s in seconds.items()}
        speedup = {e: medians[self.baseline] / medians[e] for e in self.engines}
        diff = max(float(np.abs(stats[e] - stats[self.baseline]).max()) for e in self.engines)
        result = {
            "name": self.name,
            "settings": {**self.data_args, "repeats": self.repeats, "baseline": self.baseline},
            "num_gt_boxes": len(gt["annotations"]),
            "num_detections": len(results),
            "seconds": seconds,
            "median_seconds": medians,
            "speedup_vs_baseline": speedup,
            "stats": {e: dict(zip(STAT_NAMES, map(float, s))) for e, s in stats.items()},
            "stats_max_abs_diff": diff,
        }
        if yardstick is not None:
            result["yardstick"] = yardstick
        result["table"] = format_result(result)
        return result


def format_result(result: dict[str, Any]) -> str:
    """The readable table of :meth:`CocoEvalBenchmark.run`'s result."""
    baseline = result["settings"]["baseline"]
    yardstick_s = result["yardstick"]["median_s"] if "yardstick" in result else None
    rows = [
        [
            engine,
            f"{result['median_seconds'][engine]:.2f}",
            f"{in_yardsticks(result['median_seconds'][engine], yardstick_s):.1f}"
            if yardstick_s
            else "",
            ", ".join(f"{s:.2f}" for s in runs),
            f"{result['speedup_vs_baseline'][engine]:.2f}x",
        ]
        for engine, runs in result["seconds"].items()
    ]
    settings = result["settings"]
    header = (
        f"COCO bbox evaluation of {settings['num_images']} images, {result['num_gt_boxes']} "
        f"ground-truth boxes, {result['num_detections']} detections "
        f"(median of {settings['repeats']} runs)"
    )
    table = format_table(
        ["engine", "median s", "yardsticks", "runs s", f"speed-up vs {baseline}"], rows
    )
    if yardstick_s:
        header = f"{yardstick_line(result['yardstick'])}\n{header}"
    agree = (
        f"max |difference| of the 12 statistics between engines: {result['stats_max_abs_diff']:.1e}"
    )
    return f"{header}\n{table}\n{agree}"
