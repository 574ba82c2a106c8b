"""Calibration and hold-out images for the pose and segmentation exports, at the model's H×W input.

The images are what the evaluators feed (micronet/keypoints/predict.py, micronet/segmentation/evaluate.py):
person crops for pose (``crop_transform``, box padded 1.25, the model's aspect ratio), whole frames resized to
H×W for segmentation, ImageNet-normalised. A calibration folder is read in the task's own layout (COCO
keypoints: ``annotations/person_keypoints_<split>.json``; Cityscapes: ``leftImg8bit/<split>/``), else any
folder of images is resized to H×W. Without a folder the embedded photographs are used, cut to the model's
aspect ratio, with the loud default-set warning of export/calibration.py. Calibration and hold-out never
share a source image, as for the classifiers.
"""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from micronet.errors import MicronetError
from micronet.images import deterministic_sample, file_list_sha256, find_images, load_rgb
from micronet.preprocess import Preprocessing, normalise

from .calibration import DEFAULT_SET_WARNING, CalibrationData

_IMAGENET = Preprocessing()
#: The splits a calibration folder is looked for in, in order (the training split first: the hold-out is
#: judged for parity only, so any split will do, and a dataset may ship only one).
_COCO_SPLITS = ("train2017", "val2017")
_CITYSCAPES_SPLITS = ("train", "val")


def preprocessing_record(task: str, size: tuple[int, int]) -> dict[str, Any]:
    """How the images were made, for the manifest (the classifiers' ``Preprocessing.to_dict`` has a crop ratio
    and a square size that do not apply)."""
    how = ("person box padded x1.25 to the input's aspect ratio, cropped bilinearly" if task == "pose"
           else "whole image resized bilinearly to H x W")
    return {"input_size": list(size), "mean": list(_IMAGENET.mean), "std": list(_IMAGENET.std),
            "interpolation": "bilinear", "resize": how, "layout": "RGB, /255, (x - mean) / std, NCHW float32"}


def build_dense_calibration(task: str, source_dir: str | os.PathLike | None, size: tuple[int, int],
                            count: int = 200, seed: int = 0, holdout: int = 32) -> CalibrationData:
    """``count`` calibration and ``holdout`` parity images at ``size`` (H, W) for ``task``."""
    if count < 1:
        raise MicronetError(f"calibration count must be at least 1, got {count}")
    if holdout < 0:
        raise MicronetError(f"hold-out count must be >= 0, got {holdout}")
    if source_dir is None:
        return _from_photos(task, size, count, seed, holdout)
    folder = Path(source_dir).expanduser()
    if not folder.is_dir():
        raise MicronetError(f"calibration folder {folder} does not exist")
    if task == "pose" and (folder / "annotations").is_dir():
        return _from_coco(folder, size, count, seed, holdout)
    return _from_images(task, folder, size, count, seed, holdout)


