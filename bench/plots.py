"""PNG figures from benchmark rows (one report's ``results`` or ``merge_reports``' output).

Three plots, each readable on its own (title, units on the axes, legend):

* ``latency_vs_madds.png``: measured p50 latency (bar up to p90) against MAdds, one colour per
  runtime/format/precision, one panel per thread count, XNNPACK-off dashed: the MicroNet paper's
  Figure 1, measured instead of counted. A line joins only rows that differ in the variant alone
  (``line_groups``: same input size, device, engine, threads). Needs two models of different MAdds.
* ``accuracy_vs_latency.png``: top-1 (mIoU, AP for pose/seg) against p50 latency at the lowest thread count measured,
  only when some rows have accuracy.
* ``latency_distribution.png``: every raw sample of every result as a box plot, so noise and
  outliers are visible, not just the medians.

Every point and box is labelled by ``report.row_labels``: the model plus whatever else tells it from
the other rows (input size, device, ...), never seven identical "m0"; labels are placed by
``place_labels`` so no two overlap. Invalid rows are left out. Axes switch to a log scale (labelled in plain numbers) when the values
span more than ~20×, e.g. when a busy machine produced a few very slow runs. matplotlib runs on the
Agg backend (no display needed).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from micronet.errors import MicronetError

from .labels import input_pixels, label_values, model_name, precision_label, row_labels

LOG_SPAN = 20.0  # max/min ratio above which an axis goes logarithmic
FONT_PT = 8  # label font size
#: Dimensions a plot's colour (engine), panel (threads) and hollow/dashed marks (XNNPACK off) already show.
_COLOUR_SHOWN = ("engine", "runtime", "threads", "xnnpack")
LEGEND = {"title": "runtime · format · precision", "fontsize": 8, "title_fontsize": 8,
          "loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}  # outside the axes: never hides a point


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _valid(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if not r.get("invalid") and (r.get("latency") or {}).get("p50_ms") is not None]


def precision(row: dict[str, Any]) -> str:
    """The export's quantization, or (foreign file, no manifest) what its input tensor says."""
    return precision_label(row)


def _host(row: dict[str, Any]) -> str | None:
    return (row.get("source") or {}).get("hostname")


def _several_hosts(rows: Sequence[dict[str, Any]]) -> bool:
    return len({_host(r) for r in rows}) > 1


def engine_key(row: dict[str, Any], with_host: bool = False) -> str:
    """What runs the model (runtime · format · precision), the colour of a series in every plot.

    ``with_host`` names the machine too: only useful when merged rows come from several.
    """
    parts = [row["runtime"]] + ([row.get("format") or "?"] if row.get("format") != row["runtime"] else [])
    parts.append(precision(row))
    return " · ".join(parts) + (f" @ {_host(row)}" if with_host and _host(row) else "")


