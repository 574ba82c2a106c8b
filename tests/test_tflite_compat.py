"""Every TFLite file of m0 (fast and reference graphs, all four quantizations) in tflite-runtime 2.14.0, the
runtime a Raspberry Pi user may have: a file whose manifest says it loads there must load and give LiteRT's
outputs; a file whose manifest says it needs a newer runtime must fail there. The manifest's claim
(``min_runtime_version``, export/tflite_versions.py) is tested both ways.

Limits: float32 is the same function (the parity ladder's float32 limit, relative max error ≤ 1e-4); the
quantized files run other kernels in tflite-runtime 2.14 than in LiteRT (its reference kernels where LiteRT
uses XNNPACK), so they are held to the cosine tests/test_conformance.py asks of another interpreter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from micronet.export.inspect import run_tflite
from micronet.export.manifest import read_manifest
from micronet.export.parity import THRESHOLDS, compare
from micronet.export.tflite_versions import TFLITE_RUNTIME_LATEST, needs_newer_than

from fixtures.sshd import missing_tool
from fixtures.tflite_runtime import ensure_venv, run_tflite_runtime

pytestmark = pytest.mark.slow

SIZE = 224
QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
TFLITE_COSINE = {"float16": 0.9999, "dynamic": 0.99, "int8": 0.98}


@pytest.fixture(scope="module")
def tflite_runtime_python() -> Path:
    try:
        return ensure_venv()
    except RuntimeError as exc:
        missing_tool(str(exc))


@pytest.fixture(scope="module")
def m0_files(tmp_path_factory) -> dict[str, Path]:
    """``<graph>.<quantize>`` → the file, from one export per graph at 224 px."""
    from micronet.export.pipeline import ExportRequest, export

    files = {}
    for graph in ("fast", "reference"):
        out = tmp_path_factory.mktemp(f"compat_{graph}")
        result = export(ExportRequest(variant="m0", kinds=[("tflite", q) for q in QUANTIZATIONS], graph=graph,
                                      input_size=SIZE, calib_count=32, holdout=8, output_dir=out))
        files.update({f"{graph}.{p.name.split('.')[-2]}": p for p in result.artifacts})
    assert len(files) == 8
    return files


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)


@pytest.fixture(scope="module")
def in_tflite_runtime(tflite_runtime_python, m0_files, batch, tmp_path_factory) -> dict[str, dict]:
    return run_tflite_runtime(tflite_runtime_python, m0_files, batch, tmp_path_factory.mktemp("tflite_runtime"))


def test_the_manifest_says_where_each_file_loads_and_it_is_true(m0_files, in_tflite_runtime):
    for name, path in m0_files.items():
        manifest = read_manifest(path)
        result = in_tflite_runtime[name]
        if needs_newer_than(manifest["min_runtime_version"]):
            assert "error" in result, f"{name}: the manifest says it needs {manifest['min_runtime_version']}, " \
                                      f"yet it loads in tflite-runtime {TFLITE_RUNTIME_LATEST}"
            assert "version" in result["error"], result["error"]  # refused for an op version, nothing else
        else:
            assert "error" not in result, f"{name}: {manifest['runtime_requirement']}, but: {result.get('error')}"
    # The reference graph's dynamic-range file is the one that needs a newer runtime (FULLY_CONNECTED v12).
    assert needs_newer_than(read_manifest(m0_files["reference.dynamic"])["min_runtime_version"])
    assert "FULLY_CONNECTED v12" in read_manifest(m0_files["reference.dynamic"])["runtime_requirement"]


def test_what_loads_gives_litert_outputs(m0_files, in_tflite_runtime, batch):
    for name, path in m0_files.items():
        result = in_tflite_runtime[name]
        if "error" in result:
            continue
        quantize = name.split(".")[1]
        metrics = compare(run_tflite(path, batch), result["logits"])
        if quantize == "float32":
            assert metrics["rel_max_abs_err"] <= THRESHOLDS["tflite_float32"].limit, (name, metrics)
        else:
            assert metrics["cosine"] >= TFLITE_COSINE[quantize], (name, metrics)


def test_int8_gets_no_xnnpack_in_tflite_runtime_2_14(in_tflite_runtime):
    """What the benchmark warns about (bench/report.py, builtin_kernel_warnings): a fact of this runtime."""
    for graph in ("fast", "reference"):
        assert in_tflite_runtime[f"{graph}.int8"]["delegate_nodes"] == 0
        assert in_tflite_runtime[f"{graph}.float32"]["delegate_nodes"] >= 1
