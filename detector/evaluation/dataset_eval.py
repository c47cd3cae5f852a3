"""COCO and/or VOC evaluation of one dataset, selected by ``eval.type``: collect, score, report.

:class:`DetectionEvaluator` wraps :class:`~detector.evaluation.coco_eval.COCOEvaluator` and
:class:`~detector.evaluation.voc_eval.VOCEvaluator` behind one ``process`` / ``evaluate`` /
``save_results`` interface, both built from a dataset's ``coco_gt()``.

Metrics layout (``evaluate()``, ``metrics.json``)::

    {"eval_type": "coco" | "voc" | "both",
     "AP", "AP50", ..., "ARl", "per_class_AP", "summary",   # COCO (coco, both), flat as always
     "voc": {"mAP", "per_class_AP", "per_iou", "use_07_metric"}}   # VOC (voc, both)

VOC image ids in the devkit results files are the images' file-name stems (``2007_000027``),
so the files score again with ``tools/eval.py results=<folder>`` against the XML annotations.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detector.evaluation.coco_data import validate_coco_results
from detector.evaluation.coco_eval import DEFAULT_ENGINE, COCOEvaluator, format_coco_table
from detector.evaluation.voc_eval import VOCEvaluator, format_voc_table

EVAL_TYPES: tuple[str, ...] = ("coco", "voc", "both")
COCO_RESULTS_FILE = "coco_results.json"
VOC_RESULTS_DIR = "voc_results"


def check_eval_type(eval_type: str) -> None:
    """Raise ``ValueError`` naming the allowed values if ``eval_type`` is unknown."""
    if eval_type not in EVAL_TYPES:
        raise ValueError(f"unknown eval.type {eval_type!r}; allowed values: {list(EVAL_TYPES)}")


def image_names(coco_gt: Mapping[str, Any]) -> dict[Hashable, str]:
    """Image id -> file-name stem (the devkit's image id); ``str(id)`` when stems repeat."""
    stems = {
        img["id"]: Path(str(img.get("file_name", img["id"]))).stem for img in coco_gt["images"]
    }
    if len(set(stems.values())) != len(stems):
        return {image_id: str(image_id) for image_id in stems}
    return stems


class DetectionEvaluator:
    """Score per-image detector outputs with COCO, VOC or both (see the module docstring).

    Args:
        coco_gt: the evaluated split's ground truth in COCO format (``dataset.coco_gt()``;
            VOC ``difficult`` objects are ``iscrowd`` there and ignored by both evaluations).
        label_to_cat_id: contiguous label (1..K) -> category id in ``coco_gt``.
        eval_type: ``"coco"``, ``"voc"`` or ``"both"``.
        engine: COCO engine, ``"faster_coco_eval"`` or ``"pycocotools"``.
        voc_iou_thresholds: VOC IoU thresholds; the first gives ``voc.mAP``.
        voc_use_07_metric: VOC2007 11-point AP (``True``) or all-point AP (VOC2010+).

    Raises:
        ValueError: unknown ``eval_type`` / ``engine``, bad thresholds or label mapping.
    """

    def __init__(
        self,
        *,
        coco_gt: Mapping[str, Any],
        label_to_cat_id: Mapping[int, int],
        eval_type: str = "coco",
        engine: str = DEFAULT_ENGINE,
        voc_iou_thresholds: Sequence[float] = (0.5,),
        voc_use_07_metric: bool = True,
    ) -> None:
        check_eval_type(eval_type)
        self.eval_type = eval_type
        self.coco: COCOEvaluator | None = None
        self.voc: VOCEvaluator | None = None
        if eval_type in ("coco", "both"):
            self.coco = COCOEvaluator(
                coco_gt=coco_gt, label_to_cat_id=label_to_cat_id, engine=engine
            )
        if eval_type in ("voc", "both"):
            self.voc = VOCEvaluator.from_coco_gt(
                coco_gt=coco_gt,
                label_to_cat_id=label_to_cat_id,
                iou_thresholds=voc_iou_thresholds,
                use_07_metric=voc_use_07_metric,
            )
        self.image_names = image_names(coco_gt)

    def process(self, image_ids: Sequence[int], outputs: Sequence[Mapping[str, Any]]) -> None:
        """Add a batch: per image ``"boxes"`` (N, 4) 0-based xyxy in original pixels,
        ``"scores"`` (N,), ``"labels"`` (N,) in 1..K."""
        for evaluator in (self.coco, self.voc):
            if evaluator is not None:
                evaluator.process(image_ids, outputs)

    def evaluate(self) -> dict[str, Any]:
        """Score the processed images (layout in the module docstring)."""
        metrics: dict[str, Any] = {"eval_type": self.eval_type}
        if self.coco is not None:
            metrics.update(self.coco.evaluate())
        if self.voc is not None:
            metrics["voc"] = self.voc.evaluate()
        return metrics

    def save_results(self, output_dir: str | Path, *, voc_imageset: str = "test") -> list[Path]:
        """Write ``coco_results.json`` (official COCO results format) and/or
        ``voc_results/comp4_det_<voc_imageset>_<class>.txt`` (devkit format, 1-based boxes)."""
        out = Path(output_dir)
        written: list[Path] = []
        if self.coco is not None:
            written.append(self.coco.save_results(out / COCO_RESULTS_FILE))
        if self.voc is not None:
            imageset = voc_imageset.replace("_", "-")  # the devkit file pattern has no "_" there
            files = self.voc.save_results(
                out / VOC_RESULTS_DIR,
                prefix=f"comp4_det_{imageset}_",
                image_names=self.image_names,
            )
            written.extend(files.values())
        return written


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """The readable report of :meth:`DetectionEvaluator.evaluate`'s metrics: the COCO table
    (12 statistics + per-class AP) and/or the VOC per-class AP table."""
    parts = []
    if "AP" in metrics:
        parts.append("COCO bbox evaluation (percent):\n" + format_coco_table(metrics))
    if "voc" in metrics:
        parts.append(format_voc_table(metrics["voc"]))
    return "\n\n".join(parts)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str):  # numpy / torch scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):  # NaN (no ground truth) is not JSON
        return None
    return obj


