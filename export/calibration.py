"""Calibration and hold-out images for the exporter, plus the record the manifest keeps of them.

int8 ranges are fitted on ``calibration``; the parity ladder compares formats on ``holdout``, which never
overlaps it, so a quantised model is not judged on the very images it was tuned to. Everything is
deterministic (same folder, count, seed and preprocessing give byte-identical arrays) so two exports
of one model can be compared.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from micronet.errors import MicronetError
from micronet.images import deterministic_sample, file_list_sha256, find_images
from micronet.preprocess import Preprocessing, load_batch, to_nhwc
from micronet.sample_images import bundled_photographs, held_out_photographs, photo_crops, photo_sources

DEFAULT_SET_WARNING = (
    "EMBEDDED DEFAULT CALIBRATION: int8 ranges were fitted on crops of {photos} generic photographs shipped "
    "with scikit-image/scikit-learn/matplotlib, not on your data. A real deployment must calibrate on its "
    "own images (give a calibration folder); accuracy after quantisation is unverified until then."
)

#: What a manifest of a file without int8 ranges says of the embedded default images instead of the warning.
DEFAULT_SET_NOTE = (
    "embedded default images: crops of {photos} generic photographs shipped with scikit-image/scikit-learn/"
    "matplotlib. This file has no int8 ranges; the images served as the parity ladder's hold-out and, for "
    "untrained weights, to re-estimate BatchNorm statistics."
)


@dataclass
class CalibrationData:
    calibration: np.ndarray  # (N, 3, H, W) float32, normalised by ``preprocessing``
    holdout: np.ndarray  # (M, 3, H, W) float32, images whose content is not in ``calibration``
    record: dict[str, Any]  # JSON-ready, for the manifest


def nhwc(x: np.ndarray) -> np.ndarray:
    """Calibration arrays for TFLite converters must be channels-last."""
    return to_nhwc(x)


def build_calibration(source_dir: str | os.PathLike | None, count: int = 200, seed: int = 0,
                      preprocessing: Preprocessing = Preprocessing(), holdout: int = 32) -> CalibrationData:
    """``count`` calibration and ``holdout`` parity images from ``source_dir``, or from the embedded
    default photographs when it is None (the record then carries a loud ``warning``)."""
    if count < 1:
        raise MicronetError(f"calibration count must be at least 1, got {count}")
    if holdout < 0:
        raise MicronetError(f"hold-out count must be >= 0, got {holdout}")
    if seed < 0:
        raise MicronetError(f"seed must be >= 0, got {seed}")
    if source_dir is None:
        return _from_bundled_photos(count, seed, preprocessing, holdout)
    return _from_folder(Path(source_dir).expanduser(), count, seed, preprocessing, holdout)


def record_for_artifact(record: dict[str, Any], int8: bool) -> dict[str, Any]:
    """The calibration record as the manifest of one artifact keeps it: an int8 file keeps the default set's
    warning (its ranges were fitted on those images); any other file was not calibrated at all, so its record
    says what the images were used for instead of warning about ranges it does not have."""
    if int8 or "warning" not in record:
        return record
    other = {key: value for key, value in record.items() if key != "warning"}
    other["note"] = DEFAULT_SET_NOTE.format(photos=len(record.get("photographs", {}).get("calibration", [])))
    return other


def _skipped_record(skipped: Sequence[tuple[Path, str]], root: Path) -> list[dict[str, str]]:
    return [{"file": path.relative_to(root).as_posix(), "reason": reason} for path, reason in skipped]


def _loaded(files: Sequence[Path], skipped: Sequence[tuple[Path, str]]) -> list[Path]:
    unreadable = {path for path, _ in skipped}
    return [path for path in files if path not in unreadable]


#: How many unreadable files ``skipped_summary`` names before "and N more".
SKIPPED_NAMED = 3


def skipped_summary(record: dict[str, Any]) -> str | None:
    """One line for the terminal naming the unreadable images that were skipped (count and the first few, with
    the first reason), or None when every sampled image was read. The manifest lists them all."""
    skipped = record.get("skipped") or []
    if not skipped:
        return None
    names = ", ".join(entry["file"] for entry in skipped[:SKIPPED_NAMED])
    more = f" and {len(skipped) - SKIPPED_NAMED} more" if len(skipped) > SKIPPED_NAMED else ""
    noun = "image" if len(skipped) == 1 else "images"
    return (f"skipped {len(skipped)} unreadable calibration {noun}: {names}{more} "
            f"({skipped[0]['file']}: {skipped[0]['reason']}); the manifest lists them all")


def _none_readable(folder: Path, images: Sequence[Path], tried: Sequence[Path], role: str,
                   skipped: Sequence[tuple[Path, str]], all_skipped: int) -> MicronetError:
    """The error for a set (calibration or hold-out) of which no image could be read, with numbers the user can
    check against their folder: all of its images when every one was tried and failed, else the set's own."""
    first = f"first: {skipped[0][0].name}: {skipped[0][1]}"
    if all_skipped == len(images):
        return MicronetError(f"none of the {len(images)} images under {folder} could be read ({first})")
    sampled = f"the {len(tried)} images" if len(tried) > 1 else "the one image"
    return MicronetError(f"none of {sampled} sampled {role} (of {len(images)} under {folder}) could be read "
                         f"({first})")


