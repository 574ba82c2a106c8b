"""How many images the export runs through PyTorch at once.

The export runs its PyTorch forms on whole image sets (BatchNorm re-estimation on the calibration images, the
parity ladder's reference outputs on the hold-out images). At 224 px, 32 crops at a time are cheap; 32 frames
of 512x1024 held ~18 GB of activations in seg-m0's Shift-Max branches and the export was killed for memory.
So the batch is bounded by pixels, not images: the results are the same, batch by batch.
"""

from __future__ import annotations

#: Pixels per batch: 32 crops at 224 px (what every classifier and pose export used before the bound).
PIXELS_PER_BATCH = 32 * 224 * 224


def images_per_batch(height: int, width: int, *, at_least: int = 1, at_most: int = 32) -> int:
    """Images of height x width per batch under PIXELS_PER_BATCH, clipped to [at_least, at_most]."""
    return max(at_least, min(at_most, PIXELS_PER_BATCH // (height * width)))


def holdout_maps(requested: int, height: int, width: int) -> int:
    """How many of the ``requested`` hold-out images a dense export (maps out, not logits) judges its rungs on:
    every rung keeps its outputs, and 32 segmentation maps of 512x1024 are 1.2 GiB per rung in float32
    (the comparison works in float64), so the hold-out is bounded by pixels too, never below 4 images."""
    return min(requested, max(4, PIXELS_PER_BATCH // (height * width)))
