"""Finding and loading images: the one place that decides which files in a folder are the data.

Export calibration, benchmark accuracy and training all read user folders through here, so one folder
means the same files, in the same order, with the same hash, to every stage.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence, TypeVar

import numpy as np
from PIL import Image

from micronet.errors import MicronetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_EXTENSIONS_TEXT = " ".join(IMAGE_EXTENSIONS)

Item = TypeVar("Item")


class UnreadableImage(MicronetError):
    """A file with an image extension that PIL cannot decode: corrupt, truncated or not an image at all."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def is_image_file(path: Path) -> bool:
    """Judged by name only; hidden names are refused because macOS leaves ``._photo.jpg`` resource
    forks beside real photos, and those carry an image extension without being images."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _existing_folder(root: str | os.PathLike) -> Path:
    folder = Path(root).expanduser()
    if not folder.exists():
        raise MicronetError(f"image folder not found: {folder}")
    if not folder.is_dir():
        raise MicronetError(f"not a folder: {folder} (expected a folder of images)")
    return folder


def _walk_images(folder: Path, others: list[Path] | None = None) -> list[Path]:
    """Image files at any depth, sorted by relative posix path so the order is the same on every OS.

    Symlinked folders are followed (datasets are often linked in) but each real folder is read once, so
    a link loop or two links to one folder cannot repeat or hang. Visible files that are not images are
    appended to ``others`` when given, so a labelled scan can report them instead of dropping them silently.
    """
    found: list[Path] = []
    real_folders_seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in real_folders_seen:
            dirnames.clear()
            continue
        real_folders_seen.add(real)
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        found.extend(Path(dirpath, name) for name in filenames if is_image_file(Path(name)))
        if others is not None:
            others.extend(Path(dirpath, name) for name in filenames
                          if not name.startswith(".") and not is_image_file(Path(name)))
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


def find_images(root: str | os.PathLike) -> list[Path]:
    """Every image under ``root`` (any nesting), in a deterministic order; a folder without one is an error."""
    folder = _existing_folder(root)
    images = _walk_images(folder)
    if not images:
        raise MicronetError(f"no images ({_EXTENSIONS_TEXT}) under {folder}")
    return images


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode the whole file now, so a truncated file fails here and not halfway through a batch.

    Plain ``convert("RGB")`` without EXIF rotation, as torchvision's ImageFolder loader does, so accuracy
    is measured on the same pixels as the released MicroNet evaluation.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UnreadableImage(path, reason) from exc


@dataclass
class LabelledImages:
    """Images with class indices. ``classes[i]`` names index ``i``; ``skipped`` explains what was left out."""

    samples: list[tuple[Path, int]]
    classes: list[str]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    root: Path | None = None  # the folder scanned, so a report can name the data without scanning it again


def _classes_from_map(label_map: dict[str, int]) -> list[str]:
    """The map must describe the model's whole output (indices 0..N-1), or accuracy would be mis-scored."""
    if sorted(label_map.values()) != list(range(len(label_map))):
        raise MicronetError("label map indices must be exactly 0..N-1, each used once")
    return sorted(label_map, key=label_map.__getitem__)


def _scan_class_folders(folder: Path, label_map: dict[str, int] | None) -> LabelledImages:
    class_folders = sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                           key=lambda d: d.name)
    if not class_folders:
        raise MicronetError(f"no class folders under {folder}: expected {folder}/<class>/<image>, "
                            "one folder per class")
    classes = _classes_from_map(label_map) if label_map is not None else [d.name for d in class_folders]
    index_of = {name: index for index, name in enumerate(classes)}
    result = LabelledImages(samples=[], classes=classes, root=folder)
    result.skipped.extend((path, "not inside a class folder") for path in sorted(folder.iterdir())
                          if path.is_file() and is_image_file(path))
    for class_folder in class_folders:
        if class_folder.name not in index_of:
            result.skipped.append((class_folder, "folder is not a class in the label map"))
            continue
        not_images: list[Path] = []
        images = _walk_images(class_folder, not_images)
        result.skipped.extend((path, "not an image file") for path in sorted(not_images))
        if not images:
            result.skipped.append((class_folder, "class folder has no images"))
        result.samples.extend((path, index_of[class_folder.name]) for path in images)
    if not result.samples:
        raise MicronetError(f"no images ({_EXTENSIONS_TEXT}) in any class folder under {folder}")
    return result


