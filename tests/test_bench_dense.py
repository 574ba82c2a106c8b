"""`micronet bench` of the segmentation and pose variants: mIoU / OKS AP per format through the classifiers'
harness, reports and gate; the data folder must be the task's (one line, exit 2); and the offline proof
(datasets → train → export int8 → bench --max-drop) for seg-m0 and pose-m0 through the CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from micronet.bench import gate
from micronet.bench.harness import run_benchmark
from micronet.bench.report import console_table, markdown_text
from micronet.bench.targets import bench_targets
from micronet.keypoints.synthetic import write_keypoint_set
from micronet.sample_images import bundled_photographs
from micronet.segmentation.cityscapes import scan_cityscapes
from micronet.segmentation.synthetic import write_segmentation_set

from test_cli import assert_one_line_error, run_cli

SEG_SIZE = (64, 128)


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cityscapes") / "set"
    write_segmentation_set(root, bundled_photographs(), height=64, width=128, train_images=2, val_images=3)
    return root


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco") / "set"
    write_keypoint_set(root, bundled_photographs(), size=(128, 128), train_images=2, val_images=2)
    return root


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("classes")
    for i, photo in enumerate(bundled_photographs()[:2]):
        (root / f"class{i}").mkdir()
        shutil.copy(photo, root / f"class{i}" / photo.name)
    return root


def test_seg_torch_bench_scores_miou_and_reports_name_it(cityscapes, tmp_path):
    targets = bench_targets(variant="seg-m0", fmt="torch", input_size=SEG_SIZE)
    report = run_benchmark(targets, data=cityscapes, runs=2, warmup=0, memory=False)
    row = report["results"][0]
    acc = row["accuracy"]
    assert not row["invalid"] and row["input"]["shape"][2:] == list(SEG_SIZE)
    assert acc["task"] == "segmentation" and acc["count"] == 3 and acc["unit"] == "points"
    assert 0.0 <= acc["miou"] <= 100.0 and 0.0 <= acc["pixel_accuracy"] <= 100.0
    assert len(acc["per_class_iou"]) == 19 and "road" in acc["per_class_iou"]
    assert row["madds"] > 0  # counted at the H x W input, not the classifier's square
    md = markdown_text(report)
    assert "| mIoU |" in md and "top-1" not in md.split("\n")[2]
    assert [str(c.header) for c in console_table(report).columns][-2] == "mIoU"
    from micronet.bench.report import write_all

    csv_path = next(p for p in write_all(report, tmp_path) if p.suffix == ".csv")
    csv_row = next(csv.DictReader(csv_path.open()))
    assert float(csv_row["miou"]) == pytest.approx(acc["miou"]) and csv_row["top1"] == ""


def test_pose_torch_bench_scores_oks_ap(coco):
    targets = bench_targets(variant="pose-m0", fmt="torch", input_size=(64, 64))
    report = run_benchmark(targets, data=coco, runs=2, warmup=0, memory=False)
    acc = report["results"][0]["accuracy"]
    assert acc["task"] == "pose" and acc["metric"] == "AP" and acc["count"] >= 2
    assert 0.0 <= acc["ap"] <= 100.0 and set(acc) >= {"ap50", "ap75", "apm", "apl"}


def test_the_gate_compares_mious_of_the_same_variant():
    rows = [{"name": "seg-m0 (PyTorch)", "runtime": "torch", "variant": "seg-m0", "format": "torch",
             "accuracy": {"task": "segmentation", "miou": 60.0}},
            {"name": "seg int8", "runtime": "litert", "variant": "seg-m0", "format": "tflite",
             "accuracy": {"task": "segmentation", "miou": 57.5}}]
    [drop] = gate.accuracy_drops(rows)
    assert drop["metric"] == "mIoU" and drop["drop"] == pytest.approx(2.5)
    assert gate.over_budget(rows, 2.0) and not gate.over_budget(rows, 3.0)


def test_data_of_another_task_is_one_line(cityscapes, coco, class_folders, tmp_path):
    out = str(tmp_path / "r")
    assert_one_line_error(run_cli("bench", "--variant", "seg-m0", "--input-size", "64x128", "--format", "torch",
                                  "--data", str(class_folders), "--out", out),
                          "a segmentation model needs --data a Cityscapes folder")
    assert_one_line_error(run_cli("bench", "--variant", "m0", "--format", "torch", "--data", str(cityscapes),
                                  "--out", out), "but the model is a classifier")
    assert_one_line_error(run_cli("bench", "--variant", "pose-m0", "--input-size", "64x64", "--format", "torch",
                                  "--data", str(cityscapes), "--out", out), "a pose model needs --data a COCO")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_seg_onnx_bench_through_the_cli_gates_the_miou_drop(cityscapes, tmp_path, monkeypatch):
    monkeypatch.setenv("MICRONET_CACHE", str(tmp_path / "cache"))
    result = run_cli("bench", "--variant", "seg-m0", "--input-size", "64x128", "--format", "onnx", "--data",
                     str(cityscapes), "--max-drop", "0.5", "--runs", "3", "--warmup", "0", "--no-memory",
                     "--out", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    assert "mIoU micronet-seg-m0-64x128.onnx on onnxruntime" in result.stdout
    report = json.loads(next((tmp_path / "r").glob("*.json")).read_text())
    torch_row, onnx_row = report["results"]
    assert torch_row["format"] == "torch" and onnx_row["format"] == "onnx"
    # the same network in float32 on both rows (the PyTorch row is the cached export's own weights)
    assert abs(torch_row["accuracy"]["miou"] - onnx_row["accuracy"]["miou"]) <= 0.05


@pytest.mark.slow
@pytest.mark.parametrize("variant, size", [("m0", 32), ("seg-m0", SEG_SIZE)])
def test_an_untrained_variants_pytorch_row_is_the_network_its_exports_hold(variant, size, tmp_path, monkeypatch):
    """Untrained weights are drawn at random and their BatchNorm statistics re-estimated by the export: a
    PyTorch row built afresh would be another network (this once failed CI's --max-drop by 0.91 mIoU)."""
    import onnxruntime as ort
    import torch

    from micronet.bench import cache

    monkeypatch.setenv("MICRONET_CACHE", str(tmp_path / "cache"))
    for attempt in ("export", "cached", "old entry"):
        reference, exported = bench_targets(variant=variant, fmt="onnx", input_size=size, with_reference=True)
        hw = (size, size) if isinstance(size, int) else size
        x = np.random.default_rng(1).standard_normal((1, 3, *hw)).astype(np.float32)
        with torch.no_grad():
            want = reference.module(torch.from_numpy(x)).numpy()
        session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max()), attempt
        assert np.abs(want).max() > 1e-3  # recalibrated statistics, not the fresh ones' ~1e-22 outputs
        if attempt == "cached":  # a cache entry from before references were kept is exported again
            cache.reference_weights(exported.path).unlink()


