"""Evaluation inputs for a device: labelled images decoded and preprocessed here, shipped as ``.npz``.

Why on the host: a Pi or a phone should not need PIL, the label-folder conventions or micronet's
exact resize/crop arithmetic. The desktop applies each model's own preprocessing (from its manifest,
the same transform its export was checked with) and writes ``x`` (float32, N×3×H×W, normalised) and
``y`` (int64 class indices); the device only quantizes and feeds them. Models that share a
preprocessing share one file. Float32 costs 3·H·W·4 bytes per image (108 KiB at 96 px, 588 KiB at
224 px): use ``limit`` for big folders.

Pose and segmentation models are scored the other way round (``build_dense_eval_sets``): the board sends
its answers back and the desktop's evaluator scores them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from micronet.errors import MicronetError

SKIPPED_EXAMPLES = 10


def _images(data: Any) -> Any:
    if hasattr(data, "samples"):
        return data
    from micronet.images import scan_labelled

    return scan_labelled(data)


def _preprocessing(manifest: dict | None, where: str) -> Any:
    from micronet.preprocess import Preprocessing

    record = ((manifest or {}).get("input") or {}).get("preprocessing")
    if not record:
        raise MicronetError(f"accuracy on a device needs {where}'s manifest (its preprocessing): "
                            "export it with micronet export, or give eval_inputs")
    return Preprocessing.from_dict(record)


def _output_width(manifest: dict | None) -> int | None:
    shape = ((manifest or {}).get("output") or {}).get("shape") or []
    return shape[-1] if shape and isinstance(shape[-1], int) and shape[-1] > 0 else None


def build_eval_sets(models: Sequence[tuple[Path, dict | None]], data: Any, limit: int | None,
                    out_dir: Path) -> tuple[list[Path], dict[str, Any]]:
    """One ``.npz`` per model (shared between models with equal preprocessing) and the accuracy meta.

    ``limit`` keeps the first N readable images in scan order, as the desktop harness does, so both
    score the same images.
    """
    from micronet.preprocess import load_batch

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise MicronetError(f"limit must be a whole number of images >= 1, got {limit!r}")
    images = _images(data)
    samples = list(images.samples)
    if not samples:
        raise MicronetError("no images to evaluate")
    wanted = len(samples) if limit is None else min(limit, len(samples))
    files: list[Path] = []
    cache: dict[str, Path] = {}
    skipped_all: list[tuple[Path, str]] = list(images.skipped)
    for path, manifest in models:
        width = _output_width(manifest)
        if width is not None and width != len(images.classes):
            from micronet.bench.accuracy import class_mismatch_message

            raise MicronetError(class_mismatch_message(len(images.classes), width, path.name))
        p = _preprocessing(manifest, path.name)
        key = json.dumps(p.to_dict(), sort_keys=True)
        if key not in cache:
            xs, ys, position, count = [], [], 0, 0
            skipped: list[tuple[Path, str]] = []
            while count < wanted and position < len(samples):
                chunk = samples[position:position + min(64, wanted - count)]
                position += len(chunk)
                pixels, unreadable = load_batch([s for s, _ in chunk], p)
                bad = {Path(s) for s, _ in unreadable}
                skipped.extend(unreadable)
                xs.append(pixels)
                ys.extend(label for s, label in chunk if Path(s) not in bad)
                count += len(pixels)
            if count == 0:
                raise MicronetError(f"none of the {len(samples)} images could be read")
            target = out_dir / f"eval-{len(cache)}.npz"
            np.savez(target, x=np.concatenate(xs).astype(np.float32), y=np.asarray(ys, dtype=np.int64))
            cache[key] = target
            if len(cache) == 1:
                skipped_all.extend(skipped)
        files.append(cache[key])
    meta = {"classes": len(images.classes), "skipped": len(skipped_all), "limit": limit,
            "skipped_examples": [f"{path}: {reason}" for path, reason in skipped_all[:SKIPPED_EXAMPLES]]}
    return files, meta


def check_eval_inputs(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A user's own ``.npz`` (``x`` float32 N×C×H×W preprocessed, ``y`` integer labels): checked before pushing."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise MicronetError(f"eval inputs not found: {file}")
    try:
        with np.load(file, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise MicronetError(f"{file} needs arrays x (float32 N×C×H×W) and y (labels), has {list(data)}")
            x_shape, x_dtype, y = data["x"].shape, data["x"].dtype, data["y"]
    except MicronetError:
        raise
    except Exception as exc:
        raise MicronetError(f"cannot read eval inputs {file}: {exc}") from None
    if len(x_shape) != 4 or x_dtype != np.float32:
        raise MicronetError(f"{file}: x must be float32 N×C×H×W, got {x_dtype} {list(x_shape)}")
    if y.shape != (x_shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise MicronetError(f"{file}: y must hold one integer label per image ({x_shape[0]}), got {y.dtype} {list(y.shape)}")
    return file, {"classes": None, "skipped": 0, "skipped_examples": [], "limit": None}


# ====================================================================== pose and segmentation


#: What a board sends back per input: segmentation labels (uint8 N×H×W: 19 float maps at 512×1024 are
#: 40 MiB an image, their arg-max 0.5 MiB; the desktop arg-maxes first too), or pose heatmaps (float32
#: N×17×h×w, which the flip test averages before decoding).
DENSE_ANSWER = {"segmentation": "labels", "pose": "maps"}


class _Recorder:
    """A ``Runner`` that keeps every batch it is fed and answers with blank maps (or labels)."""

    def __init__(self, answer: str, chw: tuple[int, int, int]) -> None:
        self.answer, self.chw, self.batches = answer, chw, []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(np.array(batch, dtype=np.float32, copy=True))
        c, h, w = self.chw
        if self.answer == "labels":
            return np.zeros((len(batch), h, w), np.uint8)
        return np.zeros((len(batch), c, h, w), np.float32)


class _Replay:
    """A ``Runner`` that answers each batch with the device's answers to the same inputs, in feeding order."""

    def __init__(self, answers: np.ndarray, where: str) -> None:
        self.answers, self.where, self.position = answers, where, 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        out = self.answers[self.position:self.position + n]
        if len(out) != n:
            raise MicronetError(f"{self.where} answered {len(self.answers)} inputs; scoring needs more")
        self.position += n
        return out

    def check_used(self) -> None:
        if self.position != len(self.answers):
            raise MicronetError(f"{self.where} answered {len(self.answers)} inputs, scoring used {self.position}")


