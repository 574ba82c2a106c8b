"""The learning-rate schedule of the released code, computed per iteration (not per epoch).

A pure function of the global step, so a resumed run needs only the step number to continue on the
exact same curve, and a test can check the curve without running an optimiser.
"""

from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of ``total_steps``.

    Warm-up rises linearly to ``base_lr`` (step ``w`` of ``warmup_steps`` uses ``base_lr*(w+1)/W``, so no
    step is wasted at lr 0); then lr_t = base_lr * (1 + cos(pi * t / T)) / 2 with t and T counted in
    iterations after the warm-up.
    """
    if not 0 <= step < total_steps:
        raise ValueError(f"step {step} outside the schedule of {total_steps} steps")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t, span = step - warmup_steps, total_steps - warmup_steps
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * t / span))
