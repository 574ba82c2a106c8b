"""Float16 TFLite from float32 TFLite: weight matrices and filters stored in half precision, vectors kept float32.

TensorFlow's converter (``supported_types=[tf.float16]``) stores *every* float constant in float16 behind a
``DEQUANTIZE`` op. That is harmless for a conv filter, whose rounding errors average out over a dot product,
but not for the fast graph's folded coefficient vectors: BatchNorm scales, the Shift-Max constants and the
biases folded into per-channel MUL/ADD operands multiply or shift whole activation maps, block after block,
so their float16 rounding (2^-11 relative) compounds. Measured on m0 at 224 (README, "Float16 files") the
converter's fast-graph float16 file is an order of magnitude further from float32 than the reference graph's,
whose vectors sit inside conv biases. ``float16_weights`` rewrites the float32 file instead: every float32
constant with more than one dimension larger than 1 (filters, weight matrices), and every bias of a
convolution or fully connected op whose filter does, becomes a float16 buffer dequantized at load time, exactly as the converter
writes it; every other vector (at most one dimension larger than 1, whatever its rank: the operands of MUL,
ADD, SUB, ...) stays float32. Those vectors are a few KiB, so the file is still about half the float32 size,
and XNNPACK folds the DEQUANTIZE ops into its packed weights as before. A bias takes its filter's precision:
XNNPACK runs a float16 filter beside a float32 bias far slower in LiteRT 2.1 and refuses a float32 filter beside
a float16 bias in TF 2.19 (README, "Float16 files").

The rewrite goes through the flatbuffer object API (``schema_py_generated.ModelT``), as TensorFlow's own
``flatbuffer_utils`` does; data vectors are aligned to 16 bytes like the converter's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from micronet.atomic import replacing
from micronet.errors import MicronetError

#: The DEQUANTIZE version the converter writes for a float16 input (runtime 1.15.0, export/tflite_versions.py).
DEQUANTIZE_FP16_VERSION = 3
_ALIGN = 16  # bytes: TFLite's own alignment of buffer data


def _aligned_builder(size: int):
    import flatbuffers

    class AlignedBuilder(flatbuffers.Builder):
        """Starts every byte vector of 16 bytes or more on a 16-byte boundary (tensor data)."""

        def StartVector(self, elemSize, numElems, alignment):  # noqa: N802 (flatbuffers' name)
            if elemSize == 1 and numElems >= _ALIGN:
                alignment = max(alignment, _ALIGN)
            return super().StartVector(elemSize, numElems, alignment)

    return AlignedBuilder(size)


def is_vector(shape: list[int] | np.ndarray) -> bool:
    """At most one dimension larger than 1: a bias, a per-channel scale, a folded coefficient vector."""
    return sum(int(d) > 1 for d in shape) <= 1


def _filters_of_biases(schema, model, subgraph) -> dict[int, list[int]]:
    """bias tensor → the filter tensors beside it, for every convolution or fully connected op. A bias takes
    its filter's precision: XNNPACK refuses (TF 2.19: "failed to prepare") or runs far slower (LiteRT 2.1) a
    float16 filter beside a float32 bias and the other way round, and a bias only shifts its own output, so its
    rounding does not compound the way a multiplier's does."""
    ops = schema.BuiltinOperator
    positions = {ops.CONV_2D: (1, 2), ops.DEPTHWISE_CONV_2D: (1, 2), ops.FULLY_CONNECTED: (1, 2),
                 ops.TRANSPOSE_CONV: (1, 3)}
    found: dict[int, list[int]] = {}
    for op in subgraph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        where = positions.get(max(code.builtinCode, code.deprecatedBuiltinCode))
        inputs = list(op.inputs) if op.inputs is not None else []
        if where is not None and len(inputs) > where[1] and inputs[where[1]] >= 0:
            found.setdefault(int(inputs[where[1]]), []).append(int(inputs[where[0]]))
    return found


