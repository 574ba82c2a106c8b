"""Semantic segmentation (paper §6.2): the Cityscapes label space, its folder layout, and mIoU.

The model (MicroNet backbone at stride 16 with the MR-ASPP head) is ``micronet.seg_model`` (its table in
``micronet.seg_config``); the metric and the data layout are here because every later stage (training, the
export ladder, bench) reports through them.
"""

from .cityscapes import CLASS_NAMES, IGNORE_INDEX, LABEL_ID_TO_TRAIN_ID, SegmentationSample, scan_cityscapes
from .metrics import ConfusionMatrix

__all__ = ["CLASS_NAMES", "IGNORE_INDEX", "LABEL_ID_TO_TRAIN_ID", "ConfusionMatrix", "SegmentationSample",
           "scan_cityscapes"]
