"""The one-line load report on the shared real datasets (skipped when ../shared is absent)."""

from __future__ import annotations

import logging

import pytest

from detector.data.coco import CocoDetection
from detector.data.voc import VOCDetection
from tests.helpers import SHARED

BCCD = SHARED / "data" / "bccd"
COCO128 = SHARED / "data" / "coco128"


@pytest.mark.skipif(not BCCD.is_dir(), reason="../shared/data/bccd not available")
def test_bccd_report_counts_the_two_zero_area_boxes(caplog) -> None:
    with caplog.at_level(logging.INFO):
        dataset = VOCDetection(root=BCCD, split="trainval", class_names=["RBC", "WBC", "Platelets"])
    assert dataset.load_report == (
        "VOCDetection(bccd/trainval): 292 images, 3941 boxes kept; 2 boxes dropped: zero-area=2"
    )
    assert dataset.load_report in caplog.text
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    for xml in ("BloodImage_00338.xml", "BloodImage_00343.xml"):
        assert sum(xml in m and "zero-area" in m for m in warnings) == 1


@pytest.mark.skipif(not COCO128.is_dir(), reason="../shared/data/coco128 not available")
@pytest.mark.parametrize(
    ("drop_empty", "report"),
    [
        (False, "128 images, 929 boxes kept; 10 boxes dropped: iscrowd (kept in coco_gt)=10"),
        (
            True,
            "126 images, 929 boxes kept; 10 boxes dropped: iscrowd (kept in coco_gt)=10; "
            "2 images dropped: no training box (drop_empty)=2",
        ),
    ],
)
def test_coco128_report_counts_crowd_boxes_and_empty_images(
    caplog, drop_empty: bool, report: str
) -> None:
    with caplog.at_level(logging.INFO):
        dataset = CocoDetection(
            image_dir=COCO128 / "train2017",
            ann_file=COCO128 / "annotations" / "instances_train2017.json",
            drop_empty=drop_empty,
            strict=True,  # crowd boxes and drop_empty are policy, not data errors
        )
    assert dataset.load_report == f"CocoDetection(instances_train2017.json): {report}"
    assert dataset.load_report in caplog.text
    assert dataset.load_fixes.endswith("repaired: converted to RGB from mode L=1")
