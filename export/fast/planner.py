"""The planner: walks the parsed units in order and decides each one's layout (``plan.py`` holds the result).

For each unit it asks what order its consumer needs (``output_need``) and chooses, per the runtime profile's
switches and cost model, how the unit meets it: a dense conv absorbing any order, a grouped conv with channel
transposes or gathers around it, a pending product, and the form of the Shift-Max partner x~.
"""

from __future__ import annotations

import numpy as np

from micronet.layers import DynamicShiftMax, shift_permutation

from .cost_model import copy_cost, conv_cost, grouping_saves, merged_groups, tile_padded, transpose_cost
from .parse import ParsedNet, Unit
from .permutations import (before_shuffle, group_contiguous, interleaved_cycles, inverse, roll_2d, rotations,
                           through_shuffle, transpose_to, transpose_to_groups)
from .plan import ChannelMove, DepthwisePlan, FastPlan, PointwisePlan, Rep, StemPlan, XTildePlan
from .profiles import RuntimeProfile

__all__ = ["make_plan"]


def _shift(sm: DynamicShiftMax) -> np.ndarray:
    return np.asarray(shift_permutation(sm.channels, sm.groups))


class _Planner:
    """Walks the units in order, tracking every tensor's ``Rep``; the decision methods are pure."""

    def __init__(self, net: ParsedNet, profile: RuntimeProfile) -> None:
        self.net, self.profile, self.costs = net, profile, profile.costs
        self.units = net.units
        self._block_input: dict[int, Rep] = {}

    def _switches(self, pos: int) -> RuntimeProfile:
        """The switches for the unit at ``pos``: the profile with its block's exceptions (``blocks``). Each
        decision reads the switches of the unit it decides about, so neighbours agree on what one emits."""
        return self.profile.for_block(self.units[pos].block)

    # ------------------------------------------------------------------------- what a consumer needs
    def _next(self, pos: int) -> Unit | None:
        return self.units[pos + 1] if pos + 1 < len(self.units) else None

    def _transpose_to(self, pos: int, order: np.ndarray, target: np.ndarray):
        if not self._switches(pos).channel_transposes:
            return None
        return transpose_to(order, target, self.costs.max_transpose_axes)

    def _transpose_to_groups(self, pos: int, order: np.ndarray, groups: int, count: int):
        if not self._switches(pos).channel_transposes:
            return None
        return transpose_to_groups(order, groups, count, self.costs.max_transpose_axes)

    def _width(self, pos: int, channels: int, hw: tuple[int, int]) -> int:
        """The W that narrow Shift-Max coefficients are widened to (1: not widened; rewrite 12)."""
        widen = self._switches(pos).widened_coefficients and channels < self.costs.widen_below_channels
        return hw[1] if widen else 1

    def _diagonal_ok(self, pos: int) -> bool:
        """Micro-Block A's Shift-Max after its depthwise pair: groups = input channels, multiplier M dividing
        them, so the diagonal tap assignment makes the shift one rotation by M (rewrite 2)."""
        unit = self.units[pos]
        sm = unit.shift_max
        return (self._switches(pos).diagonal_taps and sm is not None and unit.mult > 1 and sm.groups == unit.cin
                and unit.cin % unit.mult == 0)

    def input_need(self, pos: int) -> tuple[np.ndarray | None, bool]:
        """For the unit at ``pos``: the distinct order it needs its input in (None: any) and whether it
        accepts a pending (sum-form) input (a residual block adds its materialised input: not there)."""
        unit = self.units[pos]
        pending_ok = not (unit.residual and unit.first)
        if unit.kind == "dw":
            if unit.shift_max is not None and not self._switches(pos).gather_shifts:
                if self._diagonal_ok(pos):
                    return np.arange(unit.cin), pending_ok
                if unit.mult == 1:
                    natural = self._natural_roll_order(pos)
                    if natural is not None:
                        return natural, pending_ok
                    order, _ = interleaved_cycles(_shift(unit.shift_max))
                    return order, pending_ok
            return None, pending_ok
        if self.pw_grouped(pos):
            return np.arange(unit.cin), pending_ok
        return None, pending_ok

    def output_need(self, pos: int) -> tuple[np.ndarray | None, bool]:
        """What the output of unit ``pos`` must look like *before* its shuffles: (order or None, pending ok)."""
        unit = self.units[pos]
        if unit.residual and unit.last:
            # A residual block ends in the order it started with, materialised.
            need, pending_ok = self._block_input[unit.block].order, False
        elif self._next(pos) is None:  # the head: any order, materialised (ReLU6 first)
            return None, False
        else:
            need, pending_ok = self.input_need(pos + 1)
        if need is not None:
            for g in reversed(unit.shuffles):
                need = before_shuffle(need, g)
        return need, pending_ok

    def _natural_roll_order(self, pos: int) -> np.ndarray | None:
        """For the multiplier-1 depthwise + Shift-Max at ``pos`` between two grouped 1×1 convs (Micro-Block
        B/C): the order the expanding conv emits when grouped, if in it the Shift-Max shift is one 2-D roll
        and the squeezing conv's input is one transpose from group-contiguous, and the cost model says both
        convs staying grouped pays (rewrite 10). None: the depthwise takes the cycle-interleaved order (one
        rotation) and the squeeze runs dense, absorbing the order."""
        if not self._switches(pos).roll_2d:
            return None
        unit = self.units[pos]
        prev, nxt = self.units[pos - 1] if pos else None, self._next(pos)
        if prev is None or prev.block != unit.block or prev.kind != "pw" or nxt is None or nxt.kind != "pw":
            return None
        squeeze, expand = nxt, prev
        if squeeze.groups == 1:
            return None
        order = np.arange(expand.cout)
        for g in prev.shuffles:
            order = through_shuffle(order, g)
        roll = roll_2d(inverse(order)[_shift(unit.shift_max)[order]])
        if roll is None:
            return None
        after = order
        for g in unit.shuffles:
            after = through_shuffle(after, g)
        plan = self._transpose_to_groups(pos + 1, after, squeeze.groups, squeeze.cin)
        if plan is None:
            return None
        costs = self.costs
        sq_px, exp_px = int(np.prod(nxt.hw)), int(np.prod(prev.hw))
        c = len(order)
        saves = grouping_saves(costs, sq_px, squeeze.cin, squeeze.cout, squeeze.groups)
        saves -= transpose_cost(costs, sq_px, plan)
        # The roll's inner slices move short runs twice (slice, concat); the rotation it replaces, long ones.
        _, inner, _, si = roll
        saves -= 2 * (copy_cost(costs, sq_px, c, min(si, inner - si) if si else c) - copy_cost(costs, sq_px, c, c // 2))
        if expand.groups > 1 and prev.shift_max is not None and prev.shift_max.groups == expand.groups:
            saves += grouping_saves(costs, exp_px, expand.cin, expand.cout, expand.groups)
        return order if saves > 0 else None

    def pw_grouped(self, pos: int) -> bool:
        """Keep this 1×1 conv grouped (rewrite 6)? Only where dense would be costly, the Shift-Max after it
        shifts across the conv's own groups, and its natural output order suits its consumer. With gathered
        shifts (rewrite 17) always: any order is one gather away."""
        unit = self.units[pos]
        g = unit.groups
        switches = self._switches(pos)
        if g == 1 or not switches.grouped_pointwise:
            return False
        if switches.gather_shifts:
            return True
        hw = unit.hw
        if unit.cin * unit.cout * hw[0] * hw[1] < self.costs.grouped_min_dense_macs:
            return False
        sm = unit.shift_max
        if sm is not None and sm.groups != g:
            return False
        residual_end = unit.residual and unit.last
        if residual_end and unit.block not in self._block_input:
            return False  # asked before the block's input order is known
        need, _ = self.output_need(pos)
        if need is None:
            return True
        natural = np.arange(unit.cout)  # stored order of a grouped conv's output, before its shuffles
        if np.array_equal(natural, need):
            return True
        if self._output_transpose(pos, natural, need) is not None:
            return True  # the output is transposed into the order its consumer needs
        if residual_end:
            return False  # the residual needs the block's input order back; a dense conv can emit it
        for gs in unit.shuffles:
            natural = through_shuffle(natural, gs)
        pair_macs = 2 * unit.cin * unit.cout * hw[0] * hw[1]  # dense x and x~ convs
        return pair_macs >= self.costs.grouped_expand_min_dense_macs and self._rotations_downstream(pos, natural)

    def _output_transpose(self, pos: int, natural: np.ndarray, need: np.ndarray):
        """The transpose taking a grouped 1×1 conv's natural output to ``need``, if one exists and pays."""
        unit = self.units[pos]
        plan = self._transpose_to(pos, natural, need)
        pixels = int(np.prod(unit.hw))
        if plan is None or grouping_saves(self.costs, pixels, unit.cin, unit.cout, unit.groups) \
                <= transpose_cost(self.costs, pixels, plan):
            return None
        return plan

    def _rotations_downstream(self, pos: int, order: np.ndarray) -> bool:
        """Is the next unit a multiplier-1 depthwise pair whose Shift-Max shift, in ``order``, is at most two
        masked rotations? Then that order costs two more products per branch instead of a dense conv."""
        nxt = self._next(pos)
        if nxt is None or nxt.kind != "dw" or nxt.mult != 1 or nxt.shift_max is None:
            return False
        rot = rotations(inverse(order)[_shift(nxt.shift_max)[order]])
        return rot is not None and 0 not in rot

    def _pending_pays(self, pos: int, channels: int) -> bool:
        """Rewrite 5: leave a K=1 Shift-Max as a product for its consumer to sum?"""
        nxt = self._next(pos)
        if nxt is None:
            return False
        if nxt.kind == "dw":
            return self._switches(pos).pending_into_depthwise and self._pending_into_depthwise_pays(pos, channels)
        if self.pw_grouped(pos + 1):
            return True
        rows = nxt.cout * (2 if nxt.shift_max is not None else 1)
        return channels * rows * nxt.hw[0] * nxt.hw[1] < self.costs.pending_max_extra_macs

    def _pending_into_depthwise_pays(self, pos: int, channels: int) -> bool:
        """A pending product doubles the (merged-group) depthwise's inner loop; materialising it costs a
        partner conv and a MUL and an ADD on the 1×1 conv's map."""
        costs = self.costs
        dw, pw = self.units[pos + 1], self.units[pos]
        cin, k = dw.cin, dw.kernel
        out_px = int(np.prod(dw.hw_out))
        coarse = merged_groups(costs, cin, 2, cin * dw.mult)  # the conv taking the pending input: two inputs a group
        doubled_k = out_px * coarse * tile_padded(costs, cin * dw.mult // coarse) * k * k * (cin // coarse)
        in_px = int(np.prod(pw.hw))
        materialise = conv_cost(costs, in_px, pw.cin, channels) + 2 * in_px * channels * costs.elementwise_cost
        return doubled_k < materialise

    # ----------------------------------------------------------------------------------- the walk
    def plan(self) -> FastPlan:
        stem, rep = self._stem()
        fast = FastPlan(self.profile, stem)
        start = 0
        while start < len(self.units):
            bi = self.units[start].block
            end = start
            while end < len(self.units) and self.units[end].block == bi:
                end += 1
            rep_in = rep
            self._block_input[bi] = rep
            for pos in range(start, end):
                unit = self.units[pos]
                entry, rep = (self._depthwise if unit.kind == "dw" else self._pointwise)(pos, unit, rep)
                fast.units.append(entry)
                for g in unit.shuffles:
                    rep = rep.relabelled(g)
            if self.units[start].residual:
                if rep.pending or rep_in.pending or not np.array_equal(rep.order, rep_in.order):
                    raise AssertionError("residual block output order differs from its input order")
            start = end
        if rep.pending:
            raise AssertionError("the head needs a materialised tensor")
        fast.head_order = rep.order
        return fast

    def _stem(self) -> tuple[StemPlan, Rep]:
        """The stem emits the order the first unit needs (after its shuffle); pixel pairs where at most
        half a GEMM tile of outputs would leave the tile mostly empty (rewrite 13)."""
        stem = self.net.stem
        need, _ = self.input_need(0)
        out_order = np.arange(stem.cout) if need is None else need
        h, wd = stem.hw
        ho, wo = (h + 2 - 3) // 2 + 1, (wd + 2 - 3) // 2 + 1
        merged = self.profile.merged_stem
        pairs = (merged and self.profile.pixel_pairs and 2 * stem.cout <= self.costs.gemm_tile_outputs and wo % 2 == 0
                 and (wd - 3) // 4 + 1 == wo // 2)
        return StemPlan(out_order, (ho, wo), pairs, merged), Rep(out_order, (ho, wo))

    def _depthwise(self, pos: int, unit: Unit, rep: Rep) -> tuple[DepthwisePlan, Rep]:
        cin, mult = unit.cin, unit.mult
        distinct = rep.distinct()
        # Diagonal taps make the XNNPACK shift one rotation; a gathered shift (ONNX Runtime) needs none.
        switches = self._switches(pos)
        diagonal = not switches.gather_shifts and self._diagonal_ok(pos) and np.array_equal(distinct,
                                                                                               np.arange(cin))
        # Output stored (t, r) ← input stored t, multiplier tap (r + t) mod M on the diagonal, else r.
        taps = [((r + t) % mult if diagonal else r) for t in range(cin) for r in range(mult)]
        out_order = np.array([distinct[t] * mult + taps[t * mult + r] for t in range(cin) for r in range(mult)])
        h, wd = rep.hw
        k, s, p = unit.kernel, unit.stride, unit.kernel // 2
        hw_out = ((h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1)
        merged = switches.merged_depthwise
        copies = 2 if rep.pending else 1
        groups = merged_groups(self.costs, cin, copies, unit.cout) if merged and switches.merged_groups else cin
        sm = unit.shift_max
        xtilde, width = None, 1
        if sm is not None:
            xtilde = self._xtilde_after_depthwise(pos, sm, out_order, mult if diagonal else None)
            width = self._width(pos, sm.channels, hw_out)
        entry = DepthwisePlan(pos, unit.block, rep.hw, hw_out, distinct, rep.pending, diagonal, out_order, merged,
                              groups, xtilde, width)
        return entry, Rep(out_order, hw_out)

    def _xtilde_after_depthwise(self, pos: int, sm: DynamicShiftMax, order: np.ndarray, diagonal_step: int | None) -> XTildePlan:
        """x~ after a depthwise pair, in the cheapest form the stored order allows: a gather (rewrite 16),
        one 2-D roll (rewrite 10), one rotation or two masked ones (rewrite 2), else a permutation conv."""
        c = sm.channels
        pi = inverse(order)[_shift(sm)[order]]  # x~ (stored) = z[pi]
        if diagonal_step is not None:
            assert np.array_equal(pi, (np.arange(c) + diagonal_step) % c)
        switches = self._switches(pos)
        if switches.gather_shifts:
            return XTildePlan("gather", index=pi)
        rot = rotations(pi)
        roll = roll_2d(pi) if switches.roll_2d and (rot is None or len(rot) > 1) else None
        if roll is not None:  # one roll on a 2-D view: no masked products
            return XTildePlan("roll", roll=roll)
        if rot is not None and 0 not in rot:
            ds = sorted(rot)
            return XTildePlan("rotations", shifts=tuple(ds), masks=tuple(rot[d] if len(ds) > 1 else None for d in ds))
        return XTildePlan("permutation", index=pi)

    def _pointwise(self, pos: int, unit: Unit, rep: Rep) -> tuple[PointwisePlan, Rep]:
        need, pending_ok = self.output_need(pos)
        if self.pw_grouped(pos):
            grouped = self._grouped(pos, unit, rep, need)
            if grouped is not None:
                return grouped
        sm, hw = unit.shift_max, rep.hw

        def entry(x_order, out_order, xtilde=None, pending=False, pool_input=False, width=1):
            return PointwisePlan(pos, unit.block, hw, rep.order, rep.pending, None, False, x_order, None, out_order,
                                 pending, xtilde, pool_input, width)

        if sm is None:
            out_order = np.arange(unit.cout) if need is None else need
            return entry(out_order, out_order), Rep(out_order, hw)
        c, k = sm.channels, sm.branches
        shift = _shift(sm)
        out_order = np.arange(c) if need is None else need
        pool_input = len(rep.order) < c
        width = self._width(pos, c, hw)
        switches = self._switches(pos)
        if k == 1 and pending_ok and switches.pending_products and self._pending_pays(pos, c):
            # Rewrite 5: emit [x_c, x~_c] pairs and their products with [a_c, b_c]; the consumer sums them.
            pairs = np.repeat(out_order, 2)
            return entry(out_order, pairs, None, True, pool_input, width), Rep(pairs, hw, pending=True)
        if need is None:  # any order will do: store x cycle-interleaved, x~ is one rotation (no second conv)
            out_order, d = interleaved_cycles(shift)
            xtilde = (XTildePlan("gather", index=(np.arange(c) + d) % c) if switches.gather_shifts
                      else XTildePlan("rotations", shifts=(d,), masks=(None,)))
        elif switches.gather_shifts:  # x~ gathered from x: a copy instead of a second conv
            xtilde = XTildePlan("gather", index=inverse(out_order)[shift[out_order]])
        else:
            xtilde = XTildePlan("partner")
        return entry(out_order, out_order, xtilde, False, pool_input, width), Rep(out_order, hw)

    def _grouped(self, pos: int, unit: Unit, rep: Rep, need: np.ndarray | None) -> tuple[PointwisePlan, Rep] | None:
        """The grouped conv with a channel move before it when its input is not group-contiguous and one
        after it when its consumer needs another order: transposes where one exists and the cost model says
        it pays (rewrite 11; None otherwise, and the conv goes dense), or gathers (rewrite 17)."""
        g, cin, cout = unit.groups, unit.cin, unit.cout
        hw = rep.hw
        natural = np.arange(cout)
        before = after = None
        switches = self._switches(pos)
        if switches.gather_shifts:
            if not group_contiguous(rep.order, g, cin):
                before = ChannelMove("gather", index=np.argsort(rep.order // (cin // g), kind="stable"))
            if need is not None and not np.array_equal(natural, need):
                after = ChannelMove("gather", index=inverse(natural)[need])
        else:
            pixels = hw[0] * hw[1]
            plan_before = plan_after = None
            if not group_contiguous(rep.order, g, cin):
                plan_before = None if rep.pending else self._transpose_to_groups(pos, rep.order, g, cin)
                if plan_before is None:
                    return None
            if need is not None and not np.array_equal(natural, need):
                # Without a transpose the consumer takes the natural order (an expanding conv whose depthwise
                # Shift-Max then uses masked rotations; see pw_grouped).
                plan_after = self._output_transpose(pos, natural, need)
            cost = sum(transpose_cost(self.costs, pixels, plan) for plan in (plan_before, plan_after) if plan is not None)
            if cost and grouping_saves(self.costs, pixels, cin, cout, g) <= cost:
                return None
            before = ChannelMove("transpose", *plan_before) if plan_before is not None else None
            after = ChannelMove("transpose", *plan_after) if plan_after is not None else None
        in_order, pending_in = rep.order, rep.pending
        if before is not None:
            in_order = rep.order[before.source()]
            pending_in = rep.pending and before.kind == "gather"
        out_order = natural if after is None else natural[after.source()]
        sm = unit.shift_max
        xtilde, width = None, 1
        if sm is not None:
            og = cout // g
            xtilde = (XTildePlan("gather", index=_shift(sm)) if switches.gather_shifts
                      else XTildePlan("partner", shifts=(og,)))
            width = self._width(pos, sm.channels, hw)
        entry = PointwisePlan(pos, unit.block, hw, in_order, pending_in, before, True, natural, after, out_order,
                              False, xtilde, False, width)
        return entry, Rep(out_order, hw)


def make_plan(net: ParsedNet, profile: RuntimeProfile) -> FastPlan:
    """The layout plan of a parsed network for ``profile``."""
    return _Planner(net, profile).plan()