#: Runs the CLI with onnx2tf's conversion failing as a real failure does (one MicronetError line naming the
#: node). A stand-in: since micronet works around onnx2tf's grouped-conv layout bug, no pose or seg size
#: known to fail conversion is left to test this path with (the real failure's line is tested in
#: test_export_stages.py).
_CLI_WITH_FAILING_ONNX2TF = """
import sys
from pathlib import Path

import micronet.export.tflite as tflite
from micronet.cli import main
from micronet.errors import MicronetError


def fail(onnx_path, workdir, **_):
    raise MicronetError(f"onnx2tf could not convert {Path(onnx_path).name}: at ONNX node node_conv2d_7; ValueError: "
                        "simulated (full log: none)")


tflite.onnx_to_saved_model = fail
sys.argv = ["micronet", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_bench_all_formats_when_tflite_does_not_convert(cityscapes, tmp_path):
    """Where onnx2tf cannot convert a pose or seg model at the size asked, the bench says so in one line and
    scores PyTorch and ONNX."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MICRONET_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-c", _CLI_WITH_FAILING_ONNX2TF, "bench", "--variant", "seg-m0",
                             "--input-size", "64x128", "--format", "all", "--data", str(cityscapes), "--runs", "3",
                             "--warmup", "0", "--no-memory", "--out", str(tmp_path / "r")],
                            capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    notes = [line for line in result.stdout.splitlines() if line.startswith("TFLite not benchmarked:")]
    assert len(notes) == 1 and "node_conv2d_7" in notes[0], result.stdout
    report = json.loads(next((tmp_path / "r").glob("*.json")).read_text())
    rows = {r["format"]: r["accuracy"] for r in report["results"]}
    # Untrained, so near-tied pixel labels may flip between runtimes: a loose bound (the gate is tested above).
    assert set(rows) == {"torch", "onnx"} and abs(rows["torch"]["miou"] - rows["onnx"]["miou"]) <= 5.0


def _background_miou(root: Path) -> float:
    """mIoU (points) of predicting the most frequent class (the background) everywhere: the floor a trained
    model must clear."""
    from micronet.segmentation.metrics import ConfusionMatrix

    labels = [sample.load_label() for sample in scan_cityscapes(root, "val")]
    counts = np.bincount(np.concatenate([t[t != 255] for t in labels]).astype(np.int64), minlength=19)
    matrix = ConfusionMatrix(19)
    for truth in labels:
        matrix.add(np.full_like(truth, int(counts.argmax())), truth)
    return 100.0 * matrix.mean_iou()


