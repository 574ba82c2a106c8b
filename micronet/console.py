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
