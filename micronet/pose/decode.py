"""Heatmaps -> keypoints in image coordinates, as the paper evaluates (§6.1, after SimpleBaseline).

Steps, each its own function so each can be tested alone:

1. ``flip_back`` + ``combine_flip``: the flip test. The network also sees the horizontally flipped
   crop; its heatmaps are flipped back along W and their left/right channels swapped
   (``COCO_FLIP_PAIRS``), then averaged with the plain ones.
2. ``argmax_keypoints``: the maximum of each heatmap and its value (the keypoint's score).
3. ``quarter_offset``: move the maximum a quarter pixel towards the higher of its two neighbours,
   along x and along y (the paper's "towards the second-highest response"; the usual SimpleBaseline
   rule), which halves the quantisation error of a stride-4 heatmap on average.
4. ``crop_affine`` + ``to_image``: back from heatmap pixels to image pixels through the crop's affine
   transform (image -> heatmap), inverted. A plain box gives a scale + shift; a rotated crop works too.

Units: coordinates are pixels, (x, y), with integer values at pixel centres, in the heatmap (stride 4
at 256x192 input: 64x48) until ``to_image``. Arrays are numpy; torch tensors are accepted and converted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from micronet.errors import MicronetError

#: COCO's 17 keypoints, in the dataset's order (the heatmap channels).
COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
#: Channels that trade places when the image is mirrored (left <-> right); the nose stays.
COCO_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
#: The sub-pixel step towards the higher neighbour, in heatmap pixels.
QUARTER = 0.25


@dataclass(frozen=True)
class Keypoints:
    """Decoded keypoints: ``xy`` (N, K, 2) in image pixels and ``scores`` (N, K), the heatmap maxima."""

    xy: np.ndarray
    scores: np.ndarray


def _heatmaps(heatmaps, name: str = "heatmaps") -> np.ndarray:
    """(N, K, H, W) float array, or one line saying what came instead."""
    array = heatmaps.detach().cpu().numpy() if hasattr(heatmaps, "detach") else np.asarray(heatmaps)
    if array.ndim != 4 or min(array.shape, default=0) < 1:
        raise MicronetError(f"{name} must be (batch, keypoints, height, width), got shape {tuple(array.shape)}")
    return array.astype(np.float64, copy=False)


def flip_back(flipped, pairs=COCO_FLIP_PAIRS) -> np.ndarray:
    """Heatmaps of the mirrored crop, brought back to the crop's frame: W reversed, left/right swapped."""
    maps = _heatmaps(flipped, "flipped heatmaps")[..., ::-1].copy()
    for left, right in pairs:
        if max(left, right) >= maps.shape[1]:
            raise MicronetError(f"flip pair ({left}, {right}) needs {max(left, right) + 1} heatmaps, got {maps.shape[1]}")
        maps[:, [left, right]] = maps[:, [right, left]]
    return maps


def combine_flip(heatmaps, flipped, pairs=COCO_FLIP_PAIRS) -> np.ndarray:
    """The flip test: the mean of the heatmaps and the flipped crop's heatmaps brought back."""
    plain = _heatmaps(heatmaps)
    back = flip_back(flipped, pairs)
    if back.shape != plain.shape:
        raise MicronetError(f"flipped heatmaps have shape {back.shape}, the plain ones {plain.shape}")
    return (plain + back) / 2.0


def argmax_keypoints(heatmaps) -> tuple[np.ndarray, np.ndarray]:
    """Integer (x, y) of each heatmap's maximum, (N, K, 2) as floats, and the maxima (N, K).

    Ties go to the first position in row-major order (numpy's argmax).
    """
    maps = _heatmaps(heatmaps)
    n, k, h, w = maps.shape
    flat = maps.reshape(n, k, h * w)
    index = flat.argmax(axis=-1)
    scores = np.take_along_axis(flat, index[..., None], axis=-1)[..., 0]
    xy = np.stack([index % w, index // w], axis=-1).astype(np.float64)
    return xy, scores


def quarter_offset(heatmaps, xy: np.ndarray) -> np.ndarray:
    """``xy`` moved a quarter pixel, along each axis, towards the higher of the two neighbours.

    No move on an axis where the maximum sits on the border or both neighbours are equal.
    """
    maps = _heatmaps(heatmaps)
    _, _, h, w = maps.shape
    out = np.array(xy, dtype=np.float64, copy=True)
    for b in range(out.shape[0]):
        for j in range(out.shape[1]):
            x, y = int(out[b, j, 0]), int(out[b, j, 1])
            m = maps[b, j]
            if 0 < x < w - 1:
                out[b, j, 0] += QUARTER * np.sign(m[y, x + 1] - m[y, x - 1])
            if 0 < y < h - 1:
                out[b, j, 1] += QUARTER * np.sign(m[y + 1, x] - m[y - 1, x])
    return out


def crop_affine(box: tuple[float, float, float, float], heatmap_size: tuple[int, int]) -> np.ndarray:
    """The 2x3 affine from image pixels to heatmap pixels for an axis-aligned crop ``box`` (x0, y0, w, h).

    The box is the region the crop was resized from (already widened to the input's aspect ratio, as
    top-down pipelines do); ``heatmap_size`` is (H, W). Pixel centres map to pixel centres.
    """
    x0, y0, bw, bh = (float(v) for v in box)
    hh, hw = heatmap_size
    if bw <= 0 or bh <= 0:
        raise MicronetError(f"box {tuple(box)} must have a positive width and height (x0, y0, w, h)")
    sx, sy = hw / bw, hh / bh
    # x_hm + 0.5 = (x_img + 0.5 - x0) * sx  (edges to edges, hence centres to centres)
    return np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5]])


def to_image(xy: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Heatmap coordinates (..., 2) back to image pixels through the inverse of ``affine`` (image -> heatmap)."""
    matrix = np.vstack([np.asarray(affine, dtype=np.float64), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(matrix)[:2]
    points = np.asarray(xy, dtype=np.float64)
    return points @ inverse[:, :2].T + inverse[:, 2]


def decode(heatmaps, affine: np.ndarray, flipped=None, pairs=COCO_FLIP_PAIRS) -> Keypoints:
    """The whole codec: optional flip test, argmax, quarter-pixel shift, back to the image.

    ``affine`` maps image pixels to heatmap pixels (``crop_affine`` for a box), one (2, 3) matrix for
    the batch or one per sample, (N, 2, 3).
    """
    maps = combine_flip(heatmaps, flipped, pairs) if flipped is not None else _heatmaps(heatmaps)
    xy, scores = argmax_keypoints(maps)
    xy = quarter_offset(maps, xy)
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape == (2, 3):
        return Keypoints(to_image(xy, affine), scores)
    if affine.shape != (maps.shape[0], 2, 3):
        raise MicronetError(f"affine must be (2, 3) or ({maps.shape[0]}, 2, 3), got {affine.shape}")
    return Keypoints(np.stack([to_image(p, a) for p, a in zip(xy, affine)]), scores)
