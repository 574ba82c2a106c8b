"""The COCO person-keypoints layout: ``annotations/person_keypoints_<split>.json`` beside the images.

Top-down pose estimation runs the network once per person box. The paper evaluates on a person
detector's boxes; a COCO-format detections JSON (``[{"image_id", "category_id", "bbox", "score"}, ...]``)
gives those, and without one the ground-truth boxes are used (the usual upper bound, said in reports).
A folder in another layout, a JSON without keypoints, or an annotation whose image is missing is one
error naming what is wrong: evaluating on part of a split would give an AP that is not the split's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from micronet.errors import MicronetError

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee",
    "left_ankle", "right_ankle")
#: Left/right partners, swapped when an image is mirrored (flip test, flip augmentation).
FLIP_PAIRS: tuple[tuple[int, int], ...] = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
#: COCO's skeleton (0-based), for drawing.
SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9),
    (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
PERSON_CATEGORY = 1


@dataclass(frozen=True)
class PersonBox:
    """One person to estimate: its image, its box (x, y, w, h in pixels) and where the box came from."""

    image_id: int
    image: Path
    box: tuple[float, float, float, float]
    score: float = 1.0  # the detector's score; 1 for a ground-truth box
    annotation_id: int | None = None  # the ground-truth annotation (None for a detection)


@dataclass
class CocoKeypoints:
    """A split: its annotation file (what COCOeval reads), its parsed JSON and its image folder."""

    annotation_file: Path
    image_dir: Path
    data: dict[str, Any]

    @property
    def images(self) -> dict[int, dict[str, Any]]:
        return {img["id"]: img for img in self.data["images"]}

    def person_boxes(self, detections: str | os.PathLike | None = None, min_score: float = 0.0) -> list[PersonBox]:
        """The boxes to run on: ground-truth persons with at least one labelled keypoint (not crowds), or
        the person detections of ``detections`` scoring at least ``min_score``."""
        images = self.images
        if detections is None:
            return [PersonBox(a["image_id"], self.image_dir / images[a["image_id"]]["file_name"],
                              tuple(float(v) for v in a["bbox"]), 1.0, a["id"])
                    for a in self.data["annotations"]
                    if a.get("num_keypoints", 0) > 0 and not a.get("iscrowd", 0)]
        found = _read_json(Path(detections), "detections")
        if not isinstance(found, list) or not all(isinstance(d, dict) and {"image_id", "bbox", "score"} <= set(d)
                                                   for d in found):
            raise MicronetError(f"{detections}: not a COCO detections file (a list of objects with image_id, "
                                f"bbox and score)")
        unknown = sorted({d["image_id"] for d in found} - set(images))
        if unknown:
            raise MicronetError(f"{detections}: image_id {unknown[0]} is not in {self.annotation_file.name}")
        return [PersonBox(d["image_id"], self.image_dir / images[d["image_id"]]["file_name"],
                          tuple(float(v) for v in d["bbox"]), float(d["score"]))
                for d in found if d.get("category_id", PERSON_CATEGORY) == PERSON_CATEGORY and d["score"] >= min_score]


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MicronetError(f"{path}: no such {what} file") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MicronetError(f"{path}: not a readable JSON {what} file ({exc.__class__.__name__})") from None


def load_coco_keypoints(root: str | os.PathLike, split: str = "val2017") -> CocoKeypoints:
    """``root/annotations/person_keypoints_<split>.json`` with its images in ``root/<split>/`` (COCO's own
    layout) or ``root/images/<split>/``; checked so that every later step can trust it."""
    root = Path(root)
    annotation_file = root / "annotations" / f"person_keypoints_{split}.json"
    if not annotation_file.is_file():
        raise MicronetError(f"{root}: not a COCO keypoints folder (no annotations/person_keypoints_{split}.json)")
    image_dir = next((d for d in (root / split, root / "images" / split) if d.is_dir()), None)
    if image_dir is None:
        raise MicronetError(f"{root}: no image folder {split}/ (or images/{split}/) beside annotations/")
    data = _read_json(annotation_file, "annotation")
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise MicronetError(f"{annotation_file}: not a COCO annotation file (needs images, annotations, categories)")
    person = next((c for c in data["categories"] if c.get("id") == PERSON_CATEGORY), None)
    if person is None or len(person.get("keypoints", [])) != len(KEYPOINT_NAMES):
        raise MicronetError(f"{annotation_file}: no person category with COCO's {len(KEYPOINT_NAMES)} keypoints")
    for ann in data["annotations"]:
        if len(ann.get("keypoints", [])) != 3 * len(KEYPOINT_NAMES) or len(ann.get("bbox", [])) != 4:
            raise MicronetError(f"{annotation_file}: annotation {ann.get('id')} has no 17 keypoints (x, y, v) "
                                f"and box")
    image_ids = {img["id"] for img in data["images"]}
    orphans = [a["id"] for a in data["annotations"] if a["image_id"] not in image_ids]
    if orphans:
        raise MicronetError(f"{annotation_file}: annotation {orphans[0]} refers to an image not listed")
    missing = [img["file_name"] for img in data["images"] if not (image_dir / img["file_name"]).is_file()]
    if missing:
        raise MicronetError(f"{image_dir}: {len(missing)} image(s) listed in {annotation_file.name} are missing, "
                            f"first {missing[0]}")
    return CocoKeypoints(annotation_file, image_dir, data)
