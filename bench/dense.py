"""A loaded benchmark runtime as the ``Runner`` the dense evaluators take (micronet/keypoints/predict.py,
micronet/segmentation/evaluate.py): float32 NCHW images in, float32 NCHW maps out.

The runtime's own ``prepare`` feeds the file the way it was built (NHWC, int8 input scale); the output is
dequantized by ``to_logits`` and put back in PyTorch's (N, C, H, W) order from the layout its manifest
records (export/dense.py: TFLite files give NHWC maps). A file with a fixed batch is fed that many images at a
time, the last chunk zero-padded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from micronet.errors import MicronetError
from micronet.inference import dense_maps

Runner = Callable[[np.ndarray], np.ndarray]


def dense_runner(runtime: Any) -> Runner:
    """``runtime`` (loaded; bench/runtimes.py) as a ``Runner``. Its manifest must be a dense export's; a torch
    model (the reference) returns its NCHW maps as they are."""
    if runtime.format == "torch":
        return lambda batch: runtime.to_maps(runtime.run(runtime.prepare(np.ascontiguousarray(batch, np.float32))))
    output = ((runtime.manifest or {}).get("output") or {})
    if "stride" not in output:
        raise MicronetError(f"{runtime.source}: its manifest has no dense output (task, layout, stride); export "
                            "the pose or segmentation variant with `micronet export`")
    fixed = runtime.input_spec.fixed_batch

    def run(batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        step = fixed or len(batch)
        maps = []
        for start in range(0, len(batch), step):
            chunk = batch[start:start + step]
            real = len(chunk)
            if real < step:
                chunk = np.concatenate([chunk, np.zeros((step - real, *chunk.shape[1:]), np.float32)])
            maps.append(runtime.to_logits(runtime.run(runtime.prepare(chunk)))[:real])
        return dense_maps(np.concatenate(maps), output)

    return run
