"""Tiny labelled image folders for the training tests (imported by tests/test_train*.py).

Each class is a coloured square at a class-specific place on a grey background, with per-image noise:
learnable in a few steps, so the tests exercise the mechanism, not the optimiser's patience.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 200, 40)]


def write_shapes(root: Path, classes: int = 3, per_class: int = 8, size_px: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(90, 140, size=(size_px, size_px, 3)).astype(np.uint8)
            side = size_px // 2
            top, left = (c * size_px // (2 * classes)), (c * size_px // (2 * classes))
            pixels[top:top + side, left:left + side] = COLOURS[c % len(COLOURS)]
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def write_split(root: Path, classes: int = 3, train_per_class: int = 8, val_per_class: int = 4,
                size_px: int = 32) -> Path:
    """``root/train`` and ``root/val`` (the layout ``--data`` picks up on its own)."""
    write_shapes(root / "train", classes, train_per_class, size_px, seed=0)
    write_shapes(root / "val", classes, val_per_class, size_px, seed=1)
    return root
