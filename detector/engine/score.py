"""Score a saved results file against a dataset's annotations, without a model or images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from detector.data.voc import read_split
from detector.evaluation.coco_eval import (
    evaluate_coco,
    format_coco_table,
    score_coco_results_file,
)
from detector.evaluation.voc_eval import format_voc_table, score_voc_results


def score_results(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.results``: a COCO results JSON (COCO-format datasets) or a folder / file of VOC
    devkit ``comp4_det_test_<class>.txt`` files (VOC-layout datasets). Scores against the
    val split of ``cfg.dataset``; prints the table and writes ``metrics.json`` beside the
    output directory (``cfg.output_dir`` or the results file's folder)."""
    results = Path(str(cfg.results)).expanduser()
    if not results.exists():
        raise FileNotFoundError(f"results file {str(results)!r} does not exist")
    val = cfg.dataset.val
    if "ann_file" in val:
        metrics = score_coco_results_file(val.ann_file, results, engine=str(cfg.eval.engine))
        table = format_coco_table(metrics)
    elif "class_names" in val:
        root = Path(str(val.root))
        xmls = [root / "Annotations" / f"{name}.xml" for name in read_split(root, str(val.split))]
        voc_cfg = cfg.eval.get("voc", {}) or {}
        metrics = score_voc_results(
            xmls,
            results,
            class_names=list(val.class_names),
            iou_thresh=voc_cfg.get("iou_thresholds", [0.5]),
            use_07_metric=bool(voc_cfg.get("use_07_metric", True)),
        )
        table = format_voc_table(metrics)
    else:  # e.g. the synthetic dataset: build it (annotations only) and use its COCO view
        dataset = instantiate(val, _convert_="all")
        metrics = evaluate_coco(dataset.coco_gt(), _read_json(results), engine=str(cfg.eval.engine))
        table = format_coco_table(metrics)
    print(table, flush=True)
    out = Path(str(cfg.output_dir)) if cfg.get("output_dir") else results.parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(_clean(metrics), indent=2))
    return metrics


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"results file {path} is not valid JSON: {err}") from err
