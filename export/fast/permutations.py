"""The permutation algebra of tracked channel orders, as pure functions on integer arrays.

A tensor's *stored order* ``order`` says that stored channel ``p`` holds logical channel ``order[p]``. A
channel shuffle only relabels the stored order; a Shift-Max partner x~ = x[shift] is, in stored terms, the
permutation ``pi = inv(order)[shift[order]]`` (x~ stored = z[pi]); the functions below find the cheapest
form of such a permutation: one flat rotation, at most two masked rotations, one roll of a 2-D channel view,
or one transpose of a mixed-radix channel view.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from micronet.layers import shuffle_permutation

__all__ = ["inverse", "channels", "through_shuffle", "before_shuffle", "interleaved_cycles", "rotations", "roll_2d",
           "factorizations", "transposed_index", "transpose_to", "transpose_to_groups", "group_contiguous"]

#: A transpose plan: the channels viewed as ``dims``, axes permuted by ``perm``.
TransposePlan = tuple[tuple[int, ...], tuple[int, ...]]


def inverse(p: np.ndarray) -> np.ndarray:
    """The inverse permutation: ``inverse(p)[p[i]] == i``."""
    q = np.empty_like(p)
    q[p] = np.arange(len(p))
    return q


def channels(order: np.ndarray) -> int:
    """The number of logical channels an order covers."""
    return int(order.max()) + 1


def through_shuffle(order: np.ndarray, groups: int) -> np.ndarray:
    """Stored order after a channel shuffle (the shuffle itself costs nothing: it relabels)."""
    return inverse(np.asarray(shuffle_permutation(channels(order), groups)))[order]


def before_shuffle(order: np.ndarray, groups: int) -> np.ndarray:
    """The stored order a tensor must have so that it has ``order`` after the shuffle."""
    return np.asarray(shuffle_permutation(channels(order), groups))[order]


def interleaved_cycles(shift: np.ndarray) -> tuple[np.ndarray, int]:
    """An order in which the permutation ``shift`` (x~ = x[shift]) is a flat left rotation by d: the cycles of
    ``shift`` stored interleaved. Returns (order, d)."""
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


def rotations(pi: np.ndarray) -> dict[int, np.ndarray] | None:
    """pi as at most two flat rotations {d: mask}: r[c] = z[(c + d) % C] where mask[c]; None if more."""
    c = len(pi)
    deltas = (pi - np.arange(c)) % c
    uniq = sorted(set(deltas.tolist()))
    if len(uniq) > 2:
        return None
    return {int(d): deltas == d for d in uniq}


def roll_2d(pi: np.ndarray) -> tuple[int, int, int, int] | None:
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


def factorizations(n: int, parts: int) -> list[tuple[int, ...]]:
    """Ordered factorizations of n into exactly ``parts`` factors, each > 1."""
    if parts == 1:
        return [(n,)] if n > 1 else []
    out = []
    for f in range(2, n):
        if n % f == 0:
            out += [(f,) + rest for rest in factorizations(n // f, parts - 1)]
    return out


def transposed_index(dims: tuple[int, ...], perm: tuple[int, ...]) -> np.ndarray:
    """Stored channel p after the transpose holds stored channel index[p] before it."""
    return np.arange(int(np.prod(dims))).reshape(dims).transpose(perm).reshape(-1)


@functools.lru_cache(maxsize=None)
def _transpose_search(order: bytes, count: int, group_size: int, target: bytes | None,
                      max_axes: int) -> TransposePlan | None:
    """A transpose of stored channels (viewed as ``dims``, axes permuted by ``perm``) that makes the stored
    order ``target`` exactly, or (target None) makes every consecutive block of ``group_size`` stored
    channels one conv group, in group order. Preferred: a transpose that keeps the innermost axis (it copies
    runs; moving it copies element by element, much slower), then the longest innermost run, then the fewest
    axes."""
    current = np.frombuffer(order, dtype=np.int64)
    want = None if target is None else np.frombuffer(target, dtype=np.int64)
    groups_in_order = np.repeat(np.arange(count // group_size), group_size)
    best, best_key = None, None
    for parts in range(2, max_axes + 1):
        for dims in factorizations(count, parts):
            base = np.arange(count).reshape(dims)
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


def transpose_to(order: np.ndarray, target: np.ndarray, max_axes: int = 4) -> TransposePlan | None:
    """(dims, perm) of one transpose taking stored ``order`` to stored ``target``, or None."""
    order, target = np.asarray(order, np.int64), np.asarray(target, np.int64)
    return _transpose_search(order.tobytes(), len(order), 1, target.tobytes(), max_axes)


def transpose_to_groups(order: np.ndarray, groups: int, count: int, max_axes: int = 4) -> TransposePlan | None:
    """(dims, perm) of one transpose making ``order`` group-contiguous for a conv with ``groups`` over
    ``count`` input channels, or None."""
    order = np.asarray(order, np.int64)
    return _transpose_search(order.tobytes(), count, count // groups, None, max_axes)


def group_contiguous(order: np.ndarray, groups: int, cin: int) -> bool:
    """Does each consecutive block of stored channels hold exactly one conv group, in group order?"""
    per = len(order) // groups
    group_of = order // (cin // groups)
    return all((group_of[q * per:(q + 1) * per] == q).all() for q in range(groups))
