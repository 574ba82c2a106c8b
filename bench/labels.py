"""Row labels for tables and plots: the fewest words that tell one benchmark row from every other.

Two rows of a merged report may differ only in input size, device, thread count or XNNPACK; a label that
names just the model would make them read alike (and a plot would draw one line through them). So every
row's label is its model plus exactly the dimensions (``LABEL_DIMENSIONS``) in which it differs from some
other row, leaving out what a column or a plot colour already shows (``shown``).
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any, Collection, Sequence

#: What can tell two rows of the same model apart, in the order a label names them.
LABEL_DIMENSIONS = ("engine", "runtime", "input", "device", "threads", "xnnpack", "file", "source")
#: Named only when the others cannot tell rows apart: a file name repeats what the others say, less readably.
_FALLBACK_DIMENSIONS = ("file", "source")


def model_name(row: dict[str, Any]) -> str:
    """The model a row measured: its MicroNet variant, else its display name."""
    return str(row.get("variant") or row.get("name") or row.get("model"))


def input_pixels(row: dict[str, Any]) -> str | None:
    """"224 px" (or "160x224 px") from the fed tensor's shape and layout; None when unknown or dynamic."""
    spec = row.get("input") or {}
    shape = spec.get("shape") or []
    if len(shape) != 4:
        return None
    height, width = (shape[1], shape[2]) if spec.get("layout") == "NHWC" else (shape[2], shape[3])
    if not isinstance(height, int) or not isinstance(width, int):
        return None
    return f"{height} px" if height == width else f"{height}x{width} px"


def precision_label(row: dict[str, Any]) -> str:
    if row.get("quantize"):
        return str(row["quantize"])
    dtype = (row.get("input") or {}).get("dtype")
    return f"{dtype} I/O" if dtype else "precision ?"


def label_values(row: dict[str, Any]) -> dict[str, str | None]:
    """Each of ``LABEL_DIMENSIONS`` rendered for a label (None: not applicable to this row)."""
    source = row.get("source") or {}
    device = row.get("device") or "local"
    where = device if device != "local" else source.get("hostname") or "local"
    threads = row.get("threads")
    xnn = row.get("xnnpack")
    return {
        "engine": f"{row.get('format') or '?'} {precision_label(row)}",
        "runtime": str(row.get("runtime")),
        "input": input_pixels(row),
        "device": f"@ {where}",
        "threads": f"{threads} thread{'s' if threads != 1 else ''}",
        "xnnpack": None if xnn is None else f"XNNPACK {'on' if xnn else 'off'}",
        "file": str(row.get("name") or row.get("model")),
        "source": Path(str(source["path"])).name if source.get("path") else None,
    }


def distinguishing_parts(rows: Sequence[dict[str, Any]], shown: Collection[str] = ()) -> list[list[str]]:
    """Per row, the fewest label values that tell it from every other row, given the model name.

    ``shown``: dimensions the reader already sees elsewhere (a table column, a plot's colour or panel):
    they count as telling rows apart but are not repeated in the label. The search tries every subset
    of the other dimensions, smallest first and in ``LABEL_DIMENSIONS`` order, so a 32 px and a 224 px
    m0 are "m0 · 32 px" and "m0 · 224 px", not seven identical "m0"; the file name and the source
    report come in only when nothing else tells. Rows identical in everything get "#1", "#2".
    """
    values = [label_values(r) for r in rows]
    base = [(model_name(r), *(v[d] for d in LABEL_DIMENSIONS if d in shown)) for r, v in zip(rows, values)]
    free = [d for d in LABEL_DIMENSIONS if d not in shown]
    # per row: (rows sharing its key, subset) of the best subset so far; 1 = unique, and smaller subsets come first
    best: list[tuple[int, tuple[str, ...]]] = [(len(rows) + 1, ())] * len(rows)
    primary = [d for d in free if d not in _FALLBACK_DIMENSIONS]
    subsets = [c for k in range(len(primary) + 1) for c in itertools.combinations(primary, k)]
    subsets += [c for k in range(1, len(free) + 1) for c in itertools.combinations(free, k)
                if set(c) & set(_FALLBACK_DIMENSIONS)]  # file names and sources only when nothing else tells
    for _level, group in itertools.groupby(subsets, key=lambda c: (bool(set(c) & set(_FALLBACK_DIMENSIONS)), len(c))):
        for subset in group:
            keys = [(b, *(v[d] for d in subset)) for b, v in zip(base, values)]
            counts = Counter(keys)
            for i, key in enumerate(keys):
                if counts[key] < best[i][0]:
                    best[i] = (counts[key], subset)
        if all(count == 1 for count, _ in best):
            break
    parts = [[v[d] for d in subset if v[d] is not None] for (_, subset), v in zip(best, values)]
    texts = Counter((b, *p) for b, p in zip(base, parts))
    seen: Counter = Counter()
    for b, p in zip(base, parts):  # equal in every dimension (the same run merged twice): number them
        key = (b, *p)
        if texts[key] > 1:
            seen[key] += 1
            p.append(f"#{seen[key]}")
    return parts


def row_labels(rows: Sequence[dict[str, Any]], shown: Collection[str] = ()) -> list[str]:
    """"model · what else tells it apart" for each row (see ``distinguishing_parts``)."""
    return [" · ".join([model_name(r), *p]) for r, p in zip(rows, distinguishing_parts(rows, shown))]