@pytest.mark.slow
def test_seg_offline_proof_train_export_int8_bench(tmp_path, monkeypatch):
    """The issue's offline proof at 128x256: a trained seg-m0 far above the all-background mIoU, and its int8
    TFLite within 2 mIoU points of PyTorch by the bench's own gate."""
    monkeypatch.setenv("MICRONET_CACHE", str(tmp_path / "cache"))
    data, run, exported, reports = (tmp_path / n for n in ("city", "run", "export", "reports"))
    steps = [
        ("datasets", "segmentation", "--out", str(data), "--input-size", "128x256", "--train-images", "24",
         "--val-images", "6"),
        ("train", "--variant", "seg-m0", "--data", str(data), "--input-size", "128x256", "--epochs", "8",
         "--batch-size", "8", "--out", str(run)),
    ]
    for args in steps:
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
    best = run / "best.pt"
    result = run_cli("export", "--variant", "seg-m0", "--weights", str(best), "--input-size", "128x256",
                     "--format", "tflite", "--quantize", "int8", "--calibration", str(data), "--output", str(exported))
    assert result.returncode == 0, result.stderr
    [int8] = exported.glob("*.int8.tflite")
    # --xnnpack off: the XNNPACK delegate cannot prepare this int8 file (one line, an invalid row if on)
    result = run_cli("bench", str(int8), "--data", str(data), "--max-drop", "2", "--runs", "3", "--warmup", "0", "--xnnpack", "off",
                     "--no-memory", "--out", str(reports))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(next(reports.glob("*.json")).read_text())
    rows = {r["format"]: r["accuracy"] for r in report["results"]}
    baseline = _background_miou(data)
    assert rows["torch"]["miou"] >= baseline + 30.0, (rows["torch"]["miou"], baseline)
    assert rows["torch"]["miou"] - rows["tflite"]["miou"] <= 2.0
    print(f"all-background {baseline:.2f}, PyTorch {rows['torch']['miou']:.2f}, int8 {rows['tflite']['miou']:.2f} mIoU")



@pytest.mark.slow
def test_pose_offline_proof_train_export_int8_bench(tmp_path, monkeypatch):
    """The issue's offline proof for pose-m0: trained through the CLI to an OKS AP far above the centre guess
    (every joint at its box's centre), and its int8 TFLite within 2 AP points of PyTorch by the bench's gate."""
    from test_train_pose import centre_guess_ap

    monkeypatch.setenv("MICRONET_CACHE", str(tmp_path / "cache"))
    data, run, exported, reports = (tmp_path / n for n in ("coco", "run", "export", "reports"))
    size = "x".join(map(str, POSE_E2E_INPUT))
    steps = [
        ("datasets", "keypoints", "--out", str(data), "--image-size", "128x128", *POSE_E2E_IMAGES),
        ("train", "--variant", "pose-m0", "--data", str(data), "--input-size", size, *POSE_E2E_TRAINING,
         "--out", str(run)),
        ("export", "--variant", "pose-m0", "--weights", str(run / "best.pt"), "--input-size", size,
         "--format", "tflite", "--quantize", "int8", "--calibration", str(data), "--output", str(exported)),
    ]
    for args in steps:  # training alone took 282 s on 2 idle cores and over 600 s beside another job
        result = run_cli(*args, timeout=1800)
        assert result.returncode == 0, result.stderr
    [int8] = exported.glob("*.int8.tflite")
    result = run_cli("bench", str(int8), "--data", str(data), "--max-drop", "2", "--runs", "3", "--warmup", "0",
                     "--no-memory", "--out", str(reports))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(next(reports.glob("*.json")).read_text())
    rows = {r["format"]: r["accuracy"] for r in report["results"] if not r["invalid"]}
    baseline = 100.0 * centre_guess_ap(data)
    assert rows["torch"]["ap"] >= baseline + 50.0, (rows["torch"]["ap"], baseline)
    assert rows["torch"]["ap"] - rows["tflite"]["ap"] <= 2.0
    print(f"centre guess {baseline:.2f}, PyTorch {rows['torch']['ap']:.2f}, int8 {rows['tflite']['ap']:.2f} AP")


#: The pose proof's settings for 2 shared CPU cores (README, "Pose models": measured figures).
POSE_E2E_INPUT = (128, 96)
POSE_E2E_IMAGES = ("--train-images", "300", "--val-images", "40")
POSE_E2E_TRAINING = ("--epochs", "10", "--batch-size", "16", "--lr", "5e-3")

def test_budget_check_fails_naming_an_over_budget_pose_and_seg_variant(tmp_path):
    budgets = tmp_path / "b.toml"
    budgets.write_text("[seg-m0]\nmadds = 1\n\n[pose-m0]\nparams = 1\n\n[m0]\nmadds = 6_200_000\n")
    result = run_cli("budget", "check", str(budgets))
    assert result.returncode == 1
    over = next(line for line in result.stdout.splitlines() if line.startswith("over budget:"))
    assert "pose-m0 (params " in over and "seg-m0 (madds " in over and "m0 (madds" not in over.replace("-m0", "")
