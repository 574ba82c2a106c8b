"""Merged reports stay readable: every row's label names what tells it apart, lines join only what
differs in the variant, labels do not overlap, warnings survive a merge, and tables never cut a number
(issue #13, items 10 and 7)."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys

from rich.console import Console

from micronet.bench import report as rep
from micronet.bench.plots import line_groups, place_labels, plot_all, runs_caption, text_size
from test_bench_report import _latency
from test_cli import REPO


def _row(variant: str = "m0", size: int = 224, threads: int = 1, device: str = "local", fmt: str = "tflite",
         quantize: str = "int8", runtime: str = "litert", xnnpack: bool | None = True, madds: int | None = None,
         p50: float = 3.0, top1: float | None = 61.25, **extra) -> dict:
    madds = madds or {"m0": 6_120_032, "m1": 12_743_440}[variant] * size * size // (224 * 224)
    suffix = "onnx" if fmt == "onnx" else f"{quantize}.tflite"
    return rep.make_row(
        model=f"exports/micronet-{variant}-{size}.{suffix}", name=f"micronet-{variant}-{size}.{suffix}",
        variant=variant, format=fmt, quantize=quantize, runtime=runtime, runtime_version="2.1.0", threads=threads,
        xnnpack=xnnpack if fmt == "tflite" else None, device=device, madds=madds, params=1_777_587,
        input={"name": "x", "shape": [1, size, size, 3], "dtype": "int8", "layout": "NHWC"},
        size_bytes=2_345_678, size_mib=2.237, init_ms=123.456, first_ms=45.678, latency=_latency(p50),
        memory={"peak_rss_mib": 187.3}, accuracy=None if top1 is None else {"top1": top1, "count": 500},
        **extra)


def test_labels_name_input_size_device_and_threads_when_they_differ():
    rows = [_row(size=32), _row(size=160), _row(size=224)]
    assert rep.row_labels(rows) == ["m0 · 32 px", "m0 · 160 px", "m0 · 224 px"]
    rows = [_row(device="pi4"), _row(device="pixel7"), _row(threads=4, device="pi4")]
    labels = rep.row_labels(rows)
    assert len(set(labels)) == 3 and "@ pixel7" in labels[1] and "4 threads" in labels[2]
    mixed = [_row(variant=v, size=s, threads=t) for v, s, t in itertools.product(("m0", "m1"), (32, 224), (1, 4))]
    mixed += [_row(fmt="onnx", quantize="float32", runtime="onnxruntime"), _row(xnnpack=False)]
    labels = rep.row_labels(mixed)
    assert len(set(labels)) == len(mixed)
    assert labels[0] == "m0 · 32 px · 1 thread"  # the fewest parts that tell it apart, model first
    assert rep.row_labels([_row(), _row()]) == ["m0 · #1", "m0 · #2"]  # identical runs are still two labels


def test_labels_count_what_a_table_column_already_shows():
    rows = [_row(threads=1), _row(threads=4), _row(size=32)]
    parts = rep.distinguishing_parts(rows, shown=("engine", "runtime", "threads", "xnnpack"))
    assert parts == [["224 px"], [], ["32 px"]]  # the 4-thread row is told apart by its threads column
    text = rep.markdown_text(rows)
    assert "micronet-m0-32.int8.tflite" in text and "micronet-m0-224.int8.tflite" in text


def test_merged_hosts_get_their_hostname():
    a = _row(source={"path": "a.json", "hostname": "laptop"})
    b = _row(source={"path": "b.json", "hostname": "ci-runner"})
    assert rep.row_labels([a, b]) == ["m0 · @ laptop", "m0 · @ ci-runner"]


def test_lines_join_rows_that_differ_in_the_variant_alone():
    rows = [_row("m0", 224), _row("m1", 224), _row("m0", 32), _row("m1", 32), _row("m0", 160),
            _row("m0", 224, threads=4), _row("m1", 224, device="pi4"), _row("m0", 224, device="pi4")]
    groups = [[(r["variant"], rep.input_pixels(r), r["threads"], r["device"]) for r in g] for g in line_groups(rows)]
    assert sorted(groups) == sorted([
        [("m0", "224 px", 1, "local"), ("m1", "224 px", 1, "local")],
        [("m0", "32 px", 1, "local"), ("m1", "32 px", 1, "local")],
        [("m0", "160 px", 1, "local")],
        [("m0", "224 px", 4, "local")],
        [("m0", "224 px", 1, "pi4"), ("m1", "224 px", 1, "pi4")],
    ])
    twice = [_row("m0", source={"path": "a.json"}), _row("m1", source={"path": "a.json"}),
             _row("m0", source={"path": "b.json"})]
    assert sorted(len(g) for g in line_groups(twice)) == [1, 2]  # one variant twice: split by source


def _boxes(anchors, sizes, offsets):
    return [(x + dx, y + dy, x + dx + w, y + dy + h) for (x, y), (w, h), (dx, dy) in zip(anchors, sizes, offsets)]


def test_placed_labels_never_overlap():
    anchors = [(100.0, 100.0)] * 6 + [(104.0, 101.0), (300.0, 50.0), (101.0, 99.0)]
    texts = ["m0 · 32 px", "m0 · 160 px", "m0 · 224 px", "m1", "m2 · 4 threads", "m3", "m0 · @ pi4", "far", "x"]
    sizes = [text_size(t) for t in texts]
    boxes = _boxes(anchors, sizes, place_labels(anchors, sizes))
    for a, b in itertools.combinations(boxes, 2):
        assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    assert len({(b[0], b[1]) for b in boxes}) == len(boxes)
    assert place_labels([(0.0, 0.0)], [(10.0, 5.0)]) == [(5.0, 5.0)]  # alone: just above right of its point


def test_run_counts_per_box():
    assert runs_caption([100, 100, 100]) == ("100 timed runs each", None)
    caption, suffixes = runs_caption([100, 1000])
    assert "per box" in caption and suffixes == [" (n=100)", " (n=1,000)"]


def test_merged_report_keeps_every_sources_warnings(tmp_path):
    busy = rep.make_report({"hostname": "laptop"}, {}, [_row(size=32)], ["machine busy: load 3.5 on 2 CPUs"])
    quiet = rep.make_report({"hostname": "ci"}, {}, [_row(size=224)], [])
    a, b = rep.write_json(busy, tmp_path / "a.json"), rep.write_json(quiet, tmp_path / "b.json")
    merged = rep.merged_report([a, b])
    assert merged["warnings"] == [f"{a} (laptop): machine busy: load 3.5 on 2 CPUs"]
    assert [s["hostname"] for s in merged["merged_from"]] == ["laptop", "ci"]
    assert rep.merge_reports([a, b]) == merged["results"]
    assert f"> ⚠️ {a} (laptop): machine busy" in rep.markdown_text(merged)
    remerged = rep.merged_report([rep.write_json(merged, tmp_path / "m.json")])
    assert [r["source"]["hostname"] for r in remerged["results"]] == ["laptop", "ci"]  # sources survive
    console = Console(record=True, width=100, file=open(os.devnull, "w"))
    rep.print_report(merged, console=console)
    assert console.export_text().count("machine busy") == 1

    result = subprocess.run([sys.executable, "-m", "micronet.cli", "report", str(a), str(b), "--no-plots",
                             "--out", str(tmp_path / "merged")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "machine busy" in result.stdout
    saved = json.loads((tmp_path / "merged" / "merged.json").read_text())
    assert saved["warnings"] == merged["warnings"]


def test_merged_plots_are_written(tmp_path):
    rows = [_row(v, s, threads=t) for v, s, t in itertools.product(("m0", "m1"), (32, 160, 224), (1, 2))]
    rows[0]["latency"] = _latency(1.0, n=10)  # boxes of unequal run counts
    written = plot_all(rows, tmp_path)
    assert sorted(p.name for p in written) == ["accuracy_vs_latency.png", "latency_distribution.png",
                                               "latency_vs_madds.png"]
    assert all(p.stat().st_size > 1000 for p in written)


# ------------------------------------------------------------------------------------------ widths


def _wide_report() -> dict:
    rows = [_row("m0", 224, runtime="tflite-runtime", threads=4, xnnpack=False, device="raspberrypi-5", p50=12.345),
            _row("m1", 224, fmt="onnx", quantize="float32", runtime="onnxruntime", p50=123.456, top1=67.891),
            rep.make_row(model="broken.onnx", name="broken.onnx", format="onnx", runtime="onnxruntime", threads=1,
                         invalid=True, invalid_reason="cannot load")]
    return rep.make_report({"hostname": "laptop"}, {}, rows, ["machine busy: test"])


def _numbers(report: dict) -> list[str]:
    """Every number cell of the console table, as printed (top-1 included)."""
    return [c for row in report["results"] for c in rep.console_cells(row)[2:10] if c != "—"]


def test_console_table_at_80_columns_drops_columns_but_never_cuts_a_number():
    report = _wide_report()
    console = Console(record=True, width=80, force_terminal=True, file=open(os.devnull, "w"))
    rep.print_report(report, console=console)
    text = console.export_text()
    assert "…" not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    for row in report["results"][:2]:
        cells = rep.console_cells(row)
        for kept in (cells[3], cells[9]):  # p50 and top-1 stay, whole
            assert re.search(rf"(?<![\d.]){re.escape(kept)}(?![\d.])", text), kept
    assert "left out to fit 80 columns: first" in text


def test_console_table_through_a_pipe_is_whole(tmp_path):
    """Piped (CI, logs, | less) with COLUMNS unset, the table is printed at its natural width."""
    path = rep.write_json(_wide_report(), tmp_path / "wide.json")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    result = subprocess.run([sys.executable, "-m", "micronet.cli", "report", str(path), "--no-plots",
                             "--out", str(tmp_path / "merged")], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    for number in _numbers(_wide_report()):
        assert re.search(rf"(?<![\d.]){re.escape(number)}(?![\d.])", result.stdout), number
    assert "left out" not in result.stdout
