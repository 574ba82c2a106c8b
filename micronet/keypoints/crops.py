"""Top-down crops: a person box to the network's input, and heatmap positions back to the image.

The box is centred, widened to the input's aspect ratio (192:256) and padded by 1.25 (the convention of
SimpleBaseline and HRNet, which the paper's pose models follow), so limbs at the box's edge stay inside.
Coordinates are continuous with pixel i spanning [i, i+1) ("edge" coordinates); COCO's keypoints are
pixel centres, so they are shifted by half a pixel on the way in and out. One scale per axis and no
rotation, so the transform is a scale and an offset per axis, exact both ways.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from micronet.errors import MicronetError

#: Extra context around a box (SimpleBaseline's 1.25).
BOX_PADDING = 1.25


@dataclass(frozen=True)
class CropTransform:
    """The crop of ``size`` (H, W) px whose edge-coordinate origin sits at ``origin`` (x, y) in the image,
    ``scale`` image px per crop px."""

    origin: tuple[float, float]
    scale: float
    size: tuple[int, int]

    def to_image(self, points: np.ndarray, stride: float = 1.0) -> np.ndarray:
        """Positions (…, 2) as x, y pixel centres on a map of ``stride`` crop px per cell (4 for
        heatmaps) → COCO image pixel centres."""
        points = np.asarray(points, dtype=np.float64)
        edge = (points + 0.5) * stride * self.scale + np.asarray(self.origin)
        return edge - 0.5

    def to_crop(self, points: np.ndarray, stride: float = 1.0) -> np.ndarray:
        """The inverse of ``to_image``."""
        points = np.asarray(points, dtype=np.float64)
        return (points + 0.5 - np.asarray(self.origin)) / (self.scale * stride) - 0.5

    def crop(self, image: Image.Image) -> Image.Image:
        """The crop itself (bilinear; outside the image is black, as zero padding after normalising is not
        zero, black is what a photo's border would be)."""
        height, width = self.size
        x0, y0 = self.origin
        # PIL samples the input at a·(u+0.5) + c for output pixel u: edge coordinates, as here.
        return image.transform((width, height), Image.Transform.AFFINE,
                               (self.scale, 0.0, x0, 0.0, self.scale, y0), resample=Image.Resampling.BILINEAR)


def crop_transform(box: tuple[float, float, float, float], size: tuple[int, int] = (256, 192),
                   padding: float = BOX_PADDING) -> CropTransform:
    """The crop of a box (x, y, w, h; COCO's pixel-edge box) for an input of ``size`` (H, W)."""
    x, y, w, h = (float(v) for v in box)
    if not (w > 0 and h > 0):
        raise MicronetError(f"person box {box} has no area")
    out_h, out_w = size
    aspect = out_w / out_h
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    scale = w * padding / out_w
    centre_x, centre_y = x + float(box[2]) / 2, y + float(box[3]) / 2
    return CropTransform((centre_x - out_w * scale / 2, centre_y - out_h * scale / 2), scale, (out_h, out_w))
