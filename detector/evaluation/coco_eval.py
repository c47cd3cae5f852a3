"""COCO bbox evaluation: score results lists/files and collect a detector's outputs.

The numbers come from the reference COCO API (``pycocotools``) or its C++ port
(``faster_coco_eval``, the default; identical numbers, several times faster).  This
module only validates inputs, converts the detector's outputs to the official results
format, and presents the statistics.

Metrics dict returned by :func:`evaluate_coco` / :meth:`COCOEvaluator.evaluate`:

* ``"AP"`` ... ``"ARl"``: the 12 standard statistics (see :data:`STAT_NAMES`), floats
  in [0, 1] (-1.0 where the engine has nothing to average, e.g. no small GT boxes).
* ``"per_class_AP"`` (when ``per_class=True``): ``{category name: AP@[.5:.95]}``, NaN
  for categories without (non-crowd) ground truth in the evaluated images.
* ``"summary"``: the engine's standard 12-line ``summarize()`` text ("" when the
  results were empty and no engine ran).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from detector.evaluation.coco_data import (
    category_names,
    load_coco_gt,
    read_json,
    validate_coco_results,
)
from detector.evaluation.coco_engines import ENGINES, EngineOutput, check_engine, run_engine
from detector.evaluation.outputs import check_batch, image_detections
from detector.utils.tables import format_number, format_table

STAT_NAMES: list[str] = [
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
]  # fmt: skip
DEFAULT_ENGINE = "faster_coco_eval"

__all__ = [
    "ENGINES",
    "STAT_NAMES",
    "COCOEvaluator",
    "evaluate_coco",
    "format_coco_table",
    "score_coco_results_file",
]


def _per_class_ap(output: EngineOutput, names: Mapping[int, str]) -> dict[str, float]:
    """AP@[.5:.95] per category from the (T, R, K, A, M) precision array (area all, 100 dets)."""
    per_class: dict[str, float] = {}
    for k, cat_id in enumerate(output.category_ids):
        precision = output.precision[:, :, k, 0, -1]
        valid = precision[precision > -1]
        per_class[names[cat_id]] = float(valid.mean()) if valid.size else math.nan
    return per_class


def _empty_metrics(gt: Mapping[str, Any], image_ids: Sequence[int] | None) -> dict[str, Any]:
    """Metrics for an empty results list: every statistic 0, AP 0 for classes with GT."""
    wanted = None if image_ids is None else set(image_ids)
    with_gt = {
        a["category_id"]
        for a in gt["annotations"]
        if not a.get("iscrowd", 0) and (wanted is None or a["image_id"] in wanted)
    }
    per_class = {
        name: 0.0 if cat_id in with_gt else math.nan
        for cat_id, name in sorted(category_names(gt).items())
    }
    return {**dict.fromkeys(STAT_NAMES, 0.0), "per_class_AP": per_class, "summary": ""}


def evaluate_coco(
    coco_gt: Mapping[str, Any] | str | Path,
    results: Iterable[Mapping[str, Any]],
    *,
    engine: str = DEFAULT_ENGINE,
    per_class: bool = True,
    image_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Score COCO-format bbox ``results`` against ``coco_gt``.

    Args:
        coco_gt: COCO instances dict or path to its JSON file (never modified).
        results: official results entries ``{"image_id", "category_id",
            "bbox": [x, y, w, h], "score"}`` (never modified).
        engine: ``"faster_coco_eval"`` (default) or ``"pycocotools"``.
        per_class: also compute ``"per_class_AP"``.
        image_ids: evaluate only these images (default: every ground-truth image,
            as the official evaluation does).

    Returns:
        The metrics dict described in the module docstring.  Empty ``results`` give
        all-zero statistics without running an engine.

    Raises:
        ValueError: unknown ``engine``; malformed ground truth; a malformed results
            entry (``"results[<index>]: <problem>"``); unknown ``image_ids``.
    """
    check_engine(engine)
    gt = load_coco_gt(coco_gt)
    clean = validate_coco_results(results, gt)
    if image_ids is not None:
        unknown = set(image_ids) - {img["id"] for img in gt["images"]}
        if unknown:
            raise ValueError(f"image_ids not in the ground truth: {sorted(unknown)[:10]}")
    if not clean:
        metrics = _empty_metrics(gt, image_ids)
    else:
        names = category_names(gt)
        output = run_engine(gt, clean, engine=engine, image_ids=image_ids)
        metrics = {name: float(v) for name, v in zip(STAT_NAMES, output.stats, strict=True)}
        metrics["per_class_AP"] = _per_class_ap(output, names)
        metrics["summary"] = output.summary
    if not per_class:
        metrics.pop("per_class_AP")
    return metrics


