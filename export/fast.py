"""The fast deploy form of a MicroNet: same function, a graph that XNNPACK (TFLite) and ONNX Runtime run fast.

``to_fast_deploy(model)`` takes the *training form* (BatchNorm folded here) and returns a module with the
same input (NCHW float32) and the same logits up to float32 rounding; every rewrite is exact algebra and
``tests/test_fast_deploy.py`` checks each variant against the training form. ``export.tf_graph`` lowers it
to TensorFlow for TFLite. What made the exported MicroNet slow under XNNPACK, and what replaces it (the
measured effect of each rewrite is in the README's benchmark section):

1. **Channel permutations are never executed, they are tracked.** Every tensor has a *stored order*
   (stored channel ``p`` holds logical channel ``order[p]``). A channel shuffle only relabels; per-channel
   parameters (depthwise filters, Shift-Max coefficients) are laid out in the stored order and a 1×1
   conv absorbs its input order into its weight columns and emits its rows in the order its consumer
   wants. No GATHER, no 5-D shuffle reshape survives.
2. **The Shift-Max partner x~ costs (almost) nothing.** After a dense 1×1 conv it is a second conv whose
   rows are the shifted rows. After a grouped 1×1 conv (shift groups = conv groups) it is a conv with
   rows rotated inside each group, then one rotation by a group (two channel slices and a concat). After
   a depthwise conv, the consumer-side order is chosen so that the shift is *one* flat rotation: for
   Micro-Block A (shift groups = input channels, multiplier M) the multiplier taps are assigned
   diagonally (stored ``t·M + r`` holds input ``t``, tap ``(r + t) mod M``), for B/C the channels are
   stored cycle-interleaved.
3. **Shift-Max combine as separate products**: ``max_k(a_k·x + b_k·x~)`` as MULs and ADDs on separate
   operands, no stacking (stacking needs a concat and a split, two full copies per Shift-Max).
4. **Coefficients in three small ops**: the hyper-function's h_sigmoid clamp is fc2's fused RELU6 (its
   ``+3`` in the bias) and the rescale and offsets one 1×1 depthwise conv; fc1 absorbs the pooled
   producer (the mean commutes with a 1×1 conv), and whichever of the producer's input or output is
   smaller is pooled.
5. **A K=1 Shift-Max feeding a linear op is not materialised.** ``a·x + b·x~`` followed by a depthwise
   or 1×1 conv is emitted as the product ``[x, x~]·[a, b]`` (one MUL) and the consumer sums the two
   parts in its weights (a depthwise consumer becomes a grouped conv with two inputs per group).
6. **Grouped 1×1 convs stay grouped** where the stored order allows it (XNNPACK runs a grouped 1×1 conv
   3-5× faster than the dense equivalent); elsewhere a dense conv absorbs the permutation.
7. **(k,1)+(1,k) depthwise pair → one k×k depthwise** with the channel multiplier; the first conv's bias
   is not uniform after zero padding at the left/right border, so it is added back as a constant
   (exact). The stem's 3×1 conv and 1×3 grouped conv become one dense 3×3 conv the same way.
8. **Head as 1×1 convs on the pooled map**: the TFLite converter folds h_swish's ``+3`` into a *copy* of
   a FULLY_CONNECTED (its weights read twice); CONV_2D + HARD_SWISH stays one op each.
9. **Grouped k×k convs with few outputs per group are merged** into as few groups as keep at most one
   GEMM tile (16) of outputs each, with zero weights between (Micro-Block A's depthwise with a channel
   multiplier, and a depthwise taking a pending input): XNNPACK pads each group's outputs to the tile
   anyway, so the merge costs no MACs and gives the kernel a longer inner loop (1.2-1.5× faster).
10. **Shift-Max after a B/C depthwise as one 2-D roll.** A grouped expanding conv emits its natural
    order; after the shuffle, the depthwise Shift-Max shift is one roll of the channels viewed as
    (groups, C/groups): two slice+concat pairs on a 5-D view, no masked products.
11. **Grouped 1×1 convs behind channel transposes.** MicroNet's shuffles leave a squeezing conv's groups
    strided in any order the depthwise Shift-Max can use; when the stored order is one transpose of a
    mixed-radix view of the channels away from group-contiguous (or from the order the consumer needs),
    a TRANSPOSE (delegated; it copies runs) lets the conv stay grouped. A small cost model (tile-padded
    MACs against values moved, fitted to single-op timings) decides where this pays: at 7×7 to 28×28
    it does (m3's squeezes: 4-8× fewer MACs), at 56×56 a transpose of short runs costs more than the
    dense conv it saves.
12. **Narrow Shift-Max coefficients widened along W** (see ``ShiftMax``).
13. **A stem with at most 8 output channels computes two output pixels per GEMM row**: a 3×5 conv at
    stride (2, 4) with 2C outputs fills the 16-wide tile that C outputs left two-thirds empty; in NHWC
    the (H, W/2, 2C) result is the (H, W, C) map byte for byte (``PixelPairs``). m0: 0.069 → 0.060 ms.
14. **For int8, max(p, q) as q + relu(p - q) with p - q formed on the coefficients** (``relu_max_form``).

**Targets.** Rewrites 1-14 are what XNNPACK (TFLite, NHWC) runs fast. ONNX Runtime (NCHW, MLAS) differs,
so ``to_fast_deploy(model, target="onnxruntime")`` (the ``micronet export --format onnx`` graph) keeps rewrites
1 (tracked orders), 3, 6, 7 for the stem and 8, and per ``TARGETS`` replaces the rest:

15. **depthwise pairs stay two convs** (no rewrite 7 in the blocks, so no rewrite 9): MLAS broadcasts a
    (1, C, 1, W) border add at ~10 ns per W-long span, more than the second conv costs (7×7×384: 27 µs
    against 4 µs);
16. **every Shift-Max shift is one channel GATHER** (an H·W run copied per channel), replacing rotations,
    rolls, masked pairs and partner convs (rewrites 2, 10); XNNPACK does not delegate GATHER, so the TFLite
    graph never has one;
17. **every grouped 1×1 conv stays grouped**, a GATHER before it when its input is not group-contiguous
    and after it when its consumer needs another order (instead of rewrite 11's transposes or a dense
    conv): MLAS runs a dense 1×1 conv on channel counts off the 16-multiple as a padded NCHWc conv with
    reorders (24→8 channels at 56×56: 37.6 µs, grouped with a gather 23.2);
18. **hyper-functions as Gemms on the flat pooled vector** (``LinearCoefficients``, instead of rewrite 4's
    1×1 convs, which became NCHWc convs with a reorder on either side);
19. **no widened coefficients, no pixel pairs, no pending product** into a depthwise (rewrites 12, 13, 5:
    NHWC layouts, and a two-input grouped conv that MLAS runs per group through im2col).

20. **for a batch of one, every Shift-Max product is a BatchNormalization** (``batch_one_form``) with the
    coefficients as scale (mean 0, variance 1, epsilon 0: exactly x·a): ORT's broadcast MUL pays ~10 ns
    per channel span, its BatchNormalization scales a channel in one vectorised loop (m0 −4 to −5%).

m0 at 224 px in ONNX Runtime, 1 thread, in one run: reference ONNX 0.84 ms, the XNNPACK fast graph 0.94, this
one 0.64, its ``batch_one_form`` 0.61 (MobileNetV3-Small-0.5: 0.64).
"""

from __future__ import annotations

import copy
import functools
import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from micronet.config import ACT_MAX
from micronet.layers import (ChannelShuffle, DynamicShiftMax, MicroFactorizedDepthwise, shift_permutation,
                             shuffle_permutation)
from micronet.model import MicroNet

__all__ = ["to_fast_deploy", "relu_max_form", "batch_one_form", "FastMicroNet", "TARGETS", "Target"]

