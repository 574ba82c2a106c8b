"""Runtime profiles: every runtime-dependent choice of the fast graph as data.

A ``RuntimeProfile`` names the runtime a fast graph is built for and holds one switch per rewrite whose worth
depends on that runtime (each field is named after the rewrite it enables; the numbers are those of the
catalogue in ``export/fast/__init__.py``), plus the ``CostModel`` that the layout decisions consult. A switch
turned off always leaves a correct graph (the general form of that step is emitted instead), so a profile
for a new runtime is a ``dataclasses.replace`` of an existing one, and ``first_inexact_pass`` can switch the
rewrites on one at a time. How much each choice is worth on each runtime, measured, is in
``docs/fast-graph.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["CostModel", "RuntimeProfile", "PROFILES", "REWRITES", "BLOCK_SWITCHES", "check_block_overrides"]


@dataclass(frozen=True)
class CostModel:
    """A rough cost model of XNNPACK's f32 kernels in MAC-equivalents (fitted to single-op timings; see
    docs/fast-graph.md). A 1×1 conv group costs its tile-padded outputs times (its inputs +
    ``conv_tile_overhead``); a channel transpose or slice+concat costs ``copy_cost_base + copy_cost_per_run /
    run`` per value moved, ``run`` being its contiguous run length. A transpose that lets a 1×1 conv stay
    grouped must pay by ``transpose_margin`` (the model is rough)."""

    #: A grouped 1×1 conv is kept grouped when its dense form would cost more than this many MACs; below it
    #: the dense conv is as fast (one GEMM tile) and frees the stored order.
    grouped_min_dense_macs: int = 400_000
    #: An expanding grouped 1×1 conv (Micro-Block B/C) whose natural output order makes the next depthwise
    #: Shift-Max two masked rotations stays grouped when its dense x and x~ convs would cost more than this.
    grouped_expand_min_dense_macs: int = 3_000_000
    #: A K=1 Shift-Max is left pending for a 1×1 consumer only when the consumer's doubled input costs fewer
    #: extra MACs than this (materialising costs one conv and two elementwise ops).
    pending_max_extra_macs: int = 400_000
    #: The widest GEMM tile in output channels (XNNPACK's nr: 16 for f32 and int8 on AVX-512, 8 or 16 on
    #: NEON). A grouped conv computes each group's outputs rounded up to whole tiles.
    gemm_tile_outputs: int = 16
    conv_tile_overhead: int = 25
    copy_cost_base: float = 8.0
    copy_cost_per_run: float = 60.0
    transpose_margin: float = 2.0
    #: An elementwise MUL/ADD per value, same units.
    elementwise_cost: float = 8.0
    #: Per-channel Shift-Max coefficients narrower than this are widened along W (rewrite 12).
    widen_below_channels: int = 64
    #: The most axes a channel transpose may view the channels as (XNNPACK takes up to 6-D; one is pixels).
    max_transpose_axes: int = 4


@dataclass(frozen=True)
class RuntimeProfile:
    """The runtime a fast graph is built for: one switch per runtime-dependent rewrite, and the cost model.

    XNNPACK (TFLite, NHWC) and ONNX Runtime's MLAS (NCHW) disagree per op: a k×k depthwise plus a constant
    border add beats the (k,1)+(1,k) pair in XNNPACK, not in ONNX Runtime (its broadcast border add is
    slow); widened coefficients and pixel pairs are NHWC layouts; a pending product feeding a depthwise is a
    two-input grouped conv, which MLAS runs per group through im2col; XNNPACK does not delegate GATHER, while
    ONNX Runtime's GATHER along channels is one run copy per channel."""

    name: str
    diagonal_taps: bool = True  # rewrite 2: Micro-Block A's depthwise Shift-Max as one rotation
    pending_products: bool = True  # rewrite 5: a K=1 Shift-Max feeding a linear op stays a product
    pending_into_depthwise: bool = True  # rewrite 5 with a depthwise consumer, where the cost model says so
    grouped_pointwise: bool = True  # rewrite 6: grouped 1×1 convs stay grouped where the order allows
    merged_depthwise: bool = True  # rewrite 7 for the blocks
    merged_stem: bool = True  # rewrite 7 for the stem's 3×1 + 1×3 pair
    merged_groups: bool = True  # rewrite 9: grouped k×k convs with few outputs per group merged to tiles
    roll_2d: bool = True  # rewrite 10: a B/C depthwise Shift-Max as one roll of a 2-D channel view
    channel_transposes: bool = True  # rewrite 11: grouped 1×1 convs kept grouped behind channel transposes
    widened_coefficients: bool = True  # rewrite 12
    pixel_pairs: bool = True  # rewrite 13
    # Rewrites 16 and 17: channel permutations as GATHERs: the Shift-Max partner x~ (instead of rotations,
    # rolls or partner convs) and the input and output orders of grouped 1×1 convs, which then always stay
    # grouped.
    gather_shifts: bool = False
    linear_coefficients: bool = False  # rewrite 18: hyper-functions as Gemms on flat vectors
    # Rewrite 8's h_swish as one HardSwish op; off, as x·relu6(x + 3)/6 (ONNX Runtime's mobile checker expands
    # HardSwish to HardSigmoid, which neither NNAPI nor CoreML takes).
    hard_swish_op: bool = True
    costs: CostModel = field(default_factory=CostModel)
    #: Per-block exceptions to the switches above, as (block index, switch, value): a tuned graph may keep a
    #: rewrite in the blocks where it pays on the device and drop it in the others (only the switches in
    #: ``BLOCK_SWITCHES`` decide per block; the stem's, the head's and whole-graph passes do not).
    blocks: tuple[tuple[int, str, bool], ...] = ()

    def for_block(self, block: int) -> "RuntimeProfile":
        """The profile the planner applies to ``block``: this one with that block's exceptions."""
        own = {name: value for b, name, value in self.blocks if b == block}
        return dataclasses.replace(self, blocks=(), **own) if own else self

    def without(self, *rewrites: str) -> "RuntimeProfile":
        """This profile with the named rewrites switched off (``REWRITES`` lists the names)."""
        unknown = sorted(set(rewrites) - set(REWRITES))
        if unknown:
            raise ValueError(f"unknown fast-graph rewrite(s) {unknown}; choose from {list(REWRITES)}")
        return dataclasses.replace(self, **{name: False for name in rewrites})