def write_metrics(path: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics`` as JSON (NaN -> ``null``, keys as strings, e.g. IoU ``"0.5"``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(metrics), indent=2))
    return path


def coco_results_to_outputs(
    results: Iterable[Mapping[str, Any]],
    *,
    coco_gt: Mapping[str, Any],
    label_to_cat_id: Mapping[int, int],
) -> tuple[list[int], list[dict[str, np.ndarray]]]:
    """Official COCO results entries -> per-image detector outputs, for every ground-truth image.

    Returns ``(image_ids, outputs)``: every image of ``coco_gt`` (images without detections get
    empty arrays), each output ``{"boxes": (N, 4) xyxy, "scores": (N,), "labels": (N,)}``.

    Raises:
        ValueError: a malformed entry (``"results[<index>]: ..."``) or a category id without label.
    """
    cat_to_label = {int(c): int(lbl) for lbl, c in label_to_cat_id.items()}
    per_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for index, entry in enumerate(validate_coco_results(results, coco_gt)):
        if entry["category_id"] not in cat_to_label:
            raise ValueError(
                f"results[{index}]: category_id {entry['category_id']!r} has no model label"
            )
        per_image[entry["image_id"]].append(entry)
    image_ids = [img["id"] for img in coco_gt["images"]]
    outputs = []
    for image_id in image_ids:
        entries = per_image.get(image_id, [])
        xywh = np.array([e["bbox"] for e in entries], dtype=np.float64).reshape(-1, 4)
        outputs.append(
            {
                "boxes": np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
                "scores": np.array([e["score"] for e in entries], dtype=np.float64),
                "labels": np.array([cat_to_label[e["category_id"]] for e in entries], np.int64),
            }
        )
    return image_ids, outputs


def evaluation_options(eval_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The scoring keyword arguments (of
    :func:`detector.engine.validation.evaluate_model`, :class:`DetectionEvaluator`) from a config's ``eval`` node
    (``type``, ``engine``, ``voc.iou_thresholds``, ``voc.use_07_metric``; missing keys take
    the defaults, so configs saved before a key existed still work)."""
    voc = eval_cfg.get("voc") or {}
    return {
        "engine": str(eval_cfg.get("engine", DEFAULT_ENGINE)),
        "eval_type": str(eval_cfg.get("type", "coco")),
        "voc_iou_thresholds": tuple(float(t) for t in voc.get("iou_thresholds", (0.5,))),
        "voc_use_07_metric": bool(voc.get("use_07_metric", True)),
    }
