"""Rich renderings of the library's records, shared by the CLI commands.

Kept apart from the records themselves so the library stays usable (and importable) without a
terminal; every table here has a JSON twin produced from the same dict.

Tables never cut a number or a name: ``print_table`` (through ``fit_table``) sizes every column
itself instead of leaving it to rich, whose squeezing ellipsizes ``no_wrap`` cells ("1,777,…") once
a table is wider than the console. In a terminal, columns a table marks as droppable go first and
free text wraps; anywhere else (a pipe, a log, CI) the table is printed at its natural width.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from .counting import TASK_OUTPUTS_NAME, Counts, size_label, task_rule

# Width of the shared console when stdout is not a terminal: pipes, logs and CI keep every line whole
# instead of rich's 80-column default. Tables are not expanded, so this only lifts the limit.
PIPE_WIDTH = 1000


def make_console(stderr: bool = False) -> Console:
    """A console for stdout (or stderr): the terminal's width in a terminal, ``PIPE_WIDTH`` otherwise.

    Decided once, when the console is made, as rich decides colour; ``print_table`` checks again at
    print time, so a table stays whole even if stdout is redirected later.
    """
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=PIPE_WIDTH)


console = make_console()
err_console = Console(stderr=True)


def _measure(console: Console, renderable) -> Measurement:
    """(longest word, whole line) of one cell, unconstrained by the console's width."""
    return Measurement.get(console, console.options.update_width(10**6), renderable)


def _column_range(console: Console, column) -> tuple[int, int]:
    """The narrowest and widest a column's content may be drawn.

    A ``no_wrap`` column holds numbers or names: its narrowest is its widest cell. Any other column
    wraps at spaces, so its narrowest is its longest word. Headers always wrap at spaces.
    """
    cells = [_measure(console, cell) for cell in column.cells]
    header = _measure(console, column.header)
    widest = max([header.maximum] + [c.maximum for c in cells])
    if column.no_wrap:
        narrowest = max([header.minimum] + [c.maximum for c in cells])
    else:
        narrowest = max([header.minimum] + [c.minimum for c in cells])
    return narrowest, widest


def _overhead(console: Console, table: Table) -> int:
    """Borders and padding: the table's width when every column is zero wide."""
    saved = [c.width for c in table.columns]
    try:
        for c in table.columns:
            c.width = 0
        return _measure(console, table).maximum
    finally:
        for c, w in zip(table.columns, saved):
            c.width = w


def fit_table(table: Table, width: int, drop: Sequence[str] = (), console: Console | None = None) -> int:
    """Size ``table``'s columns to ``width`` without cutting a number or a name; returns its width.

    Why not leave it to rich: when a table is too wide rich shrinks every column evenly as a last
    resort, ellipsizing ``no_wrap`` cells. Here a ``no_wrap`` column (a number or a name) gets
    ``min_width`` = its widest cell; other columns (free text) fold at spaces, never inside a word.
    While even those minimums do not fit, the columns named in ``drop`` are removed, in that order.
    Remaining space goes to the columns furthest below their natural width (unwrapped headers and
    text). If the minimums still exceed ``width`` the table comes out wider than asked -- the
    terminal wraps the lines, but no figure is lost -- and the returned width says so.
    """
    console = console or Console(width=width)
    for column in table.columns:
        if not isinstance(column.header, Text):
            column.header = Text(str(column.header))
        column.header.no_wrap = False  # a header may take two lines, its column keeps its figures whole
        column.header.overflow = "fold"
        if not column.no_wrap:
            column.overflow = "fold"
    pending = list(drop)
    while True:
        ranges = [_column_range(console, c) for c in table.columns]
        overhead = _overhead(console, table)
        if overhead + sum(lo for lo, _ in ranges) <= width or not pending:
            break
        name = pending.pop(0)
        table.columns[:] = [c for c in table.columns if str(c.header) != name]
        for index, column in enumerate(table.columns):
            column._index = index  # rich keys padding (first/last column) on the index
    widths = [lo for lo, _ in ranges]
    spare = width - overhead - sum(widths)
    while spare > 0:
        gaps = [hi - w for w, (_, hi) in zip(widths, ranges)]
        neediest = max(range(len(gaps)), key=gaps.__getitem__, default=None)
        if neediest is None or gaps[neediest] <= 0:
            break
        widths[neediest] += 1
        spare -= 1
    for column, w, (lo, _) in zip(table.columns, widths, ranges):
        column.min_width, column.width = lo, w
    return overhead + sum(widths)


@contextmanager
def _at_least(console: Console, width: int) -> Iterator[None]:
    """Let ``console`` draw ``width`` columns for the duration (a table rich must not squeeze)."""
    saved = console._width  # None: follow the terminal
    if width > console.width:
        console.width = width
    try:
        yield
    finally:
        console._width = saved


