"""PNG figures from benchmark rows (one report's ``results`` or ``merge_reports``' output).

Three plots, each readable on its own (title, units on the axes, legend):

* ``latency_vs_madds.png``: measured p50 latency (bar up to p90) against MAdds, one line per
  runtime/format/precision, one panel per thread count, XNNPACK-off dashed: the MicroNet paper's
  Figure 1, measured instead of counted. Needs at least two models of different MAdds.
* ``accuracy_vs_latency.png``: top-1 against p50 latency at the lowest thread count measured,
  only when some rows have accuracy.
* ``latency_distribution.png``: every raw sample of every result as a box plot, so noise and
  outliers are visible, not just the medians.

Invalid rows are left out. Axes switch to a log scale (labelled in plain numbers) when the values
span more than ~20×, e.g. when a busy machine produced a few very slow runs. matplotlib runs on the
Agg backend (no display needed).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from micronet.errors import MicronetError

LOG_SPAN = 20.0  # max/min ratio above which an axis goes logarithmic
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
    if row.get("quantize"):
        return str(row["quantize"])
    dtype = (row.get("input") or {}).get("dtype")
    return f"{dtype} I/O" if dtype else "precision ?"


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


def row_label(row: dict[str, Any], with_host: bool = False) -> str:
    """Everything that distinguishes one result: model, engine, threads, XNNPACK."""
    label = f"{_model_label(row)} — {engine_key(row, with_host)} · {row.get('threads')} thr"
    return label + (" · no XNNPACK" if row.get("xnnpack") is False else "")


def _model_label(row: dict[str, Any]) -> str:
    return str(row.get("variant") or row.get("name") or row.get("model"))


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
    for ax, t in zip(axes[0], threads):
        series: dict[tuple[str, bool], list[dict[str, Any]]] = {}
        for r in points:
            if r.get("threads") == t:
                series.setdefault((engine_key(r, with_host), r.get("xnnpack") is False), []).append(r)
        for (key, xnn_off), members in sorted(series.items()):
            members.sort(key=lambda r: r["madds"])
            p50 = [r["latency"]["p50_ms"] for r in members]
            up = [max(r["latency"]["p90_ms"] - r["latency"]["p50_ms"], 0.0) for r in members]
            ax.errorbar([r["madds"] / 1e6 for r in members], p50, yerr=[[0.0] * len(up), up], color=colours[key],
                        marker="o", markerfacecolor="white" if xnn_off else colours[key], capsize=3,
                        linestyle="--" if xnn_off else "-")
        # one model label per compute value, above the highest bar there
        tops: dict[tuple[float, str], float] = {}
        for r in points:
            if r.get("threads") == t:
                key = (r["madds"] / 1e6, _model_label(r))
                tops[key] = max(tops.get(key, 0.0), r["latency"]["p90_ms"])
        for (x, label), top in tops.items():
            ax.annotate(label, (x, top), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
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
    scored = [r for r in _valid(rows) if (r.get("accuracy") or {}).get("top1") is not None]
    if not scored:
        return None
    t = min(r.get("threads") or 1 for r in scored)  # accuracy does not depend on threads; latency does
    points = [r for r in scored if (r.get("threads") or 1) == t]
    with_host = _several_hosts(points)
    colours = _colours([engine_key(r, with_host) for r in points])
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r in points:
        c = colours[engine_key(r, with_host)]
        off = r.get("xnnpack") is False
        ax.scatter(r["latency"]["p50_ms"], r["accuracy"]["top1"], s=50, color=c, marker="o",
                   facecolors="white" if off else c, edgecolors=c)
    # neighbours in latency get labels at three heights so close labels do not print over each other
    for n, r in enumerate(sorted(points, key=lambda r: r["latency"]["p50_ms"])):
        ax.annotate(_model_label(r), (r["latency"]["p50_ms"], r["accuracy"]["top1"]), textcoords="offset points",
                    xytext=(4, 6 + 11 * (n % 3)), fontsize=8)
    top1 = [r["accuracy"]["top1"] for r in points]
    ax.set_ylim(max(0.0, min(top1) - 5.0), min(100.0, max(top1) + 5.0))
    latency = [r["latency"]["p50_ms"] for r in points]
    if _wide(latency):
        ax.set_xscale("log")
        _log_axis(ax.xaxis)
    else:
        ax.set_xlim(left=0)
    counts = sorted({r["accuracy"]["count"] for r in points})
    ax.set_xlabel(f"latency per inference (ms, p50, batch 1, {t} thread{'s' if t != 1 else ''})")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"Accuracy vs. latency (top-1 on {', '.join(map(str, counts))} images)")
    ax.grid(True, which="both", alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", linestyle="none", label=k) for k, c in colours.items()]
    if any(r.get("xnnpack") is False for r in points):
        handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle="none",
                              label="hollow = XNNPACK off"))
    ax.legend(handles=handles, **LEGEND)
    return _save(fig, path)


def plot_latency_distribution(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    plt = _pyplot()
    points = [r for r in _valid(rows) if r["latency"].get("samples_ms")]
    if not points:
        return None
    points.sort(key=lambda r: -r["latency"]["p50_ms"])  # boxes stack bottom-up: fastest ends on top
    with_host = _several_hosts(points)
    data = [r["latency"]["samples_ms"] for r in points]
    fig, ax = plt.subplots(figsize=(11, 1.6 + 0.42 * len(points)))
    ax.boxplot(data, orientation="horizontal", whis=(1, 99), showfliers=True,
               flierprops={"marker": ".", "markersize": 3, "alpha": 0.5})
    ax.set_yticks(range(1, len(points) + 1), [row_label(r, with_host) for r in points], fontsize=8)
    log = _wide([min(d) for d in data] + [max(d) for d in data])
    if log:
        ax.set_xscale("log")
        _log_axis(ax.xaxis)
    ax.set_xlabel("latency per inference (ms" + (", log scale)" if log else ")"))
    ax.set_title(f"Latency distribution per model and runtime ({sum(len(d) for d in data):,} timed runs)\n"
                 "box = p25–p75, orange line = median, whiskers = p1–p99, dots = runs outside p1–p99", fontsize=10)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    return _save(fig, path)


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
