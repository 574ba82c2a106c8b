"""The evaluation transform against hand-computed cases of torchvision's Resize + CenterCrop + Normalize."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from micronet.errors import MicronetError
from micronet.preprocess import (Preprocessing, center_crop, load_batch, preprocess, resize_shorter_side,
                                 to_nhwc)

NO_NORMALISATION = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def columns_image(red_columns: list[int], height_px: int) -> Image.Image:
    """Red varies by column only, green is a constant 100, blue 0: a 1-D case in a 2-D image."""
    pixels = np.zeros((height_px, len(red_columns), 3), dtype=np.uint8)
    pixels[:, :, 0] = red_columns
    pixels[:, :, 1] = 100
    return Image.fromarray(pixels, "RGB")


def test_released_sizes() -> None:
    assert Preprocessing().resize_size == 256  # int(224 / 0.875)
    assert Preprocessing(input_size=160).resize_size == 182  # int(182.86), truncated
    assert Preprocessing(input_size=192).resize_size == 219


def test_resize_truncates_the_long_side_like_torchvision() -> None:
    bilinear = Image.Resampling.BILINEAR
    assert resize_shorter_side(Image.new("RGB", (7, 10)), 4, bilinear).size == (4, 5)  # 4*10/7 = 5.71 -> 5
    assert resize_shorter_side(Image.new("RGB", (10, 7)), 4, bilinear).size == (5, 4)
    assert resize_shorter_side(Image.new("RGB", (6, 9)), 4, bilinear).size == (4, 6)


def test_center_crop_rounds_half_to_even_like_torchvision() -> None:
    img = columns_image([0, 10, 20, 30, 40, 50, 60], height_px=4)
    # left = round((7 - 2) / 2) = round(2.5) = 2 in Python (not 3), top = round(1.0) = 1
    cropped = np.asarray(center_crop(img, 2))
    assert cropped[:, :, 0].tolist() == [[20, 30], [20, 30]]


def test_hand_computed_bilinear_downscale_then_crop() -> None:
    # 8x8 image, red column k = 3*k^2: [0, 3, 12, 27, 48, 75, 108, 147]. input 2, ratio 0.5 -> resize to 4.
    # PIL's antialiased bilinear halving: output column j averages input columns 2j-1..2j+2 with weights
    # (1/4, 3/4, 3/4, 1/4) / 2, so j=1 -> (3/4 + 12*3/4 + 27*3/4 + 48/4) / 2 = 21 and j=2 -> 63.
    # CenterCrop(2) of 4 keeps columns 1..2 and rows 1..2.
    img = columns_image([3 * k * k for k in range(8)], height_px=8)
    chw = preprocess(img, Preprocessing(input_size=2, crop_ratio=0.5, **NO_NORMALISATION))
    assert chw.shape == (3, 2, 2) and chw.dtype == np.float32
    np.testing.assert_allclose(chw[0] * 255, [[21, 63], [21, 63]], atol=1e-4)
    np.testing.assert_allclose(chw[1] * 255, 100, atol=1e-4)
    np.testing.assert_allclose(chw[2], 0)


def test_imagenet_normalisation_hand_computed() -> None:
    chw = preprocess(Image.new("RGB", (300, 260), (255, 0, 128)), Preprocessing())
    assert chw.shape == (3, 224, 224)
    # (1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128/255 - 0.406) / 0.225
    expected = [2.2489083, -2.0357143, 0.4264924]
    for channel, value in enumerate(expected):
        np.testing.assert_allclose(chw[channel], value, rtol=1e-6)


def test_grey_input_is_treated_as_rgb() -> None:
    grey = preprocess(Image.new("L", (20, 20), 77), Preprocessing(input_size=8, **NO_NORMALISATION))
    np.testing.assert_allclose(grey, 77 / 255, rtol=1e-6)


def test_dict_round_trip_through_json() -> None:
    p = Preprocessing(input_size=160, crop_ratio=0.9, interpolation="bicubic")
    record = json.loads(json.dumps(p.to_dict()))
    assert record["resize_size"] == 177
    assert Preprocessing.from_dict(record) == p


@pytest.mark.parametrize("record, message", [
    ({"input_size": 224, "resize_size": 250}, "disagrees"),
    ({"input_size": 224, "colour_jitter": 0.4}, "unknown preprocessing keys"),
    ({"interpolation": "area"}, "interpolation must be one of"),
    ({"crop_ratio": 1.5}, "crop ratio"),
    ({"crop_ratio": "0.875"}, "crop ratio"),
    ({"std": ["wide", 1, 1]}, "must be numbers"),
    ({"input_size": 0}, "input size"),
    ({"mean": [0.5, 0.5]}, "3 values"),
])
def test_bad_preprocessing_is_a_user_error(record: dict, message: str) -> None:
    with pytest.raises(MicronetError, match=message):
        Preprocessing.from_dict(record)


def test_load_batch_skips_unreadable_files_and_keeps_order(tmp_path: Path) -> None:
    Image.new("RGB", (12, 10), (255, 255, 255)).save(tmp_path / "white.png")
    Image.new("RGB", (10, 12), (0, 0, 0)).save(tmp_path / "black.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    paths = [tmp_path / "white.png", tmp_path / "broken.png", tmp_path / "black.jpg"]
    batch, skipped = load_batch(paths, Preprocessing(input_size=8, **NO_NORMALISATION))
    assert batch.shape == (2, 3, 8, 8) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], 1.0)
    np.testing.assert_allclose(batch[1], 0.0, atol=2 / 255)  # JPEG may shift black by a level
    assert [(path.name, bool(reason)) for path, reason in skipped] == [("broken.png", True)]


def test_to_nhwc_moves_channels_last() -> None:
    batch = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    nhwc = to_nhwc(batch)
    assert nhwc.shape == (2, 4, 5, 3) and nhwc.flags["C_CONTIGUOUS"]
    assert nhwc[1, 2, 3, 0] == batch[1, 0, 2, 3]
    with pytest.raises(ValueError):
        to_nhwc(batch[0])
