"""Read and write the Pascal VOC devkit's files: XML annotations and detection results.

Coordinates here are always the devkit's own: 1-based, inclusive pixel indices, exactly
as written in the XML ``<bndbox>`` and in ``comp4_det_test_<class>.txt`` result files
(one detection per line: ``image_id score xmin ymin xmax ymax``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_BOX_TAGS: tuple[str, ...] = ("xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True)
class VOCObject:
    """One ``<object>`` of a VOC XML file; ``box`` is (xmin, ymin, xmax, ymax), 1-based."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool


@dataclass(frozen=True)
class VOCDetections:
    """Detections of one class: image_ids (N,), scores (N,), boxes (N, 4) 1-based xyxy."""

    image_ids: list[str]
    scores: np.ndarray
    boxes: np.ndarray

    @classmethod
    def empty(cls) -> VOCDetections:
        return cls(image_ids=[], scores=np.zeros(0), boxes=np.zeros((0, 4)))


def _child_text(node: ET.Element, tag: str, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{where}: missing <{tag}>")
    return child.text.strip()


def _parse_object(node: ET.Element, where: str) -> VOCObject:
    name = _child_text(node, "name", where)
    bndbox = node.find("bndbox")
    if bndbox is None:
        raise ValueError(f"{where} ({name}): missing <bndbox>")
    try:
        box = tuple(float(_child_text(bndbox, t, f"{where} ({name})")) for t in _BOX_TAGS)
    except ValueError as err:
        raise ValueError(f"{where} ({name}): bad <bndbox>: {err}") from err
    difficult = node.find("difficult")
    flag = difficult is not None and (difficult.text or "0").strip() not in ("0", "")
    return VOCObject(name=name, box=box, difficult=flag)  # type: ignore[arg-type]


def parse_voc_xml(path: str | Path) -> list[VOCObject]:
    """Parse the ``<object>`` entries of one VOC XML file (missing ``<difficult>`` = 0).

    Raises:
        ValueError: malformed XML or an object without ``<name>``/``<bndbox>``; the
            message names the file and the object's index.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"VOC annotation {path}: invalid XML: {err}") from err
    return [
        _parse_object(node, f"VOC annotation {path}, object {i}")
        for i, node in enumerate(root.findall("object"))
    ]


def load_voc_annotations(
    annotations: str | Path | Sequence[str | Path],
) -> dict[str, list[VOCObject]]:
    """Parse every XML file of a directory (or an explicit list), keyed by file stem.

    The stem (``2007_000549`` for ``2007_000549.xml``) is the image id used by the
    devkit's image sets and result files.
    """
    if isinstance(annotations, str | Path):
        directory = Path(annotations)
        if not directory.is_dir():
            raise FileNotFoundError(f"VOC annotation directory not found: {directory}")
        files = sorted(directory.glob("*.xml"))
        if not files:
            raise ValueError(f"no *.xml files in VOC annotation directory {directory}")
    else:
        files = [Path(f) for f in annotations]
    parsed: dict[str, list[VOCObject]] = {}
    for file in files:
        if file.stem in parsed:
            raise ValueError(f"duplicate VOC annotation for image {file.stem!r}: {file}")
        parsed[file.stem] = parse_voc_xml(file)
    return parsed


def _parse_result_line(line: str, where: str) -> tuple[str, float, list[float]]:
    fields = line.split()
    if len(fields) != 6:
        raise ValueError(
            f"{where}: expected 6 fields 'image_id score xmin ymin xmax ymax', got {len(fields)}"
        )
    try:
        numbers = [float(v) for v in fields[1:]]
    except ValueError as err:
        raise ValueError(f"{where}: non-numeric score or coordinate: {err}") from err
    if not np.isfinite(numbers).all():
        raise ValueError(f"{where}: non-finite score or coordinate")
    return fields[0], numbers[0], numbers[1:]


def read_voc_results_file(path: str | Path) -> VOCDetections:
    """Read a devkit results file (``image_id score xmin ymin xmax ymax`` per line).

    Blank lines are skipped.

    Raises:
        ValueError: ``"<file>:<line number>: <problem>"`` for a malformed line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VOC results file not found: {path}")
    image_ids: list[str] = []
    scores: list[float] = []
    boxes: list[list[float]] = []
    with path.open("r", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            image_id, score, box = _parse_result_line(line, f"{path}:{number}")
            image_ids.append(image_id)
            scores.append(score)
            boxes.append(box)
    if not image_ids:
        return VOCDetections.empty()
    return VOCDetections(image_ids=image_ids, scores=np.array(scores), boxes=np.array(boxes))


def write_voc_results_file(path: str | Path, detections: VOCDetections) -> Path:
    """Write one class's detections (1-based boxes) in the devkit results format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for image_id, score, box in zip(
            detections.image_ids, detections.scores, detections.boxes, strict=True
        ):
            coords = " ".join(f"{v:.2f}" for v in box)
            f.write(f"{image_id} {score:.6f} {coords}\n")
    return path


def find_voc_results_files(
    results: str | Path | Mapping[str, str | Path], class_names: Sequence[str]
) -> dict[str, Path]:
    """Map each class to its results file.

    Args:
        results: ``{class name: file}``, or a directory holding one
            ``<comp>_det_<imageset>_<class>.txt`` file per class (e.g.
            ``comp4_det_test_cat.txt``; ``<imageset>`` has no underscore).
        class_names: the classes to score.

    Raises:
        ValueError / FileNotFoundError: a class has no file, several candidate files,
            or the mapping names a class not in ``class_names``.
    """
    if isinstance(results, Mapping):
        extra = sorted(set(results) - set(class_names))
        missing = [c for c in class_names if c not in results]
        if extra or missing:
            raise ValueError(
                f"results files do not match class_names: unknown {extra}, missing {missing}"
            )
        return {c: Path(results[c]) for c in class_names}
    directory = Path(results)
    if not directory.is_dir():
        raise FileNotFoundError(f"VOC results directory not found: {directory}")
    files: dict[str, Path] = {}
    for name in class_names:
        pattern = re.compile(rf"^.+_det_[^_]+_{re.escape(name)}\.txt$")
        matches = sorted(p for p in directory.iterdir() if pattern.match(p.name))
        if len(matches) != 1:
            raise ValueError(
                f"VOC results directory {directory}: expected one '*_det_*_{name}.txt' "
                f"file for class {name!r}, found {[m.name for m in matches]}"
            )
        files[name] = matches[0]
    return files
