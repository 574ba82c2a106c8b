"""The model-agnostic converter stages of ``micronet.export``, on a small CNN with every MicroNet op kind.

The net is converted once per session (module-scoped fixtures): PyTorch → ONNX → SavedModel → four TFLite
files. Everything that runs a converter is marked ``slow``; the rest (metrics, manifests, argument checks,
the network guard) runs in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from micronet.errors import MicronetError
from micronet.export import _onnx2tf_child
from micronet.export.inspect import non_builtin_ops, run_tflite, tflite_io_spec, tflite_op_inventory
from micronet.export.manifest import manifest_path, read_manifest, tool_versions, write_manifest
from micronet.export.onnx import INPUT_NAME, OUTPUT_NAME, export_onnx, run_onnx
from micronet.export.parity import THRESHOLDS, check_rung, compare
from micronet.export.tflite import (DEAD_PROXY, ONNX2TF_STUB, offline_env, onnx_to_saved_model,
                                    saved_model_to_tflite)

SIZE = 96  # spatial sizes 48/24/12 never equal a channel-group count (onnx2tf's layout guess needs that)


# --- the test network -------------------------------------------------------------------------------------

def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x + 3.0) / 6.0


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShiftMax(nn.Module):
    """Dynamic Shift-Max in miniature: per-channel coefficients from a pooled hyper-function, applied to x
    and to a group-shifted copy (a channel gather), two branches combined with torch.max."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        squeeze = max(4, channels // 4)
        self.fc1, self.fc2 = nn.Linear(channels, squeeze), nn.Linear(squeeze, 4 * channels)
        per_group = channels // groups
        shift = [((k + 1) % groups) * per_group + (p + 1) % per_group for k in range(groups) for p in range(per_group)]
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.long))

    def forward(self, x):
        b, c, _, _ = x.shape
        coeffs = (hard_sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3)))))) - 0.5) * 4.0
        a1, b1, a2, b2 = torch.split(coeffs.view(b, 4 * c, 1, 1), c, dim=1)
        shifted = x[:, self.shift]
        return torch.max(x * (a1 + 1.0) + shifted * b1, x * a2 + shifted * b2)


class Block(nn.Module):
    """k×1 depthwise → 1×k depthwise with channel multiplier → BN → Shift-Max → shuffle → grouped 1×1 → BN."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, multiplier: int, groups: int):
        super().__init__()
        hidden = cin * multiplier
        self.dw_k1 = nn.Conv2d(cin, cin, (k, 1), (stride, 1), (k // 2, 0), groups=cin, bias=False)
        self.dw_1k = nn.Conv2d(cin, hidden, (1, k), (1, stride), (0, k // 2), groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.act = ShiftMax(hidden, groups)
        self.shuffle = ChannelShuffle(groups)
        self.pw = nn.Conv2d(hidden, cout, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.bn2(self.pw(self.shuffle(self.act(self.bn1(self.dw_1k(self.dw_k1(x)))))))
        return x + y if self.residual else y


class TinyMicroNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 4, (3, 1), (2, 1), (1, 0), bias=False), nn.BatchNorm2d(4),
            nn.Conv2d(4, 8, (1, 3), (1, 2), (0, 1), groups=4, bias=False), nn.BatchNorm2d(8),
            ChannelShuffle(4), nn.ReLU6())
        self.blocks = nn.Sequential(Block(8, 16, 3, 2, 2, 2), Block(16, 16, 5, 1, 2, 4), Block(16, 32, 3, 2, 2, 8))
        self.fc1, self.bn, self.fc2 = nn.Linear(32, 64), nn.BatchNorm1d(64), nn.Linear(64, classes)

    def forward(self, x):
        x = torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1)
        x = self.bn(self.fc1(x))
        return self.fc2(x * hard_sigmoid(x))


def trained_looking(model: nn.Module) -> nn.Module:
    """Random BN affine parameters and BN statistics re-estimated on data, so activations keep their scale
    through the net (fresh BN statistics make an untrained net's logits vanish; toolchain spec P15)."""
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
            module.momentum = None  # cumulative average over the passes below
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, 3, SIZE, SIZE))
    return model.eval()


