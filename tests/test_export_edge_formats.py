"""The edge formats (``micronet export --format openvino|ncnn|mnn``): converters, their runtimes, the plan, the
manifests of folder artifacts, refusals.

Fast tests convert a tiny CNN's ONNX file (built in a second) with the real converters and run the result in
the real runtimes against ONNX Runtime; slow tests export m0 through the whole pipeline and check every
artifact and manifest. Each converted file is held to its parity rung's limit (export/parity.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from micronet.errors import MicronetError
from micronet.export import edge, parity
from micronet.export.manifest import read_manifest, sha256_file, write_manifest
from micronet.export.onnx import run_onnx
from micronet.export.plan import plan
from micronet.export.request import ExportRequest, artifact_name, resolve_kinds

from test_cli import assert_one_line_error, run_cli

EDGE_KINDS = [("openvino", "float32"), ("openvino", "float16"), ("openvino", "int8"), ("ncnn", "float32"),
              ("ncnn", "float16"), ("mnn", "float32"), ("mnn", "float16"), ("mnn", "int8")]
TINY = 32


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """A small CNN with MicroNet's kinds of ops (grouped and depthwise convs, a channel shuffle, ReLU6, a
    hard-sigmoid gate, global pooling, a linear head) as a fixed-batch ONNX file."""
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)
            self.pw = nn.Conv2d(16, 16, 1, groups=4)
            self.gate = nn.Linear(16, 16)
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            x = nn.functional.relu6(self.stem(x))
            x = self.dw(x)
            b, c, h, w = x.shape
            x = x.view(b, 4, c // 4, h, w).transpose(1, 2).reshape(b, c, h, w)  # channel shuffle
            x = self.pw(x)
            g = nn.functional.hardsigmoid(self.gate(x.mean((2, 3))))
            return self.head((x * g[:, :, None, None]).mean((2, 3)))

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    torch.onnx.export(Tiny().eval(), (torch.zeros(1, 3, TINY, TINY),), str(path), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False)  # legacy: 1 s, not 6
    return path


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(6, 3, TINY, TINY)).astype(np.float32)


# --- converters and runtimes (fast) ------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, quantize", EDGE_KINDS)
def test_converted_file_matches_onnx_runtime_within_its_rung(fmt, quantize, tiny_onnx, batch, tmp_path):
    target = tmp_path / artifact_name("tiny", TINY, fmt, quantize)
    record = edge.convert(fmt, quantize, tiny_onnx, target, batch if quantize == "int8" else None)
    if fmt in edge.FOLDER_FILES:
        assert sorted(p.name for p in target.iterdir()) == sorted(edge.FOLDER_FILES[fmt])  # no pnnx side files
    else:
        assert target.is_file()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".log")] == [target.name]
    assert record["tool_versions"] == edge.tool_versions(fmt) and all(record["tool_versions"].values())
    for name, info in record["files"].items():
        file = target / name if target.is_dir() else target
        assert info == {"sha256": sha256_file(file), "size_bytes": file.stat().st_size}
    rung = parity.check_rung(f"{fmt}_{quantize}", parity.compare(run_onnx(tiny_onnx, batch),
                                                                 edge.run_edge(fmt, target, batch)))
    assert rung.passed, rung.summary()
    if quantize == "float32":
        assert rung.value < 1e-5  # float32 rounding, far inside the 1e-4 limit


@pytest.mark.parametrize("fmt", ["openvino", "ncnn", "mnn"])
def test_a_failing_converter_says_so_in_one_line_and_leaves_nothing(fmt, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07not an onnx model" * 8)
    out = tmp_path / "out"
    out.mkdir()
    target = out / artifact_name("m0", TINY, fmt, "float32")
    with pytest.raises(MicronetError) as failure:
        edge.convert(fmt, "float32", broken, target)
    assert "\n" not in str(failure.value) and "broken.onnx" in str(failure.value)
    assert not target.exists()
    assert [p.suffix for p in out.iterdir()] in ([], [".log"])  # only the converter's log for the user


def test_openvino_conversion_writes_nothing_into_home(tiny_onnx, tmp_path):
    """OpenVINO's telemetry would write ~/intel/openvino_ga_cid (on converting, and on reading an ONNX file):
    the converter and the runtime's import block it. Checked in children with a home folder of their own, so
    the real one is never at risk."""
    home = tmp_path / "home"
    home.mkdir()
    convert = ("import sys; from pathlib import Path; from micronet.export import edge; "
               "edge.convert('openvino', 'float32', Path(sys.argv[1]), Path(sys.argv[2]))")
    read_onnx = ("import sys; from micronet import inference as core; "
                 "core.import_library('openvino').Core().compile_model(sys.argv[1], 'CPU')")
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    for code in (convert, read_onnx):
        run = subprocess.run([sys.executable, "-c", code, str(tiny_onnx), str(tmp_path / "ir")], env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "ir" / "model.xml").is_file()
    assert list(home.rglob("*")) == []


def test_ncnn_session_keeps_its_input_alive(tiny_onnx, batch, tmp_path):
    """ncnn's ``Mat`` does not own numpy memory: a session that wrapped a temporary copy read freed memory
    (cosine 0.91 against ONNX Runtime). Run many times with fresh arrays: the answers must stay identical."""
    from micronet import inference as core

    target = tmp_path / "n"
    edge.convert("ncnn", "float32", tiny_onnx, target)
    model = core.bind_model(core.open_session("ncnn", str(target), 1), None, str(target))
    first = model.to_logits(model.run(model.prepare(batch[:1].copy())))
    for _ in range(20):
        junk = [np.full((1, 3, TINY, TINY), 1e9, np.float32) for _ in range(4)]
        assert np.array_equal(model.to_logits(model.run(model.prepare(batch[:1].copy()))), first)
        del junk


# --- the plan and the request (fast) -----------------------------------------------------------------------------

def test_edge_formats_convert_the_shipped_onnx_file_when_it_is_portable():
    p = plan(ExportRequest(kinds=[("onnx", "float32"), ("mnn", "int8")]))
    assert p.names == ["deploy_fast_portable", "onnx", "mnn_int8"]
    assert p.lineage("mnn_int8") == ["deploy_fast_portable", "onnx", "mnn_int8"]


@pytest.mark.parametrize("options", [{}, {"optimize_for": "onnxruntime"}, {"dynamic_batch": True}])
def test_otherwise_they_convert_an_unshipped_portable_fixed_batch_file(options):
    kinds = [("openvino", "float32")] + ([("onnx", "float32")] if options.get("optimize_for") else [])
    p = plan(ExportRequest(kinds=kinds, **options))
    assert p.names[-3:] == ["deploy_fast_portable", "onnx_portable", "openvino_float32"]
    assert p.lineage("openvino_float32") == ["deploy_fast_portable", "onnx_portable", "openvino_float32"]


def test_every_edge_kind_has_a_stage_and_a_rung():
    from micronet.export.stages import STAGES

    for fmt, quantize in EDGE_KINDS:
        assert f"{fmt}_{quantize}" in STAGES and f"{fmt}_{quantize}" in parity.THRESHOLDS
    assert parity.THRESHOLDS["openvino_float32"].limit == parity.THRESHOLDS["onnx"].limit


@pytest.mark.parametrize("args, message", [
    (("ncnn", "int8", False), "--format ncnn is exported in float32, float16; got --quantize int8"),
    (("mnn", "dynamic", False), "--format mnn is exported in float32, float16, int8; got --quantize dynamic"),
    (("coreml", None, False), "choose one of: onnx, tflite, openvino, ncnn, mnn"),
])
def test_bad_combinations_are_refused(args, message):
    with pytest.raises(MicronetError, match=message):
        resolve_kinds(*args)


def test_ncnn_is_refused_with_the_reference_graph():
    with pytest.raises(MicronetError, match="pnnx cannot convert the reference graph"):
        ExportRequest(kinds=[("ncnn", "float32")], graph="reference").check()
    every = resolve_kinds(None, None, True, graph="reference")
    assert ("openvino", "int8") in every and not [k for k in every if k.format == "ncnn"]
    assert len(resolve_kinds("all", None, False)) == 13


def test_cli_refusals_are_one_line(tmp_path):
    assert_one_line_error(run_cli("export", "--format", "ncnn", "--quantize", "int8", "--output", str(tmp_path)),
                          "ncnn is exported in float32, float16")
    assert_one_line_error(run_cli("export", "--format", "ncnn", "--graph", "reference", "--output", str(tmp_path)),
                          "pnnx cannot convert the reference graph")
    assert list(tmp_path.iterdir()) == []
    help_text = run_cli("export", "--help").stdout
    assert all(fmt in help_text for fmt in ("openvino", "ncnn", "mnn"))


# --- manifests and moves of folder artifacts (fast) ----------------------------------------------------------

def test_a_folder_artifact_manifest_hashes_every_file(tmp_path):
    folder = tmp_path / "m.float32.openvino"
    folder.mkdir()
    (folder / "model.xml").write_text("<net/>")
    (folder / "model.bin").write_bytes(b"\x01" * 10)
    write_manifest(folder, {"format": "openvino"})
    manifest = read_manifest(folder)
    assert manifest["size_bytes"] == 16 and len(manifest["sha256"]) == 64
    (folder / "model.bin").write_bytes(b"\x02" * 10)
    with pytest.raises(MicronetError, match="sha256 differs"):
        read_manifest(folder)
    (folder / "model.bin").write_bytes(b"\x01" * 10)
    (folder / "extra.txt").write_text("x")
    with pytest.raises(MicronetError, match="sha256 differs"):
        read_manifest(folder)


def test_replace_dir_swaps_a_whole_folder(tmp_path):
    from micronet.atomic import replace_dir

    old, new = tmp_path / "a.ncnn", tmp_path / "staging" / "a.ncnn"
    old.mkdir()
    (old / "stale.bin").write_text("old")
    new.mkdir(parents=True)
    (new / "model.param").write_text("new")
    replace_dir(new, old)
    assert [p.name for p in old.iterdir()] == ["model.param"] and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ncnn", "staging"]


# --- the whole export of m0 (slow) -------------------------------------------------------------------------------

SIZE = 96  # NNCF int8 of untrained weights is weak below ~64 px (cosine 0.95): test where it means something


@pytest.fixture(scope="module")
def m0_edge(tmp_path_factory) -> tuple[Path, dict]:
    from micronet.export.pipeline import export

    out = tmp_path_factory.mktemp("edge_m0")
    result = export(ExportRequest(variant="m0", kinds=[("onnx", "float32"), *EDGE_KINDS], input_size=SIZE,
                                  calib_count=100, output_dir=out))
    return out, {r["rung"]: r for r in result.rungs}


@pytest.mark.slow
@pytest.mark.parametrize("fmt, quantize", EDGE_KINDS)
def test_m0_exports_load_in_their_runtime_and_match_onnx_runtime(fmt, quantize, m0_edge):
    out, rungs = m0_edge
    path = out / artifact_name("m0", SIZE, fmt, quantize)
    manifest = read_manifest(path)
    assert (manifest["format"], manifest["quantize"], manifest["input_size"]) == (fmt, quantize, SIZE)
    assert manifest["converter"] == edge.tool_versions(fmt)
    assert manifest["input"]["layout"] == "NCHW" and manifest["input"]["shape"] == [1, 3, SIZE, SIZE]
    assert [r["rung"] for r in manifest["parity"]] == ["deploy_fast_portable", "onnx", f"{fmt}_{quantize}"]
    assert set(manifest["files"]) == set(edge.FOLDER_FILES.get(fmt, (path.name,)))
    stage = manifest["stages"][fmt]
    assert stage["source"] == artifact_name("m0", SIZE, "onnx", "float32") and stage["quantize"] == quantize
    from micronet.preprocess import Preprocessing, load_batch
    from micronet.sample_images import held_out_photographs

    # Photographs, not noise: int8 ranges were calibrated on photographs (noise gives cosine 0.79 here).
    x, _ = load_batch(held_out_photographs()[:4], Preprocessing(input_size=SIZE))
    onnx = run_onnx(out / artifact_name("m0", SIZE, "onnx", "float32"), x)
    rung = parity.check_rung(f"{fmt}_{quantize}", parity.compare(onnx, edge.run_edge(fmt, path, x)),
                             untrained=True)
    assert rung.passed, rung.summary()
    assert rungs[f"{fmt}_{quantize}"]["passed"]
    if quantize == "int8" and fmt == "openvino":
        assert manifest["calibration"]["count"] == 100  # the images TFLite int8 is calibrated on


@pytest.mark.slow
def test_m0_export_leaves_only_the_artifacts_and_manifests(m0_edge):
    out, _ = m0_edge
    names = sorted(p.name for p in out.iterdir())
    expected = [artifact_name("m0", SIZE, f, q) for f, q in [("onnx", "float32"), *EDGE_KINDS]]
    assert names == sorted(expected + [n + ".json" for n in expected])
    size = {(f, q): read_manifest(out / artifact_name("m0", SIZE, f, q))["size_bytes"] for f, q in EDGE_KINDS}
    for fmt in ("openvino", "ncnn", "mnn"):  # float16 weights halve the file; int8 quarter it (roughly)
        assert size[(fmt, "float16")] < 0.6 * size[(fmt, "float32")]
    assert size[("openvino", "int8")] < 0.45 * size[("openvino", "float32")]
    assert size[("mnn", "int8")] < 0.45 * size[("mnn", "float32")]


@pytest.mark.slow
def test_bench_measures_each_edge_format_with_the_same_harness(tmp_path):
    """``micronet bench --variant m0 --format <fmt>`` exports through the cache and measures the file in its
    runtime: latency, init, first inference, peak memory in a fresh process, size."""
    for fmt in ("openvino", "ncnn", "mnn"):
        out = tmp_path / fmt
        result = run_cli("bench", "--variant", "m0", "--format", fmt, "--input-size", "64", "--runs", "20",
                         "--warmup", "2", "--out", str(out), cwd=tmp_path)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        [report] = out.glob("*.json")
        [row] = json.loads(report.read_text())["results"]
        assert (row["format"], row["runtime"], row["quantize"], row["invalid"]) == (fmt, fmt, "float32", False)
        assert row["latency"]["count"] == 20 and row["latency"]["p50_ms"] > 0
        assert row["memory"]["peak_rss_mib"] > row["memory"]["baseline_rss_mib"] > 0
        assert row["size_bytes"] == read_manifest(Path(row["model"]))["size_bytes"]


def test_bench_knows_the_edge_formats_and_their_runtimes(tiny_onnx, tmp_path):
    from micronet.bench.runtimes import RUNTIME_FORMATS, check_model_contents, detect_format
    from micronet.bench.targets import exported_kinds

    assert {RUNTIME_FORMATS[f] for f in ("openvino", "ncnn", "mnn")} == {"openvino", "ncnn", "mnn"}
    assert exported_kinds("ncnn", "float16") == (False, [("ncnn", "float16")])
    with pytest.raises(MicronetError, match="--format ncnn is exported in float32, float16"):
        exported_kinds("ncnn", "int8")
    folder = tmp_path / "x.float32.ncnn"
    assert detect_format(folder) == "ncnn" and detect_format(tmp_path / "x.int8.mnn") == "mnn"
    folder.mkdir()
    (folder / "model.param").write_text("7767517\n")
    with pytest.raises(MicronetError, match="holds no .bin file: an incomplete ncnn model"):
        check_model_contents(folder, "ncnn")


def test_devices_refuse_the_edge_formats_in_one_line(tmp_path):
    from micronet.devices.api import model_jobs

    for name in ("m.float32.openvino", "m.float32.ncnn", "m.int8.mnn"):
        with pytest.raises(MicronetError, match="measured on this machine only"):
            model_jobs([tmp_path / name])


@pytest.mark.slow
def test_a_converter_failing_mid_export_leaves_the_old_files_alone(tmp_path, monkeypatch):
    """Two formats asked for, the second converter fails: nothing new appears, a folder artifact from an earlier
    export keeps its files and its manifest still verifies, and no staging folder is left."""
    from micronet.export import pipeline

    request = dict(variant="m0", input_size=32, calib_count=16, holdout=4, output_dir=tmp_path)
    pipeline.export(ExportRequest(kinds=[("ncnn", "float32")], **request))
    old = tmp_path / artifact_name("m0", 32, "ncnn", "float32")
    before = read_manifest(old)["sha256"]

    def broken_mnn(onnx_path, path, quantize):
        path.write_bytes(b"half a model")
        raise MicronetError("MNN could not convert model.onnx (float32): simulated")

    monkeypatch.setattr(edge, "to_mnn", broken_mnn)
    with pytest.raises(MicronetError, match="simulated"):
        pipeline.export(ExportRequest(kinds=[("ncnn", "float32"), ("mnn", "float32")], seed=1, **request))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([old.name, old.name + ".json"])
    assert read_manifest(old)["sha256"] == before
    monkeypatch.undo()
    pipeline.export(ExportRequest(kinds=[("ncnn", "float32")], seed=1, **request))  # replaces the folder whole
    assert read_manifest(old)["sha256"] != before
    assert sorted(p.name for p in old.iterdir()) == ["model.bin", "model.param"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([old.name, old.name + ".json"])


def test_bench_on_a_device_refuses_the_edge_formats_before_any_work(tmp_path):
    result = run_cli("bench", "--device", "ssh://pi@192.0.2.1", "--variant", "m0", "--format", "mnn",
                     "--out", str(tmp_path))
    assert_one_line_error(result, "are measured on this machine only (--device local)")
    assert list(tmp_path.iterdir()) == []
