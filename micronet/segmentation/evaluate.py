"""A segmentation model's mIoU over a Cityscapes split, for any runner (PyTorch, ONNX, TFLite).

``run`` maps a normalised NCHW float32 batch to (N, classes, H, W) logits at the input's resolution (the
MR-ASPP head upsamples to it), or to (N, H, W) labels already arg-maxed (what a device sends back). Images
are resized to ``input_size`` (H, W) when they differ from it, and the predicted labels are brought back
to the annotation's resolution by nearest-neighbour resizing: the benchmark scores at the annotation's
resolution, whatever the model ran at.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from PIL import Image

from micronet.images import load_rgb
from micronet.preprocess import Preprocessing, normalise

from .cityscapes import CLASS_NAMES, SegmentationSample
from .metrics import ConfusionMatrix

#: ImageNet normalisation (``preprocess.normalise``); the size field is unused here.
_IMAGENET = Preprocessing()

Runner = Callable[[np.ndarray], np.ndarray]


def _normalised(image: Image.Image, input_size: tuple[int, int]) -> np.ndarray:
    height, width = input_size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return normalise(image, _IMAGENET)


def evaluate_segmentation(run: Runner, samples: Sequence[SegmentationSample], input_size: tuple[int, int],
                          num_classes: int = len(CLASS_NAMES), batch_size: int = 4,
                          progress: Callable[[int], None] | None = None) -> dict:
    """mIoU, pixel accuracy and per-class IoU (``ConfusionMatrix.report``) of ``run`` on ``samples``."""
    matrix = ConfusionMatrix(num_classes)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        batch = np.stack([_normalised(load_rgb(s.image), input_size) for s in chunk]).astype(np.float32)
        answer = np.asarray(run(batch))
        # A runner may answer with labels (N×H×W) instead of logits: a board sends its arg-max back, not 19 maps.
        predicted = (answer if answer.ndim == 3 else answer.argmax(axis=1)).astype(np.uint8)
        for sample, labels in zip(chunk, predicted):
            truth = sample.load_label()
            if labels.shape != truth.shape:
                labels = np.asarray(Image.fromarray(labels).resize((truth.shape[1], truth.shape[0]),
                                                                   Image.Resampling.NEAREST))
            matrix.add(labels, truth)
        if progress is not None:
            progress(len(chunk))
    return {**matrix.report(), "images": len(samples), "input_size": list(input_size)}
