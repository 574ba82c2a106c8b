"""The evaluation transform, written once and used by calibration, parity, accuracy and validation.

The released MicroNet code evaluates with torchvision's Resize(shorter side = int(size / 0.875),
bilinear) -> CenterCrop(size) -> /255 -> ImageNet mean/std. torchvision cannot be installed here, so its
PIL path is reproduced exactly: the same size arithmetic (``int`` truncation of the long side, Python
``round`` for the crop offset) and the same PIL resampling call, hence the same pixels.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from micronet.errors import MicronetError
from micronet.images import UnreadableImage, load_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocessing:
    """Everything a benchmark needs to feed a model exactly what its export was checked with.

    Sizes are in pixels; ``crop_ratio`` is crop / resize (0.875 gives 224 from 256), as in timm's
    ``crop_pct``. The manifest stores ``to_dict()`` and a benchmark rebuilds it with ``from_dict``.
    """

    input_size: int = 224
    crop_ratio: float = 0.875
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        # Manifests and CLI options arrive as JSON lists and strings; normalise them so equality and
        # hashing behave, and reject values that would silently produce wrong inputs.
        try:
            object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
            object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        except (TypeError, ValueError) as exc:
            raise MicronetError(f"mean and std must be numbers, got {self.mean!r}, {self.std!r}") from exc
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int) or self.input_size < 1:
            raise MicronetError(f"input size must be a positive integer (pixels), got {self.input_size!r}")
        if not isinstance(self.crop_ratio, (int, float)) or not 0.0 < self.crop_ratio <= 1.0:
            raise MicronetError(f"crop ratio must be in (0, 1], got {self.crop_ratio!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0.0:
            raise MicronetError(f"mean and std need 3 values each (RGB), std > 0; got {self.mean}, {self.std}")
        if self.interpolation not in _PIL_FILTERS:
            raise MicronetError(f"interpolation must be one of {', '.join(_PIL_FILTERS)}, got {self.interpolation!r}")

    @property
    def resize_size(self) -> int:
        """Shorter side after resizing, in pixels: int(224 / 0.875) = 256 as in the released code."""
        return int(self.input_size / self.crop_ratio)

    @property
    def pil_filter(self) -> Image.Resampling:
        return _PIL_FILTERS[self.interpolation]

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record.update(mean=list(self.mean), std=list(self.std), resize_size=self.resize_size,
                      layout="RGB, /255, (x - mean) / std, NCHW float32")
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Preprocessing:
        """Strict on purpose: an unknown key or a resize size that disagrees means the manifest describes
        a transform this code would not reproduce, and a silent mismatch would skew every accuracy."""
        derived = {"resize_size", "layout"}
        unknown = set(record) - set(cls.__dataclass_fields__) - derived
        if unknown:
            raise MicronetError(f"unknown preprocessing keys in manifest: {', '.join(sorted(unknown))}")
        p = cls(**{k: v for k, v in record.items() if k not in derived})
        if "resize_size" in record and record["resize_size"] != p.resize_size:
            raise MicronetError(f"manifest resize size {record['resize_size']} disagrees with "
                                f"int({p.input_size} / {p.crop_ratio}) = {p.resize_size}")
        return p


def resize_shorter_side(img: Image.Image, size: int, pil_filter: Image.Resampling) -> Image.Image:
    """torchvision ``Resize(int)``: shorter side to ``size``, longer side truncated, not rounded."""
    width, height = img.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)
    return img if new_size == img.size else img.resize(new_size, pil_filter)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """torchvision ``CenterCrop``: offsets use Python's ``round`` (half to even), so 16.5 -> 16."""
    width, height = img.size
    if size > width or size > height:
        raise ValueError(f"crop {size} larger than image {width}x{height}")
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def normalise(img: Image.Image, p: Preprocessing) -> np.ndarray:
    """An already-sized image -> CHW float32, in torchvision's operation order (/255, -mean, /std)."""
    pixels = np.asarray(img.convert("RGB"), dtype=np.float32) / np.float32(255.0)
    pixels = (pixels - np.asarray(p.mean, dtype=np.float32)) / np.asarray(p.std, dtype=np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def preprocess(img: Image.Image, p: Preprocessing) -> np.ndarray:
    """One image -> (3, input_size, input_size) float32, exactly as the released evaluation sees it."""
    resized = resize_shorter_side(img.convert("RGB"), p.resize_size, p.pil_filter)
    return normalise(center_crop(resized, p.input_size), p)


def load_batch(paths: Sequence[str | os.PathLike], p: Preprocessing
               ) -> tuple[np.ndarray, list[tuple[Path, str]]]:
    """(N, 3, H, W) float32 of the readable files, in input order, plus (path, reason) for the rest:
    one corrupt photo in a folder of thousands should cost a line in the report, not the run."""
    batch = np.empty((len(paths), 3, p.input_size, p.input_size), dtype=np.float32)
    skipped: list[tuple[Path, str]] = []
    loaded = 0
    for path in paths:
        try:
            batch[loaded] = preprocess(load_rgb(path), p)
        except UnreadableImage as exc:
            skipped.append((Path(path), exc.reason))
            continue
        loaded += 1
    return batch[:loaded].copy() if loaded < len(paths) else batch, skipped


def to_nhwc(batch: np.ndarray) -> np.ndarray:
    """NCHW -> NHWC (contiguous): TFLite models from onnx2tf/litert take channels-last input."""
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected an (N, 3, H, W) batch, got shape {batch.shape}")
    return np.ascontiguousarray(batch.transpose(0, 2, 3, 1))
