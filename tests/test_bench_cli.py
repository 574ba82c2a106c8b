"""`micronet bench` and `micronet report` as a user runs them, and their bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from micronet.bench import gate
from test_cli import assert_one_line_error, run_cli


def _digits_like(root: Path, classes: int = 10, per_class: int = 2) -> Path:
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (40, 40), (25 * c, 10 * i, 128)).save(root / f"class{c}" / f"{i}.png")
    return root


def _report(folder: Path) -> dict:
    [path] = folder.glob("bench-*.json")
    return json.loads(path.read_text())


@pytest.mark.slow
def test_bench_files_writes_json_csv_md_and_report_merges_with_plots(exported_m0_small, tmp_path):
    files = [str(exported_m0_small[k]) for k in ("onnx", "float32", "int8")]
    result = run_cli("bench", *files, "--runs", "20", "--warmup", "2", "--no-memory", "--out", str(tmp_path / "a"))
    assert result.returncode == 0, result.stderr[-2000:]
    report = _report(tmp_path / "a")
    assert report["schema_version"] == 1
    rows = report["results"]
    assert {(r["format"], r["quantize"], r["runtime"]) for r in rows} >= {
        ("onnx", "float32", "onnxruntime"), ("tflite", "float32", "litert"), ("tflite", "int8", "litert")}
    for r in rows:
        assert not r["invalid"], r["invalid_reason"]
        lat = r["latency"]
        assert lat["count"] == 20 and len(lat["samples_ms"]) == 20
        assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert r["madds"] > 0 and r["size_bytes"] > 0 and r["threads"] == 1
    assert {p.suffix for p in (tmp_path / "a").iterdir()} == {".json", ".csv", ".md"}
    assert report["environment"]["cpu"]["logical_cores"] >= 1

    second = run_cli("bench", files[2], "--runs", "10", "--warmup", "1", "--no-memory", "--out", str(tmp_path / "b"))
    assert second.returncode == 0, second.stderr[-2000:]
    merged = run_cli("report", *map(str, (tmp_path / "a").glob("*.json")), *map(str, (tmp_path / "b").glob("*.json")),
                     "--out", str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr[-2000:]
    written = sorted(p.name for p in (tmp_path / "merged").iterdir())
    assert "merged.md" in written and "merged.csv" in written
    assert any(name.endswith(".png") for name in written)
    second_rows = _report(tmp_path / "b")["results"]
    lines = (tmp_path / "merged" / "merged.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + len(rows) + len(second_rows)  # header + every row of both runs


@pytest.mark.slow
def test_accuracy_on_a_folder_with_a_non_image_file(exported_m0_small, tmp_path):
    data = _digits_like(tmp_path / "data", classes=1000 // 100, per_class=1)
    (data / "class0" / "README.txt").write_text("not an image")
    # The m0 export has 1000 classes and this folder 10: a mistake in the request, found before anything
    # is measured: one line, exit 2, no report (it used to be an invalid row and exit 0).
    result = run_cli("bench", str(exported_m0_small["int8"]), "--data", str(data), "--no-memory", "--runs", "5",
                     "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "the data has 10 classes but micronet-m0-64.int8.tflite outputs 1000 logits")
    assert result.returncode == 2 and "labels file" not in result.stderr
    assert not (tmp_path / "r").exists()


def test_gate_measures_drops_against_the_torch_row():
    rows = [
        {"format": "torch", "variant": "m0", "name": "m0 (PyTorch)", "runtime": "torch", "accuracy": {"top1": 95.0}},
        {"format": "tflite", "variant": "m0", "name": "int8", "runtime": "litert", "accuracy": {"top1": 93.0}},
        {"format": "onnx", "variant": "m0", "name": "onnx", "runtime": "onnxruntime", "accuracy": {"top1": 95.0}},
        {"format": "onnx", "variant": "m1", "name": "other", "runtime": "onnxruntime", "accuracy": {"top1": 10.0}},
    ]
    drops = {d["name"]: d["drop"] for d in gate.accuracy_drops(rows)}
    assert drops == {"int8": 2.0, "onnx": 0.0}
    assert [d["name"] for d in gate.over_budget(rows, 1.5)] == ["int8"]


@pytest.mark.slow
def test_bench_bad_inputs_are_one_line(tmp_path, exported_m0_small):
    corrupt = tmp_path / "broken.tflite"
    corrupt.write_bytes(b"\x00garbage" * 10)
    empty = tmp_path / "empty"
    empty.mkdir()
    onnx = str(exported_m0_small["onnx"])
    cases = [
        (["bench", str(tmp_path / "missing.onnx")], "model file not found"),
        (["bench", str(corrupt), "--runs", "5", "--no-memory"], "is not a TFLite flatbuffer"),
        (["bench", onnx, "--runtime", "tflite-runtime"], "pip install tflite-runtime"),
        (["bench", onnx, "--runs", "0"], "runs"),
        (["bench", onnx, "--runs", "-3"], "runs"),
        (["bench", onnx, "--warmup", "-1"], "warmup"),
        (["bench", onnx, "--data", str(empty)], "no class folders"),
        (["bench", onnx, "--data", str(tmp_path / "nope")], "data folder not found"),
        (["bench", onnx, "--max-drop", "1"], "--max-drop needs --data"),
        (["bench", "--variant", "m0", "--format", "coreml"], "unknown format 'coreml'"),
        (["bench"], "give model files, or --variant, or --matrix"),
    ]
    for args, message in cases:
        result = run_cli(*args, "--out", str(tmp_path / "out"))
        assert_one_line_error(result, message)
        assert result.returncode == 2
