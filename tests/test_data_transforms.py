"""Transforms: resize scale, flip, clipping, empty boxes, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.data.transforms import build_transforms, clip_boxes, resize_scale, resized_shape

BOX = np.array([[10.0, 20.0, 30.0, 40.0]])


def _image(height: int = 100, width: int = 200, value: int = 51) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


@pytest.mark.parametrize(
    ("height", "width", "short", "max_size", "scale"),
    [
        (100, 200, 50, 1000, 0.5),  # shorter side rules
        (100, 400, 100, 200, 0.5),  # longer side capped: min(1.0, 200 / 400)
        (480, 640, 600, 1000, 1.25),
        (640, 480, 600, 700, 700 / 640),
    ],
)
def test_resize_scale(height: int, width: int, short: int, max_size: int, scale: float) -> None:
    assert resize_scale(height, width, short, max_size) == pytest.approx(scale)


def test_resized_shape() -> None:
    assert resized_shape(480, 640, 1.25) == (600, 800)
    assert resized_shape(333, 500, 600 / 333) == (600, 901)
    assert resized_shape(3, 1000, 0.1) == (1, 100)  # never zero


def test_test_transform_uses_last_size_and_scales_boxes() -> None:
    transform = build_transforms(train=False, min_sizes=[100, 800], max_size=1000)
    image, boxes, labels = transform(_image(), BOX, np.array([3]))
    # scale = min(800 / 100, 1000 / 200) = 5
    assert image.shape == (3, 500, 1000) and image.dtype == torch.float32
    np.testing.assert_allclose(boxes, [[50.0, 100.0, 150.0, 200.0]], atol=1e-3)
    assert boxes.dtype == np.float32 and labels.dtype == np.int64 and labels.tolist() == [3]
    assert torch.allclose(image, torch.full_like(image, 51 / 255))


def test_horizontal_flip_coordinates() -> None:
    transform = build_transforms(train=True, min_sizes=[50], max_size=1000, flip_prob=1.0)
    image, boxes, _ = transform(_image(), BOX, np.array([1]))
    # resized to 50x100: box -> [5, 10, 15, 20]; flipped in width 100: x -> 100 - x
    assert image.shape == (3, 50, 100)
    np.testing.assert_allclose(boxes, [[85.0, 10.0, 95.0, 20.0]], atol=1e-3)


def test_flip_moves_pixels_with_boxes() -> None:
    source = _image(10, 20, 0)
    source[:, :5] = 255  # bright left quarter
    transform = build_transforms(train=True, min_sizes=[10], max_size=100, flip_prob=1.0)
    image, boxes, _ = transform(source, np.array([[0.0, 0.0, 5.0, 10.0]]), np.array([1]))
    assert image[:, :, -5:].min() == 1.0 and image[:, :, :15].max() == 0.0
    np.testing.assert_allclose(boxes, [[15.0, 0.0, 20.0, 10.0]], atol=1e-3)


def test_no_flip_when_probability_is_zero() -> None:
    transform = build_transforms(train=True, min_sizes=[50], max_size=1000, flip_prob=0.0)
    _, boxes, _ = transform(_image(), BOX, np.array([1]))
    np.testing.assert_allclose(boxes, [[5.0, 10.0, 15.0, 20.0]], atol=1e-3)


@pytest.mark.parametrize("train", [True, False])
def test_empty_boxes(train: bool) -> None:
    transform = build_transforms(train=train, min_sizes=[50], max_size=1000)
    image, boxes, labels = transform(_image(), np.zeros((0, 4)), np.zeros((0,), dtype=np.int64))
    assert image.shape == (3, 50, 100)
    assert boxes.shape == (0, 4) and boxes.dtype == np.float32
    assert labels.shape == (0,) and labels.dtype == np.int64


def test_boxes_are_clipped_and_empty_ones_dropped_with_labels() -> None:
    transform = build_transforms(train=False, min_sizes=[100], max_size=1000)  # scale 1
    boxes_in = np.array([[-5, -5, 10, 10], [250, 10, 300, 20], [190, 90, 250, 120]], dtype=float)
    _, boxes, labels = transform(_image(), boxes_in, np.array([1, 2, 3]))
    np.testing.assert_allclose(boxes, [[0, 0, 10, 10], [190, 90, 200, 100]], atol=1e-3)
    assert labels.tolist() == [1, 3]


def test_clip_boxes() -> None:
    boxes, labels = clip_boxes(
        np.array([[-1.0, 2.0, 5.0, 50.0], [4.0, 4.0, 4.0, 8.0]]),
        np.array([7, 8]),
        height=10,
        width=6,
    )
    assert boxes.tolist() == [[0.0, 2.0, 5.0, 10.0]] and labels.tolist() == [7]


def test_training_sizes_are_random_but_seeded() -> None:
    transform = build_transforms(train=True, min_sizes=[50, 100], max_size=1000)

    def heights(seed: int) -> list[int]:
        torch.manual_seed(seed)
        return [transform(_image(), BOX, np.array([1]))[0].shape[1] for _ in range(30)]

    first = heights(0)
    assert set(first) == {50, 100}
    assert heights(0) == first
    assert heights(1) != first


def test_color_jitter_changes_pixels_not_boxes() -> None:
    transform = build_transforms(
        train=True, min_sizes=[100], max_size=1000, flip_prob=0.0, color_jitter=0.4
    )
    torch.manual_seed(0)
    source = np.random.default_rng(0).integers(0, 256, size=(100, 200, 3), dtype=np.uint8)
    image, boxes, _ = transform(source, BOX, np.array([1]))
    assert not torch.allclose(image, torch.from_numpy(source).permute(2, 0, 1) / 255, atol=0.02)
    np.testing.assert_allclose(boxes, BOX, atol=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_sizes": []}, "min_sizes"),
        ({"min_sizes": [0]}, "min_sizes"),
        ({"max_size": 0}, "max_size"),
        ({"flip_prob": 1.5}, "flip_prob"),
        ({"color_jitter": -0.1}, "color_jitter"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    args = {"train": True, "min_sizes": [50], "max_size": 100, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_transforms(**args)


def test_rejects_bad_inputs() -> None:
    transform = build_transforms(train=False, min_sizes=[50], max_size=100)
    with pytest.raises(ValueError, match="uint8"):
        transform(_image().astype(np.float32), BOX, np.array([1]))
    with pytest.raises(ValueError, match="labels"):
        transform(_image(), BOX, np.array([1, 2]))
