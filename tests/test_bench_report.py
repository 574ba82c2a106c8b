"""Report format (JSON/CSV/Markdown/console), merging, environment and plots, on synthetic rows."""

from __future__ import annotations

import csv
import json
from datetime import datetime

import numpy as np
import pytest

from micronet.bench import report as rep
from micronet.bench.environment import collect_environment, noise_warnings
from micronet.bench.latency import LatencyStats
from micronet.bench.plots import plot_all
from micronet.errors import MicronetError


def _latency(center_ms: float, n: int = 40, seed: int = 0) -> dict:
    samples = list(center_ms * (1 + 0.05 * np.abs(np.random.default_rng(seed).standard_normal(n))))
    stats = LatencyStats.from_samples(samples).__dict__
    return {"warmup": 5, "runs_requested": n, "min_seconds": None, **stats, "measured_s": sum(samples) / 1e3,
            "stopped_by": "runs", "samples_ms": samples, "end_to_end": None}


def _rows(with_accuracy: bool = True) -> list[dict]:
    rows = []
    engines = [("onnxruntime", "onnx", "float32", 1.0, None, 1), ("litert", "tflite", "int8", 1.3, True, 1),
               ("litert", "tflite", "int8", 2.9, False, 1), ("onnxruntime", "onnx", "float32", 0.7, None, 2)]
    for i, (variant, madds) in enumerate([("m0", 6_120_032), ("m1", 12_743_440), ("m3", 28_954_576)]):
        for runtime, fmt, quant, factor, xnnpack, threads in engines:
            rows.append(rep.make_row(
                model=f"exports/{variant}_{quant}.{fmt}", name=f"{variant}_{quant}.{fmt}", variant=variant, format=fmt,
                quantize=quant, runtime=runtime, runtime_version="1.0", threads=threads,
                xnnpack=xnnpack, xnnpack_applied=xnnpack,
                madds=madds, params=1_000_000 + i, size_bytes=2_000_000, size_mib=2_000_000 / 2**20, init_ms=12.5,
                first_ms=5.0, latency=_latency(factor * madds / 3e6, seed=i),
                memory={"baseline_rss_mib": 30.0, "after_import_rss_mib": 50.0, "after_load_rss_mib": 60.0,
                        "peak_rss_mib": 61.0, "model_mib": 11.0, "inferences": 10},
                accuracy={"top1": 40.0 + 5 * i - (2 if quant == "int8" else 0), "top5": 70.0 + i, "count": 500,
                          "skipped": 0, "skipped_examples": [], "classes": 1000, "limit": 500, "batch": 1}
                if with_accuracy else None,
                settings={"runtime": runtime, "threads": 1},
            ))
    rows.append(rep.make_row(model="exports/broken.onnx", name="broken.onnx", format="onnx", runtime="onnxruntime",
                             threads=1, invalid=True, invalid_reason="cannot load broken.onnx with onnxruntime: bad"))
    return rows


@pytest.fixture
def report() -> dict:
    return rep.make_report(collect_environment([1]), {"warmup": 5, "runs": 40}, _rows())


def test_json_round_trips_through_merge(report, tmp_path):
    a = rep.write_json(report, tmp_path / "a.json")
    other = json.loads(json.dumps(report))
    other["environment"]["hostname"] = "phone-farm"
    b = rep.write_json(other, tmp_path / "sub" / "b.json")  # parent folders are created
    merged = rep.merge_reports([a, b])
    n = len(report["results"])
    assert len(merged) == 2 * n
    assert [{k: v for k, v in r.items() if k != "source"} for r in merged[:n]] == json.loads(json.dumps(report["results"]))
    assert merged[0]["source"]["path"] == str(a) and merged[n]["source"]["hostname"] == "phone-farm"
    assert merged[0]["latency"]["samples_ms"] == pytest.approx(report["results"][0]["latency"]["samples_ms"])
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files behind


def test_every_row_has_every_schema_field_in_order(report):
    for row in report["results"]:
        assert tuple(row)[: len(rep.ROW_FIELDS)] == rep.ROW_FIELDS
        assert row["device"] == "local"
    assert report["schema_version"] == 1 and report["kind"] == "micronet-bench-report"
    with pytest.raises(ValueError, match="unknown report row fields"):
        rep.make_row(model="m", name="m", format="onnx", runtime="onnxruntime", threads=1, latency_p50=1.0)


