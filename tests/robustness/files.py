"""Writers of small generated datasets (COCO json, VOC XML) and of odd image files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112


def solid(width: int, height: int, colour: tuple[int, int, int] = (200, 30, 60)) -> Image.Image:
    """An RGB image of one colour."""
    return Image.new("RGB", (width, height), colour)


def save_jpeg_with_orientation(img: Image.Image, path: Path, orientation: int) -> None:
    """Save ``img`` (its stored grid) as a JPEG whose EXIF says ``orientation``."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    img.save(path, format="JPEG", quality=95, exif=exif.tobytes())


def write_noise_jpeg(path: Path, width: int = 64, height: int = 48) -> None:
    """A JPEG of random pixels (hard to compress: truncating it cuts into the pixel data)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file to ``keep`` of its bytes (the header survives, the pixels do not)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def coco_image(image_id: int, file_name: str, width: int, height: int) -> dict[str, Any]:
    return {"id": image_id, "file_name": file_name, "width": width, "height": height}


def coco_ann(ann_id: int, image_id: int, bbox: list[Any], category_id: int = 1) -> dict[str, Any]:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "iscrowd": 0,
    }


def write_coco(root: Path, images: list[dict[str, Any]], annotations: list[dict[str, Any]]) -> Path:
    """``root/ann.json`` with categories ``1: a``, ``2: b``; returns its path."""
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps(data))
    return ann_file


def voc_object(name: str, box: tuple[Any, Any, Any, Any]) -> str:
    xmin, ymin, xmax, ymax = box
    return (
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{xmin}</xmin>"
        f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


def write_voc_image(
    root: Path, name: str, objects: list[str], size: tuple[int, int] | None, image: Image.Image
) -> None:
    """``JPEGImages/<name>.jpg`` (PNG bytes under a .jpg name: lossless) and its XML;
    ``size=(width, height)`` or ``None`` for no ``<size>`` element."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    image.save(root / "JPEGImages" / f"{name}.jpg", format="PNG")
    size_xml = (
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
        if size is not None
        else ""
    )
    xml = f"<annotation><filename>{name}.jpg</filename>{size_xml}{''.join(objects)}</annotation>"
    (root / "Annotations" / f"{name}.xml").write_text(xml)


def write_split(root: Path, names: list[str], split: str = "train") -> None:
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")


def write_voc_pair(
    xml_dir: Path,
    image_dir: Path,
    name: str,
    objects: list[str],
    *,
    image_file: str | None = None,
    filename: str | None = None,
    size: tuple[int, int] = (30, 20),
) -> None:
    """``xml_dir/<name>.xml`` and its image ``image_dir/<image_file>`` (default
    ``<name>.jpg``; PNG bytes: lossless) of ``size=(width, height)``; the XML's ``<filename>``
    is ``filename`` (default: ``image_file``), any folder layout (flat: both the same)."""
    image_file = image_file or f"{name}.jpg"
    xml_dir.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    solid(*size).save(image_dir / image_file, format="PNG")
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
    xml = (
        f"<annotation><filename>{filename if filename is not None else image_file}</filename>"
        f"{size_xml}{''.join(objects)}</annotation>"
    )
    (xml_dir / f"{name}.xml").write_text(xml)
