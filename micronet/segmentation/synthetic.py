"""A small segmentation data set in the real Cityscapes layout, written offline from the bundled photos.

Cityscapes itself cannot be downloaded in CI (and needs a registration). This writes what the rest of the
segmentation path reads from a user's Cityscapes folder, so the same code runs on both: crops of the
embedded real photographs as ``leftImg8bit`` images, with shapes of three train-ID classes pasted on
them (car: rectangles, person: upright ellipses, traffic sign: triangles), an ignore region (noise,
label 255) in some images, and the photograph itself as a fourth class. Labels are written both ways a
Cityscapes folder holds them: ``*_gtFine_labelIds.png`` (raw IDs) and ``*_gtFine_labelTrainIds.png``.

The classes are not Cityscapes' objects, only their IDs: a model trained here proves that training,
export, the ladder and mIoU work end to end, not that it segments streets.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from micronet.atomic import replacing_dir
from micronet.datasets import check_split_counts, existing_dataset
from micronet.errors import MicronetError
from micronet.images import load_rgb

from .cityscapes import CLASS_NAMES, IGNORE_INDEX, LABEL_ID_SUFFIX, LABEL_ID_TO_TRAIN_ID, TRAIN_ID_SUFFIX

MANIFEST_NAME = "micronet-segmentation.json"
SIZE_MULTIPLE = 32
#: The photograph behind the shapes is labelled with this class (any train ID would do).
BACKGROUND = CLASS_NAMES.index("building")
#: (train ID, shape, base RGB colour): saturated colours, so a small model can learn them in minutes.
SHAPES: tuple[tuple[int, str, tuple[int, int, int]], ...] = (
    (CLASS_NAMES.index("car"), "rectangle", (20, 40, 220)),
    (CLASS_NAMES.index("person"), "ellipse", (220, 30, 60)),
    (CLASS_NAMES.index("traffic sign"), "triangle", (230, 220, 20)),
)
CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}
_TRAIN_TO_LABEL_ID = {train_id: label_id for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items()}


def _check_size(height: int, width: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
            raise MicronetError(f"segmentation image {name} must be a multiple of {SIZE_MULTIPLE} px, got {value!r}")


def _shape_box(rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
    w = int(rng.integers(width // 8, width // 3))
    h = int(rng.integers(height // 6, height // 2))
    left, top = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
    return left, top, left + w, top + h


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    left, top, right, bottom = box
    if shape == "rectangle":
        draw.rectangle(box, fill=fill)
    elif shape == "ellipse":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([((left + right) // 2, top), (right, bottom), (left, bottom)], fill=fill)


def _sample(rng: np.random.Generator, photo: Image.Image, height: int, width: int
            ) -> tuple[Image.Image, np.ndarray]:
    """One image and its train-ID map: a random crop of ``photo`` with two to four shapes and, in half
    the images, an ignore region of noise."""
    scale = rng.uniform(0.5, 1.0)
    crop_w = min(photo.width, int(photo.width * scale))
    crop_h = min(photo.height, int(crop_w * height / width))
    left = int(rng.integers(0, photo.width - crop_w + 1))
    top = int(rng.integers(0, photo.height - crop_h + 1))
    image = photo.resize((width, height), Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h))
    label_img = Image.new("L", (width, height), BACKGROUND)
    draw_image, draw_label = ImageDraw.Draw(image), ImageDraw.Draw(label_img)
    for _ in range(int(rng.integers(2, 5))):
        train_id, shape, colour = SHAPES[int(rng.integers(len(SHAPES)))]
        box = _shape_box(rng, height, width)
        jitter = rng.integers(-25, 26, 3)
        _draw(draw_image, shape, box, tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colour, jitter)))
        _draw(draw_label, shape, box, train_id)
    pixels, label = np.array(image), np.array(label_img)
    if rng.random() < 0.5:
        left, top, right, bottom = _shape_box(rng, height, width)
        pixels[top:bottom, left:right] = rng.integers(0, 256, (bottom - top, right - left, 3))
        label[top:bottom, left:right] = IGNORE_INDEX
    noise = rng.normal(0.0, 6.0, pixels.shape)
    pixels = np.clip(pixels.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB"), label


def _label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Train IDs back to raw label IDs (ignore → 0, "unlabeled"), as a ``*_labelIds.png`` holds them."""
    table = np.zeros(256, dtype=np.uint8)
    for train_id, label_id in _TRAIN_TO_LABEL_ID.items():
        table[train_id] = label_id
    return table[train_ids]


def write_segmentation_set(out_dir: str | os.PathLike, photos: list[Path], height: int = 128, width: int = 256,
                           train_images: int = 48, val_images: int = 16, seed: int = 0) -> dict:
    """Write the data set to ``out_dir`` (complete or not at all) and return its summary; asking again for
    the same set returns the existing one."""
    _check_size(height, width)
    check_split_counts(train_images, val_images)
    out = Path(out_dir).expanduser()
    request = {"layout": "cityscapes", "height": height, "width": width, "train_images": train_images,
               "val_images": val_images, "seed": seed, "photos": [p.name for p in photos]}
    existing = existing_dataset(out, MANIFEST_NAME, request, "segmentation")
    if existing is not None:
        return existing
    if not photos:
        raise MicronetError("no photographs to draw the images from")
    sources = [load_rgb(p) for p in photos]
    rng = np.random.default_rng(seed)
    with replacing_dir(out) as staging:
        for split, count in (("train", train_images), ("val", val_images)):
            for index in range(count):
                city = CITIES[split][index % len(CITIES[split])]
                stem = f"{city}_{index:06d}_000019"
                image, train_ids = _sample(rng, sources[index % len(sources)], height, width)
                (staging / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
                (staging / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
                image.save(staging / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
                labels = staging / "gtFine" / split / city
                Image.fromarray(train_ids, mode="L").save(labels / f"{stem}{TRAIN_ID_SUFFIX}")
                Image.fromarray(_label_ids(train_ids), mode="L").save(labels / f"{stem}{LABEL_ID_SUFFIX}")
        summary = {**request, "classes": {CLASS_NAMES[t]: t for t in [BACKGROUND, *(s[0] for s in SHAPES)]},
                   "ignore_index": IGNORE_INDEX}
        (staging / MANIFEST_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return summary