def score_coco_results_file(
    ann_file: str | Path,
    results_file: str | Path,
    *,
    engine: str = DEFAULT_ENGINE,
    per_class: bool = True,
) -> dict[str, Any]:
    """Score an official COCO results JSON file against a COCO annotation file.

    Raises:
        FileNotFoundError / ValueError: naming the file that is missing or malformed
            (and the entry index for a malformed results entry).
    """
    results = read_json(results_file, what="COCO results")
    if not isinstance(results, list):
        raise ValueError(
            f"COCO results file {results_file}: expected a JSON list of detections, "
            f"got {type(results).__name__}"
        )
    try:
        return evaluate_coco(ann_file, results, engine=engine, per_class=per_class)
    except ValueError as err:
        if str(err).startswith("results["):
            raise ValueError(f"COCO results file {results_file}: {err}") from err
        raise


def _cell(value: float | None) -> str:
    """Percent with 2 decimals; COCO's -1 ("nothing to average") and NaN show as n/a."""
    return format_number(None if value is not None and value < 0 else value)


def format_coco_table(metrics: Mapping[str, Any], *, columns: int = 3) -> str:
    """Render the 12 statistics (in percent) and, if present, the per-class AP table.

    COCO's -1 (no ground truth in that area range) and NaN are shown as ``n/a``.

    Args:
        metrics: as returned by :func:`evaluate_coco`.
        columns: how many (category, AP) pairs per row of the per-class table.
    """
    ap_names, ar_names = STAT_NAMES[:6], STAT_NAMES[6:]
    text = format_table(
        ["metric", *ap_names],
        [
            ["AP", *[_cell(metrics[n]) for n in ap_names]],
        ],
    )
    text += "\n" + format_table(
        ["metric", *ar_names],
        [["AR", *[_cell(metrics[n]) for n in ar_names]]],
    )
    per_class = metrics.get("per_class_AP")
    if per_class:
        cells = [(name, _cell(ap)) for name, ap in per_class.items()]
        cells += [("", "")] * (-len(cells) % columns)
        rows = [
            [c for pair in cells[i : i + columns] for c in pair]
            for i in range(0, len(cells), columns)
        ]
        text += "\n\nPer-class AP@[.5:.95]:\n" + format_table(
            ["category", "AP"] * columns, rows, align="lr" * columns
        )
    return text


