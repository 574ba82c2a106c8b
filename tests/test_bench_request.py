"""`micronet bench` checks every argument before it exports or measures, and says by its exit status
whether anything was measured (issue #13, items 4 and 8)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from micronet.bench import report as rep
from micronet.bench.request import BenchRequest
from micronet.errors import MicronetError
from test_cli import REPO, assert_one_line_error


def _run(*args: str, cache: Path) -> subprocess.CompletedProcess:
    """The CLI in a fresh process whose export cache is ``cache`` (bench/cache.py reads MICRONET_CACHE)."""
    env = {**os.environ, "COLUMNS": "200", "MICRONET_CACHE": str(cache), "MICRONET_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "micronet.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env)


def _class_folders(root: Path, classes: int) -> Path:
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        Image.new("RGB", (40, 40), (20 * c, 0, 128)).save(root / f"class{c}" / "0.png")
    return root


def _exports(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []


@pytest.mark.slow
def test_bad_arguments_fail_before_any_export(tmp_path):
    """Each mistake is one line and exit 2, and the export cache stays empty: nothing was exported first.
    (Before the fix, --device, --threads, --runtime, --out and the data's classes were checked after
    the export; --variant m0 --format onnx at 32 px keeps that old export short.)"""
    data = _class_folders(tmp_path / "data", 3)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    variant = ["bench", "--variant", "m0", "--format", "onnx", "--input-size", "32", "--runs", "2", "--no-memory"]
    cases = [
        (["--device", "pi4"], "unknown device 'pi4'"),
        (["--threads", "0"], "threads must be a positive whole number"),
        (["--runtime", "coreml"], "coreml"),
        (["--data", str(data)], "the data has 3 classes but the model outputs 1000 logits"),
        (["--data", str(data), "--num-classes", "3", "--limit", "0"], "limit must be a whole number"),
        (["--data", str(tmp_path / "absent")], "data folder not found"),
        (["--out", str(a_file)], "it is a file, not a folder"),
        (["--device", "ssh://user@host", "--runtime", "torch"], "cannot run on"),
    ]
    for n, (extra, message) in enumerate(cases):
        cache = tmp_path / f"cache-{n}"
        out = [] if "--out" in extra else ["--out", str(tmp_path / "out")]
        result = _run(*variant, *extra, *out, cache=cache)
        assert_one_line_error(result, message)
        assert result.returncode == 2
        assert _exports(cache) == [], (extra, _exports(cache))
    assert not (tmp_path / "out").exists()  # no report, not even an empty folder


def test_request_check_resolves_what_it_checked(tmp_path):
    data = _class_folders(tmp_path / "data", 3)
    checked = BenchRequest(variant="m0", num_classes=3, data=data, xnnpack="both", out=tmp_path / "r").check()
    assert checked.xnnpack == (True, False) and len(checked.images.classes) == 3 and checked.device is None
    local = BenchRequest(variant="m0", device="ssh://pi@192.0.2.1", runtime=["litert"], out=tmp_path / "r").check()
    assert local.device.kind == "ssh"
    for request, message in [
        (BenchRequest(out=tmp_path / "r"), "give model files, or --variant"),
        (BenchRequest(variant="m9", out=tmp_path / "r"), "m9"),
        (BenchRequest(variant="m0", input_size=100, out=tmp_path / "r"), "multiple of 32"),
        (BenchRequest(variant="m0", xnnpack="maybe", out=tmp_path / "r"), "--xnnpack must be on, off or both"),
        (BenchRequest(variant="m0", max_drop=-1.0, data=data, out=tmp_path / "r"), "--max-drop must be"),
        (BenchRequest(variant="m0", limit=5, out=tmp_path / "r"), "--limit caps the images"),
        (BenchRequest(variant="m0", weights=tmp_path / "none.pth", out=tmp_path / "r"), "weights file not found"),
        (BenchRequest(variant="m0", device="adb", cpu_mask="zz", out=tmp_path / "r"), "cpu_mask"),
    ]:
        with pytest.raises(MicronetError, match=message):
            request.check()


@pytest.mark.slow
def test_garbage_model_files_are_a_user_error_without_a_report(tmp_path):
    """A file that is no model is refused in one line (exit 2) and no report is written."""
    tflite = tmp_path / "garbage.tflite"
    tflite.write_bytes(b"\x00garbage" * 10)
    onnx = tmp_path / "garbage.onnx"
    onnx.write_bytes(b"\x08\x07garbage that is not protobuf" * 10)
    for path, message in [(tflite, "is not a TFLite flatbuffer"), (onnx, "is not an ONNX model")]:
        result = _run("bench", str(path), "--runs", "2", "--no-memory", "--out", str(tmp_path / "out"),
                      cache=tmp_path / "cache")
        assert_one_line_error(result, message)
        assert result.returncode == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_bench_with_only_invalid_rows_exits_1_after_writing_its_report(tmp_path):
    """A flatbuffer header with nothing behind it passes the cheap check but no runtime loads it: the
    report (which says why) is written, and the exit status says nothing was measured."""
    broken = tmp_path / "hollow.tflite"
    broken.write_bytes(b"\0\0\0\0TFL3" + bytes(64))
    result = _run("bench", str(broken), "--runs", "2", "--no-memory", "--out", str(tmp_path / "out"),
                  cache=tmp_path / "cache")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # TensorFlow logs too
    assert len(errors) == 1 and "nothing was measured: all" in errors[0], result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0]
    [report] = (tmp_path / "out").glob("bench-*.json")
    rows = rep.read_report(report)["results"]
    assert rows and all(r["invalid"] for r in rows)


def test_raise_if_nothing_measured():
    ok = rep.make_row(model="a", name="a", format="onnx", runtime="onnxruntime", threads=1)
    bad = rep.make_row(model="b", name="b", format="onnx", runtime="onnxruntime", threads=1, invalid=True,
                       invalid_reason="cannot load")
    rep.raise_if_nothing_measured([ok, bad])  # one measurement is enough
    with pytest.raises(rep.NothingMeasured, match="all 1 result.*b · onnxruntime: cannot load") as caught:
        rep.raise_if_nothing_measured([bad])
    assert caught.value.exit_code == 1


def test_the_noise_warning_is_said_once(monkeypatch):
    """The harness no longer says warnings through progress; the report holds them and print_report
    shows them once (the CLI printed "machine busy" twice per bench)."""
    from rich.console import Console

    from micronet.bench import harness

    monkeypatch.setattr(harness, "noise_warnings", lambda env, threads: ["machine busy: test"])
    said: list[str] = []
    report = harness.run_benchmark([harness.BenchModel(variant="m0", input_size=32)], warmup=1, runs=2,
                                   memory=False, progress=said.append)
    assert report["warnings"] == ["machine busy: test"]
    assert not [m for m in said if "machine busy" in m]
    console = Console(record=True, width=120, file=open(os.devnull, "w"))
    rep.print_report(report, console=console)
    assert console.export_text().count("machine busy") == 1


def test_the_data_folder_is_scanned_once_and_reports_still_name_it(tmp_path, monkeypatch):
    """check() scans --data; the harness and the device take that scan instead of walking the folder again,
    and a report still names the folder, not the scan object."""
    from micronet import images
    from micronet.bench.harness import data_label
    from micronet.bench.request import BenchRequest

    data = tmp_path / "val"
    for name in ("cat", "dog"):
        (data / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(data / name / "a.png")
    scans = []
    real = images.scan_labelled
    monkeypatch.setattr(images, "scan_labelled", lambda *a, **k: scans.append(a) or real(*a, **k))
    checked = BenchRequest(variant="m0", fmt="onnx", data=data, num_classes=2, out=tmp_path / "r").check()
    assert len(scans) == 1 and checked.measure.data is checked.images
    assert checked.images.root == data and data_label(checked.measure.data) == str(data)
    assert data_label(str(data)) == str(data) and data_label(None) is None


def test_matrix_measures_one_two_and_all_cores_unless_threads_are_given():
    from micronet.bench.request import BenchRequest, matrix_thread_counts

    assert matrix_thread_counts(1) == [1]
    assert matrix_thread_counts(2) == [1, 2]
    assert matrix_thread_counts(8) == [1, 2, 8]
    assert BenchRequest(matrix=True).measure_options().threads == matrix_thread_counts()
    assert BenchRequest(matrix=True, threads=[4]).measure_options().threads == [4]
    assert BenchRequest(variant="m0").measure_options().threads is None  # 1, or the inventory's