#: A grouped 1×1 conv is kept grouped when its dense form would cost more than this many MACs; below it
#: the dense conv is as fast (one GEMM tile) and frees the stored order.
GROUPED_MIN_DENSE_MACS = 400_000
#: An expanding grouped 1×1 conv (Micro-Block B/C) whose natural output order makes the next depthwise
#: Shift-Max two masked rotations (two more products per branch) stays grouped when its dense x and x~
#: convs would cost more than this many MACs (m1..m3 at 28×28 and 14×14; m0's stay dense).
GROUPED_EXPAND_MIN_DENSE_MACS = 3_000_000
#: A K=1 Shift-Max is left as a pending product for a 1×1 consumer only when the consumer's doubled input
#: costs fewer extra MACs than this (materialising costs one conv and two elementwise ops).
PENDING_MAX_EXTRA_MACS = 400_000
#: XNNPACK's widest GEMM tile in output channels (nr: 16 for f32 and int8 on AVX-512, 8 or 16 on NEON). A
#: grouped conv costs about groups × ceil(outputs per group / nr) × nr × inputs per group MACs per pixel, so
#: merging groups while each keeps at most this many outputs costs no extra MACs and gives the kernel a
#: longer inner loop: a depthwise with a channel multiplier (Micro-Block A) runs 1.2-1.5× faster.
GEMM_TILE_OUTPUTS = 16
#: A rough cost model of XNNPACK's f32 kernels, in MAC-equivalents, fitted to single-op timings on an AVX-512
#: CPU (scripts/bench_fast.py measures the result): a 1×1 conv group costs its tile-padded outputs times
#: (its inputs + ``CONV_TILE_OVERHEAD``); a channel transpose or slice+concat costs ``COPY_COST_BASE +
#: COPY_COST_PER_RUN / run`` per value moved, ``run`` being its contiguous run length (a transpose that
#: moves 2-float runs costs 10× one that moves 24-float runs). It decides where a channel transpose that
#: lets a 1×1 conv stay grouped pays, by ``TRANSPOSE_MARGIN`` (the model is rough): at 7×7 to 28×28
#: it mostly does, at 56×56 not.
CONV_TILE_OVERHEAD = 25
COPY_COST_BASE, COPY_COST_PER_RUN = 8.0, 60.0
TRANSPOSE_MARGIN = 2.0
#: An elementwise MUL/ADD per value, same units.
ELEMENTWISE_COST = 8.0
#: Per-channel coefficients narrower than this are widened along W before they multiply a map.
WIDEN_BELOW_CHANNELS = 64
#: The most axes a channel transpose may view the channels as (XNNPACK takes up to 6-D; one is the pixels).
MAX_TRANSPOSE_AXES = 4


@dataclass(frozen=True)
class Target:
    """The runtime a fast graph is built for: the rewrites whose worth depends on it.

    XNNPACK (TFLite, NHWC) and ONNX Runtime's MLAS (NCHW) disagree on three things, each measured per op:
    a k×k depthwise conv plus a constant border add beats the (k,1)+(1,k) pair in XNNPACK, while ONNX
    Runtime broadcasts a (1, C, 1, W) border add at ~10 ns per W-long span (a 7×7×384 add: 27 µs, the
    pair's second conv: 4 µs); widened coefficients and pixel pairs are NHWC layouts, a per-row
    broadcast and a TRANSPOSE in NCHW; a pending product feeding a depthwise makes it a two-input grouped
    conv, which MLAS runs per group through im2col. And a channel shift: XNNPACK does not delegate GATHER
    (slices and concats it does), ONNX Runtime's GATHER along channels copies one H·W run per channel,
    one copy where a rotation is two (Split, Concat) and a masked pair of rotations four."""

    name: str
    merged_depthwise: bool  # rewrite 7 for the blocks (the stem's pair is always merged)
    widen: bool  # rewrite 12
    pixel_pairs: bool  # rewrite 13
    pending_into_depthwise: bool  # rewrite 5 with a depthwise consumer, where the cost model says it pays
    # Channel permutations as GATHERs: the Shift-Max partner x~ (instead of rotations, rolls or partner
    # convs) and the input and output orders of grouped 1×1 convs, which then always stay grouped.
    gather_shift: bool
    linear_coefficients: bool  # the hyper-functions as Gemms on flat vectors (LinearCoefficients)


TARGETS: dict[str, Target] = {
    "xnnpack": Target("xnnpack", merged_depthwise=True, widen=True, pixel_pairs=True, pending_into_depthwise=True,
                      gather_shift=False, linear_coefficients=False),
    "onnxruntime": Target("onnxruntime", merged_depthwise=False, widen=False, pixel_pairs=False,
                          pending_into_depthwise=False, gather_shift=True, linear_coefficients=True),
}


# ----------------------------------------------------------------------------------------------- folding
def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode conv+BN as (weight, bias), float64."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    w = conv.weight.double() * scale.view(-1, 1, 1, 1)
    b0 = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    return w, (b0 - bn.running_mean.double()) * scale + bn.bias.double()


def _fold_linear(unit) -> tuple[Tensor, Tensor]:
    lin, bn = unit[0], unit[1]
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = (lin.bias.double() - bn.running_mean.double()) * scale + bn.bias.double()
    return lin.weight.double() * scale[:, None], bias


def _conv(w: Tensor, b: Tensor | None, stride=1, padding=0, groups=1) -> nn.Conv2d:
    cout, cin_g, kh, kw = w.shape
    conv = nn.Conv2d(cin_g * groups, cout, (kh, kw), stride, padding, groups=groups, bias=b is not None)
    with torch.no_grad():
        conv.weight.copy_(w.float())
        if b is not None:
            conv.bias.copy_(b.float())
    conv.requires_grad_(False)
    return conv


def _rows(w: Tensor, b: Tensor, rows: np.ndarray) -> nn.Conv2d:
    """A 1×1 conv computing the (out, in) matrix ``w`` and bias ``b``'s ``rows``, in that order."""
    index = torch.as_tensor(rows)
    return _conv(w[index][:, :, None, None], b[index])


# ------------------------------------------------------------------------------------------ permutations
def _inv(p: np.ndarray) -> np.ndarray:
    q = np.empty_like(p)
    q[p] = np.arange(len(p))
    return q


def _through_shuffle(order: np.ndarray, groups: int) -> np.ndarray:
    """Stored order after a channel shuffle (the shuffle itself costs nothing: it relabels)."""
    return _inv(np.asarray(shuffle_permutation(_channels(order), groups)))[order]


def _before_shuffle(order: np.ndarray, groups: int) -> np.ndarray:
    """The stored order a tensor must have so that it has ``order`` after the shuffle."""
    return np.asarray(shuffle_permutation(_channels(order), groups))[order]


def _channels(order: np.ndarray) -> int:
    return int(order.max()) + 1


def _interleaved_cycles(shift: np.ndarray) -> tuple[np.ndarray, int]:
    """An order in which the permutation ``shift`` (x~ = x[shift]) is a flat left rotation by d."""
    c = len(shift)
    seen = np.zeros(c, bool)
    cycles = []
    for s in range(c):
        if not seen[s]:
            cyc, j = [], s
            while not seen[j]:
                seen[j] = True
                cyc.append(j)
                j = shift[j]
            cycles.append(cyc)
    d, length = len(cycles), len(cycles[0])
    if any(len(cy) != length for cy in cycles):
        raise ValueError("shift cycles of unequal length")  # never for the group shift
    order = np.empty(c, dtype=np.int64)
    for r, cyc in enumerate(cycles):
        for t, j in enumerate(cyc):
            order[t * d + r] = j
    return order, d


def _rotations(pi: np.ndarray) -> dict[int, np.ndarray] | None:
    """pi as at most two flat rotations {d: mask}: r[c] = z[(c + d) % C] where mask[c]."""
    c = len(pi)
    deltas = (pi - np.arange(c)) % c
    uniq = sorted(set(deltas.tolist()))
    if len(uniq) > 2:
        return None
    return {int(d): deltas == d for d in uniq}


def _roll2d(pi: np.ndarray) -> tuple[int, int, int, int] | None:
    """pi as one roll of the stored channels viewed as (outer, inner): x~[o, i] = z[(o + so) % outer,
    (i + si) % inner], returned as (outer, inner, so, si); None if no such view exists."""
    c = len(pi)
    for inner in range(2, c):
        if c % inner:
            continue
        outer = c // inner
        so, si = divmod(int(pi[0]), inner)
        o, i = np.divmod(np.arange(c), inner)
        if np.array_equal(pi, ((o + so) % outer) * inner + (i + si) % inner):
            return outer, inner, so, si
    return None


def _roll(x: Tensor, outer: int, inner: int, so: int, si: int) -> Tensor:
    """Stored channel (o, i) takes (o + so, i + si) of the (outer, inner) view: channel slices and concats
    on a 5-D view (XNNPACK copies each slice once)."""
    b, c, h, w = x.shape
    v = x.view(b, outer, inner, h, w)
    if si:
        v = torch.cat([v[:, :, si:], v[:, :, :si]], dim=2)
    if so:
        v = torch.cat([v[:, so:], v[:, :so]], dim=1)
    return v.reshape(b, c, h, w)


