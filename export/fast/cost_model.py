"""The cost functions the layout decisions consult, over a profile's ``CostModel`` (units: MAC-equivalents)."""

from __future__ import annotations

import numpy as np

from .profiles import CostModel

__all__ = ["tile_padded", "merged_groups", "conv_cost", "copy_cost", "transpose_cost", "grouping_saves"]


def tile_padded(costs: CostModel, outputs: int) -> int:
    """Outputs rounded up to whole GEMM tiles: what XNNPACK computes for a group of ``outputs``."""
    return -(-outputs // costs.gemm_tile_outputs) * costs.gemm_tile_outputs


def merged_groups(costs: CostModel, groups: int, per_in: int, cout: int) -> int:
    """The groups a k×k conv runs with (rewrite 9): a true depthwise (one input and one output per group)
    keeps its groups; otherwise as few as keep at most one GEMM tile of outputs each (the kernel pads each
    group's outputs to the tile anyway, so the merge costs no MACs and gives it a longer inner loop)."""
    if per_in == 1 and cout == groups:
        return groups
    return next(c for c in range(1, groups + 1)
                if groups % c == 0 and (cout // c <= costs.gemm_tile_outputs or c == groups))


def conv_cost(costs: CostModel, pixels: int, cin: int, cout: int, groups: int = 1) -> float:
    """A 1×1 conv: per group, tile-padded outputs × (inputs + tile overhead)."""
    return pixels * groups * tile_padded(costs, cout // groups) * (cin // groups + costs.conv_tile_overhead)


def copy_cost(costs: CostModel, pixels: int, channels: int, run: int) -> float:
    """A channel copy (transpose, slice+concat) moving ``run``-long contiguous runs."""
    return pixels * channels * (costs.copy_cost_base + costs.copy_cost_per_run / max(run, 1))


def transpose_cost(costs: CostModel, pixels: int, plan: tuple[tuple[int, ...], tuple[int, ...]]) -> float:
    """A ``ChannelTranspose`` of plan (dims, perm), with the model's safety margin."""
    dims, perm = plan
    run = dims[-1] if perm[-1] == len(dims) - 1 else min(dims[-1], dims[perm[-1]])
    return costs.transpose_margin * copy_cost(costs, pixels, int(np.prod(dims)), run)


def grouping_saves(costs: CostModel, pixels: int, cin: int, cout: int, groups: int, convs: int = 2) -> float:
    """What keeping ``convs`` 1×1 convs grouped saves over dense (x and its partner x~: two)."""
    return convs * (conv_cost(costs, pixels, cin, cout) - conv_cost(costs, pixels, cin, cout, groups))
