"""The Cityscapes folder layout and label space, read the way ``cityscapesscripts`` defines them.

Cityscapes annotates 34 label IDs; training and evaluation use 19 of them ("train IDs"), every other one
is ignored (255). A user's folder holds either the ``*_gtFine_labelTrainIds.png`` files that
``cityscapesscripts``' ``createTrainIdLabelImgs`` writes, or only the raw ``*_gtFine_labelIds.png``: both are
accepted, the raw IDs mapped here with the same table, so nobody has to run a preparation script first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from micronet.errors import MicronetError

IGNORE_INDEX = 255
#: The 19 evaluated classes, in train-ID order.
CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
#: Label ID → train ID (cityscapesscripts' ``helpers/labels.py``); IDs not listed are ignored (255).
#: 0-6 (unlabeled, ego vehicle, rectification border, out of roi, static, dynamic, ground), 9 parking,
#: 10 rail track, 14 guard rail, 15 bridge, 16 tunnel, 18 polegroup, 29 caravan and 30 trailer are
#: annotated but not evaluated.
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
#: The label IDs a ``*_labelIds.png`` may hold (0-33).
NUM_LABEL_IDS = 34

IMAGE_SUFFIX = "_leftImg8bit.png"
TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"
LABEL_ID_SUFFIX = "_gtFine_labelIds.png"
SPLITS = ("train", "val", "test")


def _lookup_table() -> np.ndarray:
    table = np.full(256, -1, dtype=np.int16)  # -1: not a Cityscapes label ID
    table[:NUM_LABEL_IDS] = IGNORE_INDEX
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        table[label_id] = train_id
    return table


_LABEL_ID_TABLE = _lookup_table()


def label_ids_to_train_ids(label_ids: np.ndarray, source: str = "label image") -> np.ndarray:
    """Map a ``*_labelIds.png`` array to train IDs (uint8, 255 = ignore). A value that is no Cityscapes
    label ID means the file is something else (a colour or instance image): refused, naming the values."""
    label_ids = np.asarray(label_ids)
    if label_ids.size and (label_ids.min() < 0 or label_ids.max() > 255):
        raise MicronetError(f"{source}: values outside 0-255 are not Cityscapes label IDs")
    mapped = _LABEL_ID_TABLE[label_ids.astype(np.uint8)]
    if (mapped < 0).any():
        bad = sorted(int(v) for v in np.unique(label_ids[mapped < 0])[:5])
        raise MicronetError(f"{source}: values {bad} are not Cityscapes label IDs (0-{NUM_LABEL_IDS - 1})")
    return mapped.astype(np.uint8)


def check_train_ids(train_ids: np.ndarray, source: str = "label image") -> np.ndarray:
    """A ``*_labelTrainIds.png`` array, checked: every value a train ID (0-18) or 255."""
    values = np.unique(train_ids)
    bad = [int(v) for v in values if v >= len(CLASS_NAMES) and v != IGNORE_INDEX]
    if bad:
        raise MicronetError(f"{source}: values {bad[:5]} are not Cityscapes train IDs "
                            f"(0-{len(CLASS_NAMES) - 1}, or {IGNORE_INDEX} for ignore)")
    return np.asarray(train_ids, dtype=np.uint8)


@dataclass(frozen=True)
class SegmentationSample:
    """One image and its fine annotation; ``label_kind`` says which of the two label files it is."""

    image: Path
    label: Path
    label_kind: str  # "train_ids" or "label_ids"
    city: str

    def load_label(self) -> np.ndarray:
        """The annotation as train IDs (H×W uint8, 255 = ignore)."""
        with Image.open(self.label) as img:
            if img.mode not in ("L", "P"):
                raise MicronetError(f"{self.label}: a label image is an 8-bit single-channel PNG, "
                                    f"got mode {img.mode}")
            array = np.asarray(img)
        if self.label_kind == "label_ids":
            return label_ids_to_train_ids(array, str(self.label))
        return check_train_ids(array, str(self.label))


def scan_cityscapes(root: str | os.PathLike, split: str = "val") -> list[SegmentationSample]:
    """Every image of ``split`` with its annotation: ``root/leftImg8bit/<split>/<city>/*_leftImg8bit.png``
    beside ``root/gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`` (or ``*_gtFine_labelIds.png``).

    A folder in another layout, or an image without its annotation, is one error naming what is missing:
    evaluating on part of a split would report an mIoU that is not the split's."""
    if split not in SPLITS:
        raise MicronetError(f"unknown Cityscapes split {split!r}; choose from {', '.join(SPLITS)}")
    root = Path(root)
    images_dir, labels_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise MicronetError(f"{root}: not a Cityscapes folder (no {folder.relative_to(root)}/; expected "
                                f"leftImg8bit/{split}/<city>/*{IMAGE_SUFFIX} and gtFine/{split}/<city>/"
                                f"*{TRAIN_ID_SUFFIX} or *{LABEL_ID_SUFFIX})")
    samples = []
    missing = []
    for image in sorted(images_dir.glob(f"*/*{IMAGE_SUFFIX}")):
        city = image.parent.name
        stem = image.name[: -len(IMAGE_SUFFIX)]
        train_ids = labels_dir / city / f"{stem}{TRAIN_ID_SUFFIX}"
        label_ids = labels_dir / city / f"{stem}{LABEL_ID_SUFFIX}"
        if train_ids.is_file():
            samples.append(SegmentationSample(image, train_ids, "train_ids", city))
        elif label_ids.is_file():
            samples.append(SegmentationSample(image, label_ids, "label_ids", city))
        else:
            missing.append(image.relative_to(root))
    if missing:
        raise MicronetError(f"{root}: {len(missing)} image(s) without a gtFine annotation, first "
                            f"{missing[0]} (expected {TRAIN_ID_SUFFIX} or {LABEL_ID_SUFFIX} beside it)")
    if not samples:
        raise MicronetError(f"{root}: no *{IMAGE_SUFFIX} under leftImg8bit/{split}/<city>/")
    return samples
