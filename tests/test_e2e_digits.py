"""The end-to-end accuracy gate, run like a user: real digits -> train m0 -> export -> benchmark.

Accuracy on untrained weights means nothing; this proves on real images (scikit-learn's 1,797 scanned
digits) that the float model learns and that ONNX and full-integer int8 TFLite keep its accuracy.
"""

from __future__ import annotations

import json

import pytest

from test_cli import run_cli

MAX_DROP = 1.5  # top-1 points an export may lose against the PyTorch float model
MIN_FLOAT_TOP1 = 90.0


@pytest.mark.slow
def test_digits_train_export_bench_keeps_accuracy(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # 2 cores: oversubscription costs 4x (measured)
    data, run, exports, reports = (tmp_path / n for n in ("digits", "run", "exports", "reports"))

    made = run_cli("datasets", "digits", "--out", str(data), "--size", "32")
    assert made.returncode == 0, made.stderr
    trained = run_cli("train", "--variant", "m0", "--data", str(data), "--out", str(run), "--input-size", "32",
                      "--epochs", "15", "--batch-size", "64", "--lr", "0.2", "--crop-min", "0.25", "--no-flip",
                      "--workers", "0", "--deterministic")
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    exported = run_cli("export", "--variant", "m0", "--num-classes", "10", "--input-size", "32",
                       "--weights", str(run / "best.pt"), "--calibration", str(data / "train"), "--all",
                       "--output", str(exports))
    assert exported.returncode == 0, exported.stdout[-3000:] + exported.stderr[-2000:]
    manifest = json.loads((exports / "micronet-m0-32.int8.tflite.json").read_text())
    assert manifest["weights"]["state"] == "loaded" and not manifest["calibration"]["is_default"]

    edge = ("micronet-m0-32.int8.openvino", "micronet-m0-32.float16.ncnn", "micronet-m0-32.int8.mnn")
    files = [str(exports / f) for f in ("micronet-m0-32.onnx", "micronet-m0-32.int8.tflite", *edge)]
    benched = run_cli("bench", *files, "--data", str(data / "val"), "--max-drop", str(MAX_DROP), "--runtime",
                      "onnxruntime", "--runtime", "litert", "--runtime", "torch", "--runtime", "openvino",
                      "--runtime", "ncnn", "--runtime", "mnn", "--runs", "20", "--no-memory", "--out", str(reports))
    assert benched.returncode == 0, benched.stdout[-3000:] + benched.stderr[-2000:]
    [report] = reports.glob("bench-*.json")
    rows = json.loads(report.read_text())["results"]
    top1 = {(r["format"], r["quantize"]): r["accuracy"]["top1"] for r in rows}
    assert all(r["accuracy"]["count"] == 359 for r in rows)  # the whole validation split
    assert top1[("torch", "float32")] >= MIN_FLOAT_TOP1
    assert top1[("torch", "float32")] - top1[("onnx", "float32")] <= MAX_DROP
    assert top1[("torch", "float32")] - top1[("tflite", "int8")] <= MAX_DROP
    for kind in (("openvino", "int8"), ("ncnn", "float16"), ("mnn", "int8")):  # trained weights: real accuracy
        assert top1[("torch", "float32")] - top1[kind] <= MAX_DROP, kind
    print(f"digits top-1: torch {top1[('torch', 'float32')]:.2f}%, onnx {top1[('onnx', 'float32')]:.2f}%, "
          f"int8 tflite {top1[('tflite', 'int8')]:.2f}%, int8 openvino {top1[('openvino', 'int8')]:.2f}%, "
          f"float16 ncnn {top1[('ncnn', 'float16')]:.2f}%, int8 mnn {top1[('mnn', 'int8')]:.2f}%")
