"""The embedded default image set: real photographs that installed packages already ship in their wheels.

An int8 export needs activation ranges from real images; random noise gives ranges that real photos
never produce. When the user gives no calibration folder we still calibrate on photographs, found inside
scikit-image, scikit-learn and matplotlib (no download, nothing copied into this repository). There are
only ~19 of them, so the default set takes several deterministic crops per photo.
"""

from __future__ import annotations

import importlib.util
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from micronet.errors import MicronetError
from micronet.images import UnreadableImage, load_rgb
from micronet.preprocess import Preprocessing, normalise, preprocess


@dataclass(frozen=True)
class BundledPhoto:
    package: str  # import name of the distribution that ships the file
    path_in_package: str
    subject: str
    licence: str  # as stated by the shipping package (skimage/data/_fetchers.py, sklearn README)
    held_out: bool = False  # reserved for parity checks, never calibrated on


# Chosen by looking at each file: photographs only. Left out on purpose: synthetic or drawn images
# (chessboard, color, phantom, logo, horse), microscopy reconstructions (cell), a 102-px crop
# (microaneurysms), a deliberately motion-blurred frame (clock_motion) and motorcycle_right (the stereo
# twin of motorcycle_left: holding one out while calibrating on the other would leak the scene).
BUNDLED_PHOTOS: tuple[BundledPhoto, ...] = (
    BundledPhoto("skimage", "data/astronaut.png", "astronaut Eileen Collins (NASA)", "public domain"),
    BundledPhoto("skimage", "data/brick.png", "brick wall, grey", "CC0 (CC0Textures Bricks25)"),
    BundledPhoto("skimage", "data/camera.png", "man with a camera, grey", "CC0 (Lav Varshney)"),
    BundledPhoto("skimage", "data/chelsea.png", "cat", "CC0 (Stefan van der Walt)", held_out=True),
    BundledPhoto("skimage", "data/coffee.png", "coffee cup", "CC0 (Rachel Michetti)", held_out=True),
    BundledPhoto("skimage", "data/coins.png", "Greek coins, grey", "no known copyright restrictions (Brooklyn Museum)"),
    BundledPhoto("skimage", "data/grass.png", "grass, grey", "CC0 (DeviantArt linolafett)"),
    BundledPhoto("skimage", "data/gravel.png", "gravel, grey", "CC0 (CC0Textures Gravel04)"),
    BundledPhoto("skimage", "data/hubble_deep_field.jpg", "Hubble eXtreme Deep Field", "public domain (NASA)"),
    BundledPhoto("skimage", "data/ihc.png", "stained tissue micrograph", "no known copyright restrictions (CMMI)"),
    BundledPhoto("skimage", "data/moon.png", "lunar surface, grey", "no licence stated by scikit-image"),
    BundledPhoto("skimage", "data/motorcycle_left.png", "motorcycle (Middlebury 2014 stereo)",
                 "no licence stated by scikit-image"),
    BundledPhoto("skimage", "data/page.png", "photographed text page, grey", "no licence stated by scikit-image"),
    BundledPhoto("skimage", "data/retina.jpg", "fundus photograph", "CC0 1.0 (Wikimedia Commons)"),
    BundledPhoto("skimage", "data/rocket.jpg", "Falcon 9 launch (SpaceX)", "public domain (SpaceX)", held_out=True),
    BundledPhoto("skimage", "data/text.png", "handwriting on paper, grey", "public domain (Wikipedia Corner.png)"),
    BundledPhoto("sklearn", "datasets/images/china.jpg", "Chinese temple", "CC BY 2.0 (Flickr danielbuechele)"),
    BundledPhoto("sklearn", "datasets/images/flower.jpg", "flower", "CC BY 2.0 (Flickr vultilion)"),
    BundledPhoto("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "Grace Hopper portrait (US Navy)",
                 "US government work, believed public domain; matplotlib states no licence", held_out=True),
)

DISTRIBUTION_NAMES = {"skimage": "scikit-image", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}

