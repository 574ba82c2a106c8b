"""Training samples for the segmentation models: DeepLab's augmentation of Cityscapes images and labels.

The paper's recipe (§6.2) names DeepLab's augmentation: a random scale in 0.5-2.0, a random crop to the
training size (padding with the mean colour and the ignore label where the scaled image is smaller than
the crop) and a horizontal flip. Scale 1 is the size validation runs at (``--input-size``): validation
(``evaluate.evaluate_segmentation``) resizes each whole image to it, so training at scale 1 sees objects
at exactly the size validation shows them, whatever resolution the files have. (At
``--input-size 1024x2048`` on Cityscapes' 1024x2048 frames this is DeepLab's own setting.)

Image and label go through the same resize box, crop window and flip (bilinear for pixels, nearest for
labels, so no label value is invented), so they cannot fall out of register.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from micronet.images import load_rgb
from micronet.preprocess import IMAGENET_MEAN, Preprocessing, normalise

from .cityscapes import IGNORE_INDEX, SegmentationSample

#: The padding colour: the ImageNet mean, which normalises to 0 (DeepLab pads with its mean pixel).
MEAN_RGB = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)
_IMAGENET = Preprocessing()


@dataclass(frozen=True)
class DeepLabAugmentation:
    """Scale range (relative to the training size) and horizontal-flip probability."""

    scale: tuple[float, float] = (0.5, 2.0)
    flip: float = 0.5

    @classmethod
    def none(cls) -> "DeepLabAugmentation":
        return cls(scale=(1.0, 1.0), flip=0.0)


def augment(image: Image.Image, label: np.ndarray, size: tuple[int, int], scale: float, offset: tuple[float, float],
            mirrored: bool) -> tuple[Image.Image, np.ndarray]:
    """One augmented (image, label) pair of ``size`` (H, W): both resized to ``size`` x ``scale``, padded
    bottom/right (mean colour / ignore) up to ``size``, cropped at ``offset`` (each in [0, 1): the share of
    the slack above and left of the window), flipped if ``mirrored``."""
    height, width = size
    scaled_h, scaled_w = max(1, round(height * scale)), max(1, round(width * scale))
    image = image.resize((scaled_w, scaled_h), Image.Resampling.BILINEAR)
    label_img = Image.fromarray(label).resize((scaled_w, scaled_h), Image.Resampling.NEAREST)
    canvas_h, canvas_w = max(height, scaled_h), max(width, scaled_w)
    if (canvas_h, canvas_w) != (scaled_h, scaled_w):
        padded = Image.new("RGB", (canvas_w, canvas_h), MEAN_RGB)
        padded.paste(image, (0, 0))
        padded_label = Image.new("L", (canvas_w, canvas_h), IGNORE_INDEX)
        padded_label.paste(label_img, (0, 0))
        image, label_img = padded, padded_label
    top = int(offset[0] * (canvas_h - height + 1))
    left = int(offset[1] * (canvas_w - width + 1))
    window = (left, top, left + width, top + height)
    image, label_img = image.crop(window), label_img.crop(window)
    if mirrored:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        label_img = label_img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image, np.asarray(label_img, dtype=np.uint8)


class SegmentationCrops(Dataset):
    """(image CHW float32 normalised, label H×W int64 with 255 = ignore) per Cityscapes sample."""

    def __init__(self, samples: Sequence[SegmentationSample], input_size: tuple[int, int],
                 augmentation: DeepLabAugmentation = DeepLabAugmentation(), seed: int = 0) -> None:
        self.samples = list(samples)
        self.input_size = tuple(input_size)
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0  # set by the loop: a new draw per epoch, the same one on every resume

    def __len__(self) -> int:
        return len(self.samples)

    def draw(self, index: int) -> tuple[float, tuple[float, float], bool]:
        """(scale, crop offset, mirrored) of sample ``index`` this epoch: a function of (seed, epoch, index)
        alone, so workers, ranks and a resumed run draw the same."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        scale = float(rng.uniform(*self.augmentation.scale))
        offset = (float(rng.random()), float(rng.random()))
        return scale, offset, bool(rng.random() < self.augmentation.flip)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        scale, offset, mirrored = self.draw(index)
        item = self.samples[index]
        image, label = augment(load_rgb(item.image), item.load_label(), self.input_size, scale, offset, mirrored)
        return normalise(image, _IMAGENET), label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.sample(index)
        return torch.from_numpy(image), torch.from_numpy(label.astype(np.int64))


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy over the labelled pixels (255 left out). A batch whose crops hold only
    ignore pixels (possible at scale 2 over a large ignore region) gives 0, not the NaN of an empty mean."""
    total = torch.nn.functional.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)
