"""Intersection over union from a confusion matrix: the Cityscapes benchmark's mIoU.

Accumulating a confusion matrix (not per-image IoUs) is what the benchmark does: the IoU of a class is
its pixel counts summed over the whole split, so a class that is absent from most images still counts
once. Pixels labelled 255 are left out, whatever was predicted there. A class that occurs neither in the
labels nor in the predictions has no IoU (NaN) and is left out of the mean, which is what
``cityscapesscripts`` reports for a class without ground truth.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from micronet.errors import MicronetError

from .cityscapes import CLASS_NAMES, IGNORE_INDEX


class ConfusionMatrix:
    """Counts of (label, prediction) pixel pairs over everything added so far; rows are labels."""

    def __init__(self, num_classes: int = len(CLASS_NAMES), ignore_index: int = IGNORE_INDEX,
                 class_names: tuple[str, ...] | None = None) -> None:
        if class_names is None:
            class_names = CLASS_NAMES if num_classes == len(CLASS_NAMES) else tuple(
                str(i) for i in range(num_classes))
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = class_names
        self.counts = np.zeros((num_classes, num_classes), dtype=np.int64)

    def add(self, prediction: np.ndarray, label: np.ndarray) -> None:
        """Add one image's (or a batch's) predicted class map and its label map, of the same shape."""
        prediction, label = np.asarray(prediction), np.asarray(label)
        if prediction.shape != label.shape:
            raise MicronetError(f"prediction shape {prediction.shape} does not match label shape {label.shape}")
        keep = label != self.ignore_index
        label, prediction = label[keep].astype(np.int64), prediction[keep].astype(np.int64)
        for name, values in (("label", label), ("prediction", prediction)):
            if values.size and (values.min() < 0 or values.max() >= self.num_classes):
                bad = values[(values < 0) | (values >= self.num_classes)][0]
                raise MicronetError(f"{name} holds class {int(bad)}, outside 0-{self.num_classes - 1} "
                                    f"(and {self.ignore_index} for ignore)")
        self.counts += np.bincount(label * self.num_classes + prediction,
                                   minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)

    def iou(self) -> np.ndarray:
        """Per-class IoU = TP / (TP + FP + FN); NaN for a class seen neither in labels nor predictions."""
        true_positive = np.diag(self.counts).astype(np.float64)
        union = self.counts.sum(axis=0) + self.counts.sum(axis=1) - true_positive
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, true_positive / union, np.nan)

    def mean_iou(self) -> float:
        """mIoU over the classes that have an IoU (0-1; reports print it ×100 as "mIoU points")."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.counts.sum()
        return float(np.trace(self.counts) / total) if total else float("nan")

    def report(self) -> dict[str, Any]:
        """A JSON-ready summary: mIoU, pixel accuracy, and each class's IoU by name (None where undefined)."""
        iou = self.iou()
        return {"miou": self.mean_iou(), "pixel_accuracy": self.pixel_accuracy(),
                "pixels": int(self.counts.sum()),
                "per_class_iou": {name: (None if np.isnan(v) else float(v))
                                  for name, v in zip(self.class_names, iou)}}
