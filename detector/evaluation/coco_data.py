"""Loading COCO ground truth and validating COCO-format detection results.

Both COCO engines (pycocotools, faster_coco_eval) fail on bad input with bare
``KeyError`` / ``AssertionError`` deep inside their code, or silently score garbage
(a NaN box).  This module checks everything up front and raises ``ValueError``
naming the offending file / entry, and returns *copies*, because both engines
mutate the dictionaries they are given (``loadRes`` adds ``area``/``id``,
``_prepare`` adds ``ignore`` to ground-truth annotations).
"""

from __future__ import annotations

import copy
import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

RESULT_KEYS: tuple[str, ...] = ("image_id", "category_id", "bbox", "score")
_GT_TOP_KEYS: tuple[str, ...] = ("images", "annotations", "categories")
_GT_ANN_KEYS: tuple[str, ...] = ("id", "image_id", "category_id", "bbox")


def read_json(path: str | Path, *, what: str) -> Any:
    """Read a JSON file, raising ``ValueError`` / ``FileNotFoundError`` naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} file {path} is not valid JSON: {err}") from err


def load_coco_gt(source: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """Return a validated deep copy of a COCO ground-truth dataset.

    Args:
        source: a COCO instances dict (``images``, ``annotations``, ``categories``)
            or the path of such a JSON file.

    Returns:
        A deep copy safe to hand to an engine.  Annotations missing ``iscrowd`` get
        ``0`` and annotations missing ``area`` get ``w * h`` (both engines need them).

    Raises:
        ValueError: a top-level key or an annotation field is missing; the message
            names the file (if any) and the annotation index.
    """
    origin = (
        f"COCO ground truth {source}" if isinstance(source, str | Path) else "COCO ground truth"
    )
    if isinstance(source, str | Path):
        data = read_json(source, what="COCO ground truth")
    else:
        data = copy.deepcopy(dict(source))
    if not isinstance(data, dict):
        raise ValueError(f"{origin}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in _GT_TOP_KEYS if k not in data]
    if missing:
        raise ValueError(f"{origin}: missing top-level key(s) {missing}")
    for index, ann in enumerate(data["annotations"]):
        absent = [k for k in _GT_ANN_KEYS if k not in ann]
        if absent:
            raise ValueError(f"{origin}: annotations[{index}] is missing {absent}")
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
    return data


def category_names(gt: Mapping[str, Any]) -> dict[int, str]:
    """Map category id -> name (``str(id)`` when a category has no name)."""
    return {int(c["id"]): str(c.get("name", c["id"])) for c in gt["categories"]}


def _is_id(value: object) -> bool:
    return isinstance(value, numbers.Integral | str) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _result_problem(entry: object, image_ids: set, category_ids: set) -> str | None:
    """Describe what is wrong with one results entry, or return ``None`` if it is valid."""
    if not isinstance(entry, Mapping):
        return f"expected a dict, got {type(entry).__name__}"
    missing = [k for k in RESULT_KEYS if k not in entry]
    if missing:
        return f"missing key(s) {missing}"
    image_id, category_id, bbox, score = (entry[k] for k in RESULT_KEYS)
    if not _is_id(image_id) or image_id not in image_ids:
        return f"unknown image_id {image_id!r} (not in the ground truth images)"
    if not _is_id(category_id) or category_id not in category_ids:
        return f"unknown category_id {category_id!r} (not in the ground truth categories)"
    if isinstance(bbox, str | bytes) or not isinstance(bbox, Sequence) or len(bbox) != 4:
        return f"bbox must be a list of 4 numbers [x, y, w, h], got {bbox!r}"
    if not all(_is_finite_number(v) for v in bbox):
        return f"bbox has a non-finite or non-numeric value: {bbox!r}"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"bbox has negative width/height: {bbox!r}"
    if not _is_finite_number(score):
        return f"score must be a finite number, got {score!r}"
    return None


def validate_coco_results(
    results: Iterable[Mapping[str, Any]], gt: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Check COCO results entries against ``gt`` and return normalised copies.

    Each entry must be ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
    with ids present in ``gt`` and finite numbers.  Returned entries contain exactly
    these four keys as plain Python ``int``/``float`` (numpy scalars are converted).

    Raises:
        ValueError: ``"results[<index>]: <problem>"`` for the first malformed entry.
    """
    image_ids = {img["id"] for img in gt["images"]}
    category_ids = {cat["id"] for cat in gt["categories"]}
    clean: list[dict[str, Any]] = []
    for index, entry in enumerate(results):
        problem = _result_problem(entry, image_ids, category_ids)
        if problem is not None:
            raise ValueError(f"results[{index}]: {problem}")
        image_id, category_id = entry["image_id"], entry["category_id"]
        clean.append(
            {
                "image_id": image_id if isinstance(image_id, str) else int(image_id),
                "category_id": category_id if isinstance(category_id, str) else int(category_id),
                "bbox": [float(v) for v in entry["bbox"]],
                "score": float(entry["score"]),
            }
        )
    return clean
