"""Odd and broken image files: converted, EXIF-handled, skipped at load or named when decoded."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.data.base import DatasetError
from detector.data.coco import CocoDetection
from detector.data.transforms import build_transforms
from tests.robustness.files import (
    coco_ann,
    coco_image,
    save_jpeg_with_orientation,
    solid,
    truncate,
    write_coco,
    write_noise_jpeg,
)


def _coco(root: Path, files: dict[str, tuple[int, int]], **kwargs) -> CocoDetection:
    """A COCO dataset over ``files`` (name -> annotated (width, height)), one box each."""
    images = [coco_image(i, name, w, h) for i, (name, (w, h)) in enumerate(files.items(), 1)]
    anns = [coco_ann(i, i, [1, 1, 4, 4]) for i in range(1, len(files) + 1)]
    ann_file = write_coco(root, images, anns)
    return CocoDetection(image_dir=root, ann_file=ann_file, **kwargs)


def test_modes_are_converted_to_rgb_uint8(tmp_path: Path) -> None:
    Image.new("L", (8, 6), 77).save(tmp_path / "grey.png")
    Image.new("RGBA", (8, 6), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    palette = Image.new("P", (8, 6), 1)
    palette.putpalette([0, 0, 0, 5, 250, 9] + [0] * 762)
    palette.save(tmp_path / "palette.png", transparency=0)
    deep = np.full((6, 8), 257 * 100, dtype=np.uint16)
    deep[0, 0], deep[0, 1] = 0, 65535
    Image.fromarray(deep).save(tmp_path / "deep.png")  # 16-bit greyscale
    Image.new("1", (8, 6), 1).save(tmp_path / "bilevel.png")
    names = ["grey.png", "rgba.png", "palette.png", "deep.png", "bilevel.png"]
    dataset = _coco(tmp_path, dict.fromkeys(names, (8, 6)))
    pixels = [(dataset[i][0] * 255).round().to(torch.uint8) for i in range(len(names))]
    for tensor in pixels:
        assert tensor.shape == (3, 6, 8)
    assert pixels[0][:, 3, 3].tolist() == [77, 77, 77]
    assert pixels[1][:, 3, 3].tolist() == [10, 20, 30]  # alpha dropped, colour kept
    assert pixels[2][:, 3, 3].tolist() == [5, 250, 9]  # palette expanded
    assert pixels[3][:, 3, 3].tolist() == [100, 100, 100]  # 16-bit scaled by 1/257, not clipped
    assert pixels[3][0, 0, :2].tolist() == [0, 255]
    assert pixels[4][:, 3, 3].tolist() == [255, 255, 255]
    for mode in ("L", "RGBA", "P", "I;16", "1"):
        assert f"converted to RGB from mode {mode}=1" in dataset.load_fixes


def test_png_bytes_under_a_jpg_name_load(tmp_path: Path) -> None:
    solid(8, 6, (1, 2, 3)).save(tmp_path / "really_png.jpg", format="PNG")
    dataset = _coco(tmp_path, {"really_png.jpg": (8, 6)})
    image, _ = dataset[0]
    assert (image[:, 0, 0] * 255).round().tolist() == [1, 2, 3]  # lossless: it was decoded as PNG


def _exif_image() -> Image.Image:
    """Stored 40x20: left half red, right half blue."""
    img = solid(40, 20, (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))
    return img


def test_exif_rotation_applied_when_annotation_has_the_rotated_size(tmp_path: Path) -> None:
    # orientation 6: display = stored rotated 90 degrees clockwise (the left half goes on top)
    save_jpeg_with_orientation(_exif_image(), tmp_path / "rot.jpg", 6)
    dataset = _coco(tmp_path, {"rot.jpg": (20, 40)})
    image, target = dataset[0]
    assert image.shape == (3, 40, 20) and target["orig_size"] == (40, 20)
    assert image[0, 5, 10] > 0.8 and image[2, 5, 10] < 0.2  # top: red
    assert image[2, 35, 10] > 0.8 and image[0, 35, 10] < 0.2  # bottom: blue
    assert torch.equal(target["boxes"], torch.tensor([[1.0, 1.0, 5.0, 5.0]]))
    assert "EXIF orientation applied=1" in dataset.load_fixes


def test_exif_rotation_ignored_when_annotation_has_the_stored_size(tmp_path: Path, caplog) -> None:
    save_jpeg_with_orientation(_exif_image(), tmp_path / "rot.jpg", 6)
    with caplog.at_level(logging.WARNING):
        dataset = _coco(tmp_path, {"rot.jpg": (40, 20)})
    image, _ = dataset[0]
    assert image.shape == (3, 20, 40)
    assert image[0, 10, 5] > 0.8 and image[2, 10, 35] > 0.8  # stored grid: red left, blue right
    assert "rot.jpg" in caplog.text and "EXIF orientation 6 ignored" in caplog.text


def test_unreadable_header_and_missing_file_skip_the_image(tmp_path: Path, caplog) -> None:
    solid(8, 6).save(tmp_path / "good.png")
    (tmp_path / "garbage.jpg").write_bytes(b"this is not an image at all")
    (tmp_path / "empty.jpg").write_bytes(b"")
    files = {"good.png": (8, 6), "garbage.jpg": (8, 6), "empty.jpg": (8, 6), "gone.jpg": (8, 6)}
    with caplog.at_level(logging.WARNING):
        dataset = _coco(tmp_path, files)
    assert [r.path.name for r in dataset.records] == ["good.png"]
    assert [i["file_name"] for i in dataset.coco_gt()["images"]] == ["good.png"]
    assert dataset.load_report.endswith(
        "1 images, 1 boxes kept; 3 boxes dropped: in a skipped image=3; 3 images dropped: "
        "image file not found=1, unreadable image header=2"
    )
    for name in ("garbage.jpg", "empty.jpg", "gone.jpg"):
        assert any(name in r.message for r in caplog.records if r.levelno == logging.WARNING)


def test_strict_mode_turns_an_image_skip_into_an_error(tmp_path: Path) -> None:
    (tmp_path / "garbage.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"garbage\.jpg: unreadable image header.*strict"):
        _coco(tmp_path, {"garbage.jpg": (8, 6)}, strict=True)


def test_size_differing_from_the_annotation_skips_the_image(tmp_path: Path) -> None:
    solid(8, 6).save(tmp_path / "a.png")
    solid(8, 6).save(tmp_path / "b.png")
    dataset = _coco(tmp_path, {"a.png": (8, 6), "b.png": (9, 6)})
    assert len(dataset) == 1
    assert "image size differs from the annotation=1" in dataset.load_report
    with pytest.raises(DatasetError, match=r"b\.png.*annotation 9x6, file 8x6"):
        _coco(tmp_path, {"a.png": (8, 6), "b.png": (9, 6)}, strict=True)


def test_truncated_pixels_raise_naming_the_file_when_decoded(tmp_path: Path) -> None:
    write_noise_jpeg(tmp_path / "cut.jpg")
    truncate(tmp_path / "cut.jpg")  # the header is intact: passes the load-time check
    dataset = _coco(tmp_path, {"cut.jpg": (64, 48)})
    assert len(dataset) == 1
    with pytest.raises(OSError, match=r"cannot decode image .*cut\.jpg.*truncated"):
        dataset[0]


def test_image_far_larger_than_the_training_size(tmp_path: Path) -> None:
    solid(3000, 2000).save(tmp_path / "huge.png")
    images = [coco_image(1, "huge.png", 3000, 2000)]
    ann_file = write_coco(tmp_path, images, [coco_ann(1, 1, [300, 200, 1200, 800])])
    transforms = build_transforms(train=False, min_sizes=[64], max_size=100)
    dataset = CocoDetection(image_dir=tmp_path, ann_file=ann_file, transforms=transforms)
    image, target = dataset[0]
    assert image.shape == (3, 64, 96)  # scale min(64 / 2000, 100 / 3000) = 0.032
    assert torch.allclose(target["boxes"], torch.tensor([[9.6, 6.4, 48.0, 32.0]]), atol=1e-4)


def test_decompression_bomb_is_skipped(tmp_path: Path, monkeypatch) -> None:
    solid(200, 100).save(tmp_path / "bomb.png")
    solid(8, 6).save(tmp_path / "ok.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 20000 px > 2x the limit: an error
    dataset = _coco(tmp_path, {"bomb.png": (200, 100), "ok.png": (8, 6)})
    assert [r.path.name for r in dataset.records] == ["ok.png"]
    assert "image too large to decode safely=1" in dataset.load_report
