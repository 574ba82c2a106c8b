"""Training samples for the pose models: augmented top-down crops with their target heatmaps.

The paper's recipe (§6.1): crops of 256×192 from the person boxes, random rotation ±45°, random scale
0.65–1.35, horizontal flip, half-body augmentation. The paper names half-body without its settings; ours
are those of the code base it follows (HRNet / SimpleBaseline's COCO configs): with probability 0.3, a
person with more than 8 labelled joints is cropped around only its upper body (nose to wrists) or only its
lower body (hips to ankles), chosen at random, falling back to the other half when the chosen one has
fewer than 2 labelled joints; the crop is the joints' bounding box, widened to the input's aspect ratio
and padded by 1.5 (instead of the whole-person box's 1.25). It teaches the model people cut by the image
border or by occlusion, which whole-box crops never show. The crop is one affine map (crop → image),
applied to the pixels by PIL and to the keypoints by its inverse, so pixels and targets cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from micronet.images import load_rgb
from micronet.preprocess import normalise

from .coco import FLIP_PAIRS, CocoKeypoints
from .crops import BOX_PADDING, crop_transform
from .heatmaps import TARGET_SIGMA, encode_heatmaps
from .predict import HEATMAP_STRIDE, IMAGENET


#: COCO's upper-body joints (nose, eyes, ears, shoulders, elbows, wrists); the rest (hips, knees, ankles)
#: are the lower body.
UPPER_BODY = tuple(range(11))
#: Half-body crops are padded by this much around their joints (HRNet's 1.5; whole boxes get BOX_PADDING).
HALF_BODY_PADDING = 1.5


@dataclass(frozen=True)
class Augmentation:
    """Random rotation (± degrees), scale range, flip probability and half-body probability (for people with
    more than ``half_body_joints`` labelled joints); ``none()`` for evaluation crops."""

    rotation: float = 45.0
    scale: tuple[float, float] = (0.65, 1.35)
    flip: float = 0.5
    half_body: float = 0.3
    half_body_joints: int = 8

    @classmethod
    def none(cls) -> "Augmentation":
        return cls(rotation=0.0, scale=(1.0, 1.0), flip=0.0, half_body=0.0)


def half_body_box(keypoints: np.ndarray, upper_first: bool) -> tuple[float, float, float, float] | None:
    """The box (x, y, w, h, pixel edges) around the labelled joints of one half of a person: the upper half
    when ``upper_first`` (else the lower), the other half when that one has fewer than 2; None when
    neither has 2."""
    labelled = keypoints[:, 2] > 0
    upper = [i for i in UPPER_BODY if labelled[i]]
    lower = [i for i in range(len(keypoints)) if i not in UPPER_BODY and labelled[i]]
    first, second = (upper, lower) if upper_first else (lower, upper)
    chosen = first if len(first) >= 2 else second
    if len(chosen) < 2:
        return None
    points = keypoints[chosen, :2] + 0.5  # pixel centres → edges
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    return float(x0), float(y0), max(float(x1 - x0), 1.0), max(float(y1 - y0), 1.0)


def _crop_to_image(box, input_size, angle_deg: float, scale: float, padding: float = BOX_PADDING) -> np.ndarray:
    """The 3×3 affine taking crop edge coordinates to image edge coordinates: the box's crop (as
    evaluation takes it) scaled by ``scale`` and rotated by ``angle_deg`` about the box's centre."""
    base = crop_transform(box, input_size, padding)
    out_h, out_w = input_size
    s = base.scale * scale
    cx, cy = base.origin[0] + out_w * base.scale / 2, base.origin[1] + out_h * base.scale / 2
    a = math.radians(angle_deg)
    cos, sin = math.cos(a) * s, math.sin(a) * s
    # x_img = R·S·(u - crop_centre) + box_centre
    return np.array([[cos, -sin, cx - cos * out_w / 2 + sin * out_h / 2],
                     [sin, cos, cy - sin * out_w / 2 - cos * out_h / 2],
                     [0.0, 0.0, 1.0]])


class KeypointCrops(Dataset):
    """(image CHW float32, target heatmaps K×H/4×W/4, target weights K) for each ground-truth person."""

    def __init__(self, split: CocoKeypoints, input_size: tuple[int, int] = (256, 192),
                 augmentation: Augmentation = Augmentation(), seed: int = 0) -> None:
        self.split = split
        self.people = split.person_boxes()
        annotations = {a["id"]: a for a in split.data["annotations"]}
        self.keypoints = [np.array(annotations[p.annotation_id]["keypoints"], float).reshape(-1, 3)
                          for p in self.people]
        self.input_size = input_size
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """A new draw of augmentations per epoch, the same on every resume."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.people)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        aug = self.augmentation
        angle = float(np.clip(rng.normal(0.0, aug.rotation / 2), -aug.rotation, aug.rotation)) if aug.rotation else 0.0
        scale = float(rng.uniform(*aug.scale))
        mirrored = bool(rng.random() < aug.flip)
        person = self.people[index]
        kp = self.keypoints[index]
        box, padding = person.box, BOX_PADDING
        # Drawn after the others, so turning half-body on or off leaves every other sample's crop as it was.
        half, upper_first = rng.random() < aug.half_body, rng.random() < 0.5
        if half and int((kp[:, 2] > 0).sum()) > aug.half_body_joints:
            half_box = half_body_box(kp, upper_first)
            if half_box is not None:
                box, padding = half_box, HALF_BODY_PADDING
        matrix = _crop_to_image(box, self.input_size, angle, scale, padding)
        out_h, out_w = self.input_size
        crop = load_rgb(person.image).transform((out_w, out_h), Image.Transform.AFFINE, tuple(matrix[:2].ravel()),
                                                resample=Image.Resampling.BILINEAR)
        edge = np.concatenate([kp[:, :2] + 0.5, np.ones((len(kp), 1))], axis=1)
        crop_edge = (np.linalg.inv(matrix) @ edge.T).T[:, :2]
        visible = kp[:, 2] > 0
        if mirrored:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop_edge[:, 0] = out_w - crop_edge[:, 0]
            order = np.arange(len(kp))
            for left, right in FLIP_PAIRS:
                order[[left, right]] = order[[right, left]]
            crop_edge, visible = crop_edge[order], visible[order]
        cells = crop_edge / HEATMAP_STRIDE - 0.5
        shape = (out_h // HEATMAP_STRIDE, out_w // HEATMAP_STRIDE)
        targets = encode_heatmaps(cells, visible, shape, TARGET_SIGMA)
        weights = (targets.reshape(len(kp), -1).max(axis=1) > 0).astype(np.float32)
        return normalise(crop, IMAGENET), targets, weights

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, targets, weights = self.sample(index)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(targets), torch.from_numpy(weights)


def heatmap_loss(predicted: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """SimpleBaseline's loss: mean squared error over the maps of labelled keypoints (halved, per joint)."""
    w = weights[:, :, None, None]
    return 0.5 * ((predicted - targets) ** 2 * w).mean()
