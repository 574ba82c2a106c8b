"""What ``micronet bench`` scores per task: the data folder each task reads and its headline metric.

Why a table: the harness, the gate and the reports are the classifiers' (latency, memory, rows), and only
the accuracy step differs by task. Classification scores top-1 on class folders (bench/accuracy.py);
segmentation scores mIoU on a Cityscapes split (micronet/segmentation/evaluate.py); pose scores OKS AP on
COCO keypoints with ground-truth person boxes (micronet/keypoints/). Every dense score goes through the
same runner a user would ship (bench/dense.py), so the drop against PyTorch measures the export alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from micronet.errors import MicronetError

CLASSIFICATION = "classification"


@dataclass(frozen=True)
class TaskMetric:
    """The figure the accuracy column, the CSV and ``--max-drop`` use for one task."""

    key: str  # the key in the row's ``accuracy`` object
    name: str  # what tables print
    unit: str  # "%" for top-1, "points" for mIoU/AP (x100)
    data: str  # what --data must be, for error lines


METRICS: dict[str, TaskMetric] = {
    CLASSIFICATION: TaskMetric("top1", "top-1", "%", "class folders"),
    "segmentation": TaskMetric("miou", "mIoU", "points", "a Cityscapes folder (leftImg8bit/val, gtFine/val)"),
    "pose": TaskMetric("ap", "AP", "points", "a COCO keypoints folder (annotations/person_keypoints_val2017.json)"),
}


def metric_of(accuracy: dict[str, Any] | None) -> TaskMetric:
    """The metric an ``accuracy`` object carries (objects written before tasks had one are top-1)."""
    return METRICS.get((accuracy or {}).get("task") or CLASSIFICATION, METRICS[CLASSIFICATION])


def headline(accuracy: dict[str, Any] | None) -> float | None:
    """The accuracy object's main figure (top-1 %, mIoU points or AP points); None when absent."""
    if not accuracy:
        return None
    value = accuracy.get(metric_of(accuracy).key)
    return None if value is None else float(value)


def task_of_variant(variant: str) -> str:
    from micronet.registry import resolve_variant

    return resolve_variant(variant, task=None).task


def _kind_of_folder(folder: Path) -> str | None:
    """Which task's data ``folder`` looks like, from its layout alone (nothing is read)."""
    if (folder / "leftImg8bit").is_dir() and (folder / "gtFine").is_dir():
        return "segmentation"
    if (folder / "annotations").is_dir() and any((folder / "annotations").glob("person_keypoints_*.json")):
        return "pose"
    return None


@dataclass
class DenseData:
    """A scanned dense data folder: Cityscapes val samples, or a COCO keypoints split with its person boxes."""

    task: str
    root: Path
    samples: list  # SegmentationSample or PersonBox
    annotation_file: Path | None = None


def load_task_data(task: str, folder: str | Path) -> Any:
    """Scan ``folder`` as ``task``'s data; a folder of another task's layout is one line naming both."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MicronetError(f"data folder not found: {folder}")
    kind = _kind_of_folder(folder)
    if task == CLASSIFICATION:
        if kind is not None:
            raise MicronetError(f"{folder} holds {kind} data, but the model is a classifier: give --data class "
                                f"folders, or benchmark a {'pose' if kind == 'pose' else 'seg'}-m* variant on it")
        from micronet.images import scan_labelled

        return scan_labelled(folder)
    if kind != task:
        what = f"{kind} data" if kind else "class folders or an unknown layout"
        raise MicronetError(f"{folder} holds {what}, but a {task} model needs --data {METRICS[task].data}")
    if task == "segmentation":
        from micronet.segmentation.cityscapes import scan_cityscapes

        return DenseData(task, folder, scan_cityscapes(folder, "val"))
    from micronet.keypoints.coco import load_coco_keypoints

    coco = load_coco_keypoints(folder, "val2017")
    return DenseData(task, folder, coco.person_boxes(), coco.annotation_file)


def evaluate_dense(runtime: Any, data: DenseData, input_size: tuple[int, int], limit: int | None = None
                   ) -> dict[str, Any]:
    """The report's ``accuracy`` object for a pose or segmentation model loaded in ``runtime``.

    Segmentation: ``miou`` and ``pixel_accuracy`` in points (x100), ``per_class_iou`` (0-1 by class name).
    Pose: ``ap``, ``ap50``, ``ap75``, ``apm``, ``apl`` in points (None where COCOeval has no such person),
    on ground-truth person boxes with flip testing. ``limit`` scores the first N images (boxes for pose).
    """
    from .dense import dense_runner

    return evaluate_dense_with(dense_runner(runtime), data, input_size, limit)


def evaluate_dense_with(run: Any, data: DenseData, input_size: tuple[int, int], limit: int | None = None,
                        score: bool = True) -> dict[str, Any]:
    """``evaluate_dense`` for any ``Runner`` (NCHW images in, NCHW maps or segmentation labels out).

    Why a runner and not a runtime: a device's answers are replayed through it (devices/evalset.py), so a
    board is scored by exactly this code. ``score=False`` only feeds the runner (the inputs a device will
    get are recorded that way) and returns ``{}``: COCOeval on a recording's blank maps is wasted time.
    """
    samples = data.samples if limit is None else data.samples[:limit]
    if not samples:
        raise MicronetError(f"{data.root}: nothing to evaluate")
    if data.task == "segmentation":
        from micronet.segmentation.evaluate import evaluate_segmentation

        result = evaluate_segmentation(run, samples, input_size)
        if not score:
            return {}
        return {"task": "segmentation", "metric": "mIoU", "unit": "points", "miou": 100.0 * result["miou"],
                "pixel_accuracy": 100.0 * result["pixel_accuracy"], "per_class_iou": result["per_class_iou"],
                "count": result["images"], "pixels": result["pixels"], "limit": limit}
    from micronet.keypoints.metric import oks_average_precision
    from micronet.keypoints.predict import predict_keypoints

    predictions = predict_keypoints(run, samples, input_size)
    if not score:
        return {}
    stats = oks_average_precision(data.annotation_file, predictions)

    def points(name: str) -> float | None:
        return None if stats.get(name) is None else 100.0 * float(stats[name])

    return {"task": "pose", "metric": "AP", "unit": "points", "ap": points("AP"), "ap50": points("AP50"),
            "ap75": points("AP75"), "apm": points("APM"), "apl": points("APL"), "count": len(samples),
            "limit": limit}
