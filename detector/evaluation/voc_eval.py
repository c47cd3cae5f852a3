"""Pascal VOC detection evaluation with the official devkit's semantics.

Devkit rules (``VOCevaldet.m``) reproduced here:

* detections of a class are ranked by descending score (stable for ties, as MATLAB's
  ``sort``); each is matched to the ground-truth box of that class and image with the
  highest IoU; it is a true positive if that IoU is ``>=`` the threshold and the box is
  not yet matched, a false positive if the box was already matched (duplicate) or the
  IoU is below the threshold;
* a detection whose best match is a ``difficult`` box counts as neither TP nor FP, and
  difficult boxes are not counted in the number of positives;
* boxes are 1-based inclusive pixel indices, so widths are ``x2 - x1 + 1`` (the
  "+1 pixel" convention) in IoU and areas;
* AP is the VOC2007 11-point interpolated AP (``use_07_metric=True``) or the
  VOC2010+ area under the monotone precision envelope (all points).

Coordinate conventions:

* files (XML, ``comp4_det_test_<class>.txt``) use the devkit's 1-based coordinates;
* :class:`VOCEvaluator` takes ground truth and model outputs in the project's 0-based
  continuous convention, ``(xmin - 1, ymin - 1, xmax, ymax)`` of the XML box (the data
  code's conversion), and maps both back with :func:`to_devkit_boxes`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.evaluation.outputs import (
    ImageDetections,
    check_batch,
    image_detections,
    to_numpy,
)
from detector.evaluation.voc_io import (
    VOCDetections,
    VOCObject,
    find_voc_results_files,
    load_voc_annotations,
    read_voc_results_file,
    write_voc_results_file,
)
from detector.utils.tables import format_number, format_table

__all__ = [
    "ClassGroundTruth",
    "ClassResult",
    "VOCEvaluator",
    "devkit_iou",
    "evaluate_voc_class",
    "format_voc_table",
    "score_voc_results",
    "to_devkit_boxes",
    "voc_ap",
    "voc_gt_from_coco",
]


def voc_ap(recall: np.ndarray, precision: np.ndarray, *, use_07_metric: bool) -> float:
    """Average precision of one precision/recall curve, as the VOC devkit computes it.

    Args:
        recall: (N,) cumulative recall at each ranked detection (non-decreasing).
        precision: (N,) cumulative precision at each ranked detection.
        use_07_metric: VOC2007 11-point AP (mean over the 11 thresholds ``t`` of
            ``np.arange(0.0, 1.1, 0.1)`` of the best precision at recall ``>= t``, 0 if none);
            otherwise the VOC2010+ all-point AP (area under the monotone precision envelope).

    The 11 thresholds are those of py-faster-rcnn's ``voc_eval.py`` (also used by detectron2
    and MMDetection): ``np.arange`` gives ``0.30000000000000004``, ``0.6000000000000001`` and
    ``0.7000000000000001``, so a recall of exactly 0.3, 0.6 or 0.7 does not reach them.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.ndim != 1 or recall.shape != precision.shape:
        raise ValueError(
            f"recall and precision must be 1-D of equal length, got {recall.shape} and "
            f"{precision.shape}"
        )
    if use_07_metric:
        thresholds = np.arange(0.0, 1.1, 0.1)
        best = [precision[recall >= t].max(initial=0.0) for t in thresholds]
        return float(np.mean(best))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def devkit_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with boxes (M, 4), 1-based inclusive xyxy (+1 pixel widths)."""
    iw = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]) + 1.0
    ih = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]) + 1.0
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    area = (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
    areas = (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)
    return inter / (area + areas - inter)


def to_devkit_boxes(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) 0-based continuous xyxy (``xmin - 1, ymin - 1, xmax, ymax``) -> 1-based devkit."""
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) + np.array([1.0, 1.0, 0.0, 0.0])


@dataclass(frozen=True)
class ClassGroundTruth:
    """One image's ground truth for one class: boxes (M, 4) 1-based xyxy, difficult (M,)."""

    boxes: np.ndarray
    difficult: np.ndarray


@dataclass(frozen=True)
class ClassResult:
    """One class at one IoU threshold: AP, the PR curve (N,), and non-difficult GT count."""

    ap: float
    recall: np.ndarray
    precision: np.ndarray
    num_positives: int