# RandomResizedCrop-like sampling, narrower than training's (0.08, 1) area range: calibration should see
# views close to what evaluation feeds the model, not extreme zooms.
_CROP_AREA_FRACTION = (0.25, 1.0)
_CROP_ASPECT_RATIO = (3 / 4, 4 / 3)


def _package_folder(package: str) -> Path | None:
    # find_spec gives the same location as ``package.__file__`` without importing the package
    # (importing scikit-learn and matplotlib costs about a second and is not needed to read a file).
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def _located() -> list[tuple[Path, BundledPhoto]]:
    found = []
    for photo in BUNDLED_PHOTOS:
        folder = _package_folder(photo.package)
        if folder is not None and (folder / photo.path_in_package).is_file():
            found.append((folder / photo.path_in_package, photo))
    if not found:
        raise MicronetError("no bundled photographs found (scikit-image, scikit-learn and matplotlib data "
                            "files are missing); pass a folder of your own images")
    return sorted(found, key=lambda entry: entry[0].name)


def bundled_photographs() -> list[Path]:
    """The photographs present in this installation, sorted by file name; missing ones are skipped."""
    return [path for path, _ in _located()]


def held_out_photographs() -> list[Path]:
    """The photos reserved for parity: whole photographs, so parity is measured on unseen content."""
    return [path for path, photo in _located() if photo.held_out]


def photo_sources(paths: Sequence[Path]) -> list[dict[str, str]]:
    """Distribution, file name and licence note of each bundled photo, for the manifest."""
    by_path = {path: photo for path, photo in _located()}
    return [{"package": DISTRIBUTION_NAMES[by_path[path].package], "file": path.name,
             "subject": by_path[path].subject, "licence": by_path[path].licence} for path in paths]


def _random_crop_box(rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) in pixels, drawn like torchvision's RandomResizedCrop: ten tries, then
    the largest centred square."""
    for _ in range(10):
        area_px = width * height * rng.uniform(*_CROP_AREA_FRACTION)
        aspect = math.exp(rng.uniform(math.log(_CROP_ASPECT_RATIO[0]), math.log(_CROP_ASPECT_RATIO[1])))
        crop_w, crop_h = round(math.sqrt(area_px * aspect)), round(math.sqrt(area_px / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left = int(rng.integers(0, width - crop_w + 1))
            top = int(rng.integers(0, height - crop_h + 1))
            return left, top, left + crop_w, top + crop_h
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def _views_of(img: Image.Image, key: str, view_count: int, seed: int, p: Preprocessing) -> list[np.ndarray]:
    """View 0 is the evaluation view (``preprocess``); the others are random-resized crops with optional
    mirror. The generator is keyed by the file name, so one photo's crops do not change when another
    photo is missing from an installation."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    views = [preprocess(img, p)] if view_count > 0 else []
    while len(views) < view_count:
        box = _random_crop_box(rng, *img.size)
        crop = img.resize((p.input_size, p.input_size), p.pil_filter, box=box)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        views.append(normalise(crop, p))
    return views


def photo_crops(photos: Sequence[Path], count: int, seed: int, p: Preprocessing
                ) -> tuple[np.ndarray, list[tuple[Path, str]]]:
    """``count`` normalised (3, S, S) crops spread evenly over the readable photos, interleaved (photo 1
    view 1, photo 2 view 1, ...) so that any prefix of the batch still covers every photo."""
    images, skipped = [], []
    for path in photos:
        try:
            images.append((path, load_rgb(path)))
        except UnreadableImage as exc:
            skipped.append((path, exc.reason))
    batch = np.empty((count, 3, p.input_size, p.input_size), dtype=np.float32)
    if not images:
        return batch[:0], skipped
    views_per_photo = [count // len(images) + (i < count % len(images)) for i in range(len(images))]
    views = [_views_of(img, path.name, n, seed, p) for (path, img), n in zip(images, views_per_photo)]
    row = 0
    for round_index in range(max(views_per_photo)):
        for photo_views in views:
            if round_index < len(photo_views):
                batch[row] = photo_views[round_index]
                row += 1
    return batch, skipped
