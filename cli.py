"""The ``micronet`` command: parses arguments and calls library functions, nothing more.

Every command has a Python twin that the tests call directly. Mistakes a user can make surface as
``MicronetError`` and become one line on stderr with exit code 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from micronet.errors import MicronetError

app = typer.Typer(
    help="MicroNet for the edge: build, count, export and benchmark the MicroNet image classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
budget_app = typer.Typer(help="FLOP/parameter budgets (the CI gate).", no_args_is_help=True)
app.add_typer(budget_app, name="budget")

VariantOpt = typer.Option("m0", "--variant", "-v", help="m0 m1 m2 m3 release-m0 release-m3 (aliases release-m1, release-m2)")
InputSizeOpt = typer.Option(224, "--input-size", help="input resolution in pixels, a multiple of 32")
DEFAULT_BUDGETS = Path("budgets.toml")


@app.command()
def variants(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List the variants with their measured params/MAdds beside the published figures."""
    from micronet.counting import count_variant
    from micronet.registry import VARIANTS

    rows = []
    for info in VARIANTS.values():
        counts = count_variant(info.name)
        rows.append({"name": info.name, "aliases": list(info.aliases), "params": counts.params, "madds": counts.madds,
                     "paper_madds": info.paper_madds, "paper_params": info.paper_params,
                     "release_checkpoint": info.checkpoint, "release_top1": info.release_top1,
                     "description": info.description})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    from micronet.console import console

    table = Table(title="MicroNet variants (224x224, 1000 classes)")
    for col in ("variant", "params", "MAdds", "published", "released weights (top-1)", "what it is"):
        table.add_column(col, justify="right" if col in ("params", "MAdds") else "left", no_wrap=col != "what it is")
    for r in rows:
        name = r["name"] + (f" ({', '.join(r['aliases'])})" if r["aliases"] else "")
        weights = f"{r['release_checkpoint']} ({r['release_top1']}%)" if r["release_checkpoint"] else "-"
        table.add_row(name, f"{r['params']:,}", f"{r['madds']:,}", f"{r['paper_madds']} MAdds, {r['paper_params']}",
                      weights, r["description"])
    console.print(table)


@app.command()
def flops(
    variant: str = VariantOpt,
    input_size: int = InputSizeOpt,
    num_classes: int = typer.Option(1000, "--num-classes"),
    per_layer: bool = typer.Option(False, "--per-layer", help="one row per conv/Linear/Shift-Max/BN layer"),
    as_json: bool = typer.Option(False, "--json", help="print the full table as JSON"),
) -> None:
    """MAdds and parameters per stage (or per layer), cross-checked against torch's FlopCounterMode."""
    from micronet.counting import count_variant, cross_check
    from micronet.registry import resolve_variant

    name = resolve_variant(variant).name
    counts = count_variant(name, input_size=input_size, num_classes=num_classes)
    check = cross_check(name, input_size=input_size)
    if as_json:
        data = counts.to_dict()
        data["other_conventions"] = check
        if not per_layer:
            data.pop("layers")
        print(json.dumps(data, indent=2))
        return
    from micronet.console import console, conventions_note, counts_table

    console.print(counts_table(counts, per_layer=per_layer))
    console.print(conventions_note(check))


@app.command("export")
def export_cmd(
    variant: str = VariantOpt,
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="onnx or tflite (default tflite)"),
    quantize: Optional[str] = typer.Option(None, "--quantize", "-q",
                                           help="TFLite: int8 (default), float32, float16 or dynamic"),
    all_formats: bool = typer.Option(False, "--all", help="write ONNX and every TFLite quantization"),
    weights: Optional[Path] = typer.Option(None, "--weights", help="checkpoint: ours or the authors' micronet-m*.pth"),
    calibration: Optional[Path] = typer.Option(None, "--calibration",
                                               help="folder of your images for int8 calibration and parity"),
    calib_count: int = typer.Option(200, "--calib-count", help="calibration images (deterministic sample)"),
    seed: int = typer.Option(0, "--seed", help="seed of the calibration sample"),
    input_size: int = InputSizeOpt,
    num_classes: int = typer.Option(1000, "--num-classes"),
    output: Path = typer.Option(Path("exports"), "--output", "-o", help="output folder"),
    io_dtype: str = typer.Option("int8", "--io-dtype", help="int8 model input/output type: int8 or uint8"),
    per_tensor: bool = typer.Option(False, "--per-tensor", help="int8 weights per tensor instead of per channel"),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="ONNX with a symbolic batch dimension"),
) -> None:
    """Export to ONNX and/or TFLite, checking every stage numerically against the one before."""
    from micronet.console import console, export_summary, parity_table
    from micronet.export.pipeline import ExportRequest, ParityFailure, export, resolve_targets

    request = ExportRequest(
        variant=variant, targets=resolve_targets(fmt, quantize, all_formats), weights=weights,
        calibration=calibration, calib_count=calib_count, seed=seed, input_size=input_size,
        num_classes=num_classes, output_dir=output, io_dtype=io_dtype, per_channel=not per_tensor,
        dynamic_batch=dynamic_batch,
    )
    try:
        with console.status("exporting", spinner="dots") as status:
            def progress(message: str) -> None:
                console.print(message)
                status.update(message)

            result = export(request, progress=progress)
    except ParityFailure as failure:
        console.print(parity_table(failure.rungs))
        raise
    console.print(parity_table(result.rungs))
    console.print(export_summary(result))


@budget_app.command("check")
def budget_check(budgets: Path = typer.Argument(DEFAULT_BUDGETS, help="TOML file of per-variant ceilings")) -> None:
    """Fail (exit 1) naming every variant whose MAdds or params exceed its budget."""
    from micronet.budget import check_budgets
    from micronet.console import console

    results = check_budgets(budgets)
    over = [r for r in results if not r.ok]
    for r in results:
        mark = "[green]ok[/green]  " if r.ok else "[red]OVER[/red]"
        console.print(f"{mark} {r.variant:<11} {r.metric:<6} measured {r.measured:>12,}  allowed {r.allowed:>12,}")
    if over:
        names = ", ".join(sorted({f"{r.variant} ({r.metric} {r.measured:,} > {r.allowed:,})" for r in over}))
        console.print(f"[red]over budget:[/red] {names}")
        raise typer.Exit(1)
    console.print(f"all {len(results)} budgets hold ({budgets})")


def main() -> None:
    """Console-script entry point: user mistakes become one line and exit code 2."""
    try:
        app()
    except MicronetError as exc:
        from micronet.console import err_console

        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