def test_foreign_corrupt_and_newer_files_are_refused(report, tmp_path):
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"results": []}))
    with pytest.raises(MicronetError, match="not a micronet benchmark report"):
        rep.merge_reports([foreign])
    good = rep.write_json(report, tmp_path / "good.json")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(good.read_text()[:200])
    with pytest.raises(MicronetError, match=r"corrupt\.json is not valid JSON \(line \d+"):
        rep.merge_reports([good, corrupt])
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**report, "schema_version": 2}))
    with pytest.raises(MicronetError, match="schema 2, newer than this micronet reads"):
        rep.merge_reports([newer])
    with pytest.raises(MicronetError, match="report not found"):
        rep.merge_reports([tmp_path / "absent.json"])
    with pytest.raises(MicronetError, match="no reports"):
        rep.merge_reports([])


def test_csv_has_one_line_per_row_and_no_raw_samples(report, tmp_path):
    path = rep.write_csv(report, tmp_path / "r.csv")
    with path.open(newline="") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == len(report["results"])
    assert "samples_ms" not in lines[0] and "p50_ms" in lines[0]
    assert float(lines[0]["p50_ms"]) == pytest.approx(report["results"][0]["latency"]["p50_ms"])
    assert lines[-1]["invalid"] == "True" and lines[-1]["p50_ms"] == ""
    assert lines[1]["input_layout"] == "" and lines[1]["xnnpack"] == "True" and lines[2]["xnnpack"] == "False"


def test_markdown_table_for_pr_comments(report, tmp_path):
    text = rep.write_markdown(report, tmp_path / "r.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(report["results"])  # header, rule, one line per row
    assert "p50 ms" in table[0] and "MAdds" in table[0]
    assert "| m0_float32.onnx | local | onnx | float32 | onnxruntime |" in text
    assert "invalid: cannot load broken.onnx" in table[-1]
    assert text.startswith("**MicroNet benchmark** · ") and f"Python {report['environment']['python']['version']}" in text


def test_console_table_renders_every_row(report):
    from rich.console import Console

    console = Console(record=True, width=250)
    rep.print_report(report, console=console)
    out = console.export_text()
    for row in report["results"]:
        assert row["name"] in out
    assert "invalid" in out


def test_noise_warnings_name_what_makes_numbers_noisy():
    env = {"cpu": {"logical_cores": 2, "load_avg_1m": 3.5, "governor": "powersave"}, "threads": {"cpu_affinity": [0, 1]}}
    warnings = noise_warnings(env, [1, 4])
    assert warnings == [
        "machine busy: 1-minute load average 3.5 on 2 CPUs; latency will be noisy",
        "threads [4] exceed the 2 CPUs available to this process; threads will time-share",
        "CPU frequency governor is 'powersave'; 'performance' gives steadier latency",
    ]
    quiet = {"cpu": {"logical_cores": 8, "load_avg_1m": 0.2, "governor": "performance"}, "threads": {}}
    assert noise_warnings(quiet, [1, 8]) == []
    report = rep.make_report({}, {}, _rows(), warnings=warnings)
    assert report["warnings"] == warnings and "> ⚠️ machine busy" in rep.markdown_text(report)


def test_environment_fingerprint_is_complete_and_never_fails():
    env = collect_environment([1, 2])
    assert datetime.fromisoformat(env["timestamp_utc"]).utcoffset().total_seconds() == 0
    assert env["libraries"]["numpy"] == np.__version__
    assert env["cpu"]["logical_cores"] >= 1 and env["threads"]["requested"] == [1, 2]
    assert {"model", "governor", "cur_mhz", "physical_cores"} <= set(env["cpu"])
    assert env["python"]["version"].startswith("3.")
    json.dumps(env, allow_nan=False)  # JSON-ready as collected


def _is_png(path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_are_written_as_pngs(tmp_path):
    written = plot_all(_rows(), tmp_path)
    assert sorted(p.name for p in written) == ["accuracy_vs_latency.png", "latency_distribution.png",
                                               "latency_vs_madds.png"]
    assert all(_is_png(p) for p in written)
    without_accuracy = plot_all(_rows(with_accuracy=False), tmp_path / "no_acc")
    assert sorted(p.name for p in without_accuracy) == ["latency_distribution.png", "latency_vs_madds.png"]
    one_model = [r for r in _rows() if r.get("variant") == "m0"]  # one MAdds value: nothing to draw a curve through
    assert [p.name for p in plot_all(one_model, tmp_path / "one")] == ["accuracy_vs_latency.png",
                                                                       "latency_distribution.png"]
    with pytest.raises(MicronetError, match="nothing to plot"):
        plot_all([r for r in _rows() if r["invalid"]], tmp_path / "none")
