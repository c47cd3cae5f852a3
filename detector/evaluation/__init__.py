"""Detection evaluation: COCO (via pycocotools / faster_coco_eval) and Pascal VOC (devkit rules)."""

from detector.evaluation.coco_eval import (
    STAT_NAMES,
    COCOEvaluator,
    evaluate_coco,
    format_coco_table,
    score_coco_results_file,
)
from detector.evaluation.dataset_eval import (
    EVAL_TYPES,
    DetectionEvaluator,
    format_metrics,
    write_metrics,
)
from detector.evaluation.voc_eval import (
    VOCEvaluator,
    format_voc_table,
    score_voc_results,
    voc_ap,
)

__all__ = [
    "EVAL_TYPES",
    "STAT_NAMES",
    "COCOEvaluator",
    "DetectionEvaluator",
    "VOCEvaluator",
    "evaluate_coco",
    "format_coco_table",
    "format_metrics",
    "format_voc_table",
    "score_coco_results_file",
    "score_voc_results",
    "voc_ap",
    "write_metrics",
]
