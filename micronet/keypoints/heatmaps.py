"""Keypoints ↔ heatmaps, as the paper decodes them (§6.1): the highest heat value, moved a quarter pixel
towards its higher neighbour; flip test by averaging with the mirrored image's heatmaps.

Heatmap cell (i, j) is a pixel centre at x = j, y = i of a map ``stride`` (4) times coarser than the
crop; ``crops.CropTransform.to_image(points, stride)`` takes decoded positions to the image.
"""

from __future__ import annotations

import numpy as np

from micronet.errors import MicronetError

from .coco import FLIP_PAIRS

#: The Gaussian of the training target, in heatmap cells (SimpleBaseline's 2 at 64×48).
TARGET_SIGMA = 2.0


def encode_heatmaps(points: np.ndarray, visible: np.ndarray, shape: tuple[int, int],
                    sigma: float = TARGET_SIGMA) -> np.ndarray:
    """Training targets: one unnormalised Gaussian (peak 1) per visible keypoint at ``points`` (K, 2) in
    heatmap cells; an invisible or off-map keypoint gets an all-zero map."""
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    maps = np.zeros((len(points), height, width), dtype=np.float32)
    for k, ((x, y), seen) in enumerate(zip(np.asarray(points, dtype=np.float64), visible)):
        if seen and -0.5 <= x < width - 0.5 and -0.5 <= y < height - 0.5:
            maps[k] = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))
    return maps


def decode_heatmaps(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(…, K, H, W) → positions (…, K, 2) as x, y in heatmap cells, and scores (…, K): each map's
    maximum, shifted by a quarter cell along each axis towards the larger of its two neighbours."""
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    if heatmaps.ndim < 3 or min(heatmaps.shape) < 1:
        raise MicronetError(f"heatmaps must be (…, keypoints, height, width), got shape {heatmaps.shape}")
    *lead, height, width = heatmaps.shape
    flat = heatmaps.reshape(-1, height * width)
    index = flat.argmax(axis=1)
    scores = flat[np.arange(len(flat)), index]
    y, x = np.divmod(index, width)
    maps = heatmaps.reshape(-1, height, width)
    rows = np.arange(len(maps))
    px, py = x.astype(np.float64), y.astype(np.float64)
    inner_x = (x > 0) & (x < width - 1)
    inner_y = (y > 0) & (y < height - 1)
    dx = np.where(inner_x, maps[rows, y, np.minimum(x + 1, width - 1)] - maps[rows, y, np.maximum(x - 1, 0)], 0.0)
    dy = np.where(inner_y, maps[rows, np.minimum(y + 1, height - 1), x] - maps[rows, np.maximum(y - 1, 0), x], 0.0)
    px += 0.25 * np.sign(dx)
    py += 0.25 * np.sign(dy)
    positions = np.stack([px, py], axis=-1).reshape(*lead, 2)
    return positions, scores.reshape(*lead)


def flip_back(heatmaps: np.ndarray) -> np.ndarray:
    """The heatmaps of a mirrored crop, mirrored back with left and right keypoints swapped, so they can be
    averaged with the unmirrored crop's (the flip test)."""
    flipped = np.asarray(heatmaps)[..., ::-1].copy()
    swapped = flipped.copy()
    for left, right in FLIP_PAIRS:
        swapped[..., left, :, :] = flipped[..., right, :, :]
        swapped[..., right, :, :] = flipped[..., left, :, :]
    return swapped
