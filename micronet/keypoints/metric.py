"""COCO keypoint AP (OKS), computed by pycocotools' COCOeval, the benchmark's own implementation.

Predictions are COCO results: one ``{"image_id", "category_id": 1, "keypoints": [x, y, s] * 17, "score"}``
per person. The person score is the box score times the mean of the keypoint scores above a threshold
(the SimpleBaseline rescoring), computed by whoever builds the results; this module only evaluates.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any

import numpy as np

from micronet.errors import MicronetError

#: COCOeval's summary for keypoints, in its order.
STAT_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")


def oks_average_precision(annotation_file: str | os.PathLike, results: list[dict[str, Any]]
                          ) -> dict[str, float | None]:
    """AP over the 10 OKS thresholds 0.50:0.95 and its breakdown (``STAT_NAMES``), each 0-1; None where
    COCOeval has nothing to measure (no medium or no large person: its -1). Its printing is captured
    (reports print their own table). No predictions is an AP of 0, not an error."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(annotation_file))
    if not results:
        return {name: 0.0 for name in STAT_NAMES}
    known = set(ground_truth.getImgIds())
    for result in results:
        if result.get("image_id") not in known:
            raise MicronetError(f"prediction for image_id {result.get('image_id')!r}, which is not in "
                                f"{annotation_file}")
        if len(result.get("keypoints", [])) != 51:
            raise MicronetError("a keypoint prediction needs 17 × (x, y, score) values")
    with contextlib.redirect_stdout(io.StringIO()):
        detections = ground_truth.loadRes([dict(r, category_id=r.get("category_id", 1)) for r in results])
        evaluator = COCOeval(ground_truth, detections, "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: (None if value < 0 else float(value)) for name, value in zip(STAT_NAMES, np.asarray(evaluator.stats))}
