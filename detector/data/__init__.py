"""Datasets, transforms and loaders: files -> dataset records -> transforms -> batches.

Every dataset follows the contract documented in :mod:`detector.data.base`.
"""

from detector.data.base import DatasetError, DetectionDataset, ImageRecord, require_boxes
from detector.data.coco import CocoDetection
from detector.data.concat import ConcatDetection
from detector.data.loader import build_test_loader, build_train_loader, collate
from detector.data.synthetic import (
    SHAPE_CLASSES,
    SyntheticShapesDetection,
    ensure_synthetic_dataset,
)
from detector.data.transforms import build_transforms
from detector.data.voc import VOC_CLASSES, VOCDetection

__all__ = [
    "SHAPE_CLASSES",
    "VOC_CLASSES",
    "CocoDetection",
    "ConcatDetection",
    "DatasetError",
    "DetectionDataset",
    "ImageRecord",
    "SyntheticShapesDetection",
    "VOCDetection",
    "build_test_loader",
    "build_train_loader",
    "build_transforms",
    "collate",
    "ensure_synthetic_dataset",
    "require_boxes",
]