def _shortfall_note(folder: Path, found: int, count: int, holdout: int, calibrated: int, held: int,
                    unreadable: int) -> str:
    """The manifest's (and terminal's) note when the folder holds fewer images than requested; the numbers are
    the images actually used, after unreadable ones were skipped."""
    skipped = f", {unreadable} unreadable skipped" if unreadable else ""
    return (f"only {found} images under {folder}, fewer than the {count} + {holdout} requested: "
            f"using {calibrated} for calibration and {held} held out{skipped}")


def _from_folder(folder: Path, count: int, seed: int, p: Preprocessing, holdout: int) -> CalibrationData:
    images = find_images(folder)
    holdout_count, calibration_count = holdout, count
    short = len(images) < count + holdout
    if short:
        holdout_count = min(holdout, max(1, len(images) // 5))
        calibration_count = len(images) - holdout_count
    if calibration_count < 1:
        raise MicronetError(f"only {len(images)} image under {folder}: need at least 2 "
                            "(one to calibrate on, one held out for parity)")
    # Hold-out first, then calibration from the rest: the two sets are disjoint by construction.
    holdout_files = deterministic_sample(images, holdout_count, seed)
    held = set(holdout_files)
    calibration_files = deterministic_sample([path for path in images if path not in held],
                                             calibration_count, seed)
    calibration, skipped = load_batch(calibration_files, p)
    holdout_batch, holdout_skipped = load_batch(holdout_files, p)
    unreadable = len(skipped) + len(holdout_skipped)
    if len(calibration) == 0:
        raise _none_readable(folder, images, calibration_files, "for calibration", skipped, unreadable)
    if holdout_files and len(holdout_batch) == 0:
        raise _none_readable(folder, images, holdout_files, "to hold out for parity", holdout_skipped, unreadable)
    record: dict[str, Any] = {
        "source": f"user folder {folder}",
        "is_default": False,
        "count": int(len(calibration)),
        "requested_count": count,
        "seed": seed,
        "holdout": int(len(holdout_batch)),
        "requested_holdout": holdout,
        "files_sha256": file_list_sha256(_loaded(calibration_files, skipped), folder),
        "holdout_files_sha256": file_list_sha256(_loaded(holdout_files, holdout_skipped), folder),
        "skipped": _skipped_record(skipped + holdout_skipped, folder),
        "preprocessing": p.to_dict(),
    }
    if short:
        record["note"] = _shortfall_note(folder, len(images), count, holdout, len(calibration), len(holdout_batch),
                                         unreadable)
    return CalibrationData(calibration=calibration, holdout=holdout_batch, record=record)


def _from_bundled_photos(count: int, seed: int, p: Preprocessing, holdout: int) -> CalibrationData:
    photos = bundled_photographs()
    # Whole photographs are held out, so parity is measured on scenes never calibrated on. If the table's
    # choice is missing, or is all this installation has, the last photo is held out instead.
    held = held_out_photographs()
    if not held or len(held) == len(photos):
        held = photos[-1:]
    calibration_photos = [path for path in photos if path not in held]
    if not calibration_photos:
        raise MicronetError("only one bundled photograph is installed, too few to calibrate and hold one "
                            "out; give a calibration folder")
    # With fewer crops than photos, later photos get no crop at all and are not recorded as used.
    calibration_photos, held = calibration_photos[:count], held[:holdout]
    calibration, skipped = photo_crops(calibration_photos, count, seed, p)
    holdout_batch, holdout_skipped = photo_crops(held, holdout, seed, p)
    if len(calibration) == 0:
        raise MicronetError(f"none of the bundled photographs could be read (first: {skipped[0][0]}: "
                            f"{skipped[0][1]}); give a calibration folder")
    used_calibration = _loaded(calibration_photos, skipped)
    used_holdout = _loaded(held, holdout_skipped)
    used = used_calibration + used_holdout
    root = Path(os.path.commonpath([path.parent for path in photos]))
    packages = sorted({source["package"] for source in photo_sources(used)})
    record: dict[str, Any] = {
        "source": f"embedded default: {len(used)} photographs from {'/'.join(packages)}",
        "is_default": True,
        "count": int(len(calibration)),
        "requested_count": count,
        "seed": seed,
        "holdout": int(len(holdout_batch)),
        "requested_holdout": holdout,
        "files_sha256": file_list_sha256(used_calibration, root),
        "holdout_files_sha256": file_list_sha256(used_holdout, root),
        "photographs": {"calibration": [path.name for path in used_calibration],
                        "holdout": [path.name for path in used_holdout]},
        "sources": photo_sources(used),
        "skipped": _skipped_record(skipped + holdout_skipped, root),
        "preprocessing": p.to_dict(),
        "warning": DEFAULT_SET_WARNING.format(photos=len(used_calibration)),
    }
    return CalibrationData(calibration=calibration, holdout=holdout_batch, record=record)
