"""The heatmap codec on synthetic heatmaps whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from micronet.errors import MicronetError
from micronet.pose.decode import (COCO_FLIP_PAIRS, COCO_KEYPOINT_NAMES, argmax_keypoints, combine_flip, crop_affine,
                                  decode, flip_back, quarter_offset, to_image)

H, W = 64, 48


def gaussian(x: float, y: float, h: int = H, w: int = W, sigma: float = 2.0, peak: float = 1.0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return peak * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))


def maps_at(points, h: int = H, w: int = W) -> np.ndarray:
    """(1, K, h, w) heatmaps with one Gaussian per keypoint at ``points`` [(x, y), ...]."""
    return np.stack([gaussian(x, y, h, w) for x, y in points])[None]


def test_coco_names_and_pairs_agree():
    assert len(COCO_KEYPOINT_NAMES) == 17
    for left, right in COCO_FLIP_PAIRS:
        assert COCO_KEYPOINT_NAMES[left].replace("left_", "") == COCO_KEYPOINT_NAMES[right].replace("right_", "")


def test_argmax_and_scores():
    maps = maps_at([(10, 20), (0, 0), (47, 63)])
    maps[0, 1] *= 0.5
    xy, scores = argmax_keypoints(maps)
    assert xy.tolist() == [[[10, 20], [0, 0], [47, 63]]]
    assert np.allclose(scores, [[1.0, 0.5, 1.0]])


@pytest.mark.parametrize("true_x, true_y", [(10.3, 20.0), (10.0, 20.4), (10.6, 19.7), (25.0, 30.0)])
def test_quarter_pixel_towards_the_higher_neighbour(true_x, true_y):
    maps = maps_at([(true_x, true_y)])
    xy, _ = argmax_keypoints(maps)
    refined = quarter_offset(maps, xy)[0, 0]
    assert abs(refined[0] - true_x) <= abs(xy[0, 0, 0] - true_x) + 1e-9
    assert abs(refined[1] - true_y) <= abs(xy[0, 0, 1] - true_y) + 1e-9
    expected = [round(v) + 0.25 * np.sign(v - round(v)) for v in (true_x, true_y)]
    assert refined.tolist() == pytest.approx(expected)


def test_no_shift_on_the_border():
    maps = maps_at([(0, 63)])
    xy, _ = argmax_keypoints(maps)
    assert quarter_offset(maps, xy)[0, 0].tolist() == [0.0, 63.0]


def test_flip_back_mirrors_and_swaps_left_and_right():
    points = [(5 + i, 3 + 2 * i) for i in range(17)]
    plain = maps_at(points)
    # what the network would give on the mirrored crop: each keypoint mirrored, left and right traded
    mirrored = [None] * 17
    for j, (x, y) in enumerate(points):
        mirrored[j] = (W - 1 - x, y)
    for left, right in COCO_FLIP_PAIRS:
        mirrored[left], mirrored[right] = mirrored[right], mirrored[left]
    flipped = maps_at(mirrored)
    assert np.allclose(flip_back(flipped), plain)
    assert np.allclose(combine_flip(plain, flipped), plain)


def test_crop_affine_round_trip():
    box = (100.0, 50.0, 96.0, 128.0)  # 256x192 crop region at stride 4 -> 64x48 heatmap: 1 hm px = 2 img px
    affine = crop_affine(box, (H, W))
    # the heatmap's outer edges are the box's edges; pixel centres map to pixel centres
    corners = to_image(np.array([[-0.5, -0.5], [W - 0.5, H - 0.5]]), affine)
    assert np.allclose(corners, [[99.5, 49.5], [195.5, 177.5]])
    assert np.allclose(to_image(np.array([[0.0, 0.0]]), affine), [[100.5, 50.5]])  # first 2x2 block's centre


def test_decode_end_to_end_with_flip_and_per_sample_affines():
    points = [(10.3 + i, 20.0 + i) for i in range(17)]
    plain = np.concatenate([maps_at(points), maps_at(points)])
    mirrored = [(W - 1 - x, y) for x, y in points]
    for left, right in COCO_FLIP_PAIRS:
        mirrored[left], mirrored[right] = mirrored[right], mirrored[left]
    flipped = np.concatenate([maps_at(mirrored), maps_at(mirrored)])
    affines = np.stack([crop_affine((0, 0, W, H), (H, W)), crop_affine((100, 50, 2 * W, 2 * H), (H, W))])
    out = decode(torch.from_numpy(plain), affines, flipped=torch.from_numpy(flipped))
    assert out.xy.shape == (2, 17, 2) and out.scores.shape == (2, 17)
    assert np.abs(out.xy[0] - np.array(points)).max() <= 0.25  # identity crop: heatmap == image pixels
    # 2 image pixels per heatmap pixel: x_img = 100.5 + 2 x_hm (pixel centres to pixel centres)
    assert np.abs((out.xy[1] - [100.5, 50.5]) / 2 - np.array(points)).max() <= 0.25
    assert np.all(out.scores > 0.9)


@pytest.mark.parametrize("bad", [np.zeros((17, H, W)), np.zeros((1, 17, 0, W))])
def test_bad_heatmaps_are_one_line(bad):
    with pytest.raises(MicronetError, match="must be \\(batch, keypoints, height, width\\)"):
        decode(bad, crop_affine((0, 0, W, H), (H, W)))


def test_bad_box_and_affine_are_one_line():
    with pytest.raises(MicronetError, match="positive width and height"):
        crop_affine((0, 0, 0, 10), (H, W))
    with pytest.raises(MicronetError, match="affine must be"):
        decode(np.zeros((2, 17, H, W)), np.zeros((3, 2, 3)))
    with pytest.raises(MicronetError, match="flip pair \\(5, 6\\) needs 7 heatmaps, got 5"):
        flip_back(np.zeros((1, 5, H, W)))


def test_decodes_the_networks_heatmaps():
    from micronet.pose_model import build_pose_model

    torch.manual_seed(0)
    model = build_pose_model("pose-m0").eval()
    crop = torch.randn(1, 3, 256, 192)
    with torch.no_grad():
        plain, mirrored = model(crop), model(crop.flip(-1))
    out = decode(plain, crop_affine((0, 0, 192, 256), (64, 48)), flipped=mirrored)
    assert out.xy.shape == (1, 17, 2) and np.isfinite(out.scores).all()
    assert (out.xy >= -0.5).all() and (out.xy[..., 0] <= 191.5).all() and (out.xy[..., 1] <= 255.5).all()
