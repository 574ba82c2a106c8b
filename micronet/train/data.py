"""Training and validation data: which files, how each image is augmented, how batches are drawn.

Augmentation randomness is derived from (seed, epoch, sample index), not from a process-wide RNG.
An image therefore gets the same crop whichever worker loads it, however many workers there are and
whether or not the run was resumed: that is what makes an interrupted run end exactly where an
uninterrupted one does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from micronet.errors import MicronetError
from micronet.images import LabelledImages, UnreadableImage, load_rgb, scan_labelled
from micronet.preprocess import Preprocessing, normalise, preprocess

from .distributed import DistContext

#: Seeds a separate stream per purpose, so adding one kind of randomness never shifts another.
_AUGMENT_STREAM = 1


@dataclass(frozen=True)
class RandomResizedCropFlip:
    """torchvision's RandomResizedCrop (10 tries, then a centre crop clamped to the ratio range) and
    RandomHorizontalFlip, on PIL images: the released training transform, without torchvision."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True

    def crop_box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in pixels of the source image."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return left, top, left + w, top + h
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
        return left, top, left + w, top + h

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        # resize(box=...) crops and resamples in one step, as torchvision's resized_crop does on PIL.
        out = img.resize((self.size, self.size), Image.Resampling.BILINEAR, box=self.crop_box(*img.size, rng))
        if self.hflip and rng.random() < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return out


class ImageDataset(Dataset):
    """(image tensor, class index) pairs. ``augment`` None = the evaluation transform."""

    def __init__(self, samples: list[tuple[Path, int]], preprocessing: Preprocessing,
                 augment: RandomResizedCropFlip | None = None, seed: int = 0) -> None:
        self.samples = samples
        self.preprocessing = preprocessing
        self.augment = augment
        self.seed = seed
        #: Set by the loop before each epoch; workers receive a fresh copy every epoch.
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            img = load_rgb(path)
        except UnreadableImage as exc:  # passed the header check but the pixels are damaged
            raise MicronetError(f"{exc} (found while training; remove or replace the file)") from None
        if self.augment is None:
            pixels = preprocess(img, self.preprocessing)
        else:
            rng = np.random.default_rng([self.seed, _AUGMENT_STREAM, self.epoch, index])
            pixels = normalise(self.augment(img, rng), self.preprocessing)
        return torch.from_numpy(pixels), label


class ShardSampler(Sampler[int]):
    """Rank r evaluates samples r, r+W, r+2W, ... with no padding, so summed counts are exact
    (DistributedSampler repeats samples to even out the shards, which would skew top-1)."""

    def __init__(self, length: int, ctx: DistContext) -> None:
        self.indices = range(ctx.rank, length, ctx.world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class DataSplits:
    train: list[tuple[Path, int]]
    val: list[tuple[Path, int]]
    classes: list[str]
    train_root: Path
    val_root: Path | None
    #: One line each, for the log: files and class folders that were left out, and why.
    warnings: list[str] = field(default_factory=list)


def _header_readable(path: Path) -> str | None:
    """Why PIL cannot open this file, or None. Reads only the header (microseconds per file), so a
    million-image folder is checked in a minute; damage further in is reported when it is loaded."""
    try:
        with Image.open(path):
            return None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return " ".join(str(exc).split()) or type(exc).__name__


def _grouped(skipped: list[tuple[Path, str]], role: str, shown: int = 3) -> list[str]:
    """One line per reason, naming a few paths: a folder of 10,000 photos with a thumbnail file beside
    each must not print 10,000 lines before training starts."""
    by_reason: dict[str, list[Path]] = {}
    for path, reason in skipped:
        by_reason.setdefault(reason, []).append(path)
    lines = []
    for reason, paths in by_reason.items():
        more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
        lines.append(f"{role}: skipped ({reason}): {', '.join(map(str, paths[:shown]))}{more}")
    return lines


def _readable(found: LabelledImages, root: Path, role: str) -> tuple[list[tuple[Path, int]], list[str]]:
    """Drop unreadable files; a class left with no readable image is warned about and skipped (its
    index stays, as in ImageFolder, so class numbers match the folder names everywhere)."""
    warnings = _grouped(found.skipped, role)
    samples, bad = [], []
    for path, label in found.samples:
        reason = _header_readable(path)
        if reason is None:
            samples.append((path, label))
        else:
            bad.append((path, reason))
    if bad:
        warnings.append(f"{role}: skipped {len(bad)} unreadable image(s), e.g. {bad[0][0]}: {bad[0][1]}")
    present = {label for _, label in samples}
    for index in sorted({label for _, label in found.samples} - present):
        warnings.append(f"{role}: class folder {root / found.classes[index]} has no readable images: skipped")
    if not samples:
        raise MicronetError(f"no readable images in any class folder under {root}")
    return samples, warnings


def split_roots(data: str, val: str | None) -> tuple[Path, Path | None]:
    """``data`` and ``val`` as given, or ``data/train`` and ``data/val`` when only ``data`` is given and
    it is laid out that way (as ``micronet datasets`` writes)."""
    root = Path(data).expanduser()
    if val is not None:
        return root, Path(val).expanduser()
    if (root / "train").is_dir() and (root / "val").is_dir():
        return root / "train", root / "val"
    return root, None


def load_splits(data: str, val: str | None) -> DataSplits:
    """Scan the folders; validation classes are matched to training classes by folder name."""
    train_root, val_root = split_roots(data, val)
    train_found = scan_labelled(train_root)
    train, warnings = _readable(train_found, train_root, "train")
    val_samples: list[tuple[Path, int]] = []
    if val_root is not None:
        label_map = {name: index for index, name in enumerate(train_found.classes)}
        val_found = scan_labelled(val_root, label_map=label_map)
        val_samples, val_warnings = _readable(val_found, val_root, "val")
        warnings += val_warnings
    return DataSplits(train, val_samples, train_found.classes, train_root, val_root, warnings)


def train_loader(dataset: ImageDataset, per_rank_batch: int, workers: int, seed: int, ctx: DistContext
                 ) -> tuple[DataLoader, DistributedSampler]:
    """Shuffled by a sampler seeded with ``seed`` and re-seeded per epoch via ``set_epoch``; the last
    incomplete batch is dropped because BatchNorm1d in the head cannot train on a single sample."""
    if len(dataset) // ctx.world_size < per_rank_batch:
        raise MicronetError(
            f"batch size {per_rank_batch * ctx.world_size} is larger than the training set "
            f"({len(dataset)} images{f' over {ctx.world_size} processes' if ctx.distributed else ''}); "
            f"use --batch-size {len(dataset) // ctx.world_size * ctx.world_size} or less")
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
    loader = DataLoader(dataset, batch_size=per_rank_batch, sampler=sampler, num_workers=workers,
                        drop_last=True, pin_memory=ctx.device.type == "cuda",
                        # its own generator: drawing the workers' base seed must not consume the global
                        # torch RNG that dropout and mixup use
                        generator=torch.Generator().manual_seed(seed))
    return loader, sampler


def eval_loader(dataset: ImageDataset, per_rank_batch: int, workers: int, ctx: DistContext) -> DataLoader:
    return DataLoader(dataset, batch_size=per_rank_batch, sampler=ShardSampler(len(dataset), ctx),
                      num_workers=workers, pin_memory=ctx.device.type == "cuda")
