"""Top-1/top-5 accuracy of a loaded runtime on labelled images.

Why here and not in export's parity check: parity compares a converted model with PyTorch on a few
inputs; this measures what a user ships, through the runtime they ship it with, with the same
preprocessing the export recorded. Images the decoder cannot read are skipped and counted (one
corrupt photo should cost a line in the report, not the run), but a label space that does not match
the model's outputs is an error, because every score would be silently wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from micronet.errors import MicronetError

SKIPPED_EXAMPLES = 10  # enough to diagnose a bad folder without bloating the report


def _output_width(runtime: Any) -> int | None:
    shape = runtime.output_spec.shape
    return shape[-1] if shape and isinstance(shape[-1], int) else None


class ClassMismatch(MicronetError):
    """The data's classes are not the model's: every score would be wrong, so the whole run stops.

    A subclass so the harness can tell it from a per-row failure (a runtime that cannot load one
    file), which only invalidates that row.
    """


def class_mismatch_message(data_classes: int, model_classes: int, model: str = "the model") -> str:
    """What to do about it, naming only options that exist (the CLI takes class folders, no labels file)."""
    return (f"the data has {data_classes} classes but {model} outputs {model_classes} logits, so no image can be "
            f"scored: give --data one class folder per model class ({model_classes}), or a model trained on these "
            f"{data_classes} classes; from Python, micronet.images.scan_labelled(folder, label_map=...) with all "
            f"{model_classes} class names maps your folders onto the model's classes")


def check_classes(data_classes: int, model_classes: int | None, model: str = "the model") -> None:
    """Raise ``ClassMismatch`` when both counts are known and differ."""
    if model_classes is not None and data_classes != model_classes:
        raise ClassMismatch(class_mismatch_message(data_classes, model_classes, model))


def validate_options(limit: int | None, batch: int) -> None:
    """Checked by the harness before any model loads, and again here for direct callers."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise MicronetError(f"limit must be a whole number of images >= 1, got {limit!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise MicronetError(f"batch must be a whole number >= 1, got {batch!r}")


def evaluate(
    runtime: Any,
    images: Any,
    preprocessing: Any,
    limit: int | None = None,
    batch: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Score ``runtime`` on ``images`` (a ``micronet.images.LabelledImages``).

    ``preprocessing`` is a ``micronet.preprocess.Preprocessing``. ``limit`` is the number of images
    to score: the first N readable ones of a fixed shuffle of the scan order (seed 0), so the subset
    spans every class (scan order is class by class) and is the same in every run and every format;
    undecodable files do not shrink the sample. ``batch`` is the inference batch; a model exported with a fixed batch is fed
    batches of its own size instead (a short last batch is zero-padded, padding unscored).
    ``progress(done, total)`` is called after each batch with samples consumed so far.

    Returns the report's ``accuracy`` object: ``top1``/``top5`` in percent, ``count`` (images scored),
    ``skipped`` (files left out: at scan time plus undecodable ones met), ``skipped_examples`` (the
    first few as "path: reason"), ``classes``, ``limit``, ``batch`` (as run).
    """
    from micronet.preprocess import load_batch

    validate_options(limit, batch)
    samples = list(images.samples)
    if limit is not None and limit < len(samples):
        samples = [samples[i] for i in np.random.default_rng(0).permutation(len(samples))]
    if not samples:
        raise MicronetError("no images to evaluate")
    check_classes(len(images.classes), _output_width(runtime))
    fixed = runtime.input_spec.fixed_batch
    batch = fixed or batch
    wanted = len(samples) if limit is None else min(limit, len(samples))

    top1 = top5 = count = 0
    skipped = list(images.skipped)
    position = 0
    while count < wanted and position < len(samples):
        chunk = samples[position:position + min(batch, wanted - count)]
        position += len(chunk)
        pixels, unreadable = load_batch([path for path, _ in chunk], preprocessing)
        skipped.extend(unreadable)
        bad = {Path(path) for path, _ in unreadable}
        labels = np.array([label for path, label in chunk if Path(path) not in bad], dtype=np.int64)
        n = len(labels)
        if n:
            if fixed is not None and n < fixed:  # a short last batch: pad with zeros, score only the real rows
                pixels = np.concatenate([pixels, np.zeros((fixed - n, *pixels.shape[1:]), dtype=pixels.dtype)])
            logits = runtime.to_logits(runtime.run(runtime.prepare(pixels)))[:n]
            check_classes(len(images.classes), logits.shape[1])  # when the spec could not tell
            k = min(5, logits.shape[1])
            best = np.argsort(-logits, axis=1, kind="stable")[:, :k]
            top1 += int((best[:, 0] == labels).sum())
            top5 += int((best == labels[:, None]).any(axis=1).sum())
            count += n
        if progress is not None:
            progress(position, len(samples))
    if count == 0:
        raise MicronetError(f"none of the {len(samples)} images could be read")
    return {
        "top1": 100.0 * top1 / count,
        "top5": 100.0 * top5 / count,
        "count": count,
        "skipped": len(skipped),
        "skipped_examples": [f"{path}: {reason}" for path, reason in skipped[:SKIPPED_EXAMPLES]],
        "classes": len(images.classes),
        "limit": limit,
        "batch": batch,
    }

