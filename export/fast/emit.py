"""Emitters: plan entries and folded weights in, modules out, one function per unit kind.

No decision is made here: every order, grouping and x~ form comes from the plan (``plan.py``); the emitters
lay the weights out in those orders. Every rewrite is exact algebra.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from micronet.layers import DynamicShiftMax, shift_permutation, shuffle_permutation

from .modules import (ChannelGather, ChannelRoll, ChannelTranspose, Conv, FastBlock, FastHead, FastMicroNet,
                      PixelPairs, make_conv, row_conv)
from .parse import ParsedNet, Stem, Unit
from .plan import ChannelMove, DepthwisePlan, FastPlan, PointwisePlan, StemPlan, XTildePlan
from .shift_max import Moved, PartnerConv, Rotations, ShiftMax, coefficients_for

__all__ = ["emit_graph", "emit_stem", "emit_depthwise", "emit_pointwise", "grouped_taps"]


def _border(bias_full: Tensor, interior: Tensor) -> tuple[Tensor, Tensor | None]:
    """A bias that varies along W only at the zero-padded border: the interior bias for the conv and the
    (1, C, 1, W) remainder as a constant (None when it is zero)."""
    border = bias_full - interior[:, None]
    return border, (border[None, :, None, :].clone() if border.abs().max() > 0 else None)


def emit_stem(stem: Stem, plan: StemPlan) -> nn.Module:
    """3×1 (stride 2,1) then 1×3 grouped (stride 1,2) → one dense 3×3 stride 2 conv (rewrite 7), emitting the
    planned order after the shuffle; with pixel pairs, two output pixels per GEMM row (rewrite 13)."""
    wa, ba, wb, bb = stem.weights  # (g1, 3, 3, 1), (g1*g2, 1, 1, 3)
    g1, cout = stem.groups, stem.cout
    g2 = cout // g1
    src = np.asarray(shuffle_permutation(cout, g1))  # logical (after the shuffle) j = conv_b output src[j]
    rows = src[plan.out_order]
    mids = rows // g2
    if not plan.merged:
        return _factorized_stem(stem, rows, mids)
    w = wa[mids][:, :, :, 0][:, :, :, None] * wb[rows]  # (cout, 3, 3, 3)
    wd = stem.hw[1]
    wo = plan.hw_out[1]
    cols = torch.arange(wo) * 2 - 1
    inside = ((cols[:, None] + torch.arange(3)[None, :]) >= 0) & ((cols[:, None] + torch.arange(3)[None, :]) < wd)
    bias_full = bb[rows][:, None] + ba[mids][:, None] * (wb[rows][:, 0, 0, :] @ inside.double().T)
    interior = bias_full[:, 1]
    border, border_t = _border(bias_full, interior)
    if plan.pixel_pairs:
        # Output pixel 2j + r reads input columns 4j + 2r - 1 .. 4j + 2r + 1, i.e. taps 2r..2r+2 of a 3×5
        # window at stride (2, 4).
        pair = torch.zeros(2 * cout, 3, 3, 5, dtype=w.dtype)
        pair[:cout, :, :, 0:3], pair[cout:, :, :, 2:5] = w, w
        border_p = None
        if border_t is not None:  # stored (r·C + c, j) is pixel 2j + r
            border_p = border.view(cout, wo // 2, 2).permute(2, 0, 1).reshape(1, 2 * cout, 1, wo // 2).clone()
        conv = Conv(make_conv(pair, torch.cat([interior, interior]), stride=(2, 4), padding=1), border_p, relu6=True)
        return nn.Sequential(conv, PixelPairs())
    return Conv(make_conv(w, interior, stride=2, padding=1), border_t, relu6=True)


def _factorized_stem(stem: Stem, rows: np.ndarray, mids: np.ndarray) -> nn.Module:
    """The stem as its two convs, no border constant (each conv zero-pads its own input): the 1×3 conv
    emits the planned order, so it is dense with one nonzero input per output (g1 inputs: a few MACs)."""
    wa, ba, wb, bb = stem.weights
    conv_a = make_conv(wa, ba, stride=(2, 1), padding=(1, 0))
    wide = torch.zeros(stem.cout, stem.groups, 1, 3, dtype=wb.dtype)
    for o, (row, mid) in enumerate(zip(rows, mids)):
        wide[o, mid] = wb[row, 0]
    conv_b = make_conv(wide, bb[torch.as_tensor(rows)], stride=(1, 2), padding=(0, 1))
    return nn.Sequential(Conv(conv_a), Conv(conv_b, relu6=True))


def grouped_taps(w: Tensor, bias: Tensor | None, stride: int, padding: int, groups: int, coarse: int) -> nn.Conv2d:
    """A k×k conv with ``groups`` groups (weight (out, in per group, k, k)) run with ``coarse`` groups (the
    plan's ``cost_model.merged_groups``; rewrite 9): zero weights between the merged groups (exact)."""
    cout, per_in, k, _ = w.shape
    per_out = cout // groups
    if coarse == groups:
        return make_conv(w, bias, stride=stride, padding=padding, groups=groups)
    merged = groups // coarse  # original groups per coarse group
    wide = torch.zeros(cout, per_in * merged, k, k, dtype=w.dtype)
    for o in range(cout):
        t = (o // per_out) % merged  # position of the original group inside its coarse group
        wide[o, t * per_in:(t + 1) * per_in] = w[o]
    return make_conv(wide, bias, stride=stride, padding=padding, groups=coarse)


def emit_depthwise(unit: Unit, plan: DepthwisePlan) -> nn.Module:
    """(k,1) conv (multiplier c1, stride (s,1)) then (1,k) conv (multiplier c2, stride (1,s)) → one k×k conv,
    stride s, grouped by input channel (two inputs per group for a pending input; rewrite 7), or the two convs
    kept; then the activation."""
    w1, b1, w2, b2 = unit.weights  # (mid, 1, k, 1), (hid, 1, 1, k)
    cin, mult, k, s = unit.cin, unit.mult, unit.kernel, unit.stride
    m2 = mult // unit.c1
    p = k // 2
    copies = 2 if plan.pending_input else 1
    out_order = plan.out_order
    wd, wo = plan.hw[1], plan.hw_out[1]
    if plan.merged:
        mids = out_order // m2
        w = (w1[mids, 0, :, 0][:, :, None] * w2[out_order, 0, 0, :][:, None, :]).unsqueeze(1)  # (hid, 1, k, k)
        w = w.repeat(1, copies, 1, 1)  # a pending input: the same filter on both parts of each channel
        cols = torch.arange(wo) * s - p
        inside = (cols[:, None] + torch.arange(k)[None, :] >= 0) & (cols[:, None] + torch.arange(k)[None, :] < wd)
        edge = b1[mids][:, None] * (w2[out_order, 0, 0, :] @ inside.double().T)  # (hid, wo)
        bias_full = b2[out_order][:, None] + edge
        interior = bias_full[:, p] if wo > 2 * p else bias_full[:, 0]
        _, border_t = _border(bias_full, interior)
        convs: nn.Module = Conv(grouped_taps(w, interior, s, p, cin, plan.groups), border_t, relu6=unit.relu6)
    else:
        convs = _factorized_pair(unit, plan.in_order, out_order, copies)
    if unit.shift_max is None:
        return convs
    return nn.Sequential(convs, _shift_after_depthwise(unit.shift_max, plan))


def _factorized_pair(unit: Unit, distinct: np.ndarray, out_order: np.ndarray, copies: int) -> nn.Module:
    """The depthwise pair as two convs in the stored orders the merged conv would use: zero padding applies
    to each conv's own input, so no border term. The (k,1) conv emits each stored input's c1 mid channels in
    tap order; the (1,k) conv is grouped by mid channel where every output's mid is its group's (taps in
    natural order), else by input channel with zero weights for the other mids (the diagonal taps of
    Micro-Block A)."""
    w1, b1, w2, b2 = unit.weights
    mult, k, s, c1 = unit.mult, unit.kernel, unit.stride, unit.c1
    cin = len(distinct)
    m2 = mult // c1
    p = k // 2
    mid_order = np.array([distinct[t] * c1 + r for t in range(cin) for r in range(c1)])
    wa = w1[torch.as_tensor(mid_order)].repeat(1, copies, 1, 1)  # a pending input: both parts, same filter
    conv_a = make_conv(wa, b1[torch.as_tensor(mid_order)], stride=(s, 1), padding=(p, 0), groups=cin)
    mid_pos = {int(m): j for j, m in enumerate(mid_order)}
    src = np.array([mid_pos[int(o) // m2] for o in out_order])  # stored mid feeding each stored output
    wb2 = w2[torch.as_tensor(out_order)]  # (hid, 1, 1, k)
    if np.array_equal(src, np.arange(len(out_order)) // m2):
        conv_b = make_conv(wb2, b2[torch.as_tensor(out_order)], stride=(1, s), padding=(0, p), groups=cin * c1)
    else:
        wide = torch.zeros(len(out_order), c1, 1, k, dtype=wb2.dtype)
        for o, j in enumerate(src):
            assert j // c1 == o // mult, "a diagonal output reads a mid of another input"
            wide[o, j % c1] = wb2[o, 0]
        conv_b = make_conv(wide, b2[torch.as_tensor(out_order)], stride=(1, s), padding=(0, p), groups=cin)
    return nn.Sequential(Conv(conv_a), Conv(conv_b, relu6=unit.relu6))


def _xtilde_move(xt: XTildePlan) -> nn.Module:
    """The x~ module of a plan that reads only x (no partner conv)."""
    if xt.kind == "rotations":
        return Rotations(xt.shifts)
    if xt.kind == "roll":
        return Moved(ChannelRoll(*xt.roll))
    if xt.kind == "gather":
        return Moved(ChannelGather(xt.index))
    if xt.kind == "permutation":
        c = len(xt.index)
        perm = torch.zeros(c, c, dtype=torch.float64)
        perm[torch.arange(c), torch.as_tensor(xt.index)] = 1.0
        return Moved(make_conv(perm[:, :, None, None], None))
    raise ValueError(f"x~ {xt.kind!r} needs the producer's weights")


def _pair_blocks(order: np.ndarray, branches: int, masks: tuple = (None,)) -> list[list[tuple]]:
    """Coefficient blocks for operands [x, x~...]: branch e takes a_e for x and b_e for each x~ operand."""
    return [[(2 * e, order, None)] + [(2 * e + 1, order, m) for m in masks] for e in range(branches)]


def _shift_after_depthwise(sm: DynamicShiftMax, plan: DepthwisePlan) -> ShiftMax:
    c, k = sm.channels, sm.branches
    order = plan.out_order
    eye = torch.eye(c, dtype=torch.float64)[:, torch.as_tensor(order)]
    zero = torch.zeros(c, dtype=torch.float64)
    xt = plan.xtilde
    masks = xt.masks if xt.kind == "rotations" else (None,)
    coef = coefficients_for(sm, _pair_blocks(order, k, masks), eye, zero)
    return ShiftMax(coef, c, k, xtilde=_xtilde_move(xt), width=plan.width)


def _block_diagonal(unit: Unit) -> tuple[Tensor, Tensor]:
    """A grouped 1×1 conv's (out, in) matrix with zeros between groups, and its bias."""
    w, b = unit.weights
    cout, cin, g = unit.cout, unit.cin, unit.groups
    dense = torch.zeros(cout, cin, dtype=torch.float64)
    og, ig = cout // g, cin // g
    for q in range(g):
        dense[q * og:(q + 1) * og, q * ig:(q + 1) * ig] = w[q * og:(q + 1) * og, :, 0, 0]
    return dense, b


def _move(move: ChannelMove) -> nn.Module:
    return ChannelTranspose(move.dims, move.perm) if move.kind == "transpose" else ChannelGather(move.index)


def emit_pointwise(unit: Unit, plan: PointwisePlan) -> nn.Module:
    """A 1×1 conv: dense with its input order absorbed in the weight columns and the planned rows, or grouped
    (rewrite 6) between its planned channel moves; then its activation (Shift-Max with the planned x~, or a
    pending product, rewrite 5)."""
    dense, b = _block_diagonal(unit)
    w_in = dense[:, torch.as_tensor(plan.in_order)]  # columns in stored order (copies: the sum is absorbed)
    if plan.grouped:
        steps = [] if plan.before is None else [_move(plan.before)]
        steps.append(_grouped_pointwise(unit, w_in, b, plan))
        if plan.after is not None:
            steps.append(_move(plan.after))
        return steps[0] if len(steps) == 1 else nn.Sequential(*steps)
    sm = unit.shift_max
    if sm is None:
        return Conv(row_conv(w_in, b, plan.out_order), relu6=unit.relu6)
    c, k = sm.channels, sm.branches
    shift = np.asarray(shift_permutation(c, sm.groups))
    x_order = plan.x_order
    if plan.pending_output:
        producer = row_conv(w_in, b, np.stack([x_order, shift[x_order]], axis=1).reshape(-1))
        pairs = plan.out_order
        coef_e = np.tile([0, 1], c)
        if plan.pool_input:
            coef = coefficients_for(sm, [[(coef_e, pairs, None)]], w_in, b, flat=True)
        else:  # pool the emitted pairs: the x part of channel c sits at 2·q
            sel = torch.zeros(c, 2 * c, dtype=torch.float64)
            sel[torch.as_tensor(x_order), torch.arange(0, 2 * c, 2)] = 1.0
            coef = coefficients_for(sm, [[(coef_e, pairs, None)]], sel, torch.zeros(c, dtype=torch.float64), flat=True)
        return ShiftMax(coef, c, k, producer=producer, pool_input=plan.pool_input, pending=True, width=plan.width)
    producer = row_conv(w_in, b, x_order)
    xt = plan.xtilde
    xtilde = PartnerConv(row_conv(w_in, b, shift[x_order])) if xt.kind == "partner" else _xtilde_move(xt)
    blocks = _pair_blocks(x_order, k)
    if plan.pool_input:
        coef = coefficients_for(sm, blocks, w_in, b)
    else:
        select = torch.eye(c, dtype=torch.float64)[:, torch.as_tensor(x_order)]
        coef = coefficients_for(sm, blocks, select, torch.zeros(c, dtype=torch.float64))
    return ShiftMax(coef, c, k, producer=producer, xtilde=xtilde, pool_input=plan.pool_input, width=plan.width)


def _grouped_pointwise(unit: Unit, w_in: Tensor, b: Tensor, plan: PointwisePlan) -> nn.Module:
    """A grouped 1×1 conv, natural output order; with Shift-Max, x~ is the conv with rows rotated inside each
    group, rotated by one group (or a gather of x)."""
    g = unit.groups
    cout = w_in.shape[0]
    og, per = cout // g, len(plan.in_order) // g
    blocks_w = torch.stack([w_in[q * og:(q + 1) * og, q * per:(q + 1) * per] for q in range(g)])  # (g, og, per)
    weight = blocks_w.reshape(cout, per)
    sm = unit.shift_max
    producer = make_conv(weight[:, :, None, None], b, groups=g)
    if sm is None:
        return Conv(producer, relu6=unit.relu6)
    c, k = sm.channels, sm.branches
    natural = np.arange(cout)
    coef = coefficients_for(sm, _pair_blocks(natural, k), torch.eye(c, dtype=torch.float64),
                            torch.zeros(c, dtype=torch.float64))
    xt = plan.xtilde
    if xt.kind == "partner":
        inner = np.array([q * og + (j + 1) % og for q in range(g) for j in range(og)])  # (q, j) ← (q, j+1)
        index = torch.as_tensor(inner)
        xtilde = PartnerConv(make_conv(weight[index][:, :, None, None], b[index], groups=g), rotation=xt.shifts[0])
    else:
        xtilde = _xtilde_move(xt)
    return ShiftMax(coef, c, k, producer=producer, xtilde=xtilde, width=plan.width)


def emit_graph(net: ParsedNet, plan: FastPlan) -> FastMicroNet:
    """The fast modules of a parsed network laid out per its plan."""
    stem = emit_stem(net.stem, plan.stem)
    blocks: list[nn.Module] = []
    steps: list[nn.Module] = []
    for unit, entry in zip(net.units, plan.units):
        steps.append(emit_depthwise(unit, entry) if unit.kind == "dw" else emit_pointwise(unit, entry))
        if unit.last:
            blocks.append(FastBlock(steps, unit.residual))
            steps = []
    w1, b1, w2, b2 = net.head.weights
    head = FastHead(w1[:, torch.as_tensor(plan.head_order)], b1, w2, b2, plan.profile.hard_swish_op)
    return FastMicroNet(stem, blocks, head, net.input_size, net.num_classes)