def _dequantize_code(schema, model) -> int:
    """The index of a DEQUANTIZE operator code of the float16 version, added when the model has none."""
    op = schema.BuiltinOperator.DEQUANTIZE
    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == op and code.version == DEQUANTIZE_FP16_VERSION:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = op, op, DEQUANTIZE_FP16_VERSION
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def float16_weights(float32_path: str | os.PathLike, out_path: str | os.PathLike, *,
                    keep_vectors_float32: bool = True) -> dict[str, Any]:
    """Write ``out_path``: the float32 .tflite at ``float32_path`` with its float constants stored in float16
    (with ``keep_vectors_float32``, all but the vectors that are not a convolution's or fully connected op's
    bias; all of them, like TensorFlow's converter, otherwise). Returns the stage record: tensors converted and kept, size in bytes."""
    from ai_edge_litert import schema_py_generated as schema

    source = Path(float32_path)
    try:
        model = schema.ModelT.InitFromPackedBuf(source.read_bytes(), 0)
    except OSError as exc:
        raise MicronetError(f"cannot read {source}: {exc.strerror}") from None
    f32, f16 = schema.TensorType.FLOAT32, schema.TensorType.FLOAT16
    if model.buffers and model.buffers[0].data is not None and len(model.buffers[0].data):
        raise MicronetError(f"{source}: buffer 0 is not the empty buffer the TFLite schema reserves")
    users: dict[int, int] = {}  # buffer → tensors that read it (the converter may share identical constants)
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            users[tensor.buffer] = users.get(tensor.buffer, 0) + 1
    converted = kept = converted_bytes = 0
    dequantize = None
    for subgraph in model.subgraphs:
        io = set(subgraph.inputs or []) | set(subgraph.outputs or [])
        used = {int(t) for op in subgraph.operators for t in (op.inputs if op.inputs is not None else []) if t >= 0}
        filters = _filters_of_biases(schema, model, subgraph)

        def keeps_float32(index: int) -> bool:
            """A vector stays float32; a bias goes with its filter(s)."""
            if index in filters:
                return any(keeps_float32(f) for f in filters[index])
            tensor = subgraph.tensors[index]
            return keep_vectors_float32 and is_vector(list(tensor.shape) if tensor.shape is not None else [])

        new_ops = []
        for index in sorted(used - io):
            tensor = subgraph.tensors[index]
            data = model.buffers[tensor.buffer].data if tensor.buffer else None
            if tensor.type != f32 or data is None or len(data) == 0:
                continue
            if keeps_float32(index):
                kept += 1
                continue
            values = np.frombuffer(bytes(bytearray(data)), dtype="<f4")
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(values.astype("<f2").tobytes(), dtype=np.uint8)
            if users[tensor.buffer] == 1:  # the float32 data goes: its buffer now holds the float16 data
                model.buffers[tensor.buffer] = buffer
                half_buffer = tensor.buffer
            else:
                model.buffers.append(buffer)
                half_buffer = len(model.buffers) - 1
            half = schema.TensorT()
            half.shape, half.type, half.buffer = tensor.shape, f16, half_buffer
            half.name = (tensor.name or b"") + b"_fp16"
            half.shapeSignature = tensor.shapeSignature
            subgraph.tensors.append(half)
            tensor.buffer = 0  # no longer a constant: the DEQUANTIZE below writes it at load time
            if dequantize is None:
                dequantize = _dequantize_code(schema, model)
            op = schema.OperatorT()
            op.opcodeIndex, op.inputs, op.outputs = dequantize, [len(subgraph.tensors) - 1], [index]
            new_ops.append(op)
            converted += 1
            converted_bytes += values.nbytes
        subgraph.operators = new_ops + list(subgraph.operators)  # constants are produced before any use

    builder = _aligned_builder(2 * source.stat().st_size)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out = Path(out_path)
    with replacing(out) as tmp:
        tmp.write_bytes(bytes(builder.Output()))
    return {"stage": "tflite_float16", "tool": "micronet export/tflite_fp16.py (from the float32 file)",
            "quantize": "float16", "options": {"keep_vectors_float32": keep_vectors_float32},
            "float16_tensors": converted, "float32_vectors_kept": kept,
            "float16_weight_bytes_saved": converted_bytes // 2, "size_bytes": out.stat().st_size}