def _match_detections(
    detections: VOCDetections,
    ground_truth: Mapping[Hashable, ClassGroundTruth],
    iou_thresh: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Devkit TP/FP flags (N,) for detections ranked by descending score."""
    order = np.argsort(-detections.scores, kind="stable")
    matched = {img: np.zeros(len(gt.boxes), dtype=bool) for img, gt in ground_truth.items()}
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for rank, index in enumerate(order):
        image_id = detections.image_ids[index]
        gt = ground_truth.get(image_id)
        if gt is None or len(gt.boxes) == 0:
            fp[rank] = 1.0
            continue
        overlaps = devkit_iou(detections.boxes[index], gt.boxes)
        best = int(np.argmax(overlaps))
        if overlaps[best] < iou_thresh:
            fp[rank] = 1.0
        elif gt.difficult[best]:
            continue  # "don't care": neither TP nor FP
        elif matched[image_id][best]:
            fp[rank] = 1.0  # duplicate detection of an already matched box
        else:
            tp[rank] = 1.0
            matched[image_id][best] = True
    return tp, fp


def evaluate_voc_class(
    detections: VOCDetections,
    ground_truth: Mapping[Hashable, ClassGroundTruth],
    *,
    iou_thresh: float = 0.5,
    use_07_metric: bool = True,
) -> ClassResult:
    """Devkit evaluation of one class.

    Args:
        detections: the class's detections over all images (1-based boxes).
        ground_truth: image id -> that image's boxes of this class (1-based); images
            absent from the mapping have no boxes of this class.
        iou_thresh: minimum IoU for a true positive (``>=``, as the devkit).
        use_07_metric: 11-point (VOC2007) or all-point (VOC2010+) AP.

    Returns:
        The class's AP (NaN when it has no non-difficult ground truth).
    """
    num_positives = int(
        sum(int((~gt.difficult.astype(bool)).sum()) for gt in ground_truth.values())
    )
    tp, fp = _match_detections(detections, ground_truth, iou_thresh)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if num_positives == 0:
        return ClassResult(math.nan, np.full_like(tp, math.nan), precision, 0)
    recall = tp / num_positives
    ap = voc_ap(recall, precision, use_07_metric=use_07_metric)
    return ClassResult(ap, recall, precision, num_positives)


def _summarize(
    per_threshold: Mapping[float, Mapping[str, ClassResult]], use_07_metric: bool
) -> dict[str, Any]:
    """Metrics dict from per-threshold, per-class results; the first threshold is primary."""
    per_iou: dict[float, dict[str, Any]] = {}
    for thresh, results in per_threshold.items():
        aps = {name: r.ap for name, r in results.items()}
        valid = [ap for ap in aps.values() if not math.isnan(ap)]
        per_iou[thresh] = {
            "mAP": float(np.mean(valid)) if valid else math.nan,
            "per_class_AP": aps,
        }
    primary = per_iou[next(iter(per_iou))]
    return {
        "mAP": primary["mAP"],
        "per_class_AP": primary["per_class_AP"],
        "per_iou": per_iou,
        "use_07_metric": use_07_metric,
    }


def _check_thresholds(iou_thresholds: Sequence[float]) -> tuple[float, ...]:
    thresholds = tuple(float(t) for t in iou_thresholds)
    if not thresholds or not all(0.0 < t <= 1.0 for t in thresholds):
        raise ValueError(f"iou_thresholds must be a non-empty list in (0, 1], got {iou_thresholds}")
    return thresholds


def _evaluate_classes(
    class_inputs: Mapping[str, tuple[VOCDetections, Mapping[Hashable, ClassGroundTruth]]],
    iou_thresholds: Sequence[float],
    use_07_metric: bool,
) -> dict[str, Any]:
    per_threshold = {
        thresh: {
            name: evaluate_voc_class(dets, gt, iou_thresh=thresh, use_07_metric=use_07_metric)
            for name, (dets, gt) in class_inputs.items()
        }
        for thresh in _check_thresholds(iou_thresholds)
    }
    return _summarize(per_threshold, use_07_metric)


def format_voc_table(metrics: Mapping[str, Any]) -> str:
    """Per-class AP (percent) with one column per IoU threshold, and the mAP row."""
    per_iou: Mapping[float, Mapping[str, Any]] = metrics["per_iou"]
    thresholds = list(per_iou)
    names = list(per_iou[thresholds[0]]["per_class_AP"])
    rows = [
        [name, *[format_number(per_iou[t]["per_class_AP"][name]) for t in thresholds]]
        for name in names
    ]
    rows.append(["mAP", *[format_number(per_iou[t]["mAP"]) for t in thresholds]])
    metric = "VOC07 11-point" if metrics.get("use_07_metric", True) else "all-point"
    headers = ["class", *[f"AP@{t:.2f}" for t in thresholds]]
    return f"VOC AP ({metric}):\n" + format_table(headers, rows)


def _ground_truth_from_xml(
    objects: Mapping[str, list[VOCObject]], class_name: str
) -> dict[Hashable, ClassGroundTruth]:
    gt: dict[Hashable, ClassGroundTruth] = {}
    for image_id, objs in objects.items():
        mine = [o for o in objs if o.name == class_name]
        gt[image_id] = ClassGroundTruth(
            boxes=np.array([o.box for o in mine], dtype=np.float64).reshape(-1, 4),
            difficult=np.array([o.difficult for o in mine], dtype=bool),
        )
    return gt


def score_voc_results(
    annotations: str | Path | Sequence[str | Path],
    results: str | Path | Mapping[str, str | Path],
    *,
    class_names: Sequence[str],
    iou_thresh: float | Sequence[float] = 0.5,
    use_07_metric: bool = True,
) -> dict[str, Any]:
    """Score devkit result files against VOC XML annotations, without a model.

    Args:
        annotations: a directory of ``<image_id>.xml`` files, or a list of XML files;
            the evaluated image set is exactly these images.
        results: ``{class name: results file}`` or a directory of
            ``comp4_det_test_<class>.txt`` files (1-based ``image_id score xmin ymin
            xmax ymax`` lines).
        class_names: the classes to score.
        iou_thresh: one IoU threshold, or several (the first is the primary ``mAP``).
        use_07_metric: 11-point (VOC2007) or all-point (VOC2010+) AP.

    Returns:
        ``{"mAP", "per_class_AP", "per_iou": {thresh: {"mAP", "per_class_AP"}},
        "use_07_metric"}``, as :meth:`VOCEvaluator.evaluate`.

    Raises:
        ValueError: malformed XML or result line (naming file and line number), a
            detection for an image that has no annotation file.
    """
    objects = load_voc_annotations(annotations)
    files = find_voc_results_files(results, class_names)
    class_inputs = {}
    for name in class_names:
        dets = read_voc_results_file(files[name])
        unknown = sorted(set(dets.image_ids) - set(objects))
        if unknown:
            raise ValueError(
                f"VOC results file {files[name]}: image ids without annotation: {unknown[:5]}"
            )
        class_inputs[name] = (dets, _ground_truth_from_xml(objects, name))
    thresholds = [iou_thresh] if isinstance(iou_thresh, int | float) else list(iou_thresh)
    return _evaluate_classes(class_inputs, thresholds, use_07_metric)


def voc_gt_from_coco(
    coco_gt: Mapping[str, Any], label_to_cat_id: Mapping[int, int]
) -> dict[Hashable, dict[str, np.ndarray]]:
    """COCO ground truth -> :class:`VOCEvaluator`'s ``gt`` (every image, possibly empty).

    ``bbox`` ``[x, y, w, h]`` (0-based continuous pixels) becomes ``(x, y, x + w, y + h)``;
    ``iscrowd`` marks the devkit's ``difficult`` boxes, which is how the data code keeps
    them in a VOC dataset's ``coco_gt()`` (for true COCO data it makes crowd regions
    "don't care", as COCO itself does).

    Raises:
        ValueError: ``"coco_gt annotations[<index>]: ..."`` for a category without label.
    """
    cat_to_label = {int(cid): int(lbl) for lbl, cid in label_to_cat_id.items()}
    per_image: dict[Hashable, list[tuple[list[float], int, bool]]] = {
        img["id"]: [] for img in coco_gt["images"]
    }
    for index, ann in enumerate(coco_gt["annotations"]):
        if ann["category_id"] not in cat_to_label:
            raise ValueError(
                f"coco_gt annotations[{index}]: category_id {ann['category_id']!r} has no label"
            )
        x, y, w, h = (float(v) for v in ann["bbox"])
        label = cat_to_label[ann["category_id"]]
        per_image[ann["image_id"]].append(([x, y, x + w, y + h], label, bool(ann.get("iscrowd"))))
    return {
        image_id: {
            "boxes": np.array([e[0] for e in entries], dtype=np.float64).reshape(-1, 4),
            "labels": np.array([e[1] for e in entries], dtype=np.int64),
            "difficult": np.array([e[2] for e in entries], dtype=bool),
        }
        for image_id, entries in per_image.items()
    }


@dataclass
class _ClassCollector:
    """Growing per-class detection lists of :class:`VOCEvaluator` (1-based boxes)."""

    image_ids: list[Hashable]
    scores: list[np.ndarray]
    boxes: list[np.ndarray]

    def detections(self) -> VOCDetections:
        if not self.scores:
            return VOCDetections.empty()
        return VOCDetections(
            image_ids=list(self.image_ids),
            scores=np.concatenate(self.scores),
            boxes=np.concatenate(self.boxes).reshape(-1, 4),
        )


class VOCEvaluator:
    """Collect per-image detector outputs and score them with the VOC devkit rules.

    Ground truth and outputs use the project's 0-based continuous boxes (XML box
    ``(xmin, ymin, xmax, ymax)`` -> ``(xmin - 1, ymin - 1, xmax, ymax)``); both are
    converted back to the devkit's 1-based boxes, so the scores equal the devkit's on
    the original XML.  Only processed images are scored.
    """

    def __init__(
        self,
        *,
        class_names: Sequence[str],
        gt: Mapping[Hashable, Mapping[str, Any]],
        iou_thresholds: Sequence[float] = (0.5,),
        use_07_metric: bool = True,
    ) -> None:
        """
        Args:
            class_names: the K foreground class names; label ``k`` (1..K) is
                ``class_names[k - 1]`` (no background entry).
            gt: image id -> ``{"boxes": (M, 4) 0-based xyxy, "labels": (M,) in 1..K,
                "difficult": (M,) bool}`` (arrays or tensors; ``difficult`` optional).
            iou_thresholds: IoU thresholds; the first gives the primary ``mAP``.
            use_07_metric: 11-point (VOC2007, default) or all-point (VOC2010+) AP.
        """
        self.class_names = list(class_names)
        self.iou_thresholds = _check_thresholds(iou_thresholds)
        self.use_07_metric = use_07_metric
        self._gt = {image_id: self._parse_gt(image_id, entry) for image_id, entry in gt.items()}
        self.reset()

    def _parse_gt(self, image_id: Hashable, entry: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
        for key in ("boxes", "labels"):
            if key not in entry:
                raise ValueError(f"ground truth for image {image_id!r} is missing {key!r}")
        boxes = to_devkit_boxes(to_numpy(entry["boxes"]))
        labels = to_numpy(entry["labels"]).astype(np.int64).reshape(-1)
        difficult = entry.get("difficult")
        difficult = np.zeros(len(labels), bool) if difficult is None else to_numpy(difficult)
        difficult = difficult.astype(bool).reshape(-1)
        if not len(boxes) == len(labels) == len(difficult):
            raise ValueError(
                f"ground truth for image {image_id!r}: boxes/labels/difficult lengths differ"
            )
        if len(labels) and (labels.min() < 1 or labels.max() > len(self.class_names)):
            raise ValueError(
                f"ground truth for image {image_id!r}: labels must be in 1..{len(self.class_names)}, "
                f"got {sorted(set(labels.tolist()))}"
            )
        return boxes, labels, difficult

    @classmethod
    def from_coco_gt(
        cls,
        *,
        coco_gt: Mapping[str, Any],
        label_to_cat_id: Mapping[int, int],
        iou_thresholds: Sequence[float] = (0.5,),
        use_07_metric: bool = True,
    ) -> VOCEvaluator:
        """Build from COCO-format ground truth (e.g. a VOC dataset's ``coco_gt()``).

        See :func:`voc_gt_from_coco` for the conversion; class names are the categories'
        names in label order (labels must be 1..K).
        """
        labels = sorted(label_to_cat_id)
        if labels != list(range(1, len(labels) + 1)):
            raise ValueError(f"label_to_cat_id keys must be 1..K, got {labels}")
        names = {int(c["id"]): str(c["name"]) for c in coco_gt["categories"]}
        missing = sorted({int(c) for c in label_to_cat_id.values()} - set(names))
        if missing:
            raise ValueError(f"label_to_cat_id maps to category ids not in coco_gt: {missing}")
        return cls(
            class_names=[names[int(label_to_cat_id[lbl])] for lbl in labels],
            gt=voc_gt_from_coco(coco_gt, label_to_cat_id),
            iou_thresholds=iou_thresholds,
            use_07_metric=use_07_metric,
        )

    def reset(self) -> None:
        """Forget every processed image."""
        self._collectors = [_ClassCollector([], [], []) for _ in self.class_names]
        self._image_ids: list[Hashable] = []
        self._seen: set[Hashable] = set()

    def process(self, image_ids: Sequence[Hashable], outputs: Sequence[Mapping[str, Any]]) -> None:
        """Add one batch: per image, ``"boxes"`` (N, 4) 0-based xyxy in original image
        pixels, ``"scores"`` (N,), ``"labels"`` (N,) in 1..K.

        Raises:
            ValueError: unknown or repeated image id, label outside 1..K, bad output.
        """
        check_batch(image_ids, outputs)
        if len(set(image_ids)) != len(image_ids):
            raise ValueError(f"image ids repeat within the batch: {list(image_ids)}")
        # check the whole batch before storing anything: a bad output leaves no trace
        batch = [self._checked(i, out) for i, out in zip(image_ids, outputs, strict=True)]
        for image_id, dets in zip(image_ids, batch, strict=True):
            boxes = to_devkit_boxes(dets.boxes)
            for k, collector in enumerate(self._collectors, start=1):
                keep = dets.labels == k
                collector.image_ids.extend([image_id] * int(keep.sum()))
                collector.scores.append(dets.scores[keep])
                collector.boxes.append(boxes[keep])
            self._image_ids.append(image_id)
            self._seen.add(image_id)

    def _checked(self, image_id: Hashable, output: Mapping[str, Any]) -> ImageDetections:
        if image_id not in self._gt:
            raise ValueError(f"image id {image_id!r} is not in the ground truth")
        if image_id in self._seen:
            raise ValueError(f"image id {image_id!r} was already processed")
        dets = image_detections(image_id, output)
        num_classes = len(self.class_names)
        bad = sorted({int(v) for v in dets.labels if not 1 <= v <= num_classes})
        if bad:
            raise ValueError(
                f"output for image {image_id!r} has labels {bad} outside 1..{num_classes}"
            )
        return dets

    def _class_ground_truth(self, label: int) -> dict[Hashable, ClassGroundTruth]:
        gt = {}
        for image_id in self._image_ids:
            boxes, labels, difficult = self._gt[image_id]
            keep = labels == label
            gt[image_id] = ClassGroundTruth(boxes=boxes[keep], difficult=difficult[keep])
        return gt

    def evaluate(self) -> dict[str, Any]:
        """Score the processed images.

        Returns:
            ``{"mAP", "per_class_AP"}`` at the first IoU threshold, ``"per_iou"``:
            ``{thresh: {"mAP", "per_class_AP"}}`` for every threshold, and
            ``"use_07_metric"``.  A class without non-difficult ground truth in the
            processed images has AP NaN and is left out of the mAP.

        Raises:
            RuntimeError: nothing has been processed yet.
        """
        if not self._image_ids:
            raise RuntimeError("VOCEvaluator.evaluate() called before any process() call")
        class_inputs = {
            name: (collector.detections(), self._class_ground_truth(k))
            for k, (name, collector) in enumerate(
                zip(self.class_names, self._collectors, strict=True), start=1
            )
        }
        return _evaluate_classes(class_inputs, self.iou_thresholds, self.use_07_metric)

    def save_results(
        self,
        directory: str | Path,
        *,
        prefix: str = "comp4_det_test_",
        image_names: Mapping[Hashable, str] | None = None,
    ) -> dict[str, Path]:
        """Write one devkit results file per class (``<prefix><class>.txt``, 1-based boxes).

        Args:
            image_names: image id -> the id written in the file (the devkit uses the image
                name, e.g. ``2007_000027``); default: the ids as they are.
        """
        files = {}
        for name, collector in zip(self.class_names, self._collectors, strict=True):
            dets = collector.detections()
            if image_names is not None:
                dets = VOCDetections(
                    image_ids=[image_names[i] for i in dets.image_ids],
                    scores=dets.scores,
                    boxes=dets.boxes,
                )
            files[name] = write_voc_results_file(Path(directory) / f"{prefix}{name}.txt", dets)
        return files
