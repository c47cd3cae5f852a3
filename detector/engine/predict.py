"""``infer(cfg)``: run a trained detector on image files, draw the detections, save them as JSON.

The run's saved config rebuilds the model (and its test-time wrapper, ``test``) and gives the
test-time transform (``dataset.val.transforms``); detections are mapped back to the original
image pixels before they are drawn and saved.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from detector.data.base import DetectionTransform, identity_transform, load_rgb
from detector.engine.build import (
    build_test_model,
    build_trained_model,
    open_run,
    resolve_device,
    resolve_output_dir,
)
from detector.inference.resize import rescale_detections
from detector.utils.visualize import draw_detections

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DETECTIONS_FILE = "detections.json"


def list_images(source: str | Path) -> list[Path]:
    """``source`` itself (an image file) or the image files directly inside a folder, sorted.

    Raises:
        FileNotFoundError: ``source`` does not exist, or the folder holds no image file.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input {str(path)!r} is neither an image file nor a folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
    return files


def output_name(path: Path) -> str:
    """File name of the drawn image: JPEG and PNG inputs keep their name, others become PNG."""
    return path.name if path.suffix.lower() in (".jpg", ".jpeg", ".png") else f"{path.stem}.png"


@torch.inference_mode()
def predict_image(
    model: torch.nn.Module, image: np.ndarray, transform: DetectionTransform, device: torch.device
) -> dict[str, np.ndarray]:
    """Detections of one ``uint8 (H, W, 3)`` image, in its own pixels:
    ``{"boxes": (N, 4) xyxy, "scores": (N,), "labels": (N,) in 1..K}``."""
    tensor, _, _ = transform(image, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))
    det = model([tensor.to(device)])[0]
    det = {k: v.detach().cpu() for k, v in det.items()}
    det = rescale_detections(det, tuple(tensor.shape[1:]), image.shape[:2])
    return {k: v.numpy() for k, v in det.items()}


def image_record(
    path: Path, image: np.ndarray, det: dict[str, np.ndarray], class_names: Sequence[str]
) -> dict[str, Any]:
    """The JSON entry of one image: its file, size and detections (xyxy in original pixels)."""
    return {
        "file": str(path),
        "output": output_name(path),
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "detections": [
            {
                "box": [round(float(v), 2) for v in box],
                "score": round(float(score), 5),
                "label": int(label),
                "class_name": class_names[int(label) - 1],
            }
            for box, score, label in zip(det["boxes"], det["scores"], det["labels"], strict=True)
        ],
    }


def infer(cfg: DictConfig) -> dict[str, Any]:
    """Detect objects in ``cfg.input`` (an image or a folder) with ``cfg.checkpoint``.

    Keeps detections with score >= ``cfg.score_thresh``; writes each image with its boxes drawn
    and ``detections.json`` into ``cfg.output_dir`` (null: the Hydra run directory). Returns the
    JSON content.
    """
    files = list_images(str(cfg.input))
    out = resolve_output_dir(cfg)
    if any((out / output_name(f)).resolve() == f.resolve() for f in files):
        raise ValueError(f"output_dir {out} would overwrite the input images; choose another one")
    run = open_run(str(cfg.checkpoint))
    run_cfg, path = run.config, run.path
    device = resolve_device(str(cfg.device))
    model = build_test_model(run_cfg, build_trained_model(run, device))
    val_transforms = run_cfg.dataset.val.get("transforms")
    transform = instantiate(val_transforms) if val_transforms is not None else identity_transform
    class_names = run.class_names
    threshold = float(cfg.score_thresh)
    records = []
    for file in tqdm(files, desc="infer", dynamic_ncols=True):
        image = load_rgb(file)
        det = predict_image(model, image, transform, device)
        keep = det["scores"] >= threshold
        det = {k: v[keep] for k, v in det.items()}
        records.append(image_record(file, image, det, class_names))
        drawn = draw_detections(image, det["boxes"], det["labels"], det["scores"], class_names)
        Image.fromarray(drawn).save(out / output_name(file), quality=95)
    result = {
        "checkpoint": str(path),
        "score_thresh": threshold,
        "class_names": class_names,
        "images": records,
    }
    (out / DETECTIONS_FILE).write_text(json.dumps(result, indent=2))
    logger.info("wrote %d images and %s to %s", len(records), DETECTIONS_FILE, out)
    return result