def print_table(table: Table, drop: Sequence[str] = (), console: Console | None = None) -> None:
    """Print a table whole: fitted to a terminal's width (dropping ``drop`` columns first if it must),
    at its natural width anywhere else."""
    out = console or globals()["console"]  # the parameter shadows the shared stdout console
    width = fit_table(table, out.width if out.is_terminal else 10**6, drop, out)
    with _at_least(out, width):
        out.print(table)


def millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _shape(shape: list[int]) -> str:
    """C x H x W (or classes) without the batch dimension, which is always 1 here."""
    return "x".join(map(str, shape[1:]))


# Columns each table can lose on a narrow terminal, least important first (print_table's ``drop``).
VARIANTS_DROP = ("what it is", "released weights (top-1)", "input", "task", "published")
STAGES_DROP = ("output shape", "attention MAdds", "Shift-Max MAdds", "Linear MAdds", "conv MAdds")
LAYERS_DROP = ("output shape", "op")
PARITY_DROP = ("cosine", "compared with", "top-1 agree")
EXPORT_DROP = ("ops", "format", "runtime", "input")


def variants_table(rows: list[dict]) -> Table:
    """``micronet variants``: measured figures beside the published ones, per variant.

    Each row's figures are at its task's input (224x224 and 1000 classes; 256x192 and 17 heatmaps for
    pose; 1024x2048 and 19 classes for segmentation), which the ``input`` column names; a pose row's
    published figures add the paper's COCO AP, a segmentation row's its Cityscapes mIoU.
    """
    table = Table(title="MicroNet variants (figures at each variant's input)")
    for col in ("variant", "task", "params", "MAdds", "input", "published", "released weights (top-1)",
                "what it is"):
        table.add_column(col, justify="right" if col in ("params", "MAdds") else "left",
                         no_wrap=col in ("variant", "task", "params", "MAdds", "input"))
    for r in rows:
        name = r["name"] + (f" ({', '.join(r['aliases'])})" if r["aliases"] else "")
        weights = ", ".join(f"{w['file_name']} ({w['top1']}%)" for w in r["weights"]) or "-"
        published = f"{r['paper_madds']} MAdds, {r['paper_params']}"
        if r.get("paper_ap") is not None:
            published += f", AP {r['paper_ap']}"
        if r.get("paper_miou") is not None:
            published += f", mIoU {r['paper_miou']}"
        table.add_row(name, r["task"], f"{r['params']:,}", f"{r['madds']:,}", size_label(tuple(r["input_size"])), published,
                      weights, r["description"])
    return table


def counts_table(counts: Counts, per_layer: bool = False) -> Table:
    attention = counts.task != "classification"  # pose and segmentation have an attention to show
    outputs = TASK_OUTPUTS_NAME[counts.task]
    title = f"MicroNet {counts.variant} at {size_label(counts.input_size)}, {counts.num_classes} {outputs}"
    table = Table(title=title, caption=f"MAdds = {task_rule(counts.task)}")
    # Every cell is a name, a shape or a number: all whole (print_table drops columns instead).
    if per_layer:
        for col in ("layer", "op", "output shape", "params", "MAdds"):
            table.add_column(col, justify="left" if col in ("layer", "op", "output shape") else "right",
                             no_wrap=True)
        for row in counts.layers:
            table.add_row(row.name, row.op, _shape(row.out_shape), f"{row.params:,}", f"{row.madds:,}")
    else:
        # The attention column only where there is attention (pose, segmentation): the classification table
        # is unchanged.
        kinds = ("conv", "linear", "shiftmax") + (("attention",) if attention else ())
        names = {"conv": "conv MAdds", "linear": "Linear MAdds", "shiftmax": "Shift-Max MAdds",
                 "attention": "attention MAdds"}
        for col in ("stage", "output shape", "params", *(names[k] for k in kinds), "MAdds"):
            table.add_column(col, justify="left" if col == "stage" else "right", no_wrap=True)
        stages = counts.by_stage()
        for s in stages:
            table.add_row(s["stage"], _shape(s["out_shape"]), f"{s['params']:,}", *(f"{s[k]:,}" for k in kinds),
                          f"{s['madds']:,}")
    table.add_section()
    if per_layer:
        table.add_row("total", "", "", f"{counts.params:,}", f"{counts.madds:,}")
    else:
        table.add_row("total", "", f"{counts.params:,}", *(f"{sum(s[k] for s in stages):,}" for k in kinds),
                      f"{counts.madds:,}")
    return table


def conventions_note(check: dict) -> str:
    """One line that puts FlopCounterMode's FLOPs beside our MAdds without mixing the units."""
    return (f"torch FlopCounterMode: {check['flop_counter_flops']:,} FLOPs (conv + matmul only, 1 MAdd = 2 FLOPs) "
            f"= {check['flop_counter_as_madds']:,} MAdds = our conv + Linear MAdds "
            f"{'(equal)' if check['matches'] else '(DIFFERENT)'}; the Shift-Max products "
            f"({check['shiftmax_madds']:,} MAdds)"
            + (f" and the {check.get('attention_kind', 'spatial attention')} products "
               f"({check['attention_product_madds']:,} MAdds)"
               if check.get("attention_product_madds") else "")
            + f" are the only difference to the {check['micronet_madds']:,} above.")


