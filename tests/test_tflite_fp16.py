"""Float16 TFLite rewritten from float32 (export/tflite_fp16.py): weight matrices and biases become float16
behind a DEQUANTIZE, the other vectors stay float32, and the file still runs. Fast: a three-op model written with the flatbuffer
object API, no converter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from micronet.errors import MicronetError
from micronet.export.inspect import tflite_op_inventory, tflite_op_versions
from micronet.export.tflite_fp16 import float16_weights, is_vector


def _tiny_float32(path: Path, n: int = 6) -> dict[str, np.ndarray]:
    """x (1, 8) → FULLY_CONNECTED(weights (n, 8), bias (n,)) → MUL by a (1, n) vector → y (1, n)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    rng = np.random.default_rng(0)
    consts = {"weights": rng.standard_normal((n, 8)).astype(np.float32),
              "bias": rng.standard_normal(n).astype(np.float32),
              "scale": (1 + 1e-3 * rng.standard_normal((1, n))).astype(np.float32)}
    model = schema.ModelT()
    model.version, model.description = 3, b"test"
    model.buffers = [schema.BufferT()]
    tensors = []

    def tensor(name: str, shape, data: np.ndarray | None = None) -> int:
        t = schema.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), list(shape), schema.TensorType.FLOAT32, 0
        if data is not None:
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(data.tobytes(), dtype=np.uint8)
            model.buffers.append(buffer)
            t.buffer = len(model.buffers) - 1
        tensors.append(t)
        return len(tensors) - 1

    x = tensor("x", (1, 8))
    w, b, s = (tensor(k, v.shape, v) for k, v in consts.items())
    h, y = tensor("h", (1, n)), tensor("y", (1, n))
    codes = []
    for op in (schema.BuiltinOperator.FULLY_CONNECTED, schema.BuiltinOperator.MUL):
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = op
        code.version = 1
        codes.append(code)
    ops = []
    for index, (inputs, outputs) in enumerate((([x, w, b], [h]), ([h, s], [y]))):
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = index, inputs, outputs
        ops.append(op)
    subgraph = schema.SubGraphT()
    subgraph.tensors, subgraph.inputs, subgraph.outputs, subgraph.operators = tensors, [x], [y], ops
    model.subgraphs, model.operatorCodes = [subgraph], codes
    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return consts


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_a_vector_has_at_most_one_dimension_above_one():
    assert is_vector([6]) and is_vector([1, 1, 1, 96]) and is_vector([1, 6]) and is_vector([])
    assert not is_vector([6, 8]) and not is_vector([1, 3, 3, 16])


def test_weights_become_float16_and_vectors_stay_float32(tmp_path):
    source = tmp_path / "tiny.float32.tflite"
    consts = _tiny_float32(source)
    x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
    exact = (x @ consts["weights"].T + consts["bias"]) * consts["scale"]
    np.testing.assert_allclose(_run(source, x), exact, rtol=1e-5, atol=1e-5)

    kept = tmp_path / "tiny.float16.tflite"
    record = float16_weights(source, kept)
    # The weights and the bias (XNNPACK wants a bias in its filter's precision) in float16; the MUL's vector kept.
    assert record["float16_tensors"] == 2 and record["float32_vectors_kept"] == 1
    assert tflite_op_inventory(kept) == {"DEQUANTIZE": 2, "FULLY_CONNECTED": 1, "MUL": 1}
    assert tflite_op_versions(kept)["DEQUANTIZE"] == 3
    rounded = {k: v.astype(np.float16).astype(np.float32) for k, v in consts.items()}
    half = (x @ rounded["weights"].T + rounded["bias"]) * consts["scale"]
    np.testing.assert_allclose(_run(kept, x), half, rtol=1e-5, atol=1e-5)  # the scale vector was not rounded
    assert record["float16_weight_bytes_saved"] == (6 * 8 + 6) * 2  # bytes: 54 values, 2 bytes each

    everything = tmp_path / "tiny.all.tflite"
    record = float16_weights(source, everything, keep_vectors_float32=False)  # what TensorFlow's converter does
    assert record["float16_tensors"] == 3 and tflite_op_inventory(everything)["DEQUANTIZE"] == 3


def test_a_bias_takes_its_filters_precision(tmp_path):
    """A one-row weight matrix is a vector, so it stays float32, and its bias with it: XNNPACK refuses a
    float32 filter beside a float16 bias (TF 2.19) and runs the converse far slower (LiteRT 2.1)."""
    source = tmp_path / "row.float32.tflite"
    _tiny_float32(source, n=1)
    record = float16_weights(source, tmp_path / "row.float16.tflite")
    assert record["float16_tensors"] == 0 and record["float32_vectors_kept"] == 3
    assert "DEQUANTIZE" not in tflite_op_inventory(tmp_path / "row.float16.tflite")


def test_a_file_that_is_not_tflite_is_one_clear_error(tmp_path):
    with pytest.raises(MicronetError, match="cannot read"):
        float16_weights(tmp_path / "missing.tflite", tmp_path / "out.tflite")