class COCOEvaluator:
    """Collect per-image detector outputs and score them with the COCO API.

    Example::

        evaluator = COCOEvaluator(coco_gt=gt, label_to_cat_id={1: 1, 2: 5, 3: 90})
        for batch in loader:
            evaluator.process(batch_image_ids, model(batch_images))
        metrics = evaluator.evaluate()

    Only the processed images are scored, so a partial pass (a smoke test, a
    ``max_images`` limit) gives meaningful numbers; a full pass equals the official
    evaluation over all images.
    """

    def __init__(
        self,
        *,
        coco_gt: Mapping[str, Any] | str | Path,
        label_to_cat_id: Mapping[int, int],
        engine: str = DEFAULT_ENGINE,
    ) -> None:
        """
        Args:
            coco_gt: COCO instances dict (or its JSON path) for the evaluated split.
            label_to_cat_id: contiguous model label (1..K) -> original COCO category id.
            engine: ``"faster_coco_eval"`` (default) or ``"pycocotools"``.
        """
        check_engine(engine)
        self._gt = load_coco_gt(coco_gt)
        known = set(category_names(self._gt))
        bad = {lbl: cid for lbl, cid in label_to_cat_id.items() if cid not in known}
        if bad:
            raise ValueError(f"label_to_cat_id maps to category ids not in the ground truth: {bad}")
        self._label_to_cat_id = {int(k): int(v) for k, v in label_to_cat_id.items()}
        self._gt_image_ids = {img["id"] for img in self._gt["images"]}
        self.engine = engine
        self.reset()

    def reset(self) -> None:
        """Forget every processed image."""
        self._results: list[dict[str, Any]] = []
        self._image_ids: list[int] = []
        self._seen: set[int] = set()

    def _check_image_id(self, image_id: int) -> None:
        if image_id not in self._gt_image_ids:
            raise ValueError(f"image id {image_id!r} is not in the ground truth")
        if image_id in self._seen:
            raise ValueError(f"image id {image_id!r} was already processed")

    def _to_results(self, image_id: int, output: Mapping[str, Any]) -> list[dict[str, Any]]:
        dets = image_detections(image_id, output)
        unknown = sorted(set(dets.labels.tolist()) - set(self._label_to_cat_id))
        if unknown:
            raise ValueError(
                f"output for image {image_id!r} has labels {unknown} not in label_to_cat_id"
            )
        xywh = dets.boxes.copy()
        xywh[:, 2:] -= xywh[:, :2]
        if (xywh[:, 2:] < 0).any():
            raise ValueError(f"output for image {image_id!r} has boxes with x2 < x1 or y2 < y1")
        return [
            {
                "image_id": image_id,
                "category_id": self._label_to_cat_id[int(label)],
                "bbox": [float(v) for v in box],
                "score": float(score),
            }
            for box, score, label in zip(xywh, dets.scores, dets.labels, strict=True)
        ]

    def process(self, image_ids: Sequence[int], outputs: Sequence[Mapping[str, Any]]) -> None:
        """Add one batch of outputs.

        Args:
            image_ids: COCO image ids of the batch.
            outputs: one dict per image with ``"boxes"`` (N, 4) xyxy in original image
                pixels, ``"scores"`` (N,) and ``"labels"`` (N,) contiguous labels 1..K.

        Raises:
            ValueError: unknown or already-processed image id, unmapped label,
                malformed output.
        """
        check_batch(image_ids, outputs)
        ids = [int(i) for i in image_ids]
        if len(set(ids)) != len(ids):
            raise ValueError(f"image ids repeat within the batch: {ids}")
        for image_id in ids:
            self._check_image_id(image_id)
        # convert the whole batch before storing anything: a bad output leaves no trace
        batch = [self._to_results(i, out) for i, out in zip(ids, outputs, strict=True)]
        for image_id, results in zip(ids, batch, strict=True):
            self._results.extend(results)
            self._image_ids.append(image_id)
            self._seen.add(image_id)

    def results(self) -> list[dict[str, Any]]:
        """The collected detections in official COCO results format (a copy)."""
        return [dict(r, bbox=list(r["bbox"])) for r in self._results]

    def evaluate(self, *, per_class: bool = True) -> dict[str, Any]:
        """Score the processed images; see :func:`evaluate_coco` for the returned dict.

        Raises:
            RuntimeError: nothing has been processed yet.
        """
        if not self._image_ids:
            raise RuntimeError("COCOEvaluator.evaluate() called before any process() call")
        return evaluate_coco(
            self._gt,
            self._results,
            engine=self.engine,
            per_class=per_class,
            image_ids=self._image_ids,
        )

    def save_results(self, path: str | Path) -> Path:
        """Write the collected detections as an official COCO results JSON file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            json.dump(self._results, f)
        return path
