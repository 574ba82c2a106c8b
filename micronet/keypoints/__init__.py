"""Human keypoints (paper §6.1): COCO's keypoint space and layout, top-down crops, heatmap coding, and
OKS AP through pycocotools.

These are what the pose models (``pose-m0`` .. ``pose-m3``) are trained on, decoded with and measured by;
they hold no model code, so the same decoding serves PyTorch, ONNX and TFLite outputs.
"""

from .coco import FLIP_PAIRS, KEYPOINT_NAMES, CocoKeypoints, PersonBox, load_coco_keypoints
from .crops import CropTransform, crop_transform
from .heatmaps import decode_heatmaps, encode_heatmaps, flip_back
from .metric import oks_average_precision

__all__ = ["FLIP_PAIRS", "KEYPOINT_NAMES", "CocoKeypoints", "CropTransform", "PersonBox", "crop_transform",
           "decode_heatmaps", "encode_heatmaps", "flip_back", "load_coco_keypoints", "oks_average_precision"]
