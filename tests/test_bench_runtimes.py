"""Runtimes, memory child, accuracy and the harness, on a tiny CNN built here in three formats.

The same weights go to every format: a torch CNN, its ONNX export (legacy exporter, opset 17) and
TFLite models built from the same tensors with ``tf.function`` + ``TFLiteConverter`` (NHWC float, an
NCHW float variant, and full-integer int8 with int8 I/O). No onnx2tf: it takes over a minute.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures.models import write_tflite

from micronet.bench import runtimes as rt_mod
from micronet.bench.accuracy import evaluate
from micronet.bench.harness import BenchModel, run_benchmark
from micronet.bench.latency import measure_latency
from micronet.bench.memory import file_size, measure_memory
from micronet.bench.report import merge_reports, write_json
from micronet.bench.runtimes import (
    RUNTIMES,
    available_runtimes,
    get_runtime,
    runtimes_for_format,
)
from micronet.errors import MicronetError

SIZE, CLASSES = 16, 10
TFLITE_RUNTIMES = [name for name in runtimes_for_format("tflite") if name in available_runtimes()]


class TinyNet(torch.nn.Module):
    """conv → ReLU → depthwise conv → ReLU → global mean → linear: the op kinds MicroNet leans on."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = torch.nn.Linear(8, CLASSES)
        self.input_size, self.num_classes = SIZE, CLASSES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.dw(torch.relu(self.conv(x))))
        return self.fc(x.mean(dim=(2, 3)))