#: The rewrite switches of ``RuntimeProfile``, in catalogue order.
REWRITES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RuntimeProfile)
                                  if f.type in (bool, "bool"))

#: The switches the planner reads per block (``RuntimeProfile.blocks``). Left out: the stem's
#: (``merged_stem``, ``pixel_pairs``), the head's (``hard_swish_op``), a pass over the whole module tree
#: (``linear_coefficients``) and ``gather_shifts``, which changes what every neighbour of a block must
#: emit and so is chosen for the whole graph.
BLOCK_SWITCHES: tuple[str, ...] = ("diagonal_taps", "pending_products", "pending_into_depthwise",
                                   "grouped_pointwise", "merged_depthwise", "merged_groups", "roll_2d",
                                   "channel_transposes", "widened_coefficients")


def check_block_overrides(blocks) -> tuple[tuple[int, str, bool], ...]:
    """``blocks`` as the canonical sorted tuple, or ``ValueError`` naming the first bad entry."""
    out = []
    for entry in blocks:
        try:
            block, name, value = entry
        except (TypeError, ValueError):
            raise ValueError(f"a per-block switch is (block, switch, on), got {entry!r}") from None
        if name not in BLOCK_SWITCHES:
            raise ValueError(f"{name!r} is not a per-block switch; choose from {list(BLOCK_SWITCHES)}")
        if not isinstance(block, int) or isinstance(block, bool) or block < 0 or not isinstance(value, bool):
            raise ValueError(f"a per-block switch is (block >= 0, switch, true/false), got {entry!r}")
        out.append((block, name, value))
    return tuple(sorted(set(out)))

PROFILES: dict[str, RuntimeProfile] = {
    "xnnpack": RuntimeProfile("xnnpack"),
    "onnxruntime": RuntimeProfile("onnxruntime", pending_into_depthwise=False, merged_depthwise=False,
                                  widened_coefficients=False, pixel_pairs=False, gather_shifts=True,
                                  linear_coefficients=True),
    # The default ONNX file's graph: ONNX Runtime's profile less every rewrite some ONNX consumer rejects
    # (docs/fast-graph.md, "The portable profile"): run-time BatchNormalization scales (linear_coefficients),
    # channel Gathers (gather_shifts), the stem's (1, C, 1, W) border constant (merged_stem), HardSwish
    # (hard_swish_op), the 2-D channel view of a roll and 6-D channel transposes (roll_2d,
    # channel_transposes). Built without the batch-of-one BatchNormalization products as well.
    "portable": RuntimeProfile("portable", pending_into_depthwise=False, merged_depthwise=False,
                               merged_stem=False, roll_2d=False, channel_transposes=False,
                               widened_coefficients=False, pixel_pairs=False, hard_swish_op=False),
}