# --- fixtures: one conversion per session -----------------------------------------------------------------

@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(1234)
    return trained_looking(TinyMicroNet())


@pytest.fixture(scope="module")
def holdout() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((16, 3, SIZE, SIZE)).astype(np.float32)


@pytest.fixture(scope="module")
def calibration_nhwc() -> np.ndarray:
    return np.random.default_rng(99).standard_normal((32, SIZE, SIZE, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def reference(net, holdout) -> np.ndarray:
    with torch.no_grad():
        logits = net(torch.from_numpy(holdout)).numpy()
    assert logits.std() > 0.05, "degenerate test net: parity on near-zero logits would prove nothing"
    return logits


@pytest.fixture(scope="module")
def onnx_artifact(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    record = export_onnx(net, torch.zeros(1, 3, SIZE, SIZE), path)
    return path, record


@pytest.fixture(scope="module")
def saved_model(onnx_artifact, tmp_path_factory):
    return onnx_to_saved_model(onnx_artifact[0], tmp_path_factory.mktemp("onnx2tf"))


@pytest.fixture(scope="module")
def tflites(saved_model, calibration_nhwc, tmp_path_factory):
    from micronet.export.tflite_fp16 import float16_weights

    out = tmp_path_factory.mktemp("tflite")
    files = {q: (out / f"tiny_{q}.tflite", saved_model_to_tflite(saved_model[0], out / f"tiny_{q}.tflite", q,
                                                                   calibration_nhwc if q == "int8" else None))
             for q in ("float32", "dynamic", "int8")}
    # float16 as the pipeline builds it: rewritten from the float32 file (export/tflite_fp16.py)
    float16 = out / "tiny_float16.tflite"
    files["float16"] = (float16, float16_weights(files["float32"][0], float16, keep_vectors_float32=True))
    return files


@pytest.fixture(scope="module")
def tflite_logits(tflites, holdout) -> dict[str, np.ndarray]:
    return {q: run_tflite(path, holdout) for q, (path, _) in tflites.items()}


# --- parity metrics (fast) --------------------------------------------------------------------------------

def test_compare_reports_errors_cosine_and_agreement():
    reference = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    candidate = np.array([[2.0, 4.0, 6.0], [3.0, 2.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.5]])
    m = compare(reference, candidate)
    assert m["max_abs_err"] == pytest.approx(3.0)  # row 0: 6 - 3
    assert m["mean_abs_err"] == pytest.approx((1 + 2 + 3 + 2 + 0.5) / 12)
    assert m["logit_scale"] == 3.0 and m["rel_max_abs_err"] == pytest.approx(1.0)
    # row 0 is a scaled copy (cosine 1), row 1 identical (1), row 2 negated (-1), row 3 cos = 1/sqrt(1.25)
    assert m["cosine"] == pytest.approx((1 + 1 - 1 + 1 / np.sqrt(1.25)) / 4)
    assert m["min_cosine"] == pytest.approx(-1.0)
    assert m["top1_agreement_pct"] == 75.0  # row 2's argmax moves from class 1 to class 0


def test_compare_top5_counts_reference_top1_among_candidate_top5():
    reference = np.array([[9.0, 0, 0, 0, 0, 0], [9.0, 0, 0, 0, 0, 0]])
    fifth = np.array([[5.0, 9, 8, 7, 6, 0]])  # class 0 ranked 5th of 6
    sixth = np.array([[0.0, 9, 8, 7, 6, 5]])  # class 0 ranked last
    m = compare(reference, np.concatenate([fifth, sixth]))
    assert m["top1_agreement_pct"] == 0.0
    assert m["top1_in_top5_pct"] == 50.0


def test_compare_rejects_mismatched_or_non_finite_logits():
    with pytest.raises(ValueError, match="shape"):
        compare(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        compare(np.ones((2, 3)), np.array([[1.0, np.nan, 1.0], [1.0, 1.0, 1.0]]))


def test_check_rung_applies_each_threshold():
    assert check_rung("onnx", {"rel_max_abs_err": 5e-5}).passed
    assert not check_rung("tflite_float32", {"rel_max_abs_err": 2e-4}).passed
    assert check_rung("tflite_int8", {"cosine": 0.985}).passed
    rung = check_rung("tflite_int8", {"cosine": 0.97})
    assert not rung.passed and rung.metric == "cosine" and rung.limit == THRESHOLDS["tflite_int8"].limit
    assert "FAIL" in rung.summary()
    assert not check_rung("tflite_float16", {"rel_max_abs_err": float("nan")}).passed
    with pytest.raises(ValueError, match="unknown parity rung"):
        check_rung("pytorch", {"cosine": 1.0})


# --- manifests (fast) -------------------------------------------------------------------------------------

INT8_IO = {
    "input": {"name": "serving_default_input:0", "layout": "NHWC", "shape": [1, SIZE, SIZE, 3], "dtype": "int8",
              "quantization": {"scale": 0.04, "zero_point": -2}, "preprocessing": {"mean": [0.485, 0.456, 0.406]}},
    "output": {"name": "StatefulPartitionedCall:0", "shape": [1, 10], "dtype": "int8",
               "quantization": {"scale": 0.01, "zero_point": 3}},
}


def test_manifest_round_trip_records_hash_size_and_tools(tmp_path):
    artifact = tmp_path / "m0_int8.tflite"
    artifact.write_bytes(b"TFL3-not-really-a-model" * 100)
    written = write_manifest(artifact, {"variant": "m0", **INT8_IO})
    assert written == tmp_path / "m0_int8.tflite.json" == manifest_path(artifact)
    on_disk = json.loads(written.read_text())
    assert on_disk["sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert on_disk["size_bytes"] == 2300 and on_disk["schema_version"] == 1
    assert set(on_disk["tool_versions"]) >= {"python", "torch", "onnx", "onnxruntime", "onnxsim", "onnxslim",
                                             "onnx2tf", "tensorflow", "ai-edge-litert", "numpy"}
    assert on_disk["tool_versions"]["numpy"] == np.__version__
    assert read_manifest(artifact) == on_disk
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m0_int8.tflite", "m0_int8.tflite.json"]


def test_manifest_write_is_atomic(tmp_path, monkeypatch):
    artifact = tmp_path / "a.tflite"
    artifact.write_bytes(b"x")
    write_manifest(artifact, {"note": "first"})
    before = manifest_path(artifact).read_bytes()
    with pytest.raises(TypeError):  # not JSON-serialisable: refused before anything is written
        write_manifest(artifact, {"note": object()})
    renames = []

    def failing_replace(src, dst):  # the new text is complete in the temp file; the rename fails
        renames.append(Path(src).read_text())
        raise OSError("disk went away")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk went away"):
        write_manifest(artifact, {"note": "second"})
    assert '"note": "second"' in renames[0]
    assert manifest_path(artifact).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tflite", "a.tflite.json"]


def test_read_manifest_absent_stale_or_foreign(tmp_path):
    artifact = tmp_path / "a.onnx"
    artifact.write_bytes(b"one")
    assert read_manifest(artifact) is None
    write_manifest(artifact, {})
    artifact.write_bytes(b"two")  # re-exported, manifest not rewritten
    with pytest.raises(MicronetError, match="sha256 differs"):
        read_manifest(artifact)
    assert read_manifest(artifact, verify=False)["size_bytes"] == 3
    manifest_path(artifact).write_text("{not json")
    with pytest.raises(MicronetError, match="unreadable manifest"):
        read_manifest(artifact)


def test_manifest_refuses_malformed_io_spec(tmp_path):
    artifact = tmp_path / "a.tflite"
    artifact.write_bytes(b"x")
    bad_layout = {**INT8_IO, "input": {**INT8_IO["input"], "layout": "HWC"}}
    with pytest.raises(ValueError, match="layout"):
        write_manifest(artifact, bad_layout)
    unquantized = {**INT8_IO, "output": {**INT8_IO["output"], "quantization": None}}
    with pytest.raises(ValueError, match="needs quantization"):
        write_manifest(artifact, unquantized)
    with pytest.raises(ValueError, match="computed"):
        write_manifest(artifact, {"sha256": "0" * 64})
    assert not manifest_path(artifact).exists()


def test_inspection_refuses_a_file_that_is_not_tflite(tmp_path):
    fake = tmp_path / "model.tflite"
    fake.write_bytes(b"\x00" * 64)
    with pytest.raises(MicronetError, match="not a TFLite flatbuffer"):
        tflite_op_inventory(fake)
    with pytest.raises(MicronetError, match="cannot read"):
        tflite_io_spec(tmp_path / "missing.tflite")


def test_tool_versions_come_from_metadata():
    versions = tool_versions()
    assert versions["torch"].startswith(torch.__version__.split("+")[0])
    assert versions["onnx2tf"] == "1.29.24"


# --- offline guarantees and argument checks (fast) --------------------------------------------------------

def test_conversion_child_refuses_and_records_connections(monkeypatch):
    # Keep the originals so monkeypatch restores them after the guard replaces them.
    monkeypatch.setattr(socket.socket, "connect", socket.socket.connect)
    monkeypatch.setattr(socket.socket, "connect_ex", socket.socket.connect_ex)
    attempts: list = []
    _onnx2tf_child.refuse_network(attempts)
    with pytest.raises(OSError, match="network access is disabled"):
        socket.create_connection(("192.0.2.1", 443), timeout=1)  # TEST-NET-1: never routable anyway
    assert attempts == [repr(("192.0.2.1", 443))]


def test_conversion_env_routes_every_proxy_to_a_dead_port(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "github.com")
    env = offline_env()
    assert all(env[name] == DEAD_PROXY for name in ("HTTP_PROXY", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"))
    assert "NO_PROXY" not in env and DEAD_PROXY.endswith(":9")


def test_saved_model_to_tflite_checks_arguments_before_converting(tmp_path):
    fake = tmp_path / "saved_model"
    fake.mkdir()
    (fake / "saved_model.pb").write_bytes(b"")
    out = tmp_path / "m.tflite"
    with pytest.raises(MicronetError, match="unknown quantization"):
        saved_model_to_tflite(fake, out, "int4")
    with pytest.raises(MicronetError, match="needs calibration"):
        saved_model_to_tflite(fake, out, "int8")
    with pytest.raises(MicronetError, match="looks NCHW"):
        saved_model_to_tflite(fake, out, "int8", np.zeros((4, 3, SIZE, SIZE), np.float32))
    with pytest.raises(MicronetError, match="input/output type"):
        saved_model_to_tflite(fake, out, "int8", np.zeros((4, SIZE, SIZE, 3), np.float32), io_dtype="int16")
    with pytest.raises(MicronetError, match="no SavedModel"):
        saved_model_to_tflite(tmp_path / "missing", out, "float32")
    assert not out.exists()


def test_export_onnx_refuses_a_model_in_training_mode(tmp_path):
    with pytest.raises(MicronetError, match="training mode"):
        export_onnx(nn.Conv2d(3, 4, 3).train(), torch.zeros(1, 3, 8, 8), tmp_path / "t.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_failed_onnx_export_leaves_no_file(tmp_path):
    class Broken(nn.Module):
        def forward(self, x):
            raise ValueError("boom in forward")

    with pytest.raises(MicronetError, match="ValueError: boom in forward"):
        export_onnx(Broken().eval(), torch.zeros(1, 3, 8, 8), tmp_path / "b.onnx")
    assert list(tmp_path.iterdir()) == []


# --- PyTorch → ONNX (slow: runs the exporter) -------------------------------------------------------------

@pytest.mark.slow
def test_onnx_export_names_opset_and_simplification(onnx_artifact):
    import onnx

    path, record = onnx_artifact
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == [INPUT_NAME] and [o.name for o in graph.output] == [OUTPUT_NAME]
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 3, SIZE, SIZE]
    assert record["opset"] == 18 and record["exporter"] == "dynamo"
    assert record["nodes"] == len(graph.node) <= record["nodes_raw"]
    assert {n.op_type for n in graph.node} >= {"Conv", "Max", "Transpose", "Gemm"}
    assert record["size_bytes"] == path.stat().st_size
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.onnx"]  # no temp file left


@pytest.mark.slow
def test_onnx_matches_pytorch(onnx_artifact, holdout, reference):
    metrics = compare(reference, run_onnx(onnx_artifact[0], holdout))
    rung = check_rung("onnx", metrics)
    assert rung.passed, rung.summary()
    assert metrics["top1_agreement_pct"] == 100.0


@pytest.mark.slow
def test_onnx_export_is_byte_identical_when_repeated(net, onnx_artifact, tmp_path):
    again = tmp_path / "again.onnx"
    export_onnx(net, torch.zeros(1, 3, SIZE, SIZE), again)
    assert again.read_bytes() == onnx_artifact[0].read_bytes()


@pytest.mark.slow
def test_dynamic_batch_through_onnx_and_tflite(net, holdout, reference, tmp_path):
    path = tmp_path / "dyn.onnx"
    record = export_onnx(net, torch.zeros(1, 3, SIZE, SIZE), path, dynamic_batch=True)
    assert record["input"]["shape"] == [-1, 3, SIZE, SIZE]
    assert check_rung("onnx", compare(reference[:5], run_onnx(path, holdout[:5]))).passed
    saved, sm_record = onnx_to_saved_model(path, tmp_path / "work")
    assert sm_record["inputs"][0]["shape"] == [-1, SIZE, SIZE, 3]
    tflite = tmp_path / "dyn.tflite"
    saved_model_to_tflite(saved, tflite, "float32")
    assert tflite_io_spec(tflite)["input"]["shape"] == [-1, SIZE, SIZE, 3]
    assert check_rung("tflite_float32", compare(reference[:5], run_tflite(tflite, holdout[:5]))).passed


# --- ONNX → SavedModel → TFLite (slow) --------------------------------------------------------------------

@pytest.mark.slow
def test_onnx2tf_ran_offline_in_its_scratch_dir(saved_model):
    path, record = saved_model
    workdir = path.parent
    assert (path / "saved_model.pb").is_file()
    assert record["network_attempts"] == []
    stub = np.load(workdir / ONNX2TF_STUB)
    assert stub.shape == (20, 128, 128, 3) and stub.dtype == np.float32
    assert record["input_layout"] == "NHWC"
    assert record["onnx_input_shape"] == [1, 3, SIZE, SIZE]
    assert record["inputs"][0]["shape"] == [1, SIZE, SIZE, 3]
    assert record["outputs"] == [{"name": OUTPUT_NAME, "shape": [1, 10]}]
    assert "onnx2tf" in (workdir / "onnx2tf.log").read_text(errors="replace")


@pytest.mark.slow
def test_onnx2tf_leaves_the_onnx_file_it_converts_untouched(saved_model, onnx_artifact):
    """onnx2tf re-saves the file it is given (no producer, no node metadata): the shipped ONNX file must stay
    the one the ladder judged, with the module names `micronet profile` joins on."""
    import onnx

    from micronet.export.onnx import MODULE_KEY

    path, record = onnx_artifact  # saved_model converted this very file
    model = onnx.load(str(path))
    assert model.producer_name == "pytorch" and path.stat().st_size == record["size_bytes"]
    assert any(p.key == MODULE_KEY for node in model.graph.node for p in node.metadata_props)


@pytest.mark.slow
def test_tflite_float32_matches_onnx(onnx_artifact, holdout, tflite_logits):
    onnx_logits = run_onnx(onnx_artifact[0], holdout)
    rung = check_rung("tflite_float32", compare(onnx_logits, tflite_logits["float32"]))
    assert rung.passed, rung.summary()


@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["float16", "dynamic", "int8"])
def test_quantized_tflite_stays_close_to_float32(quantize, tflite_logits):
    rung = check_rung(f"tflite_{quantize}", compare(tflite_logits["float32"], tflite_logits[quantize]))
    assert rung.passed, rung.summary()


@pytest.mark.slow
def test_every_tflite_uses_builtin_ops_only(tflites):
    from ai_edge_litert.interpreter import Interpreter

    for quantize, (path, record) in tflites.items():
        inventory = tflite_op_inventory(path)
        assert non_builtin_ops(inventory) == {}, quantize
        assert inventory.get("CONV_2D", 0) + inventory.get("DEPTHWISE_CONV_2D", 0) >= 11, quantize
        assert inventory["MAXIMUM"] == 3 and inventory["FULLY_CONNECTED"] == 8, quantize
        # The flatbuffer count agrees with what the runtime builds.
        assert sum(inventory.values()) == len(Interpreter(model_path=str(path))._get_ops_details()), quantize
        assert record["size_bytes"] == path.stat().st_size


@pytest.mark.slow
def test_int8_is_full_integer_with_recorded_io_quantization(tflites, tflite_logits):
    from ai_edge_litert.interpreter import Interpreter

    path, record = tflites["int8"]
    spec = tflite_io_spec(path)
    interpreter = Interpreter(model_path=str(path))
    for which, details in (("input", interpreter.get_input_details()[0]),
                           ("output", interpreter.get_output_details()[0])):
        assert spec[which]["dtype"] == "int8" and details["dtype"] == np.int8
        scale, zero_point = details["quantization"]
        assert spec[which]["quantization"] == {"scale": pytest.approx(scale), "zero_point": zero_point}
        assert scale > 0 and -128 <= zero_point <= 127
        assert spec[which]["name"] == details["name"]
    assert spec["input"]["shape"] == [1, SIZE, SIZE, 3]  # NHWC
    assert not [t["name"] for t in interpreter.get_tensor_details() if t["dtype"] == np.float32]
    assert record["options"] == {"supported_ops": "TFLITE_BUILTINS_INT8", "per_channel": True,
                                 "io_dtype": "int8", "calibration_samples": 32}
    assert tflite_io_spec(tflites["float32"][0])["input"]["quantization"] is None
    assert np.isfinite(tflite_logits["int8"]).all()


def _weight_scale_counts(path) -> list[int]:
    from ai_edge_litert.interpreter import Interpreter

    tensors = Interpreter(model_path=str(path)).get_tensor_details()
    return [len(t["quantization_parameters"]["scales"]) for t in tensors
            if t["dtype"] == np.int8 and len(t["shape"]) == 4 and t["shape"][0] > 1 and "input" not in t["name"]]


@pytest.mark.slow
def test_int8_uint8_io_and_per_tensor_option(saved_model, calibration_nhwc, tflites, tflite_logits, holdout,
                                             tmp_path):
    path = tmp_path / "tiny_uint8_per_tensor.tflite"
    record = saved_model_to_tflite(saved_model[0], path, "int8", calibration_nhwc, io_dtype="uint8",
                                   per_channel=False)
    spec = tflite_io_spec(path)
    assert spec["input"]["dtype"] == spec["output"]["dtype"] == "uint8"
    assert record["options"]["per_channel"] is False
    assert set(_weight_scale_counts(path)) == {1}  # one scale per weight tensor
    assert max(_weight_scale_counts(tflites["int8"][0])) > 1  # the default is per channel
    logits = run_tflite(path, holdout)
    assert compare(tflite_logits["float32"], logits)["cosine"] > 0.95


@pytest.mark.slow
def test_tflite_conversion_is_byte_identical_when_repeated(saved_model, calibration_nhwc, tflites, tmp_path):
    for quantize in ("float32", "int8"):
        again = tmp_path / f"again_{quantize}.tflite"
        saved_model_to_tflite(saved_model[0], again, quantize, calibration_nhwc)
        assert again.read_bytes() == tflites[quantize][0].read_bytes(), quantize


@pytest.mark.slow
def test_manifest_describes_a_real_int8_artifact(tflites):
    path, record = tflites["int8"]
    spec = tflite_io_spec(path)
    data = {"input": {**spec["input"], "layout": "NHWC", "preprocessing": {"mean": [0.0] * 3, "std": [1.0] * 3}},
            "output": spec["output"], "stages": [record]}
    write_manifest(path, data)
    manifest = read_manifest(path)
    assert manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["input"]["quantization"] == spec["input"]["quantization"]


# --- failures leave nothing behind (slow: they start the converters) --------------------------------------

@pytest.mark.slow
def test_failed_onnx2tf_run_leaves_no_saved_model(tmp_path, monkeypatch):
    """...and the log its one line names outlives the work folder, which the export removes on failure."""
    import shutil
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "system-tmp"))
    (tmp_path / "system-tmp").mkdir()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not a protobuf")
    workdir = tmp_path / "work"
    (workdir / "saved_model").mkdir(parents=True)  # a stale result from an earlier run
    with pytest.raises(MicronetError) as failure:
        onnx_to_saved_model(broken, workdir)
    message = str(failure.value)
    assert "\n" not in message and "broken.onnx" in message
    assert not (workdir / "saved_model").exists()
    assert json.loads((workdir / "onnx2tf_record.json").read_text())["network_attempts"] == []
    named_log = Path(message.rsplit("(full log: ", 1)[1].rstrip(")"))
    shutil.rmtree(workdir)
    assert named_log.parent == tmp_path / "system-tmp"
    assert named_log.read_bytes()  # what onnx2tf wrote


@pytest.mark.slow
def test_flex_ops_are_visible_and_refused(tmp_path):
    import tensorflow as tf

    class NeedsFlex(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
        def __call__(self, x):
            return {"y": tf.math.cumprod(x, axis=1)}  # no TFLite builtin kernel; Flex has one

    saved = tmp_path / "saved_model"
    module = NeedsFlex()
    tf.saved_model.save(module, str(saved), signatures=module.__call__)
    out = tmp_path / "flex.tflite"
    with pytest.raises(MicronetError, match="float32 conversion .* without a TFLite builtin .*Cumprod") as failure:
        saved_model_to_tflite(saved, out, "float32")
    assert "\n" not in str(failure.value)
    assert not out.exists()
    assert "Cumprod" in (tmp_path / "tflite_float32.log").read_text()

    # Built with SELECT_TF_OPS, the file runs in this process (TensorFlow links the Flex delegate) but not in a
    # runtime-only one; the inventory, read from the file, flags it either way.
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    out.write_bytes(converter.convert())
    assert non_builtin_ops(tflite_op_inventory(out)) == {"FLEX:Cumprod": 1}


class SumIntoGroupedConv(nn.Module):
    """A residual sum feeding a 12-group 1x1 conv on a map 12 wide: the shape of pose-m2's first head block at
    256x192, which onnx2tf 1.29.24 alone builds as a depthwise conv and fails on."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(24, 24, 1), nn.Conv2d(24, 24, 1)
        self.grouped = nn.Conv2d(24, 48, 1, groups=12)

    def forward(self, x):
        return self.grouped(self.a(x) + self.b(x))


@pytest.mark.slow
def test_grouped_conv_whose_group_count_equals_the_map_width_converts(tmp_path):
    torch.manual_seed(0)
    net = SumIntoGroupedConv().eval()
    images = np.random.default_rng(0).standard_normal((2, 24, 16, 12)).astype(np.float32)
    path = tmp_path / "grouped.onnx"
    export_onnx(net, torch.zeros(1, 24, 16, 12), path)
    saved, record = onnx_to_saved_model(path, tmp_path / "work")
    child = json.loads((tmp_path / "work" / "onnx2tf_record.json").read_text())
    assert len(child["grouped_conv_layout_fixes"]) == 1  # the workaround applied where onnx2tf needed it
    tflite = tmp_path / "grouped.tflite"
    saved_model_to_tflite(saved, tflite, "float32")
    nchw = run_tflite(tflite, images).transpose(0, 3, 1, 2)  # the TFLite file's output is NHWC
    assert check_rung("tflite_float32", compare(run_onnx(path, images), nchw)).passed