def _tflite_from_torch(net: TinyNet, path: Path, *, nchw: bool = False, int8: bool = False) -> Path:
    """The same network written with TF ops and the torch weights as constants (NHWC inside)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    w1 = tf.constant(net.conv.weight.detach().permute(2, 3, 1, 0).numpy())
    b1 = tf.constant(net.conv.bias.detach().numpy())
    w2 = tf.constant(net.dw.weight.detach().permute(2, 3, 0, 1).numpy())  # (kh, kw, in, multiplier)
    b2 = tf.constant(net.dw.bias.detach().numpy())
    w3 = tf.constant(net.fc.weight.detach().numpy().T)
    b3 = tf.constant(net.fc.bias.detach().numpy())
    shape = [1, 3, SIZE, SIZE] if nchw else [1, SIZE, SIZE, 3]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)])
    def forward(x):
        if nchw:
            x = tf.transpose(x, [0, 2, 3, 1])
        x = tf.nn.relu(tf.nn.conv2d(x, w1, 1, "SAME") + b1)
        x = tf.nn.relu(tf.nn.depthwise_conv2d(x, w2, [1, 1, 1, 1], "SAME") + b2)
        return tf.matmul(tf.reduce_mean(x, axis=[1, 2]), w3) + b3

    return write_tflite(forward, path, int8_samples=32 if int8 else 0)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    torch.manual_seed(0)
    net = TinyNet().eval()
    folder = tmp_path_factory.mktemp("models")
    onnx_path = folder / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, SIZE, SIZE),), str(onnx_path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    x = np.random.default_rng(7).standard_normal((4, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        reference = net(torch.from_numpy(x)).numpy()
    return {
        "net": net,
        "onnx": onnx_path,
        "tflite": _tflite_from_torch(net, folder / "tiny_nhwc.tflite"),
        "tflite_nchw": _tflite_from_torch(net, folder / "tiny_nchw.tflite", nchw=True),
        "tflite_int8": _tflite_from_torch(net, folder / "tiny_int8.tflite", int8=True),
        "x": x,
        "reference": reference,
    }


def _logits(runtime, x: np.ndarray) -> np.ndarray:
    """Batch through the runtime, one image at a time when the model has a fixed batch of 1."""
    if runtime.input_spec.fixed_batch == 1:
        return np.concatenate([runtime.to_logits(runtime.run(runtime.prepare(x[i:i + 1]))) for i in range(len(x))])
    return runtime.to_logits(runtime.run(runtime.prepare(x)))


# ------------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize(
    ("runtime", "model"),
    [("torch", "net"), ("onnxruntime", "onnx")]
    + [(name, kind) for name in TFLITE_RUNTIMES for kind in ("tflite", "tflite_nchw")],
)
def test_every_runtime_gives_the_torch_logits(models, runtime, model):
    r = get_runtime(runtime, threads=1)
    init_s = r.load(models[model])
    assert init_s >= 0
    out = _logits(r, models["x"])
    assert out.dtype == np.float32 and out.shape == (4, CLASSES)
    np.testing.assert_allclose(out, models["reference"], rtol=1e-4, atol=1e-5)
    r.close()


def test_layout_is_read_from_the_model_without_a_manifest(models):
    nhwc, nchw, onnx = get_runtime("litert"), get_runtime("litert"), get_runtime("onnxruntime")
    nhwc.load(models["tflite"]), nchw.load(models["tflite_nchw"]), onnx.load(models["onnx"])
    assert nhwc.input_spec.layout == "NHWC" and nhwc.input_spec.chw == (3, SIZE, SIZE)
    assert nchw.input_spec.layout == "NCHW"
    assert onnx.input_spec.layout == "NCHW" and onnx.input_spec.fixed_batch is None  # dynamic batch
    assert nhwc.prepare(models["x"][:1]).shape == (1, SIZE, SIZE, 3)


def test_int8_tflite_is_quantized_and_dequantized_from_the_model_itself(models):
    r = get_runtime("litert")
    r.load(models["tflite_int8"])
    spec, out_spec = r.input_spec, r.output_spec
    assert spec.dtype == "int8" and spec.quantization is not None and spec.quantization.scale > 0
    assert out_spec.dtype == "int8" and out_spec.quantization is not None
    native = r.prepare(models["x"][:1])
    assert native.dtype == np.int8
    expected = np.clip(np.round(models["x"][:1].transpose(0, 2, 3, 1) / spec.quantization.scale
                                + spec.quantization.zero_point), -128, 127)
    np.testing.assert_array_equal(native, expected.astype(np.int8))
    out = _logits(r, models["x"])
    ref = models["reference"]
    # int8 error budget: a few output quantization steps plus input rounding, far below the logit spread
    assert np.abs(out - ref).max() < 0.1 * (ref.max() - ref.min())
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.98


def test_xnnpack_switch_really_changes_the_kernels(models):
    on, off = get_runtime("litert", xnnpack=True), get_runtime("litert", xnnpack=False)
    on.load(models["tflite"]), off.load(models["tflite"])
    assert on.settings()["xnnpack_applied"] is True  # a DELEGATE node replaced the graph's ops
    assert off.settings()["xnnpack_applied"] is False
    assert off.settings()["op_resolver"] == "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
    np.testing.assert_allclose(_logits(off, models["x"]), _logits(on, models["x"]), rtol=1e-4, atol=1e-5)
    with pytest.raises(MicronetError, match="TFLite runtimes only"):
        get_runtime("onnxruntime", xnnpack=False)


def test_latency_runs_on_a_real_runtime(models):
    r = get_runtime("onnxruntime")
    r.load(models["onnx"])
    result = measure_latency(r, r.prepare(models["x"][:1]), warmup=2, runs=20, min_seconds=None)
    s = result.stats
    assert s.count == 20 and 0 < s.min_ms <= s.p50_ms <= s.p90_ms <= s.max_ms


# ------------------------------------------------------------------------------------------ errors


def test_missing_and_corrupt_model_files_are_user_errors(models, tmp_path):
    with pytest.raises(MicronetError, match="not found"):
        get_runtime("onnxruntime").load(tmp_path / "absent.onnx")
    bad_onnx = tmp_path / "bad.onnx"
    bad_onnx.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(MicronetError, match="cannot load .*bad.onnx with onnxruntime"):
        get_runtime("onnxruntime").load(bad_onnx)
    bad_tflite = tmp_path / "bad.tflite"
    bad_tflite.write_bytes(b"\x00" * 64)
    with pytest.raises(MicronetError, match="not a TFLite flatbuffer"):
        get_runtime("litert").load(bad_tflite)
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(models["tflite"].read_bytes()[:200])
    with pytest.raises(MicronetError, match="cannot load .*truncated.tflite with litert"):
        get_runtime("litert").load(truncated)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(MicronetError, match="empty"):
        get_runtime("onnxruntime").load(empty)


def test_a_missing_runtime_names_the_pip_package(monkeypatch):
    real = rt_mod._find_spec
    monkeypatch.setattr(rt_mod, "_find_spec", lambda name: None if name == "tflite_runtime" else real(name))
    assert "tflite-runtime" not in available_runtimes()
    with pytest.raises(MicronetError, match=r"runtime 'tflite-runtime' is not installed: pip install tflite-runtime==2\.14\.0"):
        get_runtime("tflite-runtime")
    with pytest.raises(MicronetError, match="unknown runtime 'tensorrt'; choose from torch, onnxruntime"):
        get_runtime("tensorrt")


def test_registry_knows_which_runtime_runs_which_format():
    assert set(RUNTIMES) == {"torch", "onnxruntime", "litert", "tflite-runtime", "tf-lite", "openvino", "ncnn", "mnn"}
    assert runtimes_for_format("tflite") == ["litert", "tflite-runtime", "tf-lite"]
    assert runtimes_for_format("onnx") == ["onnxruntime"]
    assert [runtimes_for_format(f) for f in ("openvino", "ncnn", "mnn")] == [["openvino"], ["ncnn"], ["mnn"]]
    assert {"torch", "onnxruntime", "litert", "openvino", "ncnn", "mnn"} <= set(available_runtimes())


def test_wrong_input_shape_and_batch_are_user_errors(models):
    r = get_runtime("litert")
    r.load(models["tflite"])
    with pytest.raises(MicronetError, match="expects 3x16x16"):
        r.prepare(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(MicronetError, match="batches of exactly 1"):
        r.prepare(np.zeros((2, 3, SIZE, SIZE), np.float32))


def test_manifest_supplies_layout_and_a_stale_one_is_refused(models, tmp_path):
    from micronet.export.manifest import write_manifest
    from micronet.preprocess import Preprocessing

    pre = Preprocessing(input_size=SIZE).to_dict()
    good = tmp_path / "good.tflite"
    good.write_bytes(models["tflite_nchw"].read_bytes())
    write_manifest(good, {"variant": "tiny", "format": "tflite", "quantize": "float32", "input": {
        "name": "x", "layout": "NCHW", "shape": [1, 3, SIZE, SIZE], "dtype": "float32", "quantization": None,
        "preprocessing": pre}})
    r = get_runtime("litert")
    r.load(good)
    assert r.input_spec.layout == "NCHW" and r.preprocessing == pre and r.manifest["variant"] == "tiny"

    stale = tmp_path / "stale.tflite"
    stale.write_bytes(models["tflite_int8"].read_bytes())
    write_manifest(stale, {"input": {"name": "x", "layout": "NHWC", "shape": [1, SIZE, SIZE, 3], "dtype": "float32",
                                     "quantization": None, "preprocessing": pre}})
    with pytest.raises(MicronetError, match="says the input is float32 but the model's input is int8"):
        get_runtime("litert").load(stale)


# ------------------------------------------------------------------------------------------ memory


def test_memory_child_reports_positive_mib(models):
    mem = measure_memory("onnxruntime", models["onnx"], threads=1, inferences=3)
    assert 0 < mem.baseline_rss_mib <= mem.after_import_rss_mib <= mem.peak_rss_mib
    assert mem.after_load_rss_mib <= mem.peak_rss_mib
    assert mem.peak_rss_mib < 2048  # a fresh process: not the parent's torch + TensorFlow footprint
    assert mem.to_dict()["model_mib"] == pytest.approx(mem.peak_rss_mib - mem.after_import_rss_mib)
    size = file_size(models["onnx"])
    assert size["bytes"] == models["onnx"].stat().st_size and size["mib"] == pytest.approx(size["bytes"] / 2**20)


def test_memory_child_errors_come_back_as_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage" * 10)
    with pytest.raises(MicronetError, match="cannot load .*bad.onnx with onnxruntime"):
        measure_memory("onnxruntime", bad, inferences=1)


# ------------------------------------------------------------------------------------------ accuracy


def _image_folder(root: Path, classes: int, per_class: int = 1) -> Path:
    rng = np.random.default_rng(3)
    for c in range(classes):
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_accuracy_scores_counts_and_skips(models, tmp_path):
    from micronet.images import scan_labelled
    from micronet.preprocess import Preprocessing, load_batch

    root = _image_folder(tmp_path / "data", CLASSES, per_class=2)
    (root / "class00" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "class01" / "notes.txt").write_text("not an image")
    images = scan_labelled(root)
    p = Preprocessing(input_size=SIZE)
    r = get_runtime("onnxruntime")
    r.load(models["onnx"])
    result = evaluate(r, images, p, batch=4)
    assert result["count"] == 2 * CLASSES and result["skipped"] >= 1  # the corrupt jpeg
    assert 0.0 <= result["top1"] <= result["top5"] <= 100.0
    # the score is the torch model's own top-1 on the same pixels
    paths = [path for path, _ in images.samples]
    pixels, _ = load_batch(paths, p)
    labels = np.array([label for path, label in images.samples if path.suffix == ".png"])
    with torch.no_grad():
        pred = models["net"](torch.from_numpy(pixels)).argmax(1).numpy()
    assert result["top1"] == pytest.approx(100.0 * (pred == labels).mean())
    assert result["skipped"] == 2  # the corrupt jpeg (met while scoring) and notes.txt (found by the scan)
    assert any("notes.txt: not an image file" in s for s in result["skipped_examples"])
    limited = evaluate(r, images, p, limit=3)  # the limit counts scored images, drawn across classes
    assert limited["count"] == 3 and limited["skipped"] >= len(images.skipped)
    assert limited == evaluate(r, images, p, limit=3)  # the same subset every time

    fixed = get_runtime("litert")
    fixed.load(models["tflite"])  # batch fixed at 1: fed one by one, same answer
    assert evaluate(fixed, images, p, batch=4)["top1"] == pytest.approx(result["top1"])


def test_accuracy_refuses_a_label_space_that_does_not_match(models, tmp_path):
    from micronet.images import LabelledImages, scan_labelled
    from micronet.preprocess import Preprocessing

    images = scan_labelled(_image_folder(tmp_path / "three", 3))
    r = get_runtime("onnxruntime")
    r.load(models["onnx"])
    with pytest.raises(MicronetError, match="the data has 3 classes but the model outputs 10 logits"):
        evaluate(r, images, Preprocessing(input_size=SIZE))
    with pytest.raises(MicronetError, match="no images"):
        evaluate(r, LabelledImages(samples=[], classes=[str(i) for i in range(CLASSES)]), Preprocessing(input_size=SIZE))


# ------------------------------------------------------------------------------------------ harness


def test_run_benchmark_report_round_trips(models, tmp_path):
    data = _image_folder(tmp_path / "data", CLASSES)
    progress: list[str] = []
    report = run_benchmark(
        [BenchModel(module=models["net"], name="tiny-torch"), models["onnx"], models["tflite_int8"]],
        runtimes=["torch", "onnxruntime", "litert"], threads=[1], warmup=1, runs=5, min_seconds=None,
        data=data, limit=4, progress=progress.append, xnnpack=(True, False), memory=False,
    )
    rows = report["results"]
    assert [(r["runtime"], r["xnnpack"]) for r in rows] == [
        ("torch", None), ("onnxruntime", None), ("litert", True), ("litert", False)]
    assert not any(r["invalid"] for r in rows), [r["invalid_reason"] for r in rows]
    for r in rows:
        assert r["latency"]["count"] == 5 and len(r["latency"]["samples_ms"]) == 5
        assert r["accuracy"]["count"] == 4 and r["init_ms"] >= 0 and r["first_ms"] > 0
    assert rows[0]["params"] == sum(p.numel() for p in models["net"].parameters())
    assert rows[2]["input"]["dtype"] == "int8" and rows[2]["xnnpack_applied"] is True
    assert rows[3]["xnnpack_applied"] is False and rows[2]["size_bytes"] == models["tflite_int8"].stat().st_size
    assert any("accuracy" in p for p in progress)
    path = write_json(report, tmp_path / "r.json")
    merged = merge_reports([path])
    assert [{k: v for k, v in r.items() if k != "source"} for r in merged] == json.loads(json.dumps(rows))


def test_run_benchmark_marks_a_broken_model_invalid_and_goes_on(models, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"garbage" * 10)
    with pytest.raises(MicronetError, match="is not an ONNX model"):  # not a model at all: the request is wrong
        run_benchmark([garbage, models["onnx"]], runtimes=["onnxruntime"], warmup=0, runs=2, memory=False)
    # A well-formed ONNX file no runtime can load (an op nobody implements): that row is invalid, the run goes on.
    bad = tmp_path / "bad.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], domain="no.such")], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("no.such", 1)]),
              bad)
    report = run_benchmark([bad, models["onnx"]], runtimes=["onnxruntime"], warmup=0, runs=2, memory=True,
                           memory_inferences=1)
    first, second = report["results"]
    assert first["invalid"] and "cannot load" in first["invalid_reason"]
    assert not second["invalid"] and second["memory"]["peak_rss_mib"] > 0


def test_run_benchmark_rejects_bad_requests_before_loading(models):
    with pytest.raises(MicronetError, match="runs"):
        run_benchmark([models["onnx"]], runs=0)
    with pytest.raises(MicronetError, match="none of the requested runtimes"):
        run_benchmark([models["onnx"]], runtimes=["litert"])
    with pytest.raises(MicronetError, match="not found"):
        run_benchmark([Path("nowhere.onnx")])
    with pytest.raises(MicronetError, match="threads"):
        run_benchmark([models["onnx"]], threads=[0])
    with pytest.raises(MicronetError, match="limit"):
        run_benchmark([models["onnx"]], limit=0)
    with pytest.raises(MicronetError, match="memory inferences"):
        run_benchmark([models["onnx"]], memory_inferences=0)