def _split(items: Sequence, count: int, holdout: int, seed: int, what: str, folder: Path) -> tuple[list, list]:
    """A deterministic sample of ``count`` + ``holdout`` items, split into two disjoint lists."""
    if len(items) < 2 and holdout > 0:
        raise MicronetError(f"{folder}: {len(items)} {what} found, too few to calibrate and hold one out")
    chosen = deterministic_sample(list(items), min(len(items), count + holdout), seed)
    held = min(holdout, max(1, len(chosen) // 5)) if holdout else 0
    return chosen[held:], chosen[:held]


def _from_coco(folder: Path, size: tuple[int, int], count: int, seed: int, holdout: int) -> CalibrationData:
    """Person crops of a COCO keypoints folder: calibration and hold-out from different images."""
    from micronet.keypoints import crop_transform, load_coco_keypoints

    split = next((s for s in _COCO_SPLITS if (folder / "annotations" / f"person_keypoints_{s}.json").is_file()),
                 None)
    if split is None:
        raise MicronetError(f"{folder}: not a COCO keypoints folder (no annotations/person_keypoints_"
                            f"{{{','.join(_COCO_SPLITS)}}}.json)")
    boxes = load_coco_keypoints(folder, split).person_boxes()
    images = sorted({box.image for box in boxes})
    calib_images, held_images = _split(images, count, holdout, seed, "annotated images", folder)

    def crops(paths: list[Path], limit: int) -> np.ndarray:
        wanted = set(paths)
        chosen = [b for b in boxes if b.image in wanted][:limit]
        opened: dict[Path, Image.Image] = {}
        arrays = []
        for box in chosen:
            image = opened.setdefault(box.image, load_rgb(box.image))
            arrays.append(normalise(crop_transform(box.box, size).crop(image), _IMAGENET))
        return np.stack(arrays).astype(np.float32) if arrays else np.empty((0, 3, *size), np.float32)

    calibration, held = crops(calib_images, count), crops(held_images, holdout)
    record = {"source": f"{folder} (COCO keypoints {split}: person crops)", "is_default": False,
              "count": int(len(calibration)), "requested_count": count, "seed": seed,
              "holdout": int(len(held)), "requested_holdout": holdout,
              "files_sha256": file_list_sha256(calib_images, folder),
              "holdout_files_sha256": file_list_sha256(held_images, folder),
              "preprocessing": preprocessing_record("pose", size)}
    return CalibrationData(calibration=calibration, holdout=held, record=record)


def _image_files(task: str, folder: Path) -> list[Path]:
    """A Cityscapes folder's camera images (not its label PNGs), else every image under ``folder``."""
    if task == "segmentation":
        for split in _CITYSCAPES_SPLITS:
            found = sorted((folder / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
            if found:
                return found
    return [path for path in find_images(folder) if "_gtFine_" not in path.name]


def _from_images(task: str, folder: Path, size: tuple[int, int], count: int, seed: int, holdout: int
                 ) -> CalibrationData:
    files = _image_files(task, folder)
    if not files:
        raise MicronetError(f"{folder}: no images found for calibration")
    calib_files, held_files = _split(files, count, holdout, seed, "images", folder)

    def resized(paths: list[Path]) -> np.ndarray:
        arrays = [normalise(load_rgb(p).resize((size[1], size[0]), Image.Resampling.BILINEAR), _IMAGENET)
                  for p in paths]
        return np.stack(arrays).astype(np.float32) if arrays else np.empty((0, 3, *size), np.float32)

    calibration, held = resized(calib_files), resized(held_files)
    record = {"source": f"{folder} ({len(files)} images, resized to H x W)", "is_default": False,
              "count": int(len(calibration)), "requested_count": count, "seed": seed,
              "holdout": int(len(held)), "requested_holdout": holdout,
              "files_sha256": file_list_sha256(calib_files, folder),
              "holdout_files_sha256": file_list_sha256(held_files, folder),
              "preprocessing": preprocessing_record(task, size)}
    return CalibrationData(calibration=calibration, holdout=held, record=record)


def _views(image: Image.Image, key: str, size: tuple[int, int], views: int, seed: int) -> list[np.ndarray]:
    """``views`` crops of ``image`` at the model's aspect ratio (the first the largest centred one), each
    resized to ``size``; the generator is keyed by the file name, as export/calibration.py's photo crops."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    height, width = size
    aspect = width / height
    full_w = min(image.width, image.height * aspect)
    out = []
    for index in range(views):
        fraction = 1.0 if index == 0 else math.sqrt(rng.uniform(0.3, 1.0))
        crop_w, crop_h = full_w * fraction, full_w * fraction / aspect
        left = (image.width - crop_w) * (0.5 if index == 0 else rng.uniform())
        top = (image.height - crop_h) * (0.5 if index == 0 else rng.uniform())
        crop = image.resize((width, height), Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h))
        if index and rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(normalise(crop, _IMAGENET))
    return out


def _from_photos(task: str, size: tuple[int, int], count: int, seed: int, holdout: int) -> CalibrationData:
    """The embedded photographs cut to the model's aspect ratio; whole photographs held out."""
    from micronet.sample_images import bundled_photographs, held_out_photographs, photo_sources

    photos = bundled_photographs()
    held = held_out_photographs() or photos[-1:]
    if len(held) == len(photos):
        held = photos[-1:]
    calib_photos = [p for p in photos if p not in held]
    if not calib_photos:
        raise MicronetError("only one bundled photograph is installed, too few to calibrate and hold one "
                            "out; give a calibration folder")

    def views(paths: list[Path], total: int) -> np.ndarray:
        if total == 0:
            return np.empty((0, 3, *size), np.float32)
        per = [total // len(paths) + (i < total % len(paths)) for i in range(len(paths))]
        made = [_views(load_rgb(p), p.name, size, n, seed) for p, n in zip(paths, per)]
        rows = [v[r] for r in range(max(per)) for v in made if r < len(v)]  # interleaved: prefixes cover all
        return np.stack(rows).astype(np.float32)

    calibration, held_batch = views(calib_photos, count), views(held, holdout)
    used = calib_photos + held
    root = Path(os.path.commonpath([p.parent for p in photos]))
    record = {"source": f"embedded default: {len(used)} photographs, cut to {size[0]}x{size[1]}",
              "is_default": True, "count": int(len(calibration)), "requested_count": count, "seed": seed,
              "holdout": int(len(held_batch)), "requested_holdout": holdout,
              "files_sha256": file_list_sha256(calib_photos, root),
              "holdout_files_sha256": file_list_sha256(held, root),
              "photographs": {"calibration": [p.name for p in calib_photos], "holdout": [p.name for p in held]},
              "sources": photo_sources(used), "preprocessing": preprocessing_record(task, size),
              "warning": DEFAULT_SET_WARNING.format(photos=len(calib_photos))}
    return CalibrationData(calibration=calibration, holdout=held_batch, record=record)