def _read_label_rows(labels_file: Path) -> list[tuple[int, str, str]]:
    """(line number, file name, label) for every data line; a ``filename,label`` header is skipped."""
    try:
        text = labels_file.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise MicronetError(f"cannot read labels file {labels_file}: {exc.strerror or exc}") from exc
    rows: list[tuple[int, str, str]] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in next(csv.reader([line], delimiter="\t" if "\t" in line else ","))]
        if len(fields) != 2 or not all(fields):
            raise MicronetError(f"{labels_file}:{line_number}: expected 'filename,label', got {line!r}")
        if not rows and [f.lower() for f in fields] == ["filename", "label"]:
            continue
        rows.append((line_number, fields[0], fields[1]))
    if not rows:
        raise MicronetError(f"labels file {labels_file} has no 'filename,label' lines")
    return rows


def _scan_labels_file(folder: Path, labels_file: Path, label_map: dict[str, int] | None) -> LabelledImages:
    rows = _read_label_rows(labels_file)
    labels = [label for _, _, label in rows]
    if label_map is not None:
        classes = _classes_from_map(label_map)
    elif all(label.isdecimal() for label in labels):
        classes = [str(index) for index in range(max(int(label) for label in labels) + 1)]
    elif not any(label.isdecimal() for label in labels):
        classes = sorted(set(labels))
    else:
        raise MicronetError(f"labels file {labels_file} mixes class names and integer indices; "
                            "give a label map (class name -> index)")
    index_of = {name: index for index, name in enumerate(classes)}
    result = LabelledImages(samples=[], classes=classes, root=folder)
    index_of_file: dict[str, int] = {}
    for line_number, filename, label in rows:
        if label in index_of:
            index = index_of[label]
        elif label.isdecimal() and int(label) < len(classes):
            index = int(label)
        else:
            raise MicronetError(f"{labels_file}:{line_number}: unknown class {label!r}")
        if filename in index_of_file:
            if index_of_file[filename] != index:
                raise MicronetError(f"{labels_file}:{line_number}: {filename} is listed twice with different labels")
            continue
        index_of_file[filename] = index
        path = folder / filename
        if not path.is_file():
            result.skipped.append((path, "listed in the labels file but not found"))
        elif not is_image_file(path):
            result.skipped.append((path, f"not an image file ({_EXTENSIONS_TEXT})"))
        else:
            result.samples.append((path, index))
    result.samples.sort(key=lambda sample: sample[0].as_posix())  # all share the folder prefix
    if not result.samples:
        raise MicronetError(f"none of the files in {labels_file} is an image under {folder}")
    return result


def scan_labelled(root: str | os.PathLike, label_map: dict[str, int] | None = None,
                  labels_file: str | os.PathLike | None = None) -> LabelledImages:
    """Labelled images for accuracy and training, in one of two layouts.

    * ImageFolder: ``root/<class>/<image>`` (images may be nested deeper). Without a label map the class
      order is the sorted folder names, as torchvision's ImageFolder; with one, folders it does not name
      are skipped. An empty class folder keeps its index and is reported in ``skipped``.
    * Flat folder + labels file: one ``filename,label`` line per image (tab instead of comma also works;
      CSV quoting allowed; blank lines, ``#`` comments and a ``filename,label`` header are ignored).
      ``filename`` is relative to ``root``; ``label`` is a class name or an integer index. Without a
      label map, names give classes in sorted order and integers give classes "0".."max". Files that
      are listed but missing are reported in ``skipped``; images that are not listed are ignored.
    """
    folder = _existing_folder(root)
    if labels_file is not None:
        return _scan_labels_file(folder, Path(labels_file).expanduser(), label_map)
    return _scan_class_folders(folder, label_map)


def deterministic_sample(items: Sequence[Item], count: int, seed: int) -> list[Item]:
    """A reproducible subset that keeps the input order, so the same folder and seed give the same set."""
    if count < 0 or seed < 0:
        raise MicronetError(f"sample count and seed must be >= 0, got count {count}, seed {seed}")
    if count >= len(items):
        return list(items)
    chosen = np.sort(np.random.default_rng(seed).choice(len(items), size=count, replace=False))
    return [items[int(index)] for index in chosen]


def file_list_sha256(paths: Iterable[str | os.PathLike], root: str | os.PathLike) -> str:
    """Fingerprint of a file set (relative names and sizes in bytes) for a manifest, cheap enough to
    compute on thousands of files because it does not read their contents."""
    root_path = Path(root)
    entries = sorted((Path(p).relative_to(root_path).as_posix(), Path(p).stat().st_size) for p in paths)
    digest = hashlib.sha256()
    for relative_name, size_bytes in entries:
        digest.update(f"{relative_name}\t{size_bytes}\n".encode())
    return digest.hexdigest()