def _factorizations(n: int, parts: int) -> list[tuple[int, ...]]:
    """Ordered factorizations of n into exactly ``parts`` factors, each > 1."""
    if parts == 1:
        return [(n,)] if n > 1 else []
    out = []
    for f in range(2, n):
        if n % f == 0:
            out += [(f,) + rest for rest in _factorizations(n // f, parts - 1)]
    return out


def _tile_padded(outputs: int) -> int:
    """Outputs rounded up to whole GEMM tiles: what XNNPACK computes for a group of ``outputs``."""
    return -(-outputs // GEMM_TILE_OUTPUTS) * GEMM_TILE_OUTPUTS


def _merged_groups(groups: int, per_in: int, cout: int) -> int:
    """The groups a k×k conv runs with (rewrite 9): a true depthwise (one input and one output per group)
    keeps its groups; otherwise as few as keep at most ``GEMM_TILE_OUTPUTS`` outputs each."""
    if per_in == 1 and cout == groups:
        return groups
    return next(c for c in range(1, groups + 1)
                if groups % c == 0 and (cout // c <= GEMM_TILE_OUTPUTS or c == groups))


def _conv_cost(pixels: int, cin: int, cout: int, groups: int = 1) -> float:
    """Cost of a 1×1 conv (MAC-equivalents): per group, tile-padded outputs × (inputs + tile overhead)."""
    return pixels * groups * _tile_padded(cout // groups) * (cin // groups + CONV_TILE_OVERHEAD)


def _copy_cost(pixels: int, channels: int, run: int) -> float:
    return pixels * channels * (COPY_COST_BASE + COPY_COST_PER_RUN / max(run, 1))


def _transpose_cost(pixels: int, plan: tuple[tuple[int, ...], tuple[int, ...]]) -> float:
    dims, perm = plan
    run = dims[-1] if perm[-1] == len(dims) - 1 else min(dims[-1], dims[perm[-1]])
    return TRANSPOSE_MARGIN * _copy_cost(pixels, int(np.prod(dims)), run)


def _grouping_saves(pixels: int, cin: int, cout: int, groups: int, convs: int = 2) -> float:
    """What keeping ``convs`` 1×1 convs grouped saves over dense (x and its partner x~: two)."""
    return convs * (_conv_cost(pixels, cin, cout) - _conv_cost(pixels, cin, cout, groups))


def _transposed_index(dims: tuple[int, ...], perm: tuple[int, ...]) -> np.ndarray:
    """Stored channel p after the transpose holds stored channel index[p] before it."""
    return np.arange(int(np.prod(dims))).reshape(dims).transpose(perm).reshape(-1)


@functools.lru_cache(maxsize=None)
def _transpose_search(order: bytes, channels: int, group_size: int, target: bytes | None):
    """A transpose of stored channels (viewed as ``dims``, axes permuted by ``perm``) that makes the stored
    order ``target`` exactly, or (target None) makes every consecutive block of ``group_size`` stored
    channels one conv group, in group order. Returns (dims, perm) or None. Preferred: a transpose that
    keeps the innermost axis (it copies runs; moving it copies element by element, measured 6× slower on
    a 7×7×384 map), then the longest innermost run, then the fewest axes."""
    current = np.frombuffer(order, dtype=np.int64)
    want = None if target is None else np.frombuffer(target, dtype=np.int64)
    groups_in_order = np.repeat(np.arange(channels // group_size), group_size)
    best, best_key = None, None
    for parts in range(2, MAX_TRANSPOSE_AXES + 1):
        for dims in _factorizations(channels, parts):
            base = np.arange(channels).reshape(dims)
            for perm in itertools.permutations(range(parts)):
                if perm == tuple(range(parts)):
                    continue
                key = (perm[-1] != parts - 1, -dims[perm[-1]] if perm[-1] == parts - 1 else 0, parts)
                if best_key is not None and key >= best_key:
                    continue
                moved = current[base.transpose(perm).reshape(-1)]
                ok = (np.array_equal(moved, want) if want is not None
                      else np.array_equal(moved // group_size, groups_in_order))
                if ok:
                    best, best_key = (dims, perm), key
    return best


def _transpose_to(order: np.ndarray, target: np.ndarray):
    """(dims, perm) of one transpose taking stored ``order`` to stored ``target``, or None."""
    order, target = np.asarray(order, np.int64), np.asarray(target, np.int64)
    return _transpose_search(order.tobytes(), len(order), 1, target.tobytes())


def _transpose_to_groups(order: np.ndarray, groups: int, channels: int):
    """(dims, perm) of one transpose making ``order`` group-contiguous for a conv with ``groups``."""
    order = np.asarray(order, np.int64)
    return _transpose_search(order.tobytes(), channels, channels // groups, None)


class ChannelTranspose(nn.Module):
    """A channel permutation that is one transpose of the channels viewed as ``dims`` (TFLite: RESHAPE,
    TRANSPOSE, RESHAPE, all delegated; the innermost axis usually stays, so it copies runs)."""

    def __init__(self, dims: tuple[int, ...], perm: tuple[int, ...]) -> None:
        super().__init__()
        self.dims, self.perm = tuple(dims), tuple(perm)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        k = len(self.dims)
        v = x.view(b, *self.dims, h, w).permute(0, *(p + 1 for p in self.perm), k + 1, k + 2)
        return v.reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, perm={self.perm}"


class ChannelGather(nn.Module):
    """Any channel permutation as one GATHER (``Target.gather_shift``: ONNX Runtime copies an H·W run per
    channel); stored channel ``p`` of the output is stored channel ``index[p]`` of the input."""

    def __init__(self, index: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("index", torch.as_tensor(np.asarray(index), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(1, self.index)


def _rotate(x: Tensor, d: int) -> Tensor:
    """Stored channel c takes channel (c + d) mod C: one concat of two channel slices."""
    return torch.cat([x[:, d:], x[:, :d]], dim=1)


@dataclass
class Rep:
    """How a tensor is stored. ``order[p]`` is the logical channel stored at ``p``. A logical channel may be
    stored more than once: it is then the *sum* of its copies (a pending K=1 Shift-Max, rewrite 5), which
    only linear consumers may read; ``pending`` says so."""

    order: np.ndarray
    hw: tuple[int, int]
    pending: bool = False

    def distinct(self) -> np.ndarray:
        """Logical channels in stored order, each once (copies are adjacent for a pending tensor)."""
        return self.order[::2] if self.pending else self.order

    def relabelled(self, groups: int) -> "Rep":
        return Rep(_through_shuffle(self.order, groups), self.hw, self.pending)


# ------------------------------------------------------------------------------------------------ modules
class Conv(nn.Module):
    """A folded conv (any kernel, stride, groups) with an optional constant border term and ReLU6."""

    def __init__(self, conv: nn.Conv2d, border: Tensor | None = None, relu6: bool = False) -> None:
        super().__init__()
        self.conv, self.relu6 = conv, relu6
        if border is not None:
            self.register_buffer("border", border.float())
        else:
            self.border = None

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self.border is not None:
            y = y + self.border
        return F.relu6(y) if self.relu6 else y


class PixelPairs(nn.Module):
    """(B, 2C, H, W) holding pixels (2j, 2j+1) of each row as channels (r·C + c) → (B, C, H, 2W). In NHWC
    memory the two layouts are the same bytes, so TFLite gets one free RESHAPE (export.tf_graph)."""

    def forward(self, x: Tensor) -> Tensor:
        b, c2, h, w = x.shape
        return x.view(b, 2, c2 // 2, h, w).permute(0, 2, 3, 4, 1).reshape(b, c2 // 2, h, 2 * w)


class Coefficients(nn.Module):
    """Pooled features (B, C, 1, 1) → stacked Shift-Max coefficients (B, n·C, 1, 1), offsets included.

    theta = (A/3)·relu6(fc2(relu(fc1(pooled))) + 3) + (offset - A) is the released h_sigmoid, rescale and
    offset: the ``+3`` sits in fc2's bias so the clamp is fc2's fused RELU6, and the affine step is a 1×1
    depthwise conv (XNNPACK takes it in float and int8; MINIMUM/MAXIMUM clamps are not delegated in int8).
    A masked coefficient has scale and shift 0, so it is exactly 0.
    """

    def __init__(self, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, scale: Tensor, shift: Tensor) -> None:
        super().__init__()
        self.fc1 = _conv(w1[:, :, None, None], b1)
        self.fc2 = _conv(w2[:, :, None, None], b2)
        self.affine = _conv(scale.view(-1, 1, 1, 1), shift, groups=len(scale))

    def forward(self, pooled: Tensor) -> Tensor:
        return self.affine(F.relu6(self.fc2(F.relu(self.fc1(pooled)))))

    def from_map(self, x: Tensor, flat: bool = False) -> Tensor:
        theta = self(_pool(x))
        return theta.reshape(-1) if flat else theta

    def linear_form(self) -> "LinearCoefficients | None":
        """The same coefficients from Linears on the flat pooled vector (``Target.linear_coefficients``);
        None when a coefficient is masked (its scale 0: the clamp bounds would differ per channel)."""
        scale = self.affine.weight.detach().double().flatten()
        if not bool((scale > 0).all()) or not bool((scale == scale[0]).all()):
            return None
        return LinearCoefficients(self.fc1.weight.detach().double().flatten(1), self.fc1.bias.detach().double(),
                                  self.fc2.weight.detach().double().flatten(1), self.fc2.bias.detach().double(),
                                  float(scale[0]), self.affine.bias.detach().double())


class LinearCoefficients(nn.Module):
    """``Coefficients`` as Gemms on the flat (B, C) pooled vector, the rescale folded into fc2:
    s·relu6(z) + t = clamp(s·z, 0, 6s) + t for s > 0. ONNX Runtime runs the 4-D form's 1×1 convs as
    NCHWc convs with a reorder on each side, about 8 µs per Shift-Max on (1, C, 1, 1) tensors."""

    def __init__(self, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, scale: float, shift: Tensor) -> None:
        super().__init__()
        self.fc1 = nn.Linear(w1.shape[1], w1.shape[0])
        self.fc2 = nn.Linear(w2.shape[1], w2.shape[0])
        with torch.no_grad():
            self.fc1.weight.copy_(w1.float())
            self.fc1.bias.copy_(b1.float())
            self.fc2.weight.copy_((w2 * scale).float())
            self.fc2.bias.copy_((b2 * scale).float())
        self.register_buffer("shift", shift.float())
        self.upper = 6.0 * scale
        self.requires_grad_(False)

    def forward(self, pooled: Tensor) -> Tensor:
        """(B, C) pooled → (B, n·C)."""
        z = self.fc2(F.relu(self.fc1(pooled)))
        return torch.clamp(z, 0.0, self.upper) + self.shift

    def from_map(self, x: Tensor, flat: bool = False) -> Tensor:
        """(B, C, H, W) → (B, n·C, 1, 1), or with ``flat`` (batch of one) (n·C,)."""
        theta = self(x.mean(dim=(2, 3)))
        return theta.reshape(-1) if flat else theta.view(x.shape[0], -1, 1, 1)


def _pool(x: Tensor) -> Tensor:
    """Global average pool, keeping the 4-D (B, C, 1, 1) shape (a MEAN over H, W in TFLite)."""
    return x.mean(dim=(2, 3), keepdim=True)


def _scaled(x: Tensor, coef: Tensor, batch_one: bool) -> Tensor:
    """x (B, C, H, W) times per-channel coefficients (B, C, 1, 1). With ``batch_one`` (``batch_one_form``) it
    is a BatchNormalization with the coefficients as scale (mean 0, variance 1, epsilon 0: exactly x·coef):
    ONNX Runtime's MUL broadcast pays ~10 ns per channel span (384×7×7: 4.2 µs), its BatchNormalization
    scales each channel in one vectorised loop (2.8 µs)."""
    if not batch_one:
        return x * coef
    c = x.shape[1]
    zeros, ones = torch.zeros(c, dtype=x.dtype), torch.ones(c, dtype=x.dtype)
    return F.batch_norm(x, zeros, ones, coef if coef.dim() == 1 else coef.reshape(c), None, False, 0.0, 0.0)


def _combine(operands: list[Tensor], theta: Tensor, channels: int, branches: int, relu_max: bool = False,
             batch_one: bool = False) -> Tensor:
    """max over branches k of sum_i theta[k, i]·operands[i]; each operand and coefficient block C wide.

    ``relu_max`` (two branches): q + relu(p - q), with p - q = sum_i (theta[0, i] - theta[1, i])·operands[i]
    formed on the coefficients: one full-size op fewer than max(p, q) written as q + relu(p - q) (rewrite 14,
    for int8, where XNNPACK's int8 MUL/ADD run 1.7× slower than float and MAXIMUM is not delegated).
    ``batch_one``: the products as ``_scaled`` BatchNormalizations."""
    parts = torch.split(theta, channels, dim=1 if theta.dim() > 1 else 0)
    per_branch = len(operands)
    if relu_max and branches == 2:
        q = _scaled(operands[0], parts[per_branch], batch_one)
        d = _scaled(operands[0], parts[0] - parts[per_branch], batch_one)
        for i in range(1, per_branch):
            q = q + _scaled(operands[i], parts[per_branch + i], batch_one)
            d = d + _scaled(operands[i], parts[i] - parts[per_branch + i], batch_one)
        return q + F.relu(d)
    out = None
    for k in range(branches):
        s = _scaled(operands[0], parts[k * per_branch], batch_one)
        for i in range(1, per_branch):
            s = s + _scaled(operands[i], parts[k * per_branch + i], batch_one)
        out = s if out is None else torch.maximum(out, s)
    return out


class ShiftMax(nn.Module):
    """A producer (or none: the input itself is x) followed by Dynamic Shift-Max.

    ``partner`` makes the source of x~ from the block input (a second conv) or, when None, x~ comes from
    x; ``rotations`` then rotate that source (one operand per rotation, masks folded into the
    coefficients), or ``roll`` rolls it on a two-axis view of the channels. ``pool_input`` pools the
    producer's input instead of its output. ``pending``: K=1 only, the producer emits ``[x, x~]`` pairs
    and the output is their product with the coefficient pairs, summed later by the consumer's weights.
    ``gather`` takes x~ as one channel gather of that source instead. ``relu_max`` (set by
    ``relu_max_form``) takes a two-branch max as q + relu(p - q)."""

    def __init__(self, coef: Coefficients, channels: int, branches: int, producer: nn.Module | None = None,
                 partner: nn.Module | None = None, rotations: tuple[int, ...] = (), pool_input: bool = False,
                 pending: bool = False, permutation: nn.Module | None = None,
                 roll: tuple[int, int, int, int] | None = None, width: int = 1,
                 gather: np.ndarray | None = None) -> None:
        super().__init__()
        self.coef, self.channels, self.branches = coef, channels, branches
        self.producer, self.partner, self.permutation = producer, partner, permutation
        self.rotations, self.pool_input, self.pending = tuple(rotations), pool_input, pending
        self.roll = roll
        # x~ = source[:, gather] (Target.gather_shift)
        self.gather = ChannelGather(gather) if gather is not None else None
        self.relu_max = False
        self.batch_one = False  # set by batch_one_form
        # Rewrite 12: narrow per-channel coefficients (B, C, 1, 1) are widened to (B, C, 1, W) by a MUL with
        # ones (exact, on the small coefficient tensor). XNNPACK's broadcast MUL loops over the pixels with
        # a C-wide inner kernel, so a 56×56×16 map made 3136 tiny calls; against (1, W, C) it makes H calls
        # of W·C values (2.5× faster there).
        if channels < WIDEN_BELOW_CHANNELS and width > 1:
            self.register_buffer("widen", torch.ones(1, 1, 1, width))
        else:
            self.widen = None

    def forward(self, u: Tensor) -> Tensor:
        x = self.producer(u) if self.producer is not None else u
        # A batch of one takes its coefficients flat, (n·C,), as BatchNormalization scales (``_scaled``).
        theta = self.coef.from_map(u if self.pool_input else x, flat=self.batch_one)
        if self.widen is not None:
            theta = theta * self.widen
        if self.batch_one and x.shape[0] != 1:
            raise ValueError(f"a batch_one_form graph runs one image at a time, got a batch of {x.shape[0]}")
        if self.pending:
            return _scaled(x, theta, self.batch_one)
        source = self.partner(u) if self.partner is not None else x
        if self.permutation is not None:
            operands = [x, self.permutation(source)]
        elif self.gather is not None:
            operands = [x, self.gather(source)]
        elif self.roll is not None:
            operands = [x, _roll(source, *self.roll)]
        elif self.rotations:
            operands = [x] + [_rotate(source, d) for d in self.rotations]
        else:
            operands = [x, source]
        return _combine(operands, theta, self.channels, self.branches, self.relu_max, self.batch_one)


class FastBlock(nn.Module):
    def __init__(self, steps: list[nn.Module], residual: bool) -> None:
        super().__init__()
        self.steps = nn.Sequential(*steps)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.steps(x)
        return y + x if self.residual else y


class FastHead(nn.Module):
    """ReLU6 → pool → h_swish → 1×1 conv → h_swish → 1×1 conv → h_swish (rewrite 8)."""

    def __init__(self, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> None:
        super().__init__()
        self.fc1 = _conv(w1[:, :, None, None], b1)
        self.fc2 = _conv(w2[:, :, None, None], b2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.hardswish(_pool(F.relu6(x)))
        return F.hardswish(self.fc2(F.hardswish(self.fc1(x)))).flatten(1)


class FastMicroNet(nn.Module):
    def __init__(self, stem: nn.Module, blocks: list[nn.Module], head: nn.Module, input_size: int,
                 num_classes: int) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.head = head
        self.input_size, self.num_classes = input_size, num_classes

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


# ------------------------------------------------------------------------------------- the training form
@dataclass
class _Unit:
    """One producer of a training-form block with what follows it: the activation and the shuffles."""

    kind: str  # "dw" (MicroFactorizedDepthwise) or "pw" (1×1 ConvBN)
    layer: nn.Module
    act: nn.Module | None  # nn.ReLU6, DynamicShiftMax or None
    shuffles: list[int]


def _units(block) -> list[_Unit]:
    units: list[_Unit] = []
    for layer in block.layers:
        if isinstance(layer, ChannelShuffle):
            units[-1].shuffles.append(layer.groups)
        elif isinstance(layer, (nn.ReLU6, DynamicShiftMax)):
            if units[-1].act is not None or units[-1].shuffles:
                raise NotImplementedError("an activation without a producer")
            units[-1].act = layer
        elif isinstance(layer, MicroFactorizedDepthwise):
            units.append(_Unit("dw", layer, None, []))
        elif isinstance(layer, nn.Sequential) and isinstance(layer[0], nn.Conv2d):
            units.append(_Unit("pw", layer, None, []))
        else:
            raise NotImplementedError(f"unexpected layer {type(layer).__name__}")
    return units


def _dw_shape(unit: _Unit) -> tuple[int, int, int, int]:
    """(input channels, multiplier, kernel, stride) of a depthwise pair."""
    first, second = unit.layer[0][0], unit.layer[1][0]
    return first.in_channels, second.out_channels // first.in_channels, first.kernel_size[0], first.stride[0]


def _diagonal_ok(unit: _Unit) -> bool:
    """Micro-Block A's Shift-Max after its depthwise pair: groups = input channels, multiplier M dividing
    them, so the diagonal tap assignment makes the shift one rotation by M (rewrite 2)."""
    cin, mult, _, _ = _dw_shape(unit)
    sm = unit.act
    return (isinstance(sm, DynamicShiftMax) and mult > 1 and sm.groups == cin and cin % mult == 0)


# ------------------------------------------------------------------------------------------------ builder
class _Builder:
    """Turns the training form into fast modules, block by block, tracking every tensor's ``Rep``."""

    def __init__(self, model: MicroNet, target: Target) -> None:
        self.model, self.target = model, target
        self.units = [(bi, _units(block)) for bi, block in enumerate(model.blocks)]
        # Flat list of (block index, unit) to look one unit ahead across block boundaries.
        self.flat = [(bi, u) for bi, units in self.units for u in units]
        self._hw_at = self._spatial_sizes(model.input_size)  # map size at each unit's input
        self._block_input: dict[int, Rep] = {}

    # ------------------------------------------------------------------------- what a consumer needs
    def _next(self, pos: int):
        return self.flat[pos + 1] if pos + 1 < len(self.flat) else None

    def _input_need(self, pos: int) -> tuple[np.ndarray | None, bool]:
        """For the unit at flat position ``pos``: the distinct order it needs its input in (None: any)
        and whether it accepts a pending (sum-form) input."""
        bi, unit = self.flat[pos]
        block = self.model.blocks[bi]
        # The residual adds the block's materialised input, so a residual block takes no pending input.
        pending_ok = not (block.residual and self.units[bi][1][0] is unit)
        if unit.kind == "dw":
            cin, mult, _, _ = _dw_shape(unit)
            if isinstance(unit.act, DynamicShiftMax) and not self.target.gather_shift:
                if _diagonal_ok(unit):
                    return np.arange(cin), pending_ok
                if mult == 1:
                    natural = self._natural_roll_order(pos)
                    if natural is not None:
                        return natural, pending_ok
                    order, _ = _interleaved_cycles(np.asarray(shift_permutation(unit.act.channels, unit.act.groups)))
                    return order, pending_ok
            return None, pending_ok
        if self._pw_grouped(pos):
            return np.arange(unit.layer[0].in_channels), pending_ok
        return None, pending_ok

    def _output_need(self, pos: int) -> tuple[np.ndarray | None, bool]:
        """What the output of unit ``pos`` must look like *before* its shuffles: (order or None, pending ok)."""
        bi, unit = self.flat[pos]
        if self.model.blocks[bi].residual and self.units[bi][1][-1] is unit:
            # A residual block ends in the order it started with, materialised.
            need, pending_ok = self._block_input[bi].order, False
        elif self._next(pos) is None:  # the head: any order, materialised (ReLU6 first)
            return None, False
        else:
            need, pending_ok = self._input_need(pos + 1)
        if need is not None:
            for g in reversed(unit.shuffles):
                need = _before_shuffle(need, g)
        return need, pending_ok

    def _natural_roll_order(self, pos: int) -> np.ndarray | None:
        """For the multiplier-1 depthwise + Shift-Max at ``pos`` between two grouped 1×1 convs (Micro-Block
        B/C): the order the expanding conv emits when grouped, if in it the Shift-Max shift is one 2-D roll
        and the squeezing conv's input is one transpose from group-contiguous. Then both 1×1 convs stay
        grouped; otherwise the depthwise takes the cycle-interleaved order (one rotation) and the squeeze
        runs dense, absorbing the order."""
        bi, unit = self.flat[pos]
        prev, nxt = self.flat[pos - 1] if pos else None, self._next(pos)
        if prev is None or prev[0] != bi or prev[1].kind != "pw" or nxt is None or nxt[1].kind != "pw":
            return None
        squeeze, expand = nxt[1].layer[0], prev[1].layer[0]
        if squeeze.groups == 1:
            return None
        order = np.arange(expand.out_channels)
        for g in prev[1].shuffles:
            order = _through_shuffle(order, g)
        sm = unit.act
        shift = np.asarray(shift_permutation(sm.channels, sm.groups))
        roll = _roll2d(_inv(order)[shift[order]])
        if roll is None:
            return None
        after = order
        for g in unit.shuffles:
            after = _through_shuffle(after, g)
        plan = _transpose_to_groups(after, squeeze.groups, squeeze.in_channels)
        if plan is None:
            return None
        sq_px = int(np.prod(self._hw_at[pos + 1]))
        exp_px = int(np.prod(self._hw_at[pos - 1]))
        c = len(order)
        saves = _grouping_saves(sq_px, squeeze.in_channels, squeeze.out_channels, squeeze.groups)
        saves -= _transpose_cost(sq_px, plan)
        # The roll's inner slices move short runs twice (slice, concat); the rotation it replaces, long ones.
        _, inner, _, si = roll
        saves -= 2 * (_copy_cost(sq_px, c, min(si, inner - si) if si else c) - _copy_cost(sq_px, c, c // 2))
        if expand.groups > 1 and isinstance(prev[1].act, DynamicShiftMax) and prev[1].act.groups == expand.groups:
            saves += _grouping_saves(exp_px, expand.in_channels, expand.out_channels, expand.groups)
        return order if saves > 0 else None

    def _pw_grouped(self, pos: int) -> bool:
        """Keep this 1×1 conv grouped? Only where dense would be costly, the Shift-Max after it shifts
        across the conv's own groups, and its natural output order suits its consumer."""
        bi, unit = self.flat[pos]
        conv = unit.layer[0]
        g = conv.groups
        if g == 1:
            return False
        if self.target.gather_shift:
            return True  # any input or output order is one gather away, and x~ is a gather too
        hw = self._hw_at[pos]
        if conv.in_channels * conv.out_channels * hw[0] * hw[1] < GROUPED_MIN_DENSE_MACS:
            return False
        sm = unit.act
        if isinstance(sm, DynamicShiftMax) and sm.groups != g:
            return False
        residual_end = self.model.blocks[bi].residual and self.units[bi][1][-1] is unit
        if residual_end and bi not in self._block_input:
            return False  # asked before the block's input order is known
        need, _ = self._output_need(pos)
        if need is None:
            return True
        natural = np.arange(conv.out_channels)  # stored order of a grouped conv's output, before its shuffles
        if np.array_equal(natural, need):
            return True
        if self._output_transpose(pos, natural, need) is not None:
            return True  # the output is transposed into the order its consumer needs
        if residual_end:
            return False  # the residual needs the block's input order back; a dense conv can emit it
        for gs in unit.shuffles:
            natural = _through_shuffle(natural, gs)
        pair_macs = 2 * conv.in_channels * conv.out_channels * hw[0] * hw[1]  # dense x and x~ convs
        return pair_macs >= GROUPED_EXPAND_MIN_DENSE_MACS and self._rotations_downstream(pos, natural)

    def _output_transpose(self, pos: int, natural: np.ndarray, need: np.ndarray):
        """The transpose taking a grouped 1×1 conv's natural output to ``need``, if one exists and pays."""
        conv = self.flat[pos][1].layer[0]
        plan = _transpose_to(natural, need)
        pixels = int(np.prod(self._hw_at[pos]))
        if plan is None or _grouping_saves(pixels, conv.in_channels, conv.out_channels, conv.groups) \
                <= _transpose_cost(pixels, plan):
            return None
        return plan

    def _rotations_downstream(self, pos: int, order: np.ndarray) -> bool:
        """Is the next unit a multiplier-1 depthwise pair whose Shift-Max shift, in ``order``, is at most two
        masked rotations? Then that order costs two more products per branch instead of a dense conv."""
        nxt = self._next(pos)
        if nxt is None or nxt[1].kind != "dw" or _dw_shape(nxt[1])[1] != 1:
            return False
        sm = nxt[1].act
        if not isinstance(sm, DynamicShiftMax):
            return False
        shift = np.asarray(shift_permutation(sm.channels, sm.groups))
        rot = _rotations(_inv(order)[shift[order]])
        return rot is not None and 0 not in rot

    # ------------------------------------------------------------------------------------------ build
    def build(self) -> FastMicroNet:
        model = self.model
        size = model.input_size
        stem, rep = self._stem((size, size))
        blocks: list[nn.Module] = []
        pos = 0
        for bi, units in self.units:
            block = model.blocks[bi]
            rep_in = rep
            self._block_input[bi] = rep
            steps: list[nn.Module] = []
            for unit in units:
                module, rep = self._unit(pos, unit, rep)
                steps.append(module)
                for g in unit.shuffles:
                    rep = rep.relabelled(g)
                pos += 1
            if block.residual:
                if rep.pending or rep_in.pending or not np.array_equal(rep.order, rep_in.order):
                    raise AssertionError("residual block output order differs from its input order")
            blocks.append(FastBlock(steps, block.residual))
        if rep.pending:
            raise AssertionError("the head needs a materialised tensor")
        w1, b1 = _fold_linear(model.head.fc1)
        w2, b2 = _fold_linear(model.head.fc2)
        head = FastHead(w1[:, torch.as_tensor(rep.order)], b1, w2, b2)
        fast = FastMicroNet(stem, blocks, head, size, model.num_classes)
        if self.target.linear_coefficients:
            for module in fast.modules():
                if isinstance(module, ShiftMax):
                    module.coef = module.coef.linear_form() or module.coef
        fast.requires_grad_(False)
        return fast.eval()

    def _spatial_sizes(self, size: int) -> list[tuple[int, int]]:
        hw = ((size + 2 - 3) // 2 + 1,) * 2
        sizes = []
        for _, unit in self.flat:
            sizes.append(hw)
            if unit.kind == "dw":
                _, _, k, s = _dw_shape(unit)
                hw = tuple((n + 2 * (k // 2) - k) // s + 1 for n in hw)
        return sizes

    def _rotation(self, d: int, channels: int) -> dict:
        """ShiftMax arguments for x~ = the source rotated by ``d`` channels."""
        if self.target.gather_shift:
            return {"gather": (np.arange(channels) + d) % channels}
        return {"rotations": (d,)}

    def _width(self, hw: tuple[int, int]) -> int:
        """The W that narrow Shift-Max coefficients are widened to (1: not widened)."""
        return hw[1] if self.target.widen else 1

    def _unit(self, pos: int, unit: _Unit, rep: Rep) -> tuple[nn.Module, Rep]:
        if unit.kind == "dw":
            return self._depthwise(pos, unit, rep)
        return self._pointwise(pos, unit, rep)

    # -------------------------------------------------------------------------------------- the stem
    def _stem(self, hw: tuple[int, int]) -> tuple[nn.Module, Rep]:
        """3×1 (stride 2,1) then 1×3 grouped (stride 1,2) → one dense 3×3 stride 2 conv, shuffled order emitted."""
        stem = self.model.stem
        (conv_a, bn_a), (conv_b, bn_b) = stem.conv[0], stem.conv[1]
        wa, ba = _folded(conv_a, bn_a)  # (g1, 3, 3, 1)
        wb, bb = _folded(conv_b, bn_b)  # (g1*g2, 1, 1, 3)
        g1, cout = conv_a.out_channels, conv_b.out_channels
        g2 = cout // g1
        src = np.asarray(shuffle_permutation(cout, g1))  # logical (after the shuffle) j = conv_b output src[j]
        need, _ = self._input_need(0)
        out_order = np.arange(cout) if need is None else need
        rows = src[out_order]
        mids = rows // g2
        w = wa[mids][:, :, :, 0][:, :, :, None] * wb[rows]  # (cout, 3, 3, 3)
        h, wd = hw
        ho, wo = (h + 2 - 3) // 2 + 1, (wd + 2 - 3) // 2 + 1
        cols = torch.arange(wo) * 2 - 1
        inside = ((cols[:, None] + torch.arange(3)[None, :]) >= 0) & ((cols[:, None] + torch.arange(3)[None, :]) < wd)
        bias_full = bb[rows][:, None] + ba[mids][:, None] * (wb[rows][:, 0, 0, :] @ inside.double().T)
        interior = bias_full[:, 1]
        border = bias_full - interior[:, None]
        border_t = border[None, :, None, :].clone() if border.abs().max() > 0 else None
        if self.target.pixel_pairs and 2 * cout <= GEMM_TILE_OUTPUTS and wo % 2 == 0 and (wd - 3) // 4 + 1 == wo // 2:
            # Rewrite 13: two horizontally adjacent output pixels per GEMM row. Output pixel 2j + r reads
            # input columns 4j + 2r - 1 .. 4j + 2r + 1, i.e. taps 2r..2r+2 of a 3×5 window at stride (2, 4).
            pair = torch.zeros(2 * cout, 3, 3, 5, dtype=w.dtype)
            pair[:cout, :, :, 0:3], pair[cout:, :, :, 2:5] = w, w
            border_p = None
            if border_t is not None:  # stored (r·C + c, j) is pixel 2j + r
                border_p = border.view(cout, wo // 2, 2).permute(2, 0, 1).reshape(1, 2 * cout, 1, wo // 2).clone()
            conv = Conv(_conv(pair, torch.cat([interior, interior]), stride=(2, 4), padding=1), border_p, relu6=True)
            return nn.Sequential(conv, PixelPairs()), Rep(out_order, (ho, wo))
        return Conv(_conv(w, interior, stride=2, padding=1), border_t, relu6=True), Rep(out_order, (ho, wo))

    # ----------------------------------------------------------------------------- depthwise pairs
    def _depthwise(self, pos: int, unit: _Unit, rep: Rep) -> tuple[nn.Module, Rep]:
        """(k,1) conv (multiplier c1, stride (s,1)) then (1,k) conv (multiplier c2, stride (1,s)) → one k×k
        conv, stride s, grouped by input channel (two inputs per group for a pending input), or the two
        convs kept (``Target.merged_depthwise`` off); then the activation."""
        first, second = unit.layer[0], unit.layer[1]
        w1, b1 = _folded(first[0], first[1])  # (mid, 1, k, 1)
        w2, b2 = _folded(second[0], second[1])  # (hid, 1, 1, k)
        cin, mult, k, s = _dw_shape(unit)
        m2 = second[0].out_channels // first[0].out_channels
        p = k // 2
        distinct = rep.distinct()
        copies = 2 if rep.pending else 1
        # Diagonal taps make the XNNPACK shift one rotation; a gathered shift (ONNX Runtime) needs none.
        diagonal = not self.target.gather_shift and _diagonal_ok(unit) and np.array_equal(distinct, np.arange(cin))
        # Output stored (t, r) ← input stored t, multiplier tap (r + t) mod M on the diagonal, else r.
        taps = [((r + t) % mult if diagonal else r) for t in range(cin) for r in range(mult)]
        out_order = np.array([distinct[t] * mult + taps[t * mult + r] for t in range(cin) for r in range(mult)])
        h, wd = rep.hw
        ho, wo = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
        sm = unit.act
        relu6 = isinstance(sm, nn.ReLU6)
        if self.target.merged_depthwise:
            mids = out_order // m2
            w = (w1[mids, 0, :, 0][:, :, None] * w2[out_order, 0, 0, :][:, None, :]).unsqueeze(1)  # (hid, 1, k, k)
            w = w.repeat(1, copies, 1, 1)  # a pending input: the same filter on both parts of each channel
            cols = torch.arange(wo) * s - p
            inside = (cols[:, None] + torch.arange(k)[None, :] >= 0) & (cols[:, None] + torch.arange(k)[None, :] < wd)
            edge = b1[mids][:, None] * (w2[out_order, 0, 0, :] @ inside.double().T)  # (hid, wo)
            bias_full = b2[out_order][:, None] + edge
            interior = bias_full[:, p] if wo > 2 * p else bias_full[:, 0]
            border = bias_full - interior[:, None]
            border_t = border[None, :, None, :].clone() if border.abs().max() > 0 else None
            convs: nn.Module = Conv(_grouped_taps(w, interior, s, p, cin), border_t, relu6=relu6)
        else:
            convs = self._factorized_pair((w1, b1, w2, b2), distinct, out_order, mult, k, s, copies, relu6)
        out = Rep(out_order, (ho, wo))
        if not isinstance(sm, DynamicShiftMax):
            return convs, out
        return nn.Sequential(convs, self._shift_after_depthwise(sm, out, mult if diagonal else None)), out

    @staticmethod
    def _factorized_pair(folded: tuple[Tensor, Tensor, Tensor, Tensor], distinct: np.ndarray, out_order: np.ndarray,
                         mult: int, k: int, s: int, copies: int, relu6: bool) -> nn.Module:
        """The depthwise pair as two convs in the stored orders the merged conv would use: zero padding
        applies to each conv's own input, so no border term. The (k,1) conv emits each stored input's c1 mid
        channels in tap order; the (1,k) conv is grouped by mid channel where every output's mid is its
        group's (taps in natural order), else by input channel with zero weights for the other mids (the
        diagonal taps of Micro-Block A)."""
        w1, b1, w2, b2 = folded
        cin = len(distinct)
        c1 = w1.shape[0] // cin
        m2 = mult // c1
        p = k // 2
        mid_order = np.array([distinct[t] * c1 + r for t in range(cin) for r in range(c1)])
        wa = w1[torch.as_tensor(mid_order)].repeat(1, copies, 1, 1)  # a pending input: both parts, same filter
        conv_a = _conv(wa, b1[torch.as_tensor(mid_order)], stride=(s, 1), padding=(p, 0), groups=cin)
        mid_pos = {int(m): j for j, m in enumerate(mid_order)}
        src = np.array([mid_pos[int(o) // m2] for o in out_order])  # stored mid feeding each stored output
        wb2 = w2[torch.as_tensor(out_order)]  # (hid, 1, 1, k)
        if np.array_equal(src, np.arange(len(out_order)) // m2):
            conv_b = _conv(wb2, b2[torch.as_tensor(out_order)], stride=(1, s), padding=(0, p), groups=cin * c1)
        else:
            wide = torch.zeros(len(out_order), c1, 1, k, dtype=wb2.dtype)
            for o, j in enumerate(src):
                assert j // c1 == o // mult, "a diagonal output reads a mid of another input"
                wide[o, j % c1] = wb2[o, 0]
            conv_b = _conv(wide, b2[torch.as_tensor(out_order)], stride=(1, s), padding=(0, p), groups=cin)
        return nn.Sequential(Conv(conv_a), Conv(conv_b, relu6=relu6))

    def _shift_after_depthwise(self, sm: DynamicShiftMax, rep: Rep, diagonal_step: int | None) -> ShiftMax:
        c, k = sm.channels, sm.branches
        order = rep.order
        shift = np.asarray(shift_permutation(c, sm.groups))
        pi = _inv(order)[shift[order]]  # x~ (stored) = z[pi]
        if diagonal_step is not None:
            assert np.array_equal(pi, (np.arange(c) + diagonal_step) % c)
        eye = torch.eye(c, dtype=torch.float64)[:, torch.as_tensor(order)]
        zero = torch.zeros(c, dtype=torch.float64)
        if self.target.gather_shift:
            blocks = [[(2 * e, order, None), (2 * e + 1, order, None)] for e in range(k)]
            return ShiftMax(_coefficients(sm, blocks, eye, zero), c, k, gather=pi, width=self._width(rep.hw))
        rot = _rotations(pi)
        roll = _roll2d(pi) if rot is None or len(rot) > 1 else None
        if roll is not None:  # one roll on a 2-D view: no masked products
            blocks = [[(2 * e, order, None), (2 * e + 1, order, None)] for e in range(k)]
            return ShiftMax(_coefficients(sm, blocks, eye, zero), c, k, roll=roll, width=self._width(rep.hw))
        if rot is not None and 0 not in rot:
            ds = sorted(rot)
            masks = [rot[d] if len(ds) > 1 else None for d in ds]
            blocks = [[(2 * e, order, None)] + [(2 * e + 1, order, m) for m in masks] for e in range(k)]
            coef = _coefficients(sm, blocks, eye, zero)
            return ShiftMax(coef, c, k, rotations=tuple(ds), width=self._width(rep.hw))
        perm = torch.zeros(c, c, dtype=torch.float64)
        perm[torch.arange(c), torch.as_tensor(pi)] = 1.0
        blocks = [[(2 * e, order, None), (2 * e + 1, order, None)] for e in range(k)]
        return ShiftMax(_coefficients(sm, blocks, eye, zero), c, k, permutation=_conv(perm[:, :, None, None], None),
                        width=self._width(rep.hw))

    # -------------------------------------------------------------------------------- 1×1 convs
    def _pointwise(self, pos: int, unit: _Unit, rep: Rep) -> tuple[nn.Module, Rep]:
        conv, bn = unit.layer[0], unit.layer[1]
        w, b = _folded(conv, bn)
        cout, cin, g = conv.out_channels, conv.in_channels, conv.groups
        dense = torch.zeros(cout, cin, dtype=torch.float64)
        og, ig = cout // g, cin // g
        for q in range(g):
            dense[q * og:(q + 1) * og, q * ig:(q + 1) * ig] = w[q * og:(q + 1) * og, :, 0, 0]
        w_in = dense[:, torch.as_tensor(rep.order)]  # columns in stored order (copies: the sum is absorbed)
        need, pending_ok = self._output_need(pos)
        sm = unit.act
        hw = rep.hw
        if self._pw_grouped(pos):
            grouped = self._grouped_with_transposes(pos, unit, dense, b, rep, g, need)
            if grouped is not None:
                return grouped
        if not isinstance(sm, DynamicShiftMax):
            out_order = np.arange(cout) if need is None else need
            return Conv(_rows(w_in, b, out_order), relu6=isinstance(sm, nn.ReLU6)), Rep(out_order, hw)
        c, k = sm.channels, sm.branches
        shift = np.asarray(shift_permutation(c, sm.groups))
        out_order = np.arange(c) if need is None else need
        pool_input = len(rep.order) < c
        if k == 1 and pending_ok and self._pending_pays(pos, c):
            # Rewrite 5: emit [x_c, x~_c] pairs and their products with [a_c, b_c]; the consumer sums them.
            producer = _rows(w_in, b, np.stack([out_order, shift[out_order]], axis=1).reshape(-1))
            pairs = np.repeat(out_order, 2)
            coef_e = np.tile([0, 1], c)
            if pool_input:
                coef = _coefficients(sm, [[(coef_e, pairs, None)]], w_in, b, flat=True)
            else:  # pool the emitted pairs: the x part of channel c sits at 2·q
                sel = torch.zeros(c, 2 * c, dtype=torch.float64)
                sel[torch.as_tensor(out_order), torch.arange(0, 2 * c, 2)] = 1.0
                coef = _coefficients(sm, [[(coef_e, pairs, None)]], sel, torch.zeros(c, dtype=torch.float64), flat=True)
            return ShiftMax(coef, c, k, producer=producer, pool_input=pool_input, pending=True,
                            width=self._width(hw)), Rep(pairs, hw, pending=True)
        rotations: tuple[int, ...] = ()
        if need is None:  # any order will do: store x cycle-interleaved, x~ is one rotation (no second conv)
            out_order, d = _interleaved_cycles(shift)
            rotations = (d,)
        producer = _rows(w_in, b, out_order)
        partner = None if rotations or self.target.gather_shift else _rows(w_in, b, shift[out_order])
        if rotations:
            shift_kwargs = self._rotation(rotations[0], c)
        elif self.target.gather_shift:  # x~ gathered from x: a copy instead of a second conv
            shift_kwargs = {"gather": _inv(out_order)[shift[out_order]]}
        else:
            shift_kwargs = {}
        blocks = [[(2 * e, out_order, None), (2 * e + 1, out_order, None)] for e in range(k)]
        if pool_input:
            coef = _coefficients(sm, blocks, w_in, b)
        else:
            select = torch.eye(c, dtype=torch.float64)[:, torch.as_tensor(out_order)]
            coef = _coefficients(sm, blocks, select, torch.zeros(c, dtype=torch.float64))
        return ShiftMax(coef, c, k, producer=producer, partner=partner, pool_input=pool_input, **shift_kwargs,
                        width=self._width(hw)), \
            Rep(out_order, hw)

    def _pending_pays(self, pos: int, channels: int) -> bool:
        nxt = self._next(pos)
        if nxt is None:
            return False
        _, unit = nxt
        if unit.kind == "dw":
            return self.target.pending_into_depthwise and self._pending_into_depthwise_pays(pos, channels)
        conv = unit.layer[0]
        hw = self._hw_at[pos + 1]
        if self._pw_grouped(pos + 1):
            return True
        rows = conv.out_channels * (2 if isinstance(unit.act, DynamicShiftMax) else 1)
        return channels * rows * hw[0] * hw[1] < PENDING_MAX_EXTRA_MACS

    def _pending_into_depthwise_pays(self, pos: int, channels: int) -> bool:
        """A pending product doubles the (merged-group) depthwise's inner loop; materialising it costs a
        partner conv and a MUL and an ADD on the 1×1 conv's map. The first wins at 56×56 (m0's block 2),
        the second at 28×28 (block 3), by the cost model."""
        _, unit = self.flat[pos + 1]
        cin, mult, k, s = _dw_shape(unit)
        h, w = self._hw_at[pos + 1]
        out_px = ((h + 2 * (k // 2) - k) // s + 1) * ((w + 2 * (k // 2) - k) // s + 1)
        coarse = _merged_groups(cin, 2, cin * mult)  # the conv taking the pending input: two inputs a group
        doubled_k = out_px * coarse * _tile_padded(cin * mult // coarse) * k * k * (cin // coarse)
        pw = self.flat[pos][1].layer[0]
        in_px = int(np.prod(self._hw_at[pos]))
        materialise = _conv_cost(in_px, pw.in_channels, channels) + 2 * in_px * channels * ELEMENTWISE_COST
        return doubled_k < materialise

    @staticmethod
    def _group_contiguous(rep: Rep, groups: int, cin: int) -> bool:
        """Does each consecutive block of stored channels hold exactly one conv group, in group order?"""
        per = len(rep.order) // groups
        group_of = rep.order // (cin // groups)
        return all((group_of[q * per:(q + 1) * per] == q).all() for q in range(groups))

    def _grouped_with_transposes(self, pos: int, unit: _Unit, dense: Tensor, b: Tensor, rep: Rep, g: int,
                                 need: np.ndarray | None) -> tuple[nn.Module, Rep] | None:
        """The grouped conv, with a channel transpose before it when its input is one transpose from
        group-contiguous and one after it when its consumer needs an order one transpose from its natural
        output; None when the input cannot be made group-contiguous (the caller goes dense)."""
        cout, cin = dense.shape
        if self.target.gather_shift:
            return self._grouped_with_gathers(unit, dense, b, rep, g, need)
        hw = rep.hw
        steps: list[nn.Module] = []
        pixels = hw[0] * hw[1]
        before = after = None
        if not self._group_contiguous(rep, g, cin):
            before = None if rep.pending else _transpose_to_groups(rep.order, g, cin)
            if before is None:
                return None
        natural = np.arange(cout)
        if need is not None and not np.array_equal(natural, need):
            # Without a transpose the consumer takes the natural order (an expanding conv whose depthwise
            # Shift-Max then uses masked rotations; see _pw_grouped).
            after = self._output_transpose(pos, natural, need)
        cost = sum(_transpose_cost(pixels, plan) for plan in (before, after) if plan is not None)
        if cost and _grouping_saves(pixels, cin, cout, g) <= cost:
            return None
        if before is not None:
            steps.append(ChannelTranspose(*before))
            rep = Rep(rep.order[_transposed_index(*before)], hw)
        module, out = self._grouped_pointwise(unit, dense[:, torch.as_tensor(rep.order)], b, rep, g)
        steps.append(module)
        if after is not None:
            steps.append(ChannelTranspose(*after))
            out = Rep(out.order[_transposed_index(*after)], hw)
        return (steps[0] if len(steps) == 1 else nn.Sequential(*steps)), out

    def _grouped_with_gathers(self, unit: _Unit, dense: Tensor, b: Tensor, rep: Rep, g: int,
                              need: np.ndarray | None) -> tuple[nn.Module, Rep]:
        """The grouped conv with a channel gather before it when its input is not group-contiguous and one
        after it when its consumer needs another order (``Target.gather_shift``): ONNX Runtime runs a dense
        1×1 conv on channel counts that are not multiples of 16 as a padded NCHWc conv with reorders, 1.6×
        the grouped conv and a gather at 56×56 (24→8 channels: 37.6 against 23.2 µs)."""
        cout, cin = dense.shape
        steps: list[nn.Module] = []
        if not self._group_contiguous(rep, g, cin):
            index = np.argsort(rep.order // (cin // g), kind="stable")
            steps.append(ChannelGather(index))
            rep = Rep(rep.order[index], rep.hw, rep.pending)
        module, out = self._grouped_pointwise(unit, dense[:, torch.as_tensor(rep.order)], b, rep, g)
        steps.append(module)
        if need is not None and not np.array_equal(out.order, need):
            index = _inv(out.order)[need]
            steps.append(ChannelGather(index))
            out = Rep(out.order[index], out.hw)
        return (steps[0] if len(steps) == 1 else nn.Sequential(*steps)), out

    def _grouped_pointwise(self, unit: _Unit, w_in: Tensor, b: Tensor, rep: Rep, g: int) -> tuple[nn.Module, Rep]:
        """Rewrite 6: a grouped 1×1 conv, natural output order; with Shift-Max, x~ is the conv with rows
        rotated inside each group, rotated by one group."""
        cout = w_in.shape[0]
        og, per = cout // g, len(rep.order) // g
        blocks_w = torch.stack([w_in[q * og:(q + 1) * og, q * per:(q + 1) * per] for q in range(g)])  # (g, og, per)
        weight = blocks_w.reshape(cout, per)
        sm = unit.act
        natural = np.arange(cout)
        if not isinstance(sm, DynamicShiftMax):
            conv = _conv(weight[:, :, None, None], b, groups=g)
            return Conv(conv, relu6=isinstance(sm, nn.ReLU6)), Rep(natural, rep.hw)
        c, k = sm.channels, sm.branches
        inner = np.array([q * og + (j + 1) % og for q in range(g) for j in range(og)])  # (q, j) ← (q, j+1)
        producer = _conv(weight[:, :, None, None], b, groups=g)
        blocks = [[(2 * e, natural, None), (2 * e + 1, natural, None)] for e in range(k)]
        coef = _coefficients(sm, blocks, torch.eye(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64))
        if self.target.gather_shift:  # x~ gathered from x: a copy instead of a second conv
            shift = np.asarray(shift_permutation(c, sm.groups))
            return ShiftMax(coef, c, k, producer=producer, width=self._width(rep.hw), gather=shift), \
                Rep(natural, rep.hw)
        partner = _conv(weight[torch.as_tensor(inner)][:, :, None, None], b[torch.as_tensor(inner)], groups=g)
        return ShiftMax(coef, c, k, producer=producer, partner=partner, width=self._width(rep.hw),
                        **self._rotation(og, c)), \
            Rep(natural, rep.hw)


def _grouped_taps(w: Tensor, bias: Tensor, stride: int, padding: int, groups: int) -> nn.Conv2d:
    """A k×k conv with ``groups`` groups (weight (out, in per group, k, k)), run with ``_merged_groups``:
    zero weights between the merged groups (exact)."""
    cout, per_in, k, _ = w.shape
    per_out = cout // groups
    coarse = _merged_groups(groups, per_in, cout)
    if coarse == groups:
        return _conv(w, bias, stride=stride, padding=padding, groups=groups)
    merged = groups // coarse  # original groups per coarse group
    wide = torch.zeros(cout, per_in * merged, k, k, dtype=w.dtype)
    for o in range(cout):
        t = (o // per_out) % merged  # position of the original group inside its coarse group
        wide[o, t * per_in:(t + 1) * per_in] = w[o]
    return _conv(wide, bias, stride=stride, padding=padding, groups=coarse)


def _coefficients(sm: DynamicShiftMax, blocks: list[list[tuple]], pool_w: Tensor, pool_b: Tensor,
                  flat: bool = False) -> Coefficients:
    """Coefficients in stored layout. ``blocks[k]`` lists branch k's operand blocks as (coefficient index e
    in a1, b1, a2, b2 = 0..3, stored order, mask or None); with ``flat`` a block gives e per position.
    ``pool_w/pool_b`` map the pooled tensor to the logical x (C)."""
    c = sm.channels
    w1 = sm.fc1.weight.double() @ pool_w
    b1 = sm.fc1.weight.double() @ pool_b + sm.fc1.bias.double()
    offsets = np.array([sm.init_a[0], sm.init_b[0], sm.init_a[1], sm.init_b[1]])
    rows, biases, scales, shifts = [], [], [], []
    for branch in blocks:
        for e, order, mask in branch:
            e_pos = np.asarray(e) if flat else np.full(len(order), e)
            idx = torch.as_tensor(e_pos * c + order)
            rows.append(sm.fc2.weight.double()[idx])
            biases.append(sm.fc2.bias.double()[idx] + 3.0)
            scale = torch.full((len(order),), ACT_MAX / 3.0, dtype=torch.float64)
            shift = torch.as_tensor(offsets[e_pos] - ACT_MAX, dtype=torch.float64)
            if mask is not None:  # masked coefficient: exactly 0
                m = torch.as_tensor(mask)
                scale[~m] = 0.0
                shift[~m] = 0.0
            scales.append(scale)
            shifts.append(shift)
    return Coefficients(w1, b1, torch.cat(rows), torch.cat(biases), torch.cat(scales), torch.cat(shifts))


def relu_max_form(fast: FastMicroNet) -> FastMicroNet:
    """A copy of the fast graph whose two-branch Shift-Maxes take their max as q + relu(p - q) (rewrite 14,
    the form lowered for int8 TFLite); the same weights, so nothing is built twice."""
    copied = copy.deepcopy(fast)
    for module in copied.modules():
        if isinstance(module, ShiftMax):
            module.relu_max = True
    return copied


def batch_one_form(fast: FastMicroNet) -> FastMicroNet:
    """A copy of an ONNX Runtime fast graph whose Shift-Max products are BatchNormalizations (rewrite 20):
    the same function, for a batch of one (BatchNormalization's scale is per channel, not per sample), which
    ``micronet export`` ships unless a dynamic batch is asked for. Widened coefficients (XNNPACK) cannot be
    a BatchNormalization scale."""
    copied = copy.deepcopy(fast)
    for module in copied.modules():
        if isinstance(module, ShiftMax):
            if module.widen is not None:
                raise ValueError("batch_one_form needs per-channel coefficients: build the graph for onnxruntime")
            module.batch_one = True
    return copied


def to_fast_deploy(model: MicroNet, relu_max: bool = False, target: str = "xnnpack") -> FastMicroNet:
    """A fast, eval-mode deploy form of ``model`` (training form) computing the same logits, built for
    ``target`` (a key of ``TARGETS``); with ``relu_max``, its ``relu_max_form``."""
    if target not in TARGETS:
        raise ValueError(f"unknown fast-graph target {target!r}; choose from {sorted(TARGETS)}")
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        fast = _Builder(model, TARGETS[target]).build()
    return relu_max_form(fast) if relu_max else fast
