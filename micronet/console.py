"""Rich renderings of the library's records, shared by the CLI commands.

Kept apart from the records themselves so the library stays usable (and importable) without a
terminal; every table here has a JSON twin produced from the same dict.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .counting import RULE, Counts

console = Console()
err_console = Console(stderr=True)


def millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _shape(shape: list[int]) -> str:
    """C x H x W (or classes) without the batch dimension, which is always 1 here."""
    return "x".join(map(str, shape[1:]))


def counts_table(counts: Counts, per_layer: bool = False) -> Table:
    title = f"MicroNet {counts.variant} at {counts.input_size}x{counts.input_size}, {counts.num_classes} classes"
    table = Table(title=title, caption=f"MAdds = {RULE}")
    if per_layer:
        for col in ("layer", "op", "output shape", "params", "MAdds"):
            table.add_column(col, justify="left" if col in ("layer", "op", "output shape") else "right",
                             no_wrap=col != "layer")
        for row in counts.layers:
            table.add_row(row.name, row.op, _shape(row.out_shape), f"{row.params:,}", f"{row.madds:,}")
    else:
        for col in ("stage", "output shape", "params", "conv MAdds", "Linear MAdds", "Shift-Max MAdds", "MAdds"):
            table.add_column(col, justify="left" if col == "stage" else "right", no_wrap=True)
        for s in counts.by_stage():
            table.add_row(s["stage"], _shape(s["out_shape"]), f"{s['params']:,}", f"{s['conv']:,}",
                          f"{s['linear']:,}", f"{s['shiftmax']:,}", f"{s['madds']:,}")
    table.add_section()
    if per_layer:
        table.add_row("total", "", "", f"{counts.params:,}", f"{counts.madds:,}")
    else:
        table.add_row("total", "", f"{counts.params:,}", f"{counts.total('conv'):,}", f"{counts.total('linear'):,}",
                      f"{counts.total('shiftmax'):,}", f"{counts.madds:,}")
    return table


def conventions_note(check: dict) -> str:
    """One line that puts FlopCounterMode's FLOPs beside our MAdds without mixing the units."""
    return (f"torch FlopCounterMode: {check['flop_counter_flops']:,} FLOPs (conv + matmul only, 1 MAdd = 2 FLOPs) "
            f"= {check['flop_counter_as_madds']:,} MAdds = our conv + Linear MAdds "
            f"{'(equal)' if check['matches'] else '(DIFFERENT)'}; the Shift-Max products "
            f"({check['shiftmax_madds']:,} MAdds) are the only difference to the {check['micronet_madds']:,} above.")


def parity_table(rungs: list[dict]) -> Table:
    """The parity ladder: each rung, what it was compared with, the judged metric and the verdict."""
    table = Table(title="parity ladder (held-out real images)")
    # Rung names are identifiers (deploy_fast vs deploy_fast_onnxruntime): never truncated, the other columns wrap.
    table.add_column("rung", no_wrap=True, min_width=max((len(r["rung"]) for r in rungs), default=4))
    for col in ("compared with", "judged by (limit)", "cosine", "top-1 agree", "status"):
        table.add_column(col, justify="right" if col in ("cosine", "top-1 agree") else "left")
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
    for col in ("file", "format", "quantize", "input", "size", "ops"):
        table.add_column(col, justify="right" if col in ("size", "ops") else "left")
    for path, manifest_path in zip(result.artifacts, result.manifests):
        m = json.loads(manifest_path.read_text())
        inp = m["input"]
        quant = f" q=({inp['quantization']['scale']:.4g}, {inp['quantization']['zero_point']})" if inp.get(
            "quantization") else ""
        ops = str(m["ops"]["total"]) if "ops" in m else "-"
        table.add_row(path.name, m["format"], m["quantize"], f"{inp['layout']} {inp['dtype']}{quant}",
                      f"{m['size_bytes'] / 2**20:.2f} MiB", ops)
    return table
