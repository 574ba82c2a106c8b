"""A small keypoint data set in the real COCO layout, written offline from the bundled photos.

COCO cannot be downloaded here (nor in CI). This writes what the pose path reads from a user's COCO
folder, so both go through the same code: crops of the embedded real photographs with one or two stick
figures drawn on them, 17 joints each in COCO's order, boxes, areas and visibility flags as COCO has them
(all joints labelled visible, v = 2). Each kind of joint has its own colour, shared by a left joint and
its right partner, and every figure faces the viewer (its left on the image's right): left and right are
told apart by where they are, as in a photo of a person, so a mirrored image (flip augmentation, the
flip test) shows a figure whose labels are still right once swapped.

The figures are not people: a model trained here proves that training, decoding, export, the ladder and
OKS AP work end to end, not that it finds human poses.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from micronet.atomic import replacing_dir
from micronet.datasets import check_split_counts, existing_dataset
from micronet.errors import MicronetError
from micronet.images import load_rgb

from .coco import KEYPOINT_NAMES, PERSON_CATEGORY, SKELETON

MANIFEST_NAME = "micronet-keypoints.json"
#: The kind of each joint (nose, eye, ear, shoulder, elbow, wrist, hip, knee, ankle): partners share one.
JOINT_KIND: tuple[int, ...] = (0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8)
#: Each kind's colour: nine hues spread round the wheel.
JOINT_COLOURS: tuple[tuple[int, int, int], ...] = tuple(
    tuple(int(255 * c) for c in colorsys.hsv_to_rgb((kind * 4 % 9) / 9, 0.9, 1.0)) for kind in JOINT_KIND)
_LIMB = (235, 235, 235)


def _figure(rng: np.random.Generator) -> np.ndarray:
    """A standing figure's 17 joints in a frame one unit tall (x right, y down), with random limb angles."""
    def at(origin, length, degrees):
        angle = math.radians(degrees)
        return origin + length * np.array([math.sin(angle), math.cos(angle)])

    j = np.zeros((17, 2))
    neck = np.array([0.0, 0.18])
    j[0] = [0.0, 0.08]  # nose
    j[1], j[2] = [0.03, 0.06], [-0.03, 0.06]  # eyes: the figure faces the viewer, its left on our right
    j[3], j[4] = [0.06, 0.08], [-0.06, 0.08]
    j[5], j[6] = neck + [0.11, 0.0], neck + [-0.11, 0.0]  # shoulders
    j[11], j[12] = [0.08, 0.52], [-0.08, 0.52]  # hips
    for shoulder, elbow, wrist, side in ((5, 7, 9, 1), (6, 8, 10, -1)):
        j[elbow] = at(j[shoulder], 0.16, side * rng.uniform(5, 120))
        j[wrist] = at(j[elbow], 0.15, side * rng.uniform(-30, 150))
    for hip, knee, ankle, side in ((11, 13, 15, 1), (12, 14, 16, -1)):
        j[knee] = at(j[hip], 0.23, side * rng.uniform(-5, 35))
        j[ankle] = at(j[knee], 0.23, side * rng.uniform(-20, 20))
    return j


def _draw_figure(draw: ImageDraw.ImageDraw, joints: np.ndarray, height_px: float) -> None:
    width = max(2, int(height_px / 40))
    for a, b in SKELETON:
        draw.line([tuple(joints[a]), tuple(joints[b])], fill=_LIMB, width=width)
    radius = max(2.0, height_px / 45)
    for (x, y), colour in zip(joints, JOINT_COLOURS):
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)


