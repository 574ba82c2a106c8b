"""The fast deploy form of a MicroNet: same function, a graph that TFLite/XNNPACK and ONNX Runtime run fast.

``to_fast_deploy(model)`` is a drop-in for ``export.deploy.to_deploy(model)``: same input (NCHW float32),
same logits, up to float32 rounding. It is built from the *training form* (BatchNorm folded here), and every
rewrite is exact algebra; ``tests/test_fast_deploy.py`` checks each variant against the training form.

Why the reference deploy graph is slow (m0, onnx2tf → TFLite, measured): ~550 ops, most of them channel
bookkeeping: every channel shuffle becomes RESHAPE+TRANSPOSE+RESHAPE in NHWC, every Shift-Max shift a chain of
slices, the (k,1)/(1,k) depthwise pairs and the grouped 1×1 convs become grouped CONV_2D (+PAD) that XNNPACK
runs slowly or not at all. The rewrites, in the order they were applied:

1. **Permutations are never executed, they are tracked.** Each tensor carries its *stored order* (stored
   channel c holds logical channel ``order[c]``). A channel shuffle only relabels; per-channel ops (depthwise
   conv, bias, Shift-Max coefficients, ReLU6, max) take their parameters in the stored order; a dense conv
   or Linear absorbs its input order into its weight columns and may emit its output in any order.
2. **Grouped 1×1 convs become dense 1×1 convs** with block-diagonal weights (more MACs, one fast GEMM, and
   a dense conv absorbs any permutation for free).
3. **Shift-Max partner from the producer.** After a 1×1 conv, the conv emits ``[x, x~]`` directly (the
   shifted copy is just more output rows); the hyper-function pools the conv *input* (mean commutes with a
   1×1 conv), so fc1 absorbs the conv.
4. **Shift-Max partner after a depthwise conv by rotations.** The shift S is a product of gcd(G, C/G)
   cycles; storing channels in cycle-interleaved order turns S into one flat rotation (two slices and a
   concat, no GATHER). Where the order is fixed by the neighbours, S is at most two flat rotations whose
   masks fold into the Shift-Max coefficients (a masked coefficient is exactly 0).
5. **Coefficients in one step.** ``theta = clamp(fc2(z)*2A/6 + off, off-A, off+A)``: the h_sigmoid, the
   rescale to [-A, A] and the offsets fold into fc2 and two constant clamp vectors; the K branches are one
   MUL of the stacked ``[x, x~, ...]`` by the stacked coefficients, a SPLIT, ADDs and one MAXIMUM.
6. **(k,1)+(1,k) depthwise pair → one k×k depthwise** with the channel multiplier (TFLite DEPTHWISE_CONV_2D
   instead of PAD+grouped CONV_2D twice). The first conv's bias is not uniform after zero padding at the
   left/right border, so it is added back as one constant tensor (exact).
7. The stem's 3×1 conv and 1×3 grouped conv become one dense 3×3 stride-2 conv (+ border bias), emitting
   the shuffled order directly.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from micronet.config import ACT_MAX
from micronet.layers import ChannelShuffle, DynamicShiftMax, shift_permutation, shuffle_permutation
from micronet.model import MicroNet

__all__ = ["to_fast_deploy", "FastMicroNet"]

# Dense producers emit [x, x~] directly unless the extra rows cost more than this many MACs; above it the
# conv emits x in cycle-interleaved order and x~ is one rotation (2 extra ops, no extra MACs).
EMIT_MACS_LIMIT = 600_000


# ----------------------------------------------------------------------------------------------- folding
def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode conv+BN as (weight, bias), float64."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    w = conv.weight.double() * scale.view(-1, 1, 1, 1)
    b0 = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    return w, (b0 - bn.running_mean.double()) * scale + bn.bias.double()


def _dense_1x1(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """A grouped 1×1 conv+BN as a dense (out, in) matrix (block diagonal) and bias."""
    w, b = _folded(conv, bn)
    cout, cin, g = conv.out_channels, conv.in_channels, conv.groups
    dense = torch.zeros(cout, cin, dtype=torch.float64)
    og, ig = cout // g, cin // g
    for k in range(g):
        dense[k * og:(k + 1) * og, k * ig:(k + 1) * ig] = w[k * og:(k + 1) * og, :, 0, 0]
    return dense, b


def _inv(p: np.ndarray) -> np.ndarray:
    q = np.empty_like(p)
    q[p] = np.arange(len(p))
    return q


def _through_shuffle(order: np.ndarray, groups: int) -> np.ndarray:
    """Stored order after a channel shuffle (the shuffle itself costs nothing)."""
    return _inv(np.asarray(shuffle_permutation(len(order), groups)))[order]


def _before_shuffle(order: np.ndarray, groups: int) -> np.ndarray:
    """The stored order a tensor must have so that it has ``order`` after the shuffle."""
    return np.asarray(shuffle_permutation(len(order), groups))[order]


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


# ----------------------------------------------------------------------------------------------- modules
def _conv(w: Tensor, b: Tensor | None, stride=1, padding=0, groups=1) -> nn.Conv2d:
    cout, cin_g, kh, kw = w.shape
    conv = nn.Conv2d(cin_g * groups, cout, (kh, kw), stride, padding, groups=groups, bias=b is not None)
    with torch.no_grad():
        conv.weight.copy_(w.float())
        if b is not None:
            conv.bias.copy_(b.float())
    return conv


def _linear(w: Tensor, b: Tensor) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w.float())
        lin.bias.copy_(b.float())
    return lin


class Coefficients(nn.Module):
    """Pooled features (B, C, 1, 1) → stacked Shift-Max coefficients (B, n·C, 1, 1), offsets and clamp folded in.

    The two Linear layers are 1×1 convs on the pooled map: the graph stays 4-D end to end, so onnx2tf
    keeps it channels-last (a (B, C) detour costs a TRANSPOSE per Shift-Max after the NHWC rewrite).
    """

    def __init__(self, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, lo: Tensor, hi: Tensor) -> None:
        super().__init__()
        self.fc1 = _conv(w1[:, :, None, None], b1)
        self.fc2 = _conv(w2[:, :, None, None], b2)
        self.register_buffer("lo", lo.float().view(1, -1, 1, 1))
        self.register_buffer("hi", hi.float().view(1, -1, 1, 1))

    def forward(self, pooled: Tensor) -> Tensor:
        return torch.maximum(torch.minimum(self.fc2(F.relu(self.fc1(pooled))), self.hi), self.lo)


def _pool(x: Tensor) -> Tensor:
    """Global average pool as AveragePool (onnx2tf turns ReduceMean into TRANSPOSE + MEAN in NCHW)."""
    return F.avg_pool2d(x, kernel_size=(int(x.shape[2]), int(x.shape[3])))


def _combine(y: Tensor, theta: Tensor, channels: int, per_branch: int, branches: int) -> Tensor:
    """max over branches of the sum of ``per_branch`` blocks of y·theta."""
    parts = torch.split(y * theta, channels, dim=1)
    sums = []
    for k in range(branches):
        s = parts[k * per_branch]
        for p in parts[k * per_branch + 1:(k + 1) * per_branch]:
            s = s + p
        sums.append(s)
    out = sums[0]
    for s in sums[1:]:
        out = torch.maximum(out, s)
    return out


def _coefficients(sm: DynamicShiftMax, order: np.ndarray, blocks: list[tuple[int, np.ndarray | None]],
                  pool_w: Tensor, pool_b: Tensor) -> Coefficients:
    """Coefficients for stored positions ``order``; ``blocks`` lists per branch-block (coef index e in
    a1,b1,a2,b2 = 0..3, mask or None). ``pool_w/pool_b`` map the pooled tensor to the logical x (C)."""
    c = sm.channels
    w1 = sm.fc1.weight.double() @ pool_w
    b1 = sm.fc1.weight.double() @ pool_b + sm.fc1.bias.double()
    offsets = [sm.init_a[0], sm.init_b[0], sm.init_a[1], sm.init_b[1]]
    scale = 2.0 * ACT_MAX / 6.0
    rows, biases, lo, hi = [], [], [], []
    for e, mask in blocks:
        idx = torch.as_tensor(e * c + order)
        w = sm.fc2.weight.double()[idx] * scale
        b = sm.fc2.bias.double()[idx] * scale + offsets[e]
        lo_e = torch.full((c,), offsets[e] - ACT_MAX, dtype=torch.float64)
        hi_e = torch.full((c,), offsets[e] + ACT_MAX, dtype=torch.float64)
        if mask is not None:  # masked coefficient: exactly 0 (0 lies inside [off-A, off+A])
            m = torch.as_tensor(mask)
            w[~m] = 0.0
            b[~m] = 0.0
        rows.append(w)
        biases.append(b)
        lo.append(lo_e)
        hi.append(hi_e)
    return Coefficients(w1, b1, torch.cat(rows), torch.cat(biases), torch.cat(lo), torch.cat(hi))


class ConvShiftMax(nn.Module):
    """1×1 conv emitting the stacked Shift-Max operands (+ optional rotation), then the Shift-Max."""

    def __init__(self, conv: nn.Conv2d, coef: Coefficients, channels: int, per_branch: int, branches: int,
                 rotate: int = 0) -> None:
        super().__init__()
        self.conv, self.coef = conv, coef
        self.channels, self.per_branch, self.branches, self.rotate = channels, per_branch, branches, rotate

    def forward(self, u: Tensor) -> Tensor:
        theta = self.coef(_pool(u))
        y = self.conv(u)
        if self.rotate:
            d = self.rotate
            y = torch.cat([y, y[:, d:], y[:, :d]] * self.branches, dim=1)
        elif self.branches == 2 and y.shape[1] == 2 * self.channels:
            y = torch.cat([y, y], dim=1)
        return _combine(y, theta, self.channels, self.per_branch, self.branches)


class DepthwiseShiftMax(nn.Module):
    """Shift-Max on a depthwise output z (stored order fixed): x~ from ≤ 2 flat rotations or a 1×1 permutation."""

    def __init__(self, coef: Coefficients, channels: int, branches: int, rotations: list[int] | None,
                 permutation: nn.Conv2d | None) -> None:
        super().__init__()
        self.coef, self.channels, self.branches = coef, channels, branches
        self.rotations = rotations
        self.permutation = permutation

    def forward(self, z: Tensor) -> Tensor:
        theta = self.coef(_pool(z))
        if self.permutation is not None:
            parts = [z, self.permutation(z)]
        else:
            parts = [z]
            for d in self.rotations:
                parts += [z[:, d:], z[:, :d]]
        y = torch.cat(parts * self.branches, dim=1)
        per_branch = 2 if self.permutation is not None else 1 + len(self.rotations)
        return _combine(y, theta, self.channels, per_branch, self.branches)


class Depthwise(nn.Module):
    """One k×k depthwise conv (channel multiplier allowed) plus a constant border-bias tensor."""

    def __init__(self, conv: nn.Conv2d, border: Tensor | None, relu6: bool) -> None:
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


class Pointwise(nn.Module):
    def __init__(self, conv: nn.Conv2d, relu6: bool) -> None:
        super().__init__()
        self.conv, self.relu6 = conv, relu6

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return F.relu6(y) if self.relu6 else y


class FastBlock(nn.Module):
    def __init__(self, steps: list[nn.Module], residual: bool) -> None:
        super().__init__()
        self.steps = nn.Sequential(*steps)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.steps(x)
        return y + x if self.residual else y


class FastHead(nn.Module):
    def __init__(self, fc1: nn.Linear, fc2: nn.Linear) -> None:
        super().__init__()
        self.fc1, self.fc2 = fc1, fc2

    def forward(self, x: Tensor) -> Tensor:
        x = F.hardswish(_pool(F.relu6(x)).flatten(1))
        return F.hardswish(self.fc2(F.hardswish(self.fc1(x))))


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


# ----------------------------------------------------------------------------------------------- builders
def _fused_depthwise(first: nn.Sequential, second: nn.Sequential, order_in: np.ndarray, in_hw: tuple[int, int],
                     relu6: bool) -> tuple[Depthwise, np.ndarray]:
    """(k,1) conv (mult c1, stride (s,1)) then (1,k) conv (mult c2, stride (1,s)) → one k×k depthwise, stride s.

    Input stored in ``order_in`` (logical channel of each stored channel); the output keeps the natural
    multiplier layout: stored output (c, m) ↔ logical order_in[c]·M + m.
    """
    c1conv, c2conv = first[0], second[0]
    w1, b1 = _folded(c1conv, first[1])  # (mid, 1, k, 1)
    w2, b2 = _folded(c2conv, second[1])  # (hid, 1, 1, k)
    cin, mid, hid = c1conv.in_channels, c1conv.out_channels, c2conv.out_channels
    m1, m2 = mid // cin, hid // mid
    k = c1conv.kernel_size[0]
    s = c1conv.stride[0]
    p = k // 2
    order_out = np.array([order_in[c] * m1 * m2 + m for c in range(cin) for m in range(m1 * m2)])
    mids = order_out // m2
    w = (w1[mids, 0, :, 0][:, :, None] * w2[order_out, 0, 0, :][:, None, :]).unsqueeze(1)  # (hid, 1, k, k)
    # Bias: b2 + b1 summed over the (1,k) taps that land inside the intermediate map (zero padded there).
    h, wd = in_hw
    ho, wo = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
    cols = torch.arange(wo) * s - p
    taps = torch.arange(k)
    inside = ((cols[:, None] + taps[None, :]) >= 0) & ((cols[:, None] + taps[None, :]) < wd)  # (wo, k)
    w2o = w2[order_out, 0, 0, :]  # (hid, k)
    edge = b1[mids][:, None] * (w2o @ inside.double().T)  # (hid, wo)
    bias_full = b2[order_out][:, None] + edge
    conv = _conv(w, None, stride=s, padding=p, groups=cin)
    interior = bias_full[:, p] if wo > 2 * p else bias_full[:, 0]
    with torch.no_grad():
        conv.bias = nn.Parameter(interior.float())
    border = (bias_full - interior[:, None])
    border_t = None
    if border.abs().max() > 0:
        border_t = border[None, :, None, :].expand(1, hid, ho, wo).clone()
    return Depthwise(conv, border_t, relu6), order_out


def _dense_sm(dense: Tensor, bias: Tensor, order_in: np.ndarray, sm: DynamicShiftMax, out_order: np.ndarray | None,
              macs_hw: int) -> tuple[nn.Module, np.ndarray]:
    """Dense 1×1 conv (logical dense, bias) on input stored as order_in, followed by Shift-Max ``sm``.

    ``out_order``: the stored order wanted for the output, or None when free (then the cheaper of
    emitting x~ from the conv or one rotation is used)."""
    c, k = sm.channels, sm.branches
    shift = np.asarray(shift_permutation(c, sm.groups))
    w_in = dense[:, torch.as_tensor(order_in)]  # columns in stored order
    extra = c * len(order_in) * macs_hw
    if out_order is None and extra > EMIT_MACS_LIMIT:
        order, d = _interleaved_cycles(shift)
        conv = _conv(w_in[torch.as_tensor(order)][:, :, None, None], bias[torch.as_tensor(order)])
        blocks = []
        for e in range(k):
            blocks += [(2 * e, None), (2 * e + 1, None)]
        coef = _coefficients(sm, order, blocks, w_in, bias)
        return ConvShiftMax(conv, coef, c, 2, k, rotate=d), order
    order = np.arange(c) if out_order is None else out_order
    rows = np.concatenate([order, shift[order]])
    conv = _conv(w_in[torch.as_tensor(rows)][:, :, None, None], bias[torch.as_tensor(rows)])
    blocks = []
    for e in range(k):
        blocks += [(2 * e, None), (2 * e + 1, None)]
    coef = _coefficients(sm, order, blocks, w_in, bias)
    return ConvShiftMax(conv, coef, c, 2, k), order


def _depthwise_sm(sm: DynamicShiftMax, order: np.ndarray) -> nn.Module:
    c, k = sm.channels, sm.branches
    shift = np.asarray(shift_permutation(c, sm.groups))
    pi = _inv(order)[shift[order]]  # r = z[pi]
    rot = _rotations(pi)
    eye_w, zero_b = torch.eye(c, dtype=torch.float64)[:, torch.as_tensor(order)], torch.zeros(c, dtype=torch.float64)
    if rot is not None:
        ds = [d for d in rot if d != 0]
        blocks = []
        for e in range(k):
            blocks.append((2 * e, None))
            if 0 in rot:  # part of the partner is z itself: fold it into the a-coefficient? keep explicit
                raise NotImplementedError
            blocks += [(2 * e + 1, rot[d] if len(ds) > 1 else None) for d in ds]
        coef = _coefficients(sm, order, blocks, eye_w, zero_b)
        return DepthwiseShiftMax(coef, c, k, ds, None)
    perm = torch.zeros(c, c, dtype=torch.float64)
    perm[torch.arange(c), torch.as_tensor(pi)] = 1.0
    blocks = []
    for e in range(k):
        blocks += [(2 * e, None), (2 * e + 1, None)]
    coef = _coefficients(sm, order, blocks, eye_w, zero_b)
    return DepthwiseShiftMax(coef, c, k, None, _conv(perm[:, :, None, None], None))


def _pointwise(dense: Tensor, bias: Tensor, order_in: np.ndarray, out_order: np.ndarray, relu6: bool) -> Pointwise:
    w = dense[:, torch.as_tensor(order_in)][torch.as_tensor(out_order)]
    return Pointwise(_conv(w[:, :, None, None], bias[torch.as_tensor(out_order)]), relu6)


def _split_layers(block) -> list[nn.Module]:
    return list(block.layers)


def _build_block(block, order_in: np.ndarray, hw: tuple[int, int], want_out: np.ndarray | None):
    """Returns (FastBlock, output order, output hw). ``want_out``: required output order or None (free)."""
    layers = _split_layers(block)
    steps: list[nn.Module] = []
    order = order_in
    i = 0
    residual = block.residual
    if residual:
        want_out = order_in
    # Pre-scan: the indices of the depthwise pair and its following activation.
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layer, nn.Sequential) and len(layer) == 2 and isinstance(layer[0], nn.Sequential):
            # MicroFactorizedDepthwise: (ConvBN, ConvBN)
            act = nxt
            dw, order = _fused_depthwise(layer[0], layer[1], order, hw, relu6=isinstance(act, nn.ReLU6))
            s = layer[0][0].stride[0]
            p, k = layer[0][0].kernel_size[0] // 2, layer[0][0].kernel_size[0]
            hw = ((hw[0] + 2 * p - k) // s + 1, (hw[1] + 2 * p - k) // s + 1)
            steps.append(dw)
            i += 1
            if isinstance(act, DynamicShiftMax):
                steps.append(_depthwise_sm(act, order))
                i += 1
            elif isinstance(act, nn.ReLU6):
                i += 1
            continue
        if isinstance(layer, ChannelShuffle):
            order = _through_shuffle(order, layer.groups)
            i += 1
            continue
        if isinstance(layer, nn.Sequential) and isinstance(layer[0], nn.Conv2d):  # pointwise ConvBN
            dense, bias = _dense_1x1(layer[0], layer[1])
            act = nxt
            # Which order does the output need? Look ahead past shuffles to the next consumer.
            j = i + 2 if isinstance(act, (DynamicShiftMax, nn.ReLU6)) else i + 1
            shuffles = []
            while j < len(layers) and isinstance(layers[j], ChannelShuffle):
                shuffles.append(layers[j].groups)
                j += 1
            if j < len(layers):  # followed by a depthwise pair (+ maybe its Shift-Max)
                nxt_act = layers[j + 1] if j + 1 < len(layers) else None
                if isinstance(nxt_act, DynamicShiftMax):
                    target, _ = _interleaved_cycles(np.asarray(shift_permutation(nxt_act.channels, nxt_act.groups)))
                else:
                    target = np.arange(dense.shape[0])
            else:
                target = want_out
            if target is not None:
                for g in reversed(shuffles):
                    target = _before_shuffle(target, g)
            if isinstance(act, DynamicShiftMax):
                module, order = _dense_sm(dense, bias, order, act, target, hw[0] * hw[1])
                steps.append(module)
                i += 2
            else:
                out = target if target is not None else np.arange(dense.shape[0])
                steps.append(_pointwise(dense, bias, order, out, relu6=isinstance(act, nn.ReLU6)))
                order = out
                i += 2 if isinstance(act, nn.ReLU6) else 1
            continue
        if isinstance(layer, DynamicShiftMax):
            raise NotImplementedError("Shift-Max without a producer")
        raise NotImplementedError(f"unexpected layer {type(layer).__name__}")
    if residual and not np.array_equal(order, order_in):
        raise AssertionError("residual block output order differs from its input order")
    return FastBlock(steps, residual), order, hw


def _build_stem(stem, hw: tuple[int, int]) -> tuple[nn.Module, np.ndarray, tuple[int, int]]:
    """3×1 (stride 2,1) then 1×3 grouped (stride 1,2) → one dense 3×3 stride 2 conv, shuffled order emitted."""
    (conv_a, bn_a), (conv_b, bn_b) = stem.conv[0], stem.conv[1]
    wa, ba = _folded(conv_a, bn_a)  # (g1, 3, 3, 1)
    wb, bb = _folded(conv_b, bn_b)  # (g1*g2, 1, 1, 3)
    g1 = conv_a.out_channels
    cout = conv_b.out_channels
    g2 = cout // g1
    # logical order after the shuffle: out[j] = conv_b[src[j]]
    src = np.asarray(shuffle_permutation(cout, g1))
    mids = src // g2
    w = wa[mids][:, :, :, 0][:, :, :, None] * wb[src][:, :, :, :]  # (cout, 3, 3, 3): [o, ci, kh, kw]
    h, wd = hw
    ho, wo = (h + 2 - 3) // 2 + 1, (wd + 2 - 3) // 2 + 1
    cols = torch.arange(wo) * 2 - 1
    inside = ((cols[:, None] + torch.arange(3)[None, :]) >= 0) & ((cols[:, None] + torch.arange(3)[None, :]) < wd)
    bias_full = bb[src][:, None] + ba[mids][:, None] * (wb[src][:, 0, 0, :] @ inside.double().T)
    interior = bias_full[:, 1]
    conv = _conv(w, interior, stride=2, padding=1)
    border = bias_full - interior[:, None]
    border_t = border[None, :, None, :].expand(1, cout, ho, wo).clone() if border.abs().max() > 0 else None
    return Depthwise(conv, border_t, relu6=True), np.arange(cout), (ho, wo)


def to_fast_deploy(model: MicroNet) -> FastMicroNet:
    """A fast, eval-mode deploy form of ``model`` (training form) computing the same logits."""
    model = copy.deepcopy(model).eval()
    size = model.input_size
    with torch.no_grad():
        stem, order, hw = _build_stem(model.stem, (size, size))
        blocks = []
        n = len(model.blocks)
        for idx, block in enumerate(model.blocks):
            nxt = model.blocks[idx + 1] if idx + 1 < n else None
            # A following type-A block (depthwise first) wants natural order; dense consumers take anything.
            want = np.arange(_out_channels(block)) if nxt is not None and nxt.kind == "A" else None
            fast, order, hw = _build_block(block, order, hw, want)
            blocks.append(fast)
        head = model.head
        w1, b1 = _fold_linear(head.fc1)
        w1 = w1[:, torch.as_tensor(order)]
        w2, b2 = _fold_linear(head.fc2)
        fast_head = FastHead(_linear(w1, b1), _linear(w2, b2))
    fast = FastMicroNet(stem, blocks, fast_head, size, model.num_classes)
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast.eval()


def _out_channels(block) -> int:
    for layer in reversed(list(block.layers)):
        if isinstance(layer, nn.Sequential) and isinstance(layer[0], nn.Conv2d):
            return layer[0].out_channels
    raise ValueError("block without a pointwise conv")


def _fold_linear(unit) -> tuple[Tensor, Tensor]:
    lin, bn = unit[0], unit[1]
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return lin.weight.double() * scale[:, None], (lin.bias.double() - bn.running_mean.double()) * scale + bn.bias.double()
