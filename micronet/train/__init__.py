"""Training MicroNet: the released recipe, resumable checkpoints, DDP and mutual learning; the keypoint
models (``pose-m0``..``pose-m3``) with the paper's pose recipe and the segmentation models
(``seg-m0``..``seg-m3``) with its §6.2 recipe, through the same loop.

``train(TrainConfig(variant="m0", data="digits/"))`` is the whole API; ``micronet train`` is its CLI.
The modules each do one job: ``recipe`` (options and paper defaults), ``tasks`` (what classification and
pose training differ in: data, model, loss, evaluation; ``seg_task`` the same for segmentation),
``schedule`` (lr curve), ``data`` (files, augmentation, samplers), ``distributed`` (torchrun/DDP), ``mutual`` (the full-rank partner),
``checkpoint`` (save/resume/fine-tune), ``metrics_log`` (console and metric files), ``loop`` (the loop).
"""

from __future__ import annotations

from .loop import train
from .recipe import TrainConfig

__all__ = ["TrainConfig", "train"]
