"""A pose model's keypoints for every person of a split, as COCO results: crop, run, flip test, decode,
map back, rescore.

``run`` is any callable from a normalised NCHW float32 batch to (N, 17, H/4, W/4) heatmaps, so the same
code measures the PyTorch model and its ONNX / TFLite files.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from PIL import Image

from micronet.images import load_rgb
from micronet.preprocess import Preprocessing, normalise

from .coco import PersonBox
from .crops import crop_transform
from .heatmaps import decode_heatmaps, flip_back

HEATMAP_STRIDE = 4
#: SimpleBaseline's rescoring: a person's score is its box score times the mean score of its keypoints
#: above this.
KEYPOINT_SCORE_THRESHOLD = 0.2

Runner = Callable[[np.ndarray], np.ndarray]


#: ImageNet normalisation, as the classifiers use (``preprocess.normalise``); the size field is unused here.
IMAGENET = Preprocessing()


def person_score(box_score: float, keypoint_scores: np.ndarray) -> float:
    confident = keypoint_scores[keypoint_scores > KEYPOINT_SCORE_THRESHOLD]
    return float(box_score * (confident.mean() if confident.size else 0.0))


def predict_keypoints(run: Runner, boxes: Sequence[PersonBox], input_size: tuple[int, int] = (256, 192),
                      flip: bool = True, batch_size: int = 16,
                      progress: Callable[[int], None] | None = None) -> list[dict]:
    """COCO keypoint results for ``boxes`` (one per box). With ``flip`` each crop's heatmaps are averaged
    with those of its mirror image (``flip_back``), as the paper evaluates."""
    results: list[dict] = []
    images: dict = {}
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start:start + batch_size]
        transforms = [crop_transform(b.box, input_size) for b in chunk]
        crops = []
        for box, transform in zip(chunk, transforms):
            if box.image not in images:
                images = {box.image: load_rgb(box.image)}  # boxes come grouped by image: keep one open
            crops.append(transform.crop(images[box.image]))
        batch = np.stack([normalise(c, IMAGENET) for c in crops]).astype(np.float32)
        heatmaps = np.asarray(run(batch), dtype=np.float32)
        if flip:
            heatmaps = (heatmaps + flip_back(np.asarray(run(np.ascontiguousarray(batch[..., ::-1])),
                                                         dtype=np.float32))) / 2
        positions, scores = decode_heatmaps(heatmaps)
        for box, transform, points, point_scores in zip(chunk, transforms, positions, scores):
            xy = transform.to_image(points, stride=HEATMAP_STRIDE)
            keypoints = np.concatenate([xy, point_scores[:, None]], axis=1)
            results.append({"image_id": box.image_id, "category_id": 1,
                            "keypoints": [round(float(v), 3) for v in keypoints.ravel()],
                            "score": person_score(box.score, point_scores)})
        if progress is not None:
            progress(len(chunk))
    return results
