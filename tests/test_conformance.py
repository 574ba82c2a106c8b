"""The conformance matrix: every file ``micronet export`` ships, loaded in every consumer that installs here,
its outputs compared with ONNX Runtime's (ONNX and the formats converted from it) or LiteRT's (TFLite).

It is what keeps the default ONNX file portable (``--optimize-for portable``, export/onnx_targets.py): a rewrite
that some consumer rejects fails here, naming the consumer. m0 at 224 px (the size users export) on every
artifact (the OpenVINO, ncnn and MNN files in their own runtimes); m3, whose wider blocks took other rewrites
than m0 (6-D channel transposes), on the ONNX file, which MNN and pnnx → ncnn convert as well.

Limits: a float32 consumer of a float32 file computes the same function, so it is held to the parity ladder's
float32 limit (relative max error ≤ 1e-4, export/parity.py). A float16 or integer TFLite file in another
interpreter runs other kernels on the same quantized graph (XNNPACK against TFLite's reference kernels), so it is
held to the cosine the ladder asks of that quantization against float32 — a broken conversion gives < 0.5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from micronet.export.inspect import run_tflite
from micronet.export.onnx import run_onnx
from micronet.export.parity import THRESHOLDS, compare
from micronet.preprocess import Preprocessing, load_batch
from micronet.sample_images import held_out_photographs

from fixtures import consumers
from test_cli import run_cli

pytestmark = pytest.mark.slow

SIZE = 224
FLOAT32_LIMIT = THRESHOLDS["onnx"].limit
#: The cosine a quantized TFLite file's outputs in another interpreter must reach against LiteRT's.
TFLITE_COSINE = {"float32": 0.99999, "float16": 0.9999, "dynamic": 0.99, "int8": 0.98}


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    """Two held-out photographs and one seeded normal input (it reaches activations photos do not)."""
    photos, skipped = load_batch(held_out_photographs()[:2], Preprocessing(input_size=SIZE))
    assert not skipped and len(photos) == 2
    noise = np.random.default_rng(0).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    return np.concatenate([photos, noise]).astype(np.float32)


@pytest.fixture(scope="module")
def m0(tmp_path_factory) -> dict[str, Path]:
    """Every artifact of m0 at 224 px, from one ``micronet export --all``: kind ("onnx", "int8.tflite",
    ...) → path."""
    out = tmp_path_factory.mktemp("conformance_m0")
    result = run_cli("export", "--variant", "m0", "--all", "--input-size", str(SIZE), "--output", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    prefix = f"micronet-m0-{SIZE}."
    return {p.name.removeprefix(prefix): p for p in out.iterdir() if not p.name.endswith(".json")}


@pytest.fixture(scope="module")
def m3_onnx(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("conformance_m3")
    result = run_cli("export", "--variant", "m3", "--format", "onnx", "--input-size", str(SIZE), "--output", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out / f"micronet-m3-{SIZE}.onnx"


def _rel_err(candidate: np.ndarray, reference: np.ndarray) -> float:
    return compare(reference, candidate)["rel_max_abs_err"]


# --- the default ONNX file ----------------------------------------------------------------------------------------

ONNX_CONSUMERS = {
    "onnx.reference": lambda path, x, tmp: consumers.onnx_reference(path, x),
    "openvino": lambda path, x, tmp: consumers.openvino(path, x),
    "onnx2tf": consumers.onnx2tf_litert,
    "mnn": consumers.mnn,
    "pnnx-ncnn": consumers.pnnx_ncnn,
}


@pytest.mark.parametrize("consumer", list(ONNX_CONSUMERS))
@pytest.mark.parametrize("variant", ["m0", "m3"])
def test_default_onnx_runs_in_every_consumer(variant, consumer, request, inputs, tmp_path):
    path = request.getfixturevalue("m0")["onnx"] if variant == "m0" else request.getfixturevalue("m3_onnx")
    expected = run_onnx(path, inputs)
    got = ONNX_CONSUMERS[consumer](path, inputs, tmp_path)
    assert got.shape == expected.shape
    assert _rel_err(got, expected) <= FLOAT32_LIMIT, f"{variant} ONNX in {consumer}"


@pytest.mark.parametrize("variant", ["m0", "m3"])
def test_default_onnx_is_rated_usable_for_nnapi_and_coreml(variant, request):
    path = request.getfixturevalue("m0")["onnx"] if variant == "m0" else request.getfixturevalue("m3_onnx")
    verdicts = consumers.mobile_usability(path)
    assert verdicts["NNAPI"] and verdicts["CoreML MLProgram"], verdicts


def test_onnx_for_onnx_runtime_fails_where_its_manifest_says(tmp_path):
    """The ``--optimize-for onnxruntime`` file is not portable, and its manifest says so truthfully: the mobile
    checker splits it and onnx2tf cannot convert it. (If an upstream release fixes one of these, this fails:
    then the manifest's table, export/onnx_targets.py, must be updated.)"""
    import json

    result = run_cli("export", "--variant", "m0", "--format", "onnx", "--optimize-for", "onnxruntime",
                     "--input-size", str(SIZE), "--output", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    path = tmp_path / f"micronet-m0-{SIZE}.onnx"
    failing = json.loads(Path(f"{path}.json").read_text())["known_to_fail_in"]
    assert any(k.startswith("onnx2tf") for k in failing) and any("NNAPI" in k for k in failing)
    verdicts = consumers.mobile_usability(path)
    assert not verdicts["NNAPI"] and not verdicts["CoreML MLProgram"], verdicts
    from micronet.errors import MicronetError

    with pytest.raises(MicronetError, match="onnx2tf could not convert"):
        consumers.onnx2tf_litert(path, np.zeros((1, 3, SIZE, SIZE), np.float32), tmp_path / "onnx2tf")
    assert any(k.startswith("MNN") for k in failing) and any(k.startswith("pnnx") for k in failing)
    for consumer, message in ((consumers.mnn, "MNN could not convert"), (consumers.pnnx_ncnn, "pnnx could not convert .* to a model ncnn loads")):
        (tmp_path / consumer.__name__).mkdir()
        with pytest.raises(MicronetError, match=message):
            consumer(path, np.zeros((1, 3, SIZE, SIZE), np.float32), tmp_path / consumer.__name__)


# --- OpenVINO, ncnn and MNN files -------------------------------------------------------------------------------

EDGE_KINDS = ["float32.openvino", "float16.openvino", "int8.openvino", "float32.ncnn", "float16.ncnn",
              "float32.mnn", "float16.mnn", "int8.mnn"]


@pytest.mark.parametrize("kind", EDGE_KINDS)
def test_edge_format_files_match_onnx_runtime_in_their_runtime(kind, m0, inputs):
    """Every OpenVINO, ncnn and MNN file of ``--all`` in its own runtime against the shipped ONNX file in ONNX
    Runtime, held to its rung (float32 at the ONNX limit; float16 and int8 by cosine, untrained limits)."""
    from micronet.export import edge
    from micronet.export.parity import check_rung

    quantize, fmt = kind.split(".")
    x = inputs[:2] if quantize == "int8" else inputs  # int8 ranges come from photographs: noise leaves them
    rung = check_rung(f"{fmt}_{quantize}", compare(run_onnx(m0["onnx"], x), edge.run_edge(fmt, m0[kind], x)),
                      untrained=True)
    assert rung.passed, rung.summary()


# --- TFLite files -------------------------------------------------------------------------------------------------

TFLITE_CONSUMERS = {"tf.lite": consumers.tf_lite, "openvino": consumers.openvino}


@pytest.mark.parametrize("consumer", list(TFLITE_CONSUMERS))
@pytest.mark.parametrize("quantize", ["float32", "float16", "dynamic", "int8"])
def test_tflite_files_run_in_every_interpreter(quantize, consumer, m0, inputs):
    path = m0[f"{quantize}.tflite"]
    expected = run_tflite(path, inputs)
    got = TFLITE_CONSUMERS[consumer](path, inputs)
    assert got.shape == expected.shape
    metrics = compare(expected, got)
    if quantize == "float32":
        assert metrics["rel_max_abs_err"] <= FLOAT32_LIMIT, f"{quantize} TFLite in {consumer}"
    assert metrics["cosine"] >= TFLITE_COSINE[quantize], f"{quantize} TFLite in {consumer}: {metrics}"
