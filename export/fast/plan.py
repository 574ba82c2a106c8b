"""The layout plan: every stored-order and grouping decision for every unit, as data.

Each tensor has a *stored order* (``Rep.order[p]`` is the logical channel stored at ``p``). ``FastPlan`` holds
one entry per parsed unit: which orders it reads and emits, whether its convs are merged or grouped, which
channel moves surround it, how its Shift-Max partner x~ is made, whether its product stays pending. The
planner (``planner.py``) fills it in before any module exists; the emitters (``emit.py``) read it; tests
assert on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .permutations import through_shuffle, transposed_index
from .profiles import RuntimeProfile

__all__ = ["Rep", "ChannelMove", "XTildePlan", "StemPlan", "DepthwisePlan", "PointwisePlan", "FastPlan"]


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
        return Rep(through_shuffle(self.order, groups), self.hw, self.pending)


@dataclass
class ChannelMove:
    """A channel permutation executed in the graph: a ``"transpose"`` of the channels viewed as ``dims``
    (axes ``perm``; rewrite 11) or a ``"gather"`` of ``index`` (rewrite 17)."""

    kind: str
    dims: tuple[int, ...] = ()
    perm: tuple[int, ...] = ()
    index: np.ndarray | None = None

    def source(self) -> np.ndarray:
        """Stored channel p after the move holds stored channel source()[p] before it."""
        return transposed_index(self.dims, self.perm) if self.kind == "transpose" else self.index


@dataclass
class XTildePlan:
    """How a Shift-Max makes its partner x~: ``"partner"`` (a second conv on the block input, rotated by
    ``shifts[0]`` channels when given), ``"rotations"`` of x (``masks`` folded into the coefficients when
    there are two), ``"roll"`` of a 2-D channel view, ``"gather"`` of ``index`` or ``"permutation"`` (a 1×1
    conv by the permutation ``index``, when nothing cheaper exists)."""

    kind: str
    shifts: tuple[int, ...] = ()
    masks: tuple[np.ndarray | None, ...] = ()
    roll: tuple[int, int, int, int] | None = None
    index: np.ndarray | None = None


@dataclass
class StemPlan:
    out_order: np.ndarray
    hw_out: tuple[int, int]
    pixel_pairs: bool  # rewrite 13
    merged: bool = True  # rewrite 7: one dense 3×3 conv (with a border constant), else the two convs


@dataclass
class DepthwisePlan:
    """A (k,1)+(1,k) depthwise pair: merged into one k×k conv (``merged``, run with ``groups`` groups) or
    kept as two convs; its input in ``in_order`` (two parts per channel when ``pending_input``), its output
    stored in ``out_order``; ``diagonal``: Micro-Block A's taps assigned diagonally (rewrite 2)."""

    position: int
    block: int
    hw: tuple[int, int]
    hw_out: tuple[int, int]
    in_order: np.ndarray
    pending_input: bool
    diagonal: bool
    out_order: np.ndarray
    merged: bool
    groups: int
    xtilde: XTildePlan | None
    width: int
    kind: str = "dw"


@dataclass
class PointwisePlan:
    """A 1×1 conv: ``before`` moves its input (stored ``in_order`` after the move) so a ``grouped`` conv
    can read it; the conv emits x in ``x_order``; ``after`` moves that into ``out_order``. A
    ``pending_output`` emits [x, x~] pairs (``out_order`` lists each channel twice)."""

    position: int
    block: int
    hw: tuple[int, int]
    in_order: np.ndarray
    pending_input: bool
    before: ChannelMove | None
    grouped: bool
    x_order: np.ndarray
    after: ChannelMove | None
    out_order: np.ndarray
    pending_output: bool
    xtilde: XTildePlan | None
    pool_input: bool
    width: int
    kind: str = "pw"


@dataclass
class FastPlan:
    """The whole graph's plan: the stem's, one entry per parsed unit, and the order the head reads."""

    profile: RuntimeProfile
    stem: StemPlan
    units: list[DepthwisePlan | PointwisePlan] = field(default_factory=list)
    head_order: np.ndarray | None = None

    def fingerprint(self) -> str:
        """A hash of every decision in the plan (not of the profile that made it): two profiles whose plans
        share it build the same graph, so a tuner times only one of them."""
        import dataclasses
        import hashlib

        digest = hashlib.sha256()

        def feed(value) -> None:
            if isinstance(value, np.ndarray):
                digest.update(f"a{value.dtype}{value.shape}".encode())
                digest.update(np.ascontiguousarray(value).tobytes())
            elif dataclasses.is_dataclass(value) and not isinstance(value, type):
                digest.update(type(value).__name__.encode())
                for f in dataclasses.fields(value):
                    if f.name != "profile":
                        feed(getattr(value, f.name))
            elif isinstance(value, (list, tuple)):
                digest.update(f"l{len(value)}".encode())
                for item in value:
                    feed(item)
            else:
                digest.update(repr(value).encode())

        feed(self)
        return digest.hexdigest()

    def summary(self) -> list[str]:
        """One line per unit: block, kind, map size and the layout decisions (for reading a plan)."""
        stem_form = 'pixel pairs' if self.stem.pixel_pairs else '3x3 conv' if self.stem.merged else '3x1 + 1x3 convs'
        lines = [f"stem: {stem_form} -> {self.stem.hw_out}"]
        for u in self.units:
            xt = "-" if u.xtilde is None else u.xtilde.kind
            if u.kind == "dw":
                form = f"merged k×k, {u.groups} groups" if u.merged else "two convs"
                extra = (", diagonal taps" if u.diagonal else "") + (", pending input" if u.pending_input else "")
            else:
                moves = "".join(f", {m.kind} {where}" for m, where in ((u.before, "before"), (u.after, "after")) if m)
                form = ("grouped" if u.grouped else "dense") + moves
                extra = ", pending output" if u.pending_output else ""
            lines.append(f"block {u.block} {u.kind} {u.hw[0]}x{u.hw[1]}: {form}, x~ {xt}{extra}")
        return lines
