"""The export plan (which graphs and files each request builds), the parity ladder on its own, and what an
export really built: its steps and its staging folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from micronet.export import parity, pipeline
from micronet.export.ladder import Ladder, ParityFailure
from micronet.export.plan import plan
from micronet.export.request import ExportRequest, resolve_kinds
from micronet.export.stages import STAGES


def _plan(fmt=None, quantize=None, all_formats=False, **options):
    return plan(ExportRequest(kinds=resolve_kinds(fmt, quantize, all_formats), **options))


# --- the plan per request kind ------------------------------------------------------------------------------------

def test_onnx_alone_builds_the_portable_graph_without_batch_one_products():
    p = _plan("onnx")
    assert p.names == ["deploy_fast_portable", "onnx"]
    assert p.lineage(p.shipped[("onnx", "float32")]) == ["deploy_fast_portable", "onnx"]
    assert _plan("onnx", dynamic_batch=True).names == ["deploy_fast_portable", "onnx"]


def test_onnx_for_onnx_runtime_builds_its_graph_and_batch_one_form():
    p = _plan("onnx", optimize_for="onnxruntime")
    assert p.names == ["deploy_fast_onnxruntime", "batch_one", "onnx"]
    assert p.lineage("onnx") == ["deploy_fast_onnxruntime", "onnx"]
    assert _plan("onnx", optimize_for="onnxruntime", dynamic_batch=True).names == ["deploy_fast_onnxruntime", "onnx"]


@pytest.mark.parametrize("options, message", [
    ({"optimize_for": "tensorrt"}, "unknown --optimize-for 'tensorrt'; choose one of: portable, onnxruntime"),
    ({"optimize_for": "onnxruntime", "kinds": [("tflite", "int8")]}, "add --format onnx"),
    ({"optimize_for": "onnxruntime", "graph": "reference"}, "does not combine with --graph reference"),
])
def test_optimize_for_is_checked_before_any_work(options, message):
    from micronet.errors import MicronetError

    request = ExportRequest(**{"kinds": [("onnx", "float32")], **options})
    with pytest.raises(MicronetError, match=message):
        request.check()


def test_onnx_targets_say_where_they_fail():
    from micronet.export.onnx_targets import ONNX_TARGETS

    assert ONNX_TARGETS["portable"].known_to_fail_in == {} and not ONNX_TARGETS["portable"].batch_one
    assert len(ONNX_TARGETS["onnxruntime"].known_to_fail_in) >= 3


@pytest.mark.parametrize("quantize", ["float32", "float16", "dynamic"])
def test_float_tflite_builds_no_onnx_and_no_int8_graph(quantize):
    p = _plan("tflite", quantize)
    assert p.names[:3] == ["deploy_fast", "tf_graph", "tflite_float32"]  # float32: the quantized files' reference
    assert p.names[3:] == ([] if quantize == "float32" else [f"tflite_{quantize}"])
    assert not {"onnx", "deploy_fast_onnxruntime", "batch_one", "deploy", "relu_max", "tf_graph_int8"} & set(p.names)
    assert list(p.shipped) == [("tflite", quantize)]


def test_int8_tflite_adds_the_relu_max_form_and_its_saved_model():
    p = _plan("tflite", "int8")
    assert p.names == ["deploy_fast", "tf_graph", "relu_max", "tf_graph_int8", "tflite_float32", "tflite_int8"]
    step = p.steps[-1]
    assert (step.source, step.reference) == ("tf_graph_int8", "tflite_float32")
    assert p.lineage("tflite_int8") == ["deploy_fast", "tflite_float32", "tflite_int8"]


def test_all_formats_build_each_graph_once():
    p = _plan(all_formats=True)
    assert len(p.names) == len(set(p.names))
    assert [(k.format, k.quantize) for k in p.shipped][:5] == [
        ("onnx", "float32"), ("tflite", "float32"), ("tflite", "float16"), ("tflite", "dynamic"), ("tflite", "int8")]
    assert p.names[:2] == ["deploy_fast_portable", "onnx"] and p.lineage("onnx") == ["deploy_fast_portable", "onnx"]
    assert p.lineage("tflite_float16") == ["deploy_fast", "tflite_float32", "tflite_float16"]
    assert "onnx_portable" not in p.names  # the shipped ONNX file is portable: the other converters take it


def test_reference_graph_keeps_its_onnx2tf_path():
    p = _plan("tflite", "int8", graph="reference")
    assert p.names == ["deploy", "onnx", "onnx2tf", "tflite_float32", "tflite_int8"]
    assert p.lineage("tflite_int8") == ["deploy", "onnx", "tflite_float32", "tflite_int8"]


def test_every_planned_step_has_a_stage():
    for options in ({}, {"dynamic_batch": True}, {"graph": "reference"}, {"optimize_for": "onnxruntime"}):
        assert set(_plan(all_formats=True, **options).names) <= set(STAGES)


# --- the ladder on its own ---------------------------------------------------------------------------------------

def _logits(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(8, 10))


def test_a_passing_rung_is_recorded_and_announced():
    said: list[str] = []
    ladder = Ladder(progress=said.append)
    ref = _logits()
    record = ladder.judge("onnx", "deploy_fast_onnxruntime", ref, ref + 1e-7)
    assert record["passed"] and record["reference"] == "deploy_fast_onnxruntime" and record["limit"] == 1e-4
    assert {"cosine", "top1_agreement_pct", "rel_max_abs_err", "samples"} <= set(record)
    assert ladder.rungs == [record]
    assert said == ["[green]✓[/green] " + parity.check_rung("onnx", parity.compare(ref, ref + 1e-7)).summary()]
    assert said[0].startswith("[green]✓[/green] onnx: pass (rel_max_abs_err ") and "limit ≤ 0.0001)" in said[0]


def test_a_quiet_rung_is_recorded_without_a_line():
    """The deploy-form rungs are judged quietly, as before: the user sees them in the ladder table."""
    said: list[str] = []
    ladder = Ladder(progress=said.append)
    ladder.judge("deploy_fast", "pytorch training form", _logits(), _logits(), announce=False)
    assert said == [] and ladder.rungs[0]["limit"] == parity.DEPLOY_LIMIT and ladder.rungs[0]["passed"]


def test_a_broken_rung_raises_with_the_whole_ladder():
    said: list[str] = []
    ladder = Ladder(progress=said.append)
    ref = _logits()
    ladder.judge("deploy_fast", "pytorch training form", ref, ref, announce=False)
    with pytest.raises(ParityFailure, match=r"parity rung 'tflite_float32' broke: tflite_float32: FAIL") as info:
        ladder.judge("tflite_float32", "deploy_fast", ref, ref + 0.1)
    assert [r["rung"] for r in info.value.rungs] == ["deploy_fast", "tflite_float32"]
    assert not info.value.rungs[-1]["passed"] and said[-1].startswith("[red]✗[/red] tflite_float32: FAIL")


def test_untrained_exports_get_the_looser_quantized_limits():
    ref = _logits()
    noisy = ref + np.random.default_rng(1).normal(scale=0.25, size=ref.shape)  # cosine ≈ 0.97
    cosine = parity.compare(ref, noisy)["cosine"]
    assert parity.UNTRAINED_LIMITS["tflite_int8"] < cosine < parity.THRESHOLDS["tflite_int8"].limit
    assert Ladder(untrained=True).judge("tflite_int8", "tflite_float32", ref, noisy)["limit"] == 0.95
    with pytest.raises(ParityFailure):
        Ladder(untrained=False).judge("tflite_int8", "tflite_float32", ref, noisy)


def test_untrained_pose_int8_limit_still_stops_broken_heatmaps():
    """The looser untrained int8 limit of keypoint models (parity.UNTRAINED_TASK_LIMITS) judged on real
    heatmaps: an untrained pose-m0, BatchNorm re-estimated on the embedded photographs as the export does.
    The ways a conversion breaks heatmaps (left/right maps swapped, mirrored, one-pixel shift, flat maps)
    must all still fail it; noise of the size honest int8 leaves (cosine 0.90-0.93) must pass it; and a
    classifier keeps its own limit."""
    import torch

    from micronet.export.deploy import recalibrate_batchnorm
    from micronet.export.dense import build_dense_model
    from micronet.export.dense_calibration import build_dense_calibration
    from micronet.export.pipeline import batchnorm_batches
    from micronet.keypoints.coco import FLIP_PAIRS

    torch.manual_seed(0)
    model = build_dense_model("pose-m0", "pose", (128, 96), 17).eval()
    data = build_dense_calibration("pose", None, (128, 96), count=24, seed=0, holdout=8)
    recalibrate_batchnorm(model, batchnorm_batches(data.calibration))
    with torch.no_grad():
        ref = model(torch.from_numpy(data.holdout)).numpy().astype(np.float64)
    swap = list(range(17))
    for a, b in FLIP_PAIRS:
        swap[a], swap[b] = b, a
    broken = {"left/right swapped": ref[:, swap], "mirrored": ref[..., ::-1], "shifted 1 px": np.roll(ref, 1, axis=3),
              "flat maps": np.broadcast_to(ref.mean(axis=(2, 3), keepdims=True), ref.shape)}
    limit = parity.UNTRAINED_TASK_LIMITS["pose"]["tflite_int8"]
    for name, heatmaps in broken.items():
        rung = parity.check_rung("tflite_int8", parity.compare(ref, heatmaps), untrained=True, task="pose")
        assert not rung.passed and rung.limit == limit, (name, rung.summary())
    scale = 0.45 * np.sqrt((ref ** 2).mean(axis=(1, 2, 3), keepdims=True))  # cosine ≈ 1 / sqrt(1 + 0.45²) ≈ 0.91
    honest = ref + np.random.default_rng(0).normal(scale=scale, size=ref.shape)
    metrics = parity.compare(ref, honest)
    assert 0.88 < metrics["cosine"] < 0.95
    assert Ladder(untrained=True, task="pose").judge("tflite_int8", "tflite_float32", ref, honest)["passed"]
    with pytest.raises(ParityFailure):
        Ladder(untrained=True).judge("tflite_int8", "tflite_float32", ref, honest)  # a classifier: 0.95
    with pytest.raises(ParityFailure):
        Ladder(untrained=False, task="pose").judge("tflite_int8", "tflite_float32", ref, honest)  # trained: 0.98


def test_ladder_records_follow_the_judging_order_and_stages_are_timed():
    ladder = Ladder()
    ref = _logits()
    for name in ("deploy_fast_onnxruntime", "onnx", "deploy_fast", "tflite_float32"):
        ladder.judge(name, "x", ref, ref)
    assert [r["rung"] for r in ladder.records(["tflite_float32", "deploy_fast"])] == ["deploy_fast", "tflite_float32"]
    with ladder.stage("onnx"):
        pass
    with ladder.stage("onnx"):
        pass
    assert set(ladder.timings) == {"onnx_s"} and ladder.timings["onnx_s"] >= 0


# --- what an export built ------------------------------------------------------------------------------------------

@pytest.fixture
def staged(monkeypatch) -> list[str]:
    """The names the export's staging folder held when its work was done (just before the files moved out)."""
    held: list[str] = []
    real = pipeline.commit

    def watching(files: list[Path], output_dir: Path) -> list[Path]:
        held.extend(sorted(p.name for p in files[0].parent.iterdir()))
        return real(files, output_dir)

    monkeypatch.setattr(pipeline, "commit", watching)
    return held


