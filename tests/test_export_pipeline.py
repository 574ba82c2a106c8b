"""`micronet export` end to end: artifacts, manifests, the parity ladder, and every bad input."""

from __future__ import annotations

import json
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from micronet.errors import MicronetError
from micronet.model import build_model
from micronet.weights import save_released_layout
from micronet.export import parity
from micronet.export.manifest import read_manifest
from micronet.export.pipeline import ExportRequest, ParityFailure, export, resolve_kinds

from test_cli import assert_one_line_error, run_cli

SIZE = 96  # every stage at a small input keeps the converter run short; 224 is measured in the note


@pytest.fixture(scope="module")
def exported_all(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export_all")
    result = run_cli("export", "--variant", "m0", "--all", "--input-size", str(SIZE), "--output", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "EMBEDDED DEFAULT CALIBRATION" in result.stdout  # said loudly
    return out


def _manifest(path: Path) -> dict:
    return json.loads(Path(f"{path}.json").read_text())


@pytest.mark.slow
def test_all_formats_written_with_manifests(exported_all):
    names = sorted(p.name for p in exported_all.iterdir())
    stems = [f"micronet-m0-{SIZE}.onnx"] + [f"micronet-m0-{SIZE}.{q}.tflite" for q in
                                            ("dynamic", "float16", "float32", "int8")]
    stems += [f"micronet-m0-{SIZE}.{q}.{fmt}" for fmt, qs in (("openvino", ("float32", "float16", "int8")),
                                                            ("ncnn", ("float32", "float16")),
                                                            ("mnn", ("float32", "float16", "int8"))) for q in qs]
    assert names == sorted(stems + [s + ".json" for s in stems])  # no staging folder or temp file left
    for stem in stems:
        m = _manifest(exported_all / stem)
        if (exported_all / stem).is_dir():  # OpenVINO, ncnn: the manifest hashes the folder's files
            files = {p.name for p in (exported_all / stem).iterdir()}
            assert read_manifest(exported_all / stem)["files"].keys() == files
        else:
            data = (exported_all / stem).read_bytes()
            assert m["sha256"] == hashlib.sha256(data).hexdigest() and m["size_bytes"] == len(data)
        assert m["variant"] == "m0" and m["params"] == 1_777_587 and m["input_size"] == SIZE
        assert m["weights"]["state"] == "untrained" and m["weights"]["batchnorm_recalibrated_on"] > 0
        assert m["calibration"]["is_default"]
        if stem.endswith((".int8.tflite", ".int8.openvino")):  # int8 ranges fitted on the default images
            assert "must calibrate on its own" in m["calibration"]["warning"]
        else:
            assert "warning" not in m["calibration"] and "no int8 ranges" in m["calibration"]["note"]
        assert m["input"]["preprocessing"]["input_size"] == SIZE
        assert all(r["passed"] for r in m["parity"])
        assert m["parity"][0]["rung"] == ("deploy_fast" if stem.endswith(".tflite") else "deploy_fast_portable")
        assert m["tool_versions"]["onnx2tf"] == "1.29.24"


@pytest.mark.slow
def test_tflite_manifests_record_layout_ops_and_quantization(exported_all):
    for q in ("float32", "float16", "dynamic", "int8"):
        m = _manifest(exported_all / f"micronet-m0-{SIZE}.{q}.tflite")
        assert m["input"]["layout"] == "NHWC" and m["input"]["shape"] == [1, SIZE, SIZE, 3]
        assert m["ops"]["total"] == sum(m["ops"]["by_op"].values()) > 100
        assert not any(op.startswith(("FLEX", "CUSTOM")) for op in m["ops"]["by_op"])
        assert set(m["op_versions"]) <= set(m["ops"]["by_op"]) and m["min_runtime_version"]
        assert m["min_runtime_version"] in m["runtime_requirement"]
        # Each file's own lineage: no ONNX rung (TFLite is lowered from the fast graph, not converted from ONNX).
        assert [r["rung"] for r in m["parity"]] == ["deploy_fast", "tflite_float32"] + (
            [f"tflite_{q}"] if q != "float32" else [])
        assert "onnx" not in m["stages"]
    int8 = _manifest(exported_all / f"micronet-m0-{SIZE}.int8.tflite")
    assert int8["input"]["dtype"] == int8["output"]["dtype"] == "int8"
    assert int8["input"]["quantization"]["scale"] > 0 and int8["per_channel"] is True
    rung = next(r for r in int8["parity"] if r["rung"] == "tflite_int8")
    assert rung["cosine"] >= parity.THRESHOLDS["tflite_int8"].limit


@pytest.mark.slow
def test_int8_runs_in_litert_with_the_manifest_quantization(exported_all):
    """Feed the int8 model by hand, the way a deployment would, from the manifest alone."""
    from ai_edge_litert.interpreter import Interpreter

    from micronet.preprocess import Preprocessing, preprocess
    from micronet.images import load_rgb
    from micronet.sample_images import held_out_photographs

    path = exported_all / f"micronet-m0-{SIZE}.int8.tflite"
    m = _manifest(path)
    p = Preprocessing.from_dict(m["input"]["preprocessing"])
    x = np.stack([preprocess(load_rgb(f), p) for f in held_out_photographs()]).transpose(0, 2, 3, 1)
    q_in, q_out = m["input"]["quantization"], m["output"]["quantization"]
    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["quantization"] == pytest.approx((q_in["scale"], q_in["zero_point"]))
    logits = []
    for sample in x:
        it.set_tensor(inp["index"], np.clip(np.round(sample[None] / q_in["scale"] + q_in["zero_point"]), -128, 127)
                      .astype(np.int8))
        it.invoke()
        logits.append((it.get_tensor(out["index"]).astype(np.float32) - q_out["zero_point"]) * q_out["scale"])
    logits = np.concatenate(logits)
    f32 = Interpreter(model_path=str(exported_all / f"micronet-m0-{SIZE}.float32.tflite"), num_threads=1)
    f32.allocate_tensors()
    ref = []
    for sample in x:
        f32.set_tensor(f32.get_input_details()[0]["index"], sample[None].astype(np.float32))
        f32.invoke()
        ref.append(f32.get_tensor(f32.get_output_details()[0]["index"]).copy())
    assert parity.compare(np.concatenate(ref), logits)["cosine"] > 0.97


def test_kind_resolution():
    assert resolve_kinds(None, None, False) == [("tflite", "int8")]
    assert resolve_kinds("tflite", "float16", False) == [("tflite", "float16")]
    [onnx] = resolve_kinds("onnx", None, False)
    assert (onnx.format, onnx.quantize) == ("onnx", "float32")
    assert len(resolve_kinds(None, None, True)) == 13  # ONNX, 4 TFLite, 3 OpenVINO, 2 ncnn, 3 MNN
    assert resolve_kinds("all", None, False) == resolve_kinds(None, None, True)
    for args in (("onnx", "int8", False), ("coreml", None, False), ("tflite", "int4", False), ("onnx", None, True),
                 ("ncnn", "int8", False), ("mnn", "dynamic", False)):
        with pytest.raises(MicronetError):
            resolve_kinds(*args)


@pytest.mark.slow
def test_onnx_is_byte_identical_across_exports(tmp_path):
    for name in ("a", "b"):
        export(ExportRequest(variant="m0", kinds=[("onnx", "float32")], input_size=64, calib_count=16, holdout=4,
                             output_dir=tmp_path / name))
    a, b = (tmp_path / n / "micronet-m0-64.onnx" for n in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.slow
def test_a_broken_rung_fails_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(parity.THRESHOLDS, "onnx", parity.Threshold("rel_max_abs_err", 0.0, False, "pytorch"))
    out = tmp_path / "out"
    with pytest.raises(ParityFailure, match="parity rung 'onnx' broke") as info:
        export(ExportRequest(variant="m0", kinds=[("onnx", "float32")], input_size=64, calib_count=16, holdout=4,
                             output_dir=out))
    assert [r["rung"] for r in info.value.rungs] == ["deploy_fast_portable", "onnx"]
    assert not info.value.rungs[-1]["passed"]
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_loaded_weights_are_recorded(tmp_path, monkeypatch):
    from micronet.bench.targets import reference_target

    model = build_model("m0", num_classes=10, input_size=64)
    torch.save(save_released_layout(model), tmp_path / "w.pth")
    monkeypatch.chdir(tmp_path)  # the weights given relative to the working directory, as a user types them
    result = export(ExportRequest(variant="release-m1", kinds=[("onnx", "float32")], input_size=64, num_classes=10,
                                  calib_count=16, holdout=4, weights=Path("w.pth"), output_dir=Path("o")))
    m = _manifest(result.artifacts[0])
    assert m["weights"]["state"] == "loaded" and m["weights"]["layout"] == "released"
    assert m["weights"]["sha256"] == hashlib.sha256((tmp_path / "w.pth").read_bytes()).hexdigest()
    assert m["output"]["shape"] == [1, 10] and "batchnorm_recalibrated_on" not in m["weights"]
    assert m["weights"]["path"] == str((tmp_path / "w.pth").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # bench --max-drop rebuilds the PyTorch reference from any folder
    assert reference_target(m).variant == "m0"


@pytest.mark.slow
def test_unreadable_calibration_images_are_reported(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(16):
        Image.new("RGB", (40, 40), (15 * i, 255 - 9 * i, 80)).save(images / f"ok{i:02d}.png")
    for i in range(2):
        (images / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    said: list[str] = []
    export(ExportRequest(variant="m0", kinds=[("onnx", "float32")], input_size=64, calib_count=14, holdout=4,
                         calibration=images, output_dir=tmp_path / "o"), progress=said.append)
    line = next(s for s in said if "unreadable" in s)
    assert "skipped 2 unreadable calibration images: broken0.jpg, broken1.jpg (broken0.jpg: " in line


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "empty").mkdir()
    (tmp / "junk").mkdir()
    for name in ("a.jpg", "b.png", "c.webp"):
        (tmp / "junk" / name).write_bytes(b"not an image")
    (tmp / "junk" / "notes.txt").write_text("hello")
    (tmp / "corrupt.pth").write_bytes(b"\x00" * 64)
    torch.save(save_released_layout(build_model("release-m3")), tmp / "m3.pth")
    (tmp / "a_file").write_text("")
    return [
        (["--variant", "m12"], "unknown variant 'm12'"),
        (["--format", "onnx", "--quantize", "int8"], "--format onnx is exported in float32 only; got --quantize int8"),
        (["--format", "tflite", "--quantize", "int3"], "--format tflite is exported in int8, float32, float16, "
                                                       "dynamic; got --quantize int3"),
        (["--format", "onnx", "--optimize-for", "tensorrt"], "unknown --optimize-for 'tensorrt'"),
        (["--format", "tflite", "--optimize-for", "onnxruntime"], "add --format onnx"),
        (["--format", "onnx", "--graph", "reference", "--optimize-for", "onnxruntime"],
         "does not combine with --graph reference"),
        (["--weights", str(tmp / "m3.pth")], "is a release-m3 checkpoint"),
        (["--weights", str(tmp / "corrupt.pth")], "cannot read weights file"),
        (["--calibration", str(tmp / "missing")], "image folder not found"),
        (["--calibration", str(tmp / "empty")], "no images"),
        (["--calibration", str(tmp / "junk")], "could be read"),
        (["--output", str(tmp / "a_file" / "sub")], "cannot write to output folder"),
        (["--input-size", "100"], "multiple of 32"),
    ]


@pytest.mark.slow
def test_bad_inputs_are_one_line_and_leave_no_artifact(tmp_path):
    out = tmp_path / "exports"
    for args, message in _bad_inputs(tmp_path):
        extra = [] if "--output" in args else ["--output", str(out)]
        result = run_cli("export", "--format", "onnx", *args, *extra) if "--format" not in args else run_cli(
            "export", *args, *extra)
        assert_one_line_error(result, message)
        assert not out.exists() or list(out.iterdir()) == [], args


@pytest.mark.slow
def test_tflite_comes_from_the_fast_graph_lowering(exported_all):
    """The default TFLite path: fast deploy graph → export/tf_graph.py → TFLite (no onnx2tf, no layout TRANSPOSE),
    int8 from the lowering without MAXIMUM; the parity ladder has the deploy_fast rung."""
    for q in ("float32", "int8"):
        m = _manifest(exported_all / f"micronet-m0-{SIZE}.{q}.tflite")
        assert m["graph"] == "fast" and m["graph_revision"] >= 2
        assert "onnx2tf" not in m["stages"] and m["stages"]["tf_graph"]["input_layout"] == "NHWC"
        # TRANSPOSE only for the fast graph's channel transposes, no layout ones.
        stage = m["stages"]["tf_graph_int8" if q == "int8" else "tf_graph"]
        assert m["ops"]["by_op"].get("TRANSPOSE", 0) == stage["channel_transposes"]
        assert "GATHER" not in m["ops"]["by_op"]
        assert "deploy_fast" in {r["rung"] for r in m["parity"]}
    int8 = _manifest(exported_all / f"micronet-m0-{SIZE}.int8.tflite")
    assert int8["stages"]["tf_graph_int8"]["max_via_relu"] is True and "MAXIMUM" not in int8["ops"]["by_op"]
    assert int8["stages"]["tf_graph_int8"]["relu_max"] is True


@pytest.mark.slow
def test_default_onnx_is_the_portable_fast_graph(exported_all):
    """The default ONNX artifact: to_fast_deploy(profile="portable"), judged against the training form (rung
    deploy_fast_portable), then in ONNX Runtime against that graph (rung onnx); none of the ops other ONNX
    consumers reject (tests/test_conformance.py runs it in them)."""
    import onnx

    path = exported_all / f"micronet-m0-{SIZE}.onnx"
    m = _manifest(path)
    assert m["graph"] == "fast" and m["stages"]["onnx"]["graph"] == "fast/portable"
    assert m["optimized_for"] == "portable" and m["known_to_fail_in"] == {}
    assert [r["rung"] for r in m["parity"]] == ["deploy_fast_portable", "onnx"]
    assert m["parity"][1]["reference"] == "deploy_fast_portable"
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"Gather", "BatchNormalization", "HardSwish", "HardSigmoid"}, ops
    assert m["stages"]["onnx"]["batch_one_products"] is False


@pytest.mark.slow
def test_onnx_for_onnx_runtime_comes_from_its_fast_graph_and_says_where_it_fails(tmp_path):
    """--optimize-for onnxruntime: to_fast_deploy(profile="onnxruntime") with its batch-of-one products; shifts
    are GATHERs; the manifest names the consumers it is known to fail in."""
    import onnx

    result = export(ExportRequest(variant="m0", kinds=[("onnx", "float32")], input_size=64, calib_count=16,
                                  holdout=4, output_dir=tmp_path, optimize_for="onnxruntime"))
    m = _manifest(result.artifacts[0])
    assert m["stages"]["onnx"]["graph"] == "fast/onnxruntime" and m["optimized_for"] == "onnxruntime"
    assert [r["rung"] for r in m["parity"]] == ["deploy_fast_onnxruntime", "onnx"]
    assert any(name.startswith("onnx2tf") for name in m["known_to_fail_in"])
    ops = [n.op_type for n in onnx.load(str(result.artifacts[0])).graph.node]
    assert ops.count("Gather") >= 10 and "Concat" not in ops and ops.count("Gemm") >= 2 * 15
    assert m["stages"]["onnx"]["batch_one_products"] is True and ops.count("BatchNormalization") >= 2 * 15


@pytest.mark.slow
def test_dynamic_batch_onnx_runs_any_batch(tmp_path):
    """With --dynamic-batch the portable ONNX file runs any batch, and for ONNX Runtime it keeps its MULs (a
    BatchNormalization scale is per channel, not per sample)."""
    import onnx

    from micronet.export.onnx import run_onnx

    for target in ("portable", "onnxruntime"):
        result = export(ExportRequest(variant="m0", kinds=[("onnx", "float32")], input_size=64, calib_count=16,
                                      holdout=4, output_dir=tmp_path / target, dynamic_batch=True,
                                      optimize_for=target))
        m = _manifest(result.artifacts[0])
        assert m["stages"]["onnx"]["batch_one_products"] is False and all(r["passed"] for r in m["parity"])
        assert "BatchNormalization" not in {n.op_type for n in onnx.load(str(result.artifacts[0])).graph.node}
        assert run_onnx(result.artifacts[0], np.zeros((3, 3, 64, 64), np.float32)).shape == (3, 1000)


@pytest.mark.slow
def test_reference_graph_still_converts_through_onnx2tf(tmp_path):
    result = export(ExportRequest(variant="m0", kinds=[("tflite", "float32")], input_size=SIZE, calib_count=16,
                                  holdout=4, output_dir=tmp_path, graph="reference"))
    m = _manifest(result.artifacts[0])
    assert m["graph"] == "reference" and m["stages"]["onnx2tf"]["input_layout"] == "NHWC"
    assert m["stages"]["onnx"]["graph"] == "reference"
    assert all(r["passed"] for r in m["parity"])
    assert not {"deploy_fast", "deploy_fast_onnxruntime"} & {r["rung"] for r in m["parity"]}


@pytest.mark.slow
def test_float_export_is_quiet_and_does_not_warn_about_int8(tmp_path):
    """No TensorFlow log lines on stderr (they were ~15, "failed call to cuInit" among them), and no int8
    calibration banner for a file that has no int8 ranges."""
    out = tmp_path / "o"
    result = run_cli("export", "-f", "tflite", "-q", "float32", "--input-size", "64", "--calib-count", "8",
                     "--output", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stderr == ""
    assert "EMBEDDED DEFAULT CALIBRATION" not in result.stdout and "int8 ranges" not in result.stdout
    m = _manifest(out / "micronet-m0-64.float32.tflite")
    assert m["calibration"]["is_default"] and "warning" not in m["calibration"]


@pytest.mark.slow
def test_tensorflow_import_is_quiet_unless_verbose():
    """The absl lines TensorFlow writes from C++ at import ignore TF_CPP_MIN_LOG_LEVEL; ``--verbose`` (passed
    on as MICRONET_VERBOSE) shows them again."""
    import os
    import subprocess
    import sys

    code = "from micronet.quiet import import_tensorflow; import_tensorflow(); print('ok')"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "MICRONET_VERBOSE")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**env, "MICRONET_VERBOSE": "1"})
    assert (quiet.stdout, quiet.stderr) == ("ok\n", "")
    assert loud.stdout == "ok\n" and loud.stderr.strip()  # TensorFlow 2.19 always has something to say
    assert run_cli("--verbose", "variants", "--json").returncode == 0  # the global option exists


def test_batchnorm_batches_are_bounded_by_pixels_not_images():
    """32 crops at 224 px per batch as before, but a frame of 512x1024 goes 3 at a time (32 of them held ~18 GB
    of activations and were killed for memory), never fewer than 2, and a last batch of one is dropped."""
    from micronet.export.batching import PIXELS_PER_BATCH
    from micronet.export.pipeline import batchnorm_batches

    def sizes(n, h, w):
        return [len(b) for b in batchnorm_batches(np.zeros((n, 3, h, w), np.float32))]

    assert sizes(100, 224, 224) == [32, 32, 32, 4]
    assert sizes(70, 224, 224) == [32, 32, 6]
    assert sizes(10, 512, 1024) == [3, 3, 3] and 3 * 512 * 1024 <= PIXELS_PER_BATCH
    assert sizes(5, 1024, 2048) == [2, 2]
    assert sizes(1, 64, 64) == [1]  # a single image is still used, whole


def test_dense_holdout_is_bounded_by_pixels():
    """Every rung keeps its hold-out outputs: 32 maps of 512x1024 were gigabytes per rung (the export was
    killed for memory), so large maps are judged on fewer images, never fewer than 4."""
    from micronet.export.batching import holdout_maps

    assert holdout_maps(32, 256, 192) == 32 and holdout_maps(32, 128, 256) == 32
    assert holdout_maps(32, 512, 1024) == 4 and holdout_maps(32, 1024, 2048) == 4
    assert holdout_maps(2, 512, 1024) == 2  # never more than asked


def test_parity_top5_breaks_ties_by_position_like_a_stable_sort():
    from micronet.export.parity import _in_top_k

    values = np.array([1.0, 3.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.0])
    stable_top5 = set(np.argsort(-values, kind="stable")[:5].tolist())  # {1, 2, 3, 4, 5}
    assert [_in_top_k(values, i, 5) for i in range(8)] == [i in stable_top5 for i in range(8)]