def line_groups(rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows that differ in the variant alone, each group sorted by MAdds: what a line may connect.

    A line from m0 at 32 px to m0 at 224 px would read as a trend over model size; so rows join a line
    only when runtime, format, precision, input size, device, threads and XNNPACK all agree. The
    same variant twice in a group (two merged runs) splits it by source report.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        v = label_values(r)
        key = (v["engine"], v["runtime"], input_pixels(r), v["device"], r.get("threads"), r.get("xnnpack") is False)
        groups.setdefault(key, []).append(r)
    out: list[list[dict[str, Any]]] = []
    for members in groups.values():
        names = [model_name(r) for r in members]
        if len(set(names)) < len(names):
            by_source: dict[Any, list[dict[str, Any]]] = {}
            for r in members:
                by_source.setdefault((r.get("source") or {}).get("path"), []).append(r)
            parts = list(by_source.values())
        else:
            parts = [members]
        out += [sorted(part, key=lambda r: (r.get("madds") or 0, model_name(r))) for part in parts]
    return out


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in points


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _candidate_offsets(w: float, h: float, margin: float, gap: float):
    """Beside the point first (four corners, then centred above/below), then further up and down."""
    yield from ((margin, margin), (margin, -margin - h), (-margin - w, margin), (-margin - w, -margin - h),
                (-w / 2, margin), (-w / 2, -margin - h))
    k = 1
    while True:  # ends: high enough, a box clears everything placed so far
        step = k * (h + gap)
        yield from ((margin, margin + step), (margin, -margin - h - step),
                    (-margin - w, margin + step), (-margin - w, -margin - h - step))
        k += 1


def place_labels(anchors: Sequence[tuple[float, float]], sizes: Sequence[tuple[float, float]],
                 gap: float = 2.0, marker: float = 3.0) -> list[tuple[float, float]]:
    """Offsets (points, of each label's lower-left corner from its anchor) so no two labels overlap.

    ``anchors``: the labelled points in display points; ``sizes``: each label's (width, height) in
    points. Labels are placed left to right, each at the first candidate spot that overlaps neither
    a label placed before nor any point's marker (a square of ``marker`` points around it).
    """
    placed: list[Box] = [(x - marker, y - marker, x + marker, y + marker) for x, y in anchors]
    offsets: list[tuple[float, float]] = [(0.0, 0.0)] * len(anchors)
    for i in sorted(range(len(anchors)), key=lambda i: anchors[i]):
        (x, y), (w, h) = anchors[i], sizes[i]
        for dx, dy in _candidate_offsets(w, h, marker + gap, gap):
            box = (x + dx, y + dy, x + dx + w, y + dy + h)
            if not any(_overlap(box, other) for other in placed):
                break
        placed.append(box)
        offsets[i] = (dx, dy)
    return offsets


def text_size(text: str, fontsize: float = FONT_PT) -> tuple[float, float]:
    """A generous estimate of a one-line label's (width, height) in points (DejaVu Sans averages ~0.55 em)."""
    return 0.62 * fontsize * len(text) + 2.0, 1.3 * fontsize


def _annotate_placed(fig: Any, ax: Any, points: Sequence[tuple[float, float]], texts: Sequence[str]) -> None:
    """Label data points where ``place_labels`` says, with a thin leader line when a label sits away."""
    fig.tight_layout()  # the transforms below must be the final ones
    scale = 72.0 / fig.dpi
    anchors = [tuple(float(v) * scale for v in ax.transData.transform(p)) for p in points]
    offsets = place_labels(anchors, [text_size(t) for t in texts])
    for p, text, (dx, dy) in zip(points, texts, offsets):
        far = abs(dy) > 3 * FONT_PT or abs(dx) > 0.62 * FONT_PT * len(text) + 12
        ax.annotate(text, p, textcoords="offset points", xytext=(dx, dy), ha="left", va="bottom", fontsize=FONT_PT,
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"} if far else None)


def _colours(keys: Sequence[str]) -> dict[str, Any]:
    """One stable colour per engine across all panels (tab10, then tab20 for more)."""
    plt = _pyplot()
    ordered = sorted(set(keys))
    cmap = plt.get_cmap("tab10" if len(ordered) <= 10 else "tab20")
    return {key: cmap(i % cmap.N) for i, key in enumerate(ordered)}


def _log_axis(axis: Any) -> None:
    """Log scale labelled in plain numbers (0.5, 1, 2, 5, 10 ...) rather than 2×10⁰."""
    from matplotlib import ticker

    axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _wide(values: Sequence[float]) -> bool:
    lo, hi = min(values), max(values)
    return lo > 0 and hi / lo > LOG_SPAN


def _footnote(fig: Any, text: str) -> None:
    fig.text(0.01, 0.0, text, fontsize=8, ha="left", va="top", color="0.35")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_latency_vs_madds(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """None when fewer than two distinct MAdds values exist: a vertical stack of dots says nothing."""
    plt = _pyplot()
    valid = _valid(rows)
    points = [r for r in valid if r.get("madds")]
    if len({r["madds"] for r in points}) < 2:
        return None
    with_host = _several_hosts(points)
    colours = _colours([engine_key(r, with_host) for r in points])
    threads = sorted({r.get("threads") for r in points})
    fig, axes = plt.subplots(1, len(threads), figsize=(5.5 * len(threads) + 3, 5.5), sharey=True, squeeze=False)
    madds = [r["madds"] / 1e6 for r in points]
    log_y = _wide([r["latency"]["p50_ms"] for r in points] + [r["latency"]["p90_ms"] for r in points])
    labelled: list[tuple[Any, list[tuple[float, float]], list[str]]] = []
    for ax, t in zip(axes[0], threads):
        panel = [r for r in points if r.get("threads") == t]
        for members in line_groups(panel):
            key, xnn_off = engine_key(members[0], with_host), members[0].get("xnnpack") is False
            p50 = [r["latency"]["p50_ms"] for r in members]
            up = [max(r["latency"]["p90_ms"] - r["latency"]["p50_ms"], 0.0) for r in members]
            ax.errorbar([r["madds"] / 1e6 for r in members], p50, yerr=[[0.0] * len(up), up], color=colours[key],
                        marker="o", markerfacecolor="white" if xnn_off else colours[key], capsize=3,
                        linestyle=("--" if xnn_off else "-") if len(members) > 1 else "none")
        # one label per point and text (engines share a point's label: colour tells them apart), above its bar
        tops: dict[tuple[float, str], float] = {}
        for r, label in zip(panel, row_labels(panel, shown=_COLOUR_SHOWN)):
            key = (r["madds"] / 1e6, label)
            tops[key] = max(tops.get(key, 0.0), r["latency"]["p90_ms"])
        labelled.append((ax, [(x, top) for (x, _), top in tops.items()], [label for _, label in tops]))
        if _wide(madds):
            ax.set_xscale("log")
            _log_axis(ax.xaxis)
        else:  # compute starts at zero
            ax.set_xlim(0, max(madds) * 1.15)
        ax.set_title(f"{t} thread{'s' if t != 1 else ''}", fontsize=10)
        ax.set_xlabel("model compute (MAdds per image, millions)")
        ax.grid(True, which="both", alpha=0.3)
    ax0 = axes[0][0]
    if log_y:
        ax0.set_yscale("log")
        _log_axis(ax0.yaxis)
    else:
        ax0.set_ylim(0, max(r["latency"]["p90_ms"] for r in points) * 1.15)
    ax0.set_ylabel("latency per inference (ms, batch 1" + (", log scale" if log_y else "") + ")\n"
                   "dot = median (p50), bar up to p90")
    fig.suptitle("Measured latency vs. compute")
    _engine_legend(axes[0][-1], colours, any(r.get("xnnpack") is False for r in points))
    for ax, anchors, texts in labelled:
        _annotate_placed(fig, ax, anchors, texts)
    hidden = len(valid) - len(points)
    if hidden:
        _footnote(fig, f"{hidden} result(s) without a MAdds figure (no manifest) are not shown")
    return _save(fig, path)


def _engine_legend(ax: Any, colours: dict[str, Any], any_off: bool) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", label=k) for k, c in colours.items()]
    if any_off:
        handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle="--",
                              label="dashed, hollow = XNNPACK off"))
    ax.legend(handles=handles, **LEGEND)


def plot_accuracy_vs_latency(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    plt = _pyplot()
    from .report import accuracy_header
    from .tasks import headline

    scored = [r for r in _valid(rows) if headline(r.get("accuracy")) is not None]
    if not scored:
        return None
    metric = accuracy_header(scored, console=True)  # top-1, mIoU, AP, or "accuracy" when they mix
    t = min(r.get("threads") or 1 for r in scored)  # accuracy does not depend on threads; latency does
    points = [r for r in scored if (r.get("threads") or 1) == t]
    with_host = _several_hosts(points)
    colours = _colours([engine_key(r, with_host) for r in points])
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r in points:
        c = colours[engine_key(r, with_host)]
        off = r.get("xnnpack") is False
        ax.scatter(r["latency"]["p50_ms"], headline(r["accuracy"]), s=50, color=c, marker="o",
                   facecolors="white" if off else c, edgecolors=c)
    top1 = [headline(r["accuracy"]) for r in points]
    ax.set_ylim(max(0.0, min(top1) - 5.0), min(100.0, max(top1) + 5.0))
    latency = [r["latency"]["p50_ms"] for r in points]
    if _wide(latency):
        ax.set_xscale("log")
        _log_axis(ax.xaxis)
    else:
        ax.set_xlim(left=0)
    counts = sorted({r["accuracy"]["count"] for r in points})
    ax.set_xlabel(f"latency per inference (ms, p50, batch 1, {t} thread{'s' if t != 1 else ''})")
    ax.set_ylabel("top-1 accuracy (%)" if metric == "top-1" else f"{metric} (points)")
    ax.set_title(f"Accuracy vs. latency ({metric} on {', '.join(map(str, counts))} images)")
    ax.grid(True, which="both", alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", linestyle="none", label=k) for k, c in colours.items()]
    if any(r.get("xnnpack") is False for r in points):
        handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle="none",
                              label="hollow = XNNPACK off"))
    ax.legend(handles=handles, **LEGEND)
    _annotate_placed(fig, ax, [(r["latency"]["p50_ms"], headline(r["accuracy"])) for r in points],
                     row_labels(points, shown=_COLOUR_SHOWN))
    return _save(fig, path)


def plot_latency_distribution(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    plt = _pyplot()
    points = [r for r in _valid(rows) if r["latency"].get("samples_ms")]
    if not points:
        return None
    points.sort(key=lambda r: -r["latency"]["p50_ms"])  # boxes stack bottom-up: fastest ends on top
    data = [r["latency"]["samples_ms"] for r in points]
    fig, ax = plt.subplots(figsize=(11, 1.6 + 0.42 * len(points)))
    ax.boxplot(data, orientation="horizontal", whis=(1, 99), showfliers=True,
               flierprops={"marker": ".", "markersize": 3, "alpha": 0.5})
    runs, suffixes = runs_caption([len(d) for d in data])
    labels = [label + suffix for label, suffix in zip(row_labels(points), suffixes or [""] * len(points))]
    ax.set_yticks(range(1, len(points) + 1), labels, fontsize=FONT_PT)
    log = _wide([min(d) for d in data] + [max(d) for d in data])
    if log:
        ax.set_xscale("log")
        _log_axis(ax.xaxis)
    ax.set_xlabel("latency per inference (ms" + (", log scale)" if log else ")"))
    ax.set_title(f"Latency distribution per model and runtime ({runs})\n"
                 "box = p25–p75, orange line = median, whiskers = p1–p99, dots = runs outside p1–p99", fontsize=10)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    return _save(fig, path)


def runs_caption(counts: Sequence[int]) -> tuple[str, list[str] | None]:
    """(title part, per-box label suffixes or None): "N timed runs each" only when every box has N."""
    if len(set(counts)) == 1:
        return f"{counts[0]:,} timed runs each", None
    return "n = timed runs per box", [f" (n={n:,})" for n in counts]


def plot_all(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike) -> list[Path]:
    """Write every plot the rows support into ``out_dir``; returns the files written."""
    rows = list(rows)
    if not _valid(rows):
        raise MicronetError("nothing to plot: no valid result rows with latency")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        plot_latency_vs_madds(rows, out / "latency_vs_madds.png"),
        plot_accuracy_vs_latency(rows, out / "accuracy_vs_latency.png"),
        plot_latency_distribution(rows, out / "latency_distribution.png"),
    ]
    return [p for p in written if p is not None]