def _dense_shape(manifest: dict | None, where: str) -> tuple[str, tuple[int, int], tuple[int, int, int]]:
    """(task, input H×W, output C×h×w) of a dense export, from its manifest."""
    manifest = manifest or {}
    output = manifest.get("output") or {}
    size = manifest.get("input_size")
    if manifest.get("task") not in DENSE_ANSWER or not size or "stride" not in output or not output.get("shape"):
        raise MicronetError(f"scoring {where} on a device needs its pose or segmentation manifest "
                            "(task, input_size, output shape): export it with micronet export")
    shape = [int(d) for d in output["shape"][1:]]
    chw = (shape[2], shape[0], shape[1]) if output.get("layout") == "NHWC" else (shape[0], shape[1], shape[2])
    return str(manifest["task"]), (int(size[0]), int(size[1])), chw


def build_dense_eval_sets(models: Sequence[tuple[Path, dict | None]], data: Any, limit: int | None, out_dir: Path
                          ) -> tuple[list[Path], dict[str, Any], list[Callable[[np.ndarray, str], dict]]]:
    """A pose or segmentation folder (``bench.tasks.DenseData``) as device inputs: one ``.npz`` per model
    (shared between models of one input size), the accuracy meta, and per model the function that turns
    the device's answers into the report's ``accuracy`` object.

    Why record and replay: the desktop's evaluators (crops, flips, resizes, decoding, COCOeval, the confusion
    matrix) stay the only scoring code. They are run once with a recording runner to learn every input they
    would feed; the board answers those inputs; the answers are fed back through the same evaluator.
    The ``.npz`` has ``x`` (float32 N×3×H×W, every batch in feeding order, flipped crops included) and
    ``dense`` (what to send back: ``labels`` or ``maps``).
    """
    from micronet.bench.tasks import evaluate_dense_with

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise MicronetError(f"limit must be a whole number of images >= 1, got {limit!r}")
    files: list[Path] = []
    scorers: list[Callable[[np.ndarray, str], dict]] = []
    cache: dict[tuple, Path] = {}
    for path, manifest in models:
        task, size, chw = _dense_shape(manifest, path.name)
        if task != data.task:
            raise MicronetError(f"{path.name} is a {task} model, but --data holds {data.task} data")
        answer = DENSE_ANSWER[task]
        key = (task, size, chw)
        if key not in cache:
            recorder = _Recorder(answer, chw)
            evaluate_dense_with(recorder, data, size, limit, score=False)
            target = out_dir / f"eval-dense-{len(cache)}.npz"
            np.savez(target, x=np.concatenate(recorder.batches), dense=np.array(answer))
            cache[key] = target
        files.append(cache[key])

        def score(answers: np.ndarray, device: str, size: tuple[int, int] = size) -> dict:
            replay = _Replay(np.asarray(answers), device)
            accuracy = evaluate_dense_with(replay, data, size, limit)
            replay.check_used()
            return accuracy

        scorers.append(score)
    count = len(data.samples) if limit is None else min(limit, len(data.samples))
    return files, {"task": data.task, "count": count, "limit": limit, "skipped": 0, "skipped_examples": []}, scorers