def _image(rng: np.random.Generator, photo: Image.Image, size: tuple[int, int], people: int
           ) -> tuple[Image.Image, list[np.ndarray]]:
    height, width = size
    scale = rng.uniform(0.5, 1.0)
    crop_w = int(photo.width * scale)
    crop_h = min(photo.height, int(crop_w * height / width))
    left = int(rng.integers(0, photo.width - crop_w + 1))
    top = int(rng.integers(0, photo.height - crop_h + 1))
    image = photo.resize((width, height), Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h))
    draw = ImageDraw.Draw(image)
    figures = []
    for person in range(people):
        tall = rng.uniform(0.55, 0.9) * height
        slot = width / people
        x0 = slot * person + rng.uniform(0.3, 0.7) * slot
        y0 = rng.uniform(0.02, 0.98 - tall / height) * height
        joints = _figure(rng) * tall + np.array([x0, y0])
        _draw_figure(draw, joints, tall)
        figures.append(joints)
    return image, figures


def _annotation(joints: np.ndarray, image_id: int, annotation_id: int) -> dict:
    """COCO's annotation of a figure: keypoints (v = 2) where the joints were drawn (PIL draws at pixel
    centres, COCO's convention), a box padded around the joints, its area (COCO's is the mask's; the box
    is what a figure of lines has)."""
    pad = 0.08 * (joints[:, 1].max() - joints[:, 1].min())
    x0, y0 = joints.min(axis=0) - pad
    x1, y1 = joints.max(axis=0) + pad
    keypoints = []
    for x, y in joints:
        keypoints += [round(float(x), 2), round(float(y), 2), 2]
    box = [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)]
    return {"id": annotation_id, "image_id": image_id, "category_id": PERSON_CATEGORY, "iscrowd": 0,
            "keypoints": keypoints, "num_keypoints": len(joints), "bbox": box,
            "area": round(box[2] * box[3], 2)}


def write_keypoint_set(out_dir: str | os.PathLike, photos: list[Path], size: tuple[int, int] = (256, 256),
                       train_images: int = 64, val_images: int = 16, seed: int = 0) -> dict:
    """Write ``out_dir/{train2017,val2017}/*.jpg`` and ``out_dir/annotations/person_keypoints_*.json``
    (complete or not at all) and return a summary; asking again for the same set returns it."""
    height, width = size
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 64:
            raise MicronetError(f"keypoint image {name} must be at least 64 px, got {value!r}")
    check_split_counts(train_images, val_images)
    if not photos:
        raise MicronetError("no photographs to draw the images from")
    out = Path(out_dir).expanduser()
    request = {"layout": "coco-keypoints", "height": height, "width": width, "train_images": train_images,
               "val_images": val_images, "seed": seed, "photos": [p.name for p in photos]}
    existing = existing_dataset(out, MANIFEST_NAME, request, "keypoint")
    if existing is not None:
        return existing
    sources = [load_rgb(p) for p in photos]
    rng = np.random.default_rng(seed)
    category = {"id": PERSON_CATEGORY, "name": "person", "supercategory": "person",
                "keypoints": list(KEYPOINT_NAMES), "skeleton": [[a + 1, b + 1] for a, b in SKELETON]}
    people_total = 0
    with replacing_dir(out) as staging:
        (staging / "annotations").mkdir()
        image_id = annotation_id = 0
        for split, count in (("train2017", train_images), ("val2017", val_images)):
            (staging / split).mkdir()
            images, annotations = [], []
            for index in range(count):
                image_id += 1
                image, figures = _image(rng, sources[index % len(sources)], (height, width),
                                        people=1 + int(rng.random() < 0.3))
                name = f"{image_id:012d}.jpg"
                image.save(staging / split / name, quality=95)
                images.append({"id": image_id, "file_name": name, "height": height, "width": width})
                for joints in figures:
                    annotation_id += 1
                    annotations.append(_annotation(joints, image_id, annotation_id))
            people_total += len(annotations)
            (staging / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(
                {"info": {"description": "micronet synthetic keypoints (figures drawn on bundled photos)"},
                 "images": images, "annotations": annotations, "categories": [category]}))
        summary = {**request, "people": people_total}
        (staging / MANIFEST_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
