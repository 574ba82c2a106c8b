"""What the export needs to know of the dense tasks (pose heatmaps, segmentation logits), as data.

The classifiers' pipeline (export/pipeline.py) serves these models unchanged in its stages and ladder; this
module holds only what differs per task: how the model is built at an H×W input, which formats and graphs
serve it, what its output is (layout, stride, names) for the manifest, and its calibration images
(export/dense_calibration.py).

Why the reference graph: export/fast/ parses a classifier (stem, blocks, pooled head); it has no emitter for
the keypoint head (bilinear x2 inside blocks, Dynamic Shift-Max with DY-ReLU-C spatial attention) nor for the
dilated rows and the MR-ASPP head, so a dense model is exported from the reference deploy form
(export/deploy.py), and TFLite goes through onnx2tf. onnx2tf guesses layouts from shapes and lost them on the
5-D views of the channel shuffles when a map dimension equals a group count (pose-m0 at 256x192: 12 groups
on a 16x12 map), so the dense deploy form writes its channel permutations as gathers (``permutes``); with
them pose-m0's float32 TFLite converts at 256x192. Measured before that change: seg-m0 converted at
512x1024 and 128x256 but not 64x128 or 96x192, pose-m0 only at 384x288. A failed
conversion is one error line naming the ONNX node, and nothing is written. The OpenVINO/ncnn/MNN converters
are not offered for these tasks: ncnn needs the fast graph, and the other two have not been checked on
dense outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

from micronet.errors import MicronetError

#: The multiple of H and W every dense model needs (stride 32 backbone rows, exact x2 upsamplings).
SIZE_MULTIPLE = 32


@dataclass(frozen=True)
class DenseTask:
    """One dense task as the exporter sees it."""

    task: str  # the registry's task name
    output_name: str  # what the output tensor holds, for the manifest
    output_stride: int  # input pixels per output cell
    formats: tuple[str, ...]  # the formats offered (export/request.py's FORMATS)
    graph: str  # the graph the artifacts are built from (export/request.py's TFLITE_GRAPHS)
    #: How the reference deploy form writes its channel permutations (Shift-Max partner and shuffles):
    #: "gather" rather than the 5-D views, whose layout onnx2tf misreads when a map dimension equals a
    #: group count (export/deploy.py's GatherChannelShuffle).
    permutes: str = "gather"

    def names(self) -> list[str]:
        """Keypoint names (pose) or class names (segmentation), in output-channel order."""
        if self.task == "pose":
            from micronet.keypoints import KEYPOINT_NAMES

            return list(KEYPOINT_NAMES)
        from micronet.segmentation import CLASS_NAMES

        return list(CLASS_NAMES)


DENSE_TASKS: dict[str, DenseTask] = {
    "pose": DenseTask("pose", "heatmaps", 4, ("onnx", "tflite"), "reference"),
    "segmentation": DenseTask("segmentation", "logits", 1, ("onnx", "tflite"), "reference"),
}


def is_dense(task: str) -> bool:
    return task in DENSE_TASKS


def check_size(size: int | tuple[int, int], variant: str) -> tuple[int, int]:
    """(H, W) of a dense model's input, or one line saying what to write."""
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < SIZE_MULTIPLE or w < SIZE_MULTIPLE or h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        raise MicronetError(f"--input-size {h}x{w} does not fit {variant}: H and W must both be multiples of "
                            f"{SIZE_MULTIPLE}, e.g. 256x192 (pose) or 512x1024 (segmentation)")
    return h, w


def build_dense_model(variant: str, task: str, size: tuple[int, int], outputs: int):
    """The training form of a pose or segmentation variant at ``size`` (H, W) with ``outputs`` maps."""
    if task == "pose":
        from micronet.pose_model import build_pose_model

        return build_pose_model(variant, keypoints=outputs, input_size=size)
    from micronet.seg_model import build_seg_model

    return build_seg_model(variant, classes=outputs, input_size=size)


def check_kinds(task: DenseTask, kinds, graph_asked: str, variant: str) -> None:
    """Refuse, in one line, a format the dense task is not exported in."""
    refused = sorted({kind.format for kind in kinds if kind.format not in task.formats})
    if refused:
        raise MicronetError(f"{variant} ({task.task}) is exported as {' and '.join(task.formats)} only: "
                            f"--format {refused[0]} is not offered for {task.task} models yet; see README")


def output_fields(task: DenseTask, shape: list[int], layout: str) -> dict:
    """The manifest's ``output`` additions of a dense model: its layout, stride and channel names."""
    return {"layout": layout, "holds": task.output_name, "stride": task.output_stride,
            ("keypoint_names" if task.task == "pose" else "class_names"): task.names()}
