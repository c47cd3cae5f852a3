"""tools/infer.py's engine (``infer(cfg)``) on a tiny trained run, and the box drawing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from detector.engine.build import build_model
from detector.engine.checkpoint import load_checkpoint
from detector.engine.predict import infer, list_images, output_name
from detector.engine.train import train
from detector.engine.validation import run_inference
from detector.utils.visualize import PALETTE, caption, draw_detections, label_color
from tests.helpers import CONFIG_DIR, TINY, compose_config

FEW_PROPOSALS = ["model.rpn_post_nms_top_n.testing=16"]  # the per-region head dominates on CPU


def test_draw_detections_outlines_boxes_in_class_colours() -> None:
    image = np.full((60, 80, 3), 7, dtype=np.uint8)
    drawn = draw_detections(
        image,
        boxes=np.array([[10, 20, 50, 55], [60, 5, 200, 30]]),  # the second leaves the image
        labels=np.array([2, 1]),
        scores=np.array([0.9, 0.4]),
        class_names=["cat", "dog"],
        line_width=1,
    )
    assert drawn.shape == image.shape and (image == 7).all()  # input untouched
    assert tuple(drawn[50, 10]) == label_color(2) == PALETTE[1]  # left edge, below the caption
    assert tuple(drawn[55, 30]) == label_color(2)  # bottom edge
    assert tuple(drawn[29, 79]) == label_color(1)  # the clipped box's right edge: last column
    assert (drawn[57:, :8] == 7).all() and (drawn[40:50, 15:45] == 7).all()  # outside / inside
    assert caption(2, 0.9, ["cat", "dog"]) == "dog 0.90" and caption(5, 0.1, []) == "class 5 0.10"
    empty = draw_detections(image, np.zeros((0, 4)), np.zeros(0), np.zeros(0), ["cat"])
    assert (empty == image).all()
    with pytest.raises(ValueError, match="uint8"):
        draw_detections(image.astype(np.float32), np.zeros((0, 4)), np.zeros(0), np.zeros(0), [])


def test_list_images(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither an image file nor a folder"):
        list_images(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no image files"):
        list_images(tmp_path)
    for name in ("b.JPG", "a.png", "notes.txt", "c.bmp"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "c.bmp"]
    assert [output_name(p) for p in list_images(tmp_path)] == ["a.png", "b.JPG", "c.png"]


def _infer_cfg(**values):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("infer", overrides=[f"{k}={v}" for k, v in values.items()])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 1-iteration synthetic run (96 px images) and its data root."""
    tmp = tmp_path_factory.mktemp("infer")
    overrides = [*TINY, "solver.max_iter=1", "eval.enabled=false", *FEW_PROPOSALS]
    cfg = compose_config(
        "train", [*overrides, f"dataset.root={tmp / 'data'}", f"output_dir={tmp / 'run'}"]
    )
    train(cfg)
    return tmp / "run", tmp / "data"


def test_infer_matches_the_evaluation_path(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, data = tiny_run
    images = tmp_path / "images"
    images.mkdir()
    (images / "000002.png").write_bytes((data / "val" / "000002.png").read_bytes())
    (images / "notes.txt").write_text("not an image")
    result = infer(
        _infer_cfg(checkpoint=run, input=images, score_thresh=0.0, output_dir=tmp_path / "out")
    )

    saved = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert saved == result
    assert saved["class_names"] == ["circle", "square", "triangle", "cross"]
    # reference: the model rebuilt from the checkpoint, run through the evaluation path
    # (dataset val transforms, test loader, run_inference's rescaling to original pixels)
    run_cfg = compose_config("train", [*TINY, *FEW_PROPOSALS, f"dataset.root={data}"])
    model = build_model(run_cfg, torch.device("cpu"))
    model.load_state_dict(load_checkpoint(run)["model"])
    model.eval()
    val = instantiate(run_cfg.dataset.val, _convert_="all")
    subset = torch.utils.data.Subset(val, [1])
    loader = torch.utils.data.DataLoader(subset, batch_size=1, collate_fn=lambda b: tuple(zip(*b)))
    _, expected, _ = run_inference(model, loader, device=torch.device("cpu"))
    assert len(saved["images"]) == len(expected) == 1
    record, ref = saved["images"][0], expected[0]
    assert record["output"] == "000002.png"
    assert (record["height"], record["width"]) == val.image_sizes()[1]
    assert len(record["detections"]) == len(ref["scores"]) > 0
    boxes = np.array([d["box"] for d in record["detections"]])
    np.testing.assert_allclose(boxes, ref["boxes"].numpy(), atol=0.01)
    scores = [d["score"] for d in record["detections"]]
    np.testing.assert_allclose(scores, ref["scores"].numpy(), atol=1e-5)
    assert [d["label"] for d in record["detections"]] == ref["labels"].tolist()
    names = saved["class_names"]
    assert all(d["class_name"] == names[d["label"] - 1] for d in record["detections"])
    drawn = np.asarray(Image.open(tmp_path / "out" / "000002.png"))
    original = np.asarray(Image.open(images / "000002.png"))
    assert drawn.shape == original.shape and (drawn != original).any()


def test_infer_threshold_and_single_file(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, data = tiny_run
    image = data / "val" / "000003.png"
    result = infer(_infer_cfg(checkpoint=run, input=image, score_thresh=1.01, output_dir=tmp_path))
    assert [r["detections"] for r in result["images"]] == [[]]
    # nothing above the threshold: the PNG written is the input, unchanged
    assert (np.asarray(Image.open(tmp_path / "000003.png")) == np.asarray(Image.open(image))).all()
    with pytest.raises(ValueError, match="would overwrite the input images"):
        infer(_infer_cfg(checkpoint=run, input=image, output_dir=image.parent))
