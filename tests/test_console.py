"""Console tables: no number or name is ever cut, in an 80-column terminal or a narrower one."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console
from rich.table import Table

from micronet.console import (
    EXPORT_DROP,
    LAYERS_DROP,
    PARITY_DROP,
    STAGES_DROP,
    VARIANTS_DROP,
    counts_table,
    export_summary,
    fit_table,
    make_console,
    parity_table,
    print_table,
    variants_table,
)
from micronet.counting import count_variant
from micronet.registry import variant_rows


def terminal(width: int) -> Console:
    """A terminal of ``width`` columns whose output the test can read (no colour codes)."""
    return Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)


def render(table: Table, drop=(), width: int = 80) -> str:
    out = terminal(width)
    print_table(table, drop, out)
    return out.file.getvalue()


def assert_whole(text: str, cells) -> None:
    assert "…" not in text
    for cell in cells:
        assert cell in text, f"{cell!r} is not whole in:\n{text}"


def max_line(text: str) -> int:
    return max(len(line) for line in text.splitlines())


RUNGS = [
    ("deploy", "pytorch training form", "rel_max_abs_err", 3.1e-6, 1e-4),
    ("deploy_fast", "deploy", "rel_max_abs_err", 2e-6, 1e-4),
    ("deploy_fast_onnxruntime", "deploy_fast", "rel_max_abs_err", 1e-6, 1e-4),
    ("tflite_float32", "onnx", "rel_max_abs_err", 2e-6, 1e-4),
    ("tflite_float16", "tflite_float32", "rel_max_abs_err", 2.5e-3, 1e-2),
    ("tflite_int8", "tflite_float32", "cosine", 0.9912, 0.98),
]


def parity_rungs() -> list[dict]:
    return [{"rung": name, "reference": ref, "passed": name != "tflite_int8", "metric": metric, "value": value,
             "limit": limit, "cosine": 0.9999871, "top1_agreement_pct": 98.4375}
            for name, ref, metric, value, limit in RUNGS]


def export_result(tmp_path: Path) -> SimpleNamespace:
    artifacts, manifests = [], []
    for quantize, size in (("float32", 10_532_132), ("float16", 5_280_000), ("int8", 3_012_345)):
        artifact = tmp_path / f"micronet-release-m3-224.{quantize}.tflite"
        manifest = tmp_path / f"{artifact.name}.json"
        inp = {"layout": "NHWC", "dtype": "int8" if quantize == "int8" else "float32"}
        if quantize == "int8":
            inp["quantization"] = {"scale": 0.018658447265625, "zero_point": -14}
        manifest.write_text(json.dumps({"format": "tflite", "quantize": quantize, "input": inp,
                                        "size_bytes": size, "ops": {"total": 187}}))
        artifacts.append(artifact)
        manifests.append(manifest)
    return SimpleNamespace(artifacts=artifacts, manifests=manifests)


# --- each table at 80 columns and narrower ---------------------------------------------------------

@pytest.mark.parametrize("width", [80, 60])
def test_variants_table(width):
    rows = variant_rows()
    text = render(variants_table(rows), VARIANTS_DROP, width)
    assert_whole(text, [f"{r['params']:,}" for r in rows] + [f"{r['madds']:,}" for r in rows]
                 + ["m0 (release-m1)", "m1 (release-m2)", "release-m3"])
    assert max_line(text) <= width
    wide = render(variants_table(rows), VARIANTS_DROP, 200)  # room for everything: nothing dropped
    assert_whole(wide, ["micronet-m3.pth (62.5%)", "44M MAdds, 4.5M"] + [r["description"] for r in rows])


@pytest.mark.parametrize("width", [80, 50])
@pytest.mark.parametrize("variant", ["m0", "release-m3"])
def test_stage_table(width, variant):
    counts = count_variant(variant, num_classes=10)
    text = render(counts_table(counts), STAGES_DROP, width)
    stages = counts.by_stage()
    assert_whole(text, [s["stage"] for s in stages] + [f"{s['madds']:,}" for s in stages]
                 + [f"{s['params']:,}" for s in stages] + [f"{counts.madds:,}", f"{counts.params:,}"])
    assert max_line(text) <= width
    if width == 80:  # the MAdds split fits at 80, with two-line headers
        assert_whole(text, [f"{s['shiftmax']:,}" for s in stages] + ["Shift-Max"])


def test_per_layer_table():
    counts = count_variant("release-m3")
    text = render(counts_table(counts, per_layer=True), LAYERS_DROP)
    assert_whole(text, [row.name for row in counts.layers] + [f"{row.madds:,}" for row in counts.layers]
                 + [f"{counts.madds:,}"])
    assert max_line(text) <= 80
    names = {row.name for row in counts.layers}
    for line in text.splitlines():
        if line.startswith("│ blocks."):
            assert line.split("│")[1].strip() in names  # one name per cell, never wrapped


@pytest.mark.parametrize("width", [80, 50])
def test_export_summary_keeps_file_names_apart(tmp_path, width):
    text = render(export_summary(export_result(tmp_path)), EXPORT_DROP, width)
    assert_whole(text, ["micronet-release-m3-224.float32.tflite", "micronet-release-m3-224.float16.tflite",
                        "micronet-release-m3-224.int8.tflite", "10.04 MiB", "5.04 MiB", "2.87 MiB"])
    if width == 80:
        assert max_line(text) <= 80 and "NHWC" in text  # the input column fits beside the names


def test_parity_table():
    text = render(parity_table(parity_rungs()), PARITY_DROP)
    assert_whole(text, [name for name, *_ in RUNGS] + ["98.4%", "FAIL", "3.1e-06", "0.0001", "0.991", "0.98"])
    assert max_line(text) <= 80


# --- the fitting helper -----------------------------------------------------------------------------

def numbers_table(columns: int = 8) -> Table:
    table = Table(title="t")
    for i in range(columns):
        table.add_column(f"column {i}", justify="right", no_wrap=True)
    table.add_row(*(f"{10**9 + i:,}" for i in range(columns)))
    return table


def test_rich_alone_would_cut_numbers():
    """The failure fit_table exists for: rich squeezes no_wrap cells into an ellipsis."""
    out = terminal(80)
    out.print(numbers_table())
    assert "…" in out.file.getvalue()


def test_fit_table_drops_named_columns_first_in_order():
    table = numbers_table()
    width = fit_table(table, 80, drop=("column 7", "column 0", "column 3", "column 5", "column 1"),
                      console=terminal(80))
    assert width <= 80
    headers = [str(c.header) for c in table.columns]
    assert headers == ["column 1", "column 2", "column 4", "column 6"]  # four dropped, the fifth not needed
    assert all(c.min_width == len("1,000,000,001") for c in table.columns)


def test_fit_table_too_narrow_prints_wider_rather_than_cut():
    text = render(numbers_table(), drop=(), width=40)
    assert "…" not in text and "1,000,000,007" in text
    assert max_line(text) > 40


def test_free_text_wraps_between_words_only():
    table = Table()
    table.add_column("name", no_wrap=True)
    table.add_column("what it is")
    table.add_row("deploy_fast_onnxruntime", "a sentence that is much longer than the space left for it here")
    text = render(table, width=50)
    assert "deploy_fast_onnxruntime" in text and "…" not in text
    words = " ".join(line.split("│")[2].strip() for line in text.splitlines() if line.count("│") == 3)
    assert words.split() == "a sentence that is much longer than the space left for it here".split()


def test_a_table_in_a_pipe_is_printed_at_its_natural_width():
    out = Console(file=io.StringIO(), width=80)  # not a terminal
    print_table(numbers_table(12), drop=("column 0",), console=out)
    text = out.file.getvalue()
    assert_whole(text, [f"{10**9 + i:,}" for i in range(12)])  # nothing dropped either
    assert max_line(text) > 80


def test_console_for_a_pipe_is_wide(monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.setenv("COLUMNS", "80")
    assert make_console().width > 80  # pytest captures stdout: not a terminal