def paper_note(info, counts: Counts) -> str:
    """A pose variant's figures beside the paper's Table 8, and where the difference sits (README)."""
    head = sum(s["madds"] for s in counts.by_stage() if s["stage"].startswith("head_blocks")
               or s["stage"] == "heatmaps")
    return (f"paper (Table 8, 256x192): {info.paper_madds} MAdds, {info.paper_params} params. Here: "
            f"{counts.madds / 1e6:.1f}M MAdds, {counts.params / 1e6:.2f}M params at {size_label(counts.input_size)}; "
            f"the head (stride 8 and 4) is {head / 1e6:.1f}M of it and the spatial attention "
            f"{counts.attention_total() / 1e6:.1f}M. Widths are Table 10's, not tuned; README \"Pose models\" "
            "explains the difference.")


def seg_paper_note(info, counts: Counts) -> str:
    """A segmentation variant's figures beside the paper's Table 9, and where they sit (README)."""
    from .registry import paper_comparison

    head = sum(s["madds"] for s in counts.by_stage() if s["stage"].startswith("mr_aspp"))
    ratio = ""
    if tuple(counts.input_size) == info.input_size and counts.num_classes == info.outputs:
        c = paper_comparison(info, counts.params, counts.madds)
        ratio = f" ({c['madds_ratio']:.2f}x Table 9's MAdds, {c['params_ratio']:.2f}x its params)"
    return (f"paper (Table 9, 1024x2048): {info.paper_madds} MAdds, {info.paper_params} params, mIoU "
            f"{info.paper_miou} (LR-ASPP MobileNetV3-Small: 2.90B, 68.4). Here: {counts.madds / 1e9:.3f}B MAdds, "
            f"{counts.params / 1e6:.2f}M params at {size_label(counts.input_size)}{ratio}; the backbone (stride 16, "
            f"dilated) is {(counts.madds - head) / 1e9:.3f}B of it and MR-ASPP {head / 1e9:.3f}B. Widths are the "
            "classifiers' rows and Lite R-ASPP's 128, not tuned; README \"Segmentation models\" explains the "
            "difference.")


def parity_table(rungs: list[dict]) -> Table:
    """The parity ladder: each rung, what it was compared with, the judged metric and the verdict."""
    table = Table(title="parity ladder (held-out real images)")
    # Rung names are identifiers (deploy_fast vs deploy_fast_onnxruntime) and the figures are figures:
    # whole; the two phrases wrap between words.
    for col in ("rung", "compared with", "judged by (limit)", "cosine", "top-1 agree", "status"):
        table.add_column(col, justify="right" if col in ("cosine", "top-1 agree") else "left",
                         no_wrap=col not in ("compared with", "judged by (limit)"))
    for r in rungs:
        relation = "≥" if r["metric"] == "cosine" else "≤"
        metric = "rel. max err" if r["metric"] == "rel_max_abs_err" else r["metric"]
        table.add_row(r["rung"], r["reference"], f"{metric} {r['value']:.3g} ({relation} {r['limit']:g})",
                      f"{r['cosine']:.5f}", f"{r['top1_agreement_pct']:.1f}%",
                      "[green]pass[/green]" if r["passed"] else "[bold red]FAIL[/bold red]")
    return table


def export_summary(result) -> Table:
    """What an export wrote, with the figures a deployment cares about."""
    import json

    table = Table(title=f"exported to {result.artifacts[0].parent if result.artifacts else '-'}")
    # File names differ only near the end (m0_float32.tflite vs m0_float16.tflite): never cut them.
    for col in ("file", "format", "quantize", "input", "size", "ops", "runtime"):
        table.add_column(col, justify="right" if col in ("size", "ops") else "left", no_wrap=col != "input")
    for path, manifest_path in zip(result.artifacts, result.manifests):
        m = json.loads(manifest_path.read_text())
        inp = m["input"]
        quant = f" q=({inp['quantization']['scale']:.4g}, {inp['quantization']['zero_point']})" if inp.get(
            "quantization") else ""
        ops = str(m["ops"]["total"]) if "ops" in m else "-"
        runtime = f"TFLite ≥ {m['min_runtime_version']}" if m.get("min_runtime_version") else "-"
        table.add_row(path.name, m["format"], m["quantize"], f"{inp['layout']} {inp['dtype']}{quant}",
                      f"{m['size_bytes'] / 2**20:.2f} MiB", ops, runtime)
    return table


def export_warnings(result) -> list[str]:
    """One line per written file that tflite-runtime 2.14 (the Raspberry Pi's runtime) cannot load."""
    import json

    from micronet.export.tflite_versions import needs_newer_than

    lines = []
    for path, manifest_path in zip(result.artifacts, result.manifests):
        m = json.loads(manifest_path.read_text())
        if needs_newer_than(m.get("min_runtime_version")):
            lines.append(f"{path.name} {m['runtime_requirement']}")
    return lines
