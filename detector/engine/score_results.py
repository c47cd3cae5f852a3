"""Score a saved results file against a dataset's annotations, without a model.

``cfg.results`` is either

- a COCO results JSON (``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``, the
  original category ids): scored with COCO (``eval.type`` coco / both) and/or the VOC devkit AP
  (voc / both) against the val split of ``cfg.dataset``. COCO-format datasets need only their
  ``ann_file``; other datasets are built (annotations and image headers) for their
  ``coco_gt()``;
- a folder of VOC devkit files ``comp4_det_<imageset>_<class>.txt`` (``image_id score xmin
  ymin xmax ymax``, 1-based pixels; a single such file means its folder): scored with the VOC
  devkit AP against the XML files listed in the val split of a VOC-layout dataset (``root``,
  ``split``, ``class_names``); no images needed.

The table is printed and the scores (layout of :mod:`detector.evaluation.dataset_eval`) are
written to ``<cfg.output_dir>/metrics.json``, or beside the results as
``<results name>.metrics.json`` when that is null, never over an existing file
(:func:`scores_path`); the last line printed names the file. This module imports no model
code: ``tools/eval.py results=...`` starts quickly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from detector.data.voc_layout import split_annotation_files
from detector.evaluation.coco_data import load_coco_gt, read_json
from detector.evaluation.coco_eval import evaluate_coco
from detector.evaluation.dataset_eval import (
    DetectionEvaluator,
    check_eval_type,
    coco_results_to_outputs,
    evaluation_options,
    format_metrics,
    write_metrics,
)
from detector.evaluation.voc_eval import score_voc_results

logger = logging.getLogger(__name__)


def score_results(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.results`` (see the module docstring); returns the metrics dict."""
    results = Path(str(cfg.results)).expanduser()
    if not results.exists():
        raise FileNotFoundError(f"results file {str(results)!r} does not exist")
    options = evaluation_options(cfg.eval)
    check_eval_type(options["eval_type"])
    if results.is_dir() or results.suffix == ".txt":
        folder = results if results.is_dir() else results.parent
        metrics = score_devkit_files(folder, cfg.dataset.val, options)
    else:
        metrics = score_coco_json(results, cfg.dataset.val, options)
    print(format_metrics(metrics), flush=True)
    path = write_metrics(scores_path(results, cfg.get("output_dir")), metrics)
    print(f"scores written to {path}", flush=True)
    return metrics


def scores_path(results: Path, output_dir: str | None) -> Path:
    """Where the scores of ``results`` go: ``<output_dir>/metrics.json`` when asked for, else
    beside the results as ``<results name>.metrics.json`` (a training run's own
    ``metrics.json`` is never touched); a file already there is kept, and the new one gets
    the first free ``-2``, ``-3``, ... suffix."""
    if output_dir:
        path = Path(str(output_dir)) / "metrics.json"
    else:
        path = (
            results.parent / f"{results.stem if results.is_file() else results.name}.metrics.json"
        )
    stem, number = path.name.removesuffix(".json"), 2
    while path.exists():
        path = path.with_name(f"{stem}-{number}.json")
        number += 1
    return path


def score_devkit_files(folder: Path, val: DictConfig, options: dict[str, Any]) -> dict[str, Any]:
    """VOC devkit AP of the ``comp4_det_*_<class>.txt`` files in ``folder`` against the XML
    annotations of a VOC-layout val split (``val.root``, ``val.split``, ``val.class_names``)."""
    missing = [k for k in ("root", "split", "class_names") if k not in val]
    if missing:
        raise ValueError(
            f"VOC devkit results ({folder}) need a VOC-layout dataset; the val split "
            f"({val.get('_target_')}) has no {missing}"
        )
    if options["eval_type"] != "voc":
        logger.warning("devkit results files hold no COCO results; scoring the VOC AP only")
    node = OmegaConf.to_container(val, resolve=True)
    xmls = split_annotation_files(**{k: v for k, v in node.items() if not k.startswith("_")})
    voc = score_voc_results(
        xmls,
        folder,
        class_names=[str(n) for n in val.class_names],
        iou_thresh=options["voc_iou_thresholds"],
        use_07_metric=options["voc_use_07_metric"],
    )
    return {"eval_type": "voc", "voc": voc}


def _ground_truth(val: DictConfig) -> tuple[dict[str, Any], dict[int, int]]:
    """``(coco_gt, label_to_cat_id)`` of the val split: the ``ann_file`` when there is one
    (labels 1..K in order of category id, as :class:`CocoDetection` assigns them)."""
    if val.get("ann_file"):
        gt = load_coco_gt(str(val.ann_file))
        cat_ids = sorted(int(c["id"]) for c in gt["categories"])
        return gt, {i + 1: c for i, c in enumerate(cat_ids)}
    dataset = instantiate(val, transforms=None, _convert_="all")
    return dataset.coco_gt(), dict(dataset.label_to_cat_id)


def score_coco_json(results: Path, val: DictConfig, options: dict[str, Any]) -> dict[str, Any]:
    """COCO and/or VOC scores (``options["eval_type"]``) of a COCO results JSON file."""
    entries = read_json(results, what="COCO results")
    if not isinstance(entries, list):
        raise ValueError(f"COCO results file {results}: expected a JSON list of detections")
    gt, label_to_cat_id = _ground_truth(val)
    metrics: dict[str, Any] = {"eval_type": options["eval_type"]}
    try:
        if options["eval_type"] in ("coco", "both"):
            metrics.update(evaluate_coco(gt, entries, engine=options["engine"]))
        if options["eval_type"] in ("voc", "both"):
            image_ids, outputs = coco_results_to_outputs(
                entries, coco_gt=gt, label_to_cat_id=label_to_cat_id
            )
            evaluator = DetectionEvaluator(
                coco_gt=gt,
                label_to_cat_id=label_to_cat_id,
                eval_type="voc",
                voc_iou_thresholds=options["voc_iou_thresholds"],
                voc_use_07_metric=options["voc_use_07_metric"],
            )
            evaluator.process(image_ids, outputs)
            metrics["voc"] = evaluator.evaluate()["voc"]
    except ValueError as err:
        raise ValueError(f"COCO results file {results}: {err}") from err
    return metrics
