"""Detection evaluation: COCO (via pycocotools / faster_coco_eval) and Pascal VOC (devkit rules)."""

from detector.evaluation.coco_eval import (
    STAT_NAMES,
    COCOEvaluator,
    evaluate_coco,
    format_coco_table,
    score_coco_results_file,
)
from detector.evaluation.voc_eval import (
    VOCEvaluator,
    format_voc_table,
    score_voc_results,
    voc_ap,
)

__all__ = [
    "STAT_NAMES",
    "COCOEvaluator",
    "VOCEvaluator",
    "evaluate_coco",
    "format_coco_table",
    "format_voc_table",
    "score_coco_results_file",
    "score_voc_results",
    "voc_ap",
]