@pytest.mark.slow
def test_an_onnx_export_builds_only_what_its_plan_lists(tmp_path, staged):
    result = pipeline.export(ExportRequest(kinds=[("onnx", "float32")], input_size=64, calib_count=8, holdout=4,
                                           output_dir=tmp_path))
    assert result.steps == ["deploy_fast_portable", "onnx"]
    assert [r["rung"] for r in result.rungs] == ["deploy_fast_portable", "onnx"]  # no reference deploy form
    assert [n for n in staged if not n.startswith(".")] == ["micronet-m0-64.onnx", "micronet-m0-64.onnx.json"]


@pytest.mark.slow
def test_an_int8_tflite_export_builds_no_onnx(tmp_path, staged):
    result = pipeline.export(ExportRequest(kinds=[("tflite", "int8")], input_size=64, calib_count=8, holdout=4,
                                           output_dir=tmp_path))
    assert result.steps == _plan("tflite", "int8").names
    assert not any(n.endswith(".onnx") for n in staged)
    assert {n for n in staged if not n.startswith(".")} == {
        "tf_graph", "tf_graph_int8", "micronet-m0-64.float32.tflite", "micronet-m0-64.int8.tflite",
        "micronet-m0-64.int8.tflite.json", "tflite_float32.log", "tflite_int8.log"}  # float32: the reference
    m = json.loads(result.manifests[0].read_text())
    assert [(r["rung"], r["reference"]) for r in m["parity"]] == [
        ("deploy_fast", "pytorch training form"), ("tflite_float32", "deploy_fast"), ("tflite_int8", "tflite_float32")]
    assert list(m["stages"]) == ["tf_graph", "tf_graph_int8", "tflite"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["micronet-m0-64.int8.tflite",
                                                          "micronet-m0-64.int8.tflite.json"]
