"""Training MicroNet: the released recipe, resumable checkpoints, DDP and mutual learning.

``train(TrainConfig(variant="m0", data="digits/"))`` is the whole API; ``micronet train`` is its CLI.
The modules each do one job: ``recipe`` (options and paper defaults), ``schedule`` (lr curve), ``data``
(files, augmentation, samplers), ``distributed`` (torchrun/DDP), ``mutual`` (the full-rank partner),
``checkpoint`` (save/resume/fine-tune), ``metrics_log`` (console and metric files), ``loop`` (the loop).
"""

from __future__ import annotations

from .loop import train
from .recipe import TrainConfig

__all__ = ["TrainConfig", "train"]
