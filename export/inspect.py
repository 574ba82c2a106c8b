"""Read a .tflite without running it (op inventory, io spec), and run it on NCHW float batches.

The inventory and io spec come straight from the flatbuffer (``ai_edge_litert.schema_py_generated``), not
from an Interpreter, because what an Interpreter accepts depends on the process: a model with a Flex op fails
at ``allocate_tensors`` in a runtime-only environment, yet runs in any process that has imported TensorFlow
(which links the Flex delegate) — exactly where the exporter runs. Reading the file shows such ops the same
way everywhere, so the pipeline can reject them with a clear message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from micronet.errors import MicronetError

# Prefixes that mark an op needing something beyond the TFLite builtin kernels.
FLEX_PREFIX = "FLEX:"  # a TensorFlow op run by the Flex delegate (SELECT_TF_OPS); needs the TF runtime
CUSTOM_PREFIX = "CUSTOM:"  # any other custom op; needs a registered kernel the stock runtime lacks

_TENSOR_DTYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "INT8": "int8", "UINT8": "uint8",
                  "INT16": "int16", "INT32": "int32", "INT64": "int64", "BOOL": "bool"}


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def load_model(path: str | os.PathLike):
    """The flatbuffer root (``schema.Model``) of the .tflite at ``path``; one clear error if it is not one."""
    schema = _schema()
    try:
        buf = Path(path).read_bytes()
    except OSError as exc:
        raise MicronetError(f"cannot read {path}: {exc.strerror}") from None
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise MicronetError(f"{path} is not a TFLite flatbuffer (no TFL3 identifier)")
    return schema.Model.GetRootAs(buf, 0)


def _enum_names(enum_class) -> dict[int, str]:
    return {value: name for name, value in vars(enum_class).items() if not name.startswith("_")}


def op_code_name(builtin_code: int, deprecated_builtin_code: int, custom_code: bytes | None) -> str:
    """The name of one operator code: its builtin name (``CONV_2D``), ``FLEX:<TfOp>`` for a TensorFlow op
    needing the Flex delegate, ``CUSTOM:<code>`` for another custom op. Takes the fields rather than the
    code, so the flatbuffer's reader (``load_model``) and its object API (``ModelT``) both use it."""
    schema = _schema()
    # The schema keeps the old int8 field for codes < 127; the real code is the larger of the two.
    builtin = max(builtin_code, deprecated_builtin_code)
    if builtin == schema.BuiltinOperator.CUSTOM:
        custom = (custom_code or b"").decode("utf-8", "replace")
        return f"{FLEX_PREFIX}{custom[4:]}" if custom.startswith("Flex") else f"{CUSTOM_PREFIX}{custom}"
    return _enum_names(schema.BuiltinOperator).get(builtin, f"BUILTIN_{builtin}")


def tflite_op_inventory(path: str | os.PathLike) -> dict[str, int]:
    """Count of each op across all subgraphs, by builtin name (``CONV_2D``: 12, ...).

    Custom ops are listed as ``FLEX:<TfOp>`` (TensorFlow ops needing the Flex delegate, i.e. SELECT_TF_OPS)
    or ``CUSTOM:<code>``; see ``non_builtin_ops``.
    """
    model = load_model(path)
    names = [op_code_name(code.BuiltinCode(), code.DeprecatedBuiltinCode(), code.CustomCode())
             for code in (model.OperatorCodes(i) for i in range(model.OperatorCodesLength()))]
    counts: dict[str, int] = {}
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            name = names[subgraph.Operators(o).OpcodeIndex()]
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def tflite_op_versions(path: str | os.PathLike) -> dict[str, int]:
    """The highest version of each builtin op the file's operator codes declare (``FULLY_CONNECTED``: 12, ...).

    A runtime refuses a model whose op version is newer than its kernels (``Didn't find op for builtin opcode
    'FULLY_CONNECTED' version '12'``), so these versions, not the op names, decide which runtimes load a file
    (export/tflite_versions.py). Only codes used by an operator count; Flex/custom codes are left out.
    """
    model = load_model(path)
    used = {model.Subgraphs(s).Operators(o).OpcodeIndex()
            for s in range(model.SubgraphsLength()) for o in range(model.Subgraphs(s).OperatorsLength())}
    versions: dict[str, int] = {}
    for i in sorted(used):
        code = model.OperatorCodes(i)
        name = op_code_name(code.BuiltinCode(), code.DeprecatedBuiltinCode(), code.CustomCode())
        if name.startswith((FLEX_PREFIX, CUSTOM_PREFIX)):
            continue
        versions[name] = max(versions.get(name, 0), int(code.Version()))
    return dict(sorted(versions.items()))


def non_builtin_ops(inventory: dict[str, int]) -> dict[str, int]:
    """The Flex/custom entries of an inventory: non-empty means the stock runtime cannot run the model."""
    return {name: n for name, n in inventory.items() if name.startswith((FLEX_PREFIX, CUSTOM_PREFIX))}


def _tensor_spec(schema, subgraph, index: int) -> dict[str, Any]:
    tensor = subgraph.Tensors(index)
    shape = [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
    signature = [int(d) for d in tensor.ShapeSignatureAsNumpy()] if tensor.ShapeSignatureLength() else shape
    type_name = _enum_names(schema.TensorType)[tensor.Type()]
    quant = tensor.Quantization()
    quantization = None
    if quant is not None and quant.ScaleLength() > 0:
        if quant.ScaleLength() != 1:
            raise MicronetError(f"io tensor {tensor.Name().decode()} is quantized per channel; expected one scale")
        quantization = {"scale": float(quant.Scale(0)), "zero_point": int(quant.ZeroPoint(0))}
    return {
        "name": tensor.Name().decode("utf-8"),
        "shape": signature,  # -1 marks a dynamic dimension
        "dtype": _TENSOR_DTYPES.get(type_name, type_name.lower()),
        "quantization": quantization,
    }


def tflite_output_specs(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every output of the main subgraph, as ``tflite_io_spec`` describes one (a file cut after a block has
    one output per tensor the rest of the graph would read)."""
    schema = _schema()
    subgraph = load_model(path).Subgraphs(0)
    return [_tensor_spec(schema, subgraph, subgraph.Outputs(i)) for i in range(subgraph.OutputsLength())]


def tflite_io_spec(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{"input": {...}, "output": {...}}`` with name, shape (-1 = dynamic), dtype and quantization
    ({scale, zero_point} or None) of the main subgraph's single input and output."""
    schema = _schema()
    subgraph = load_model(path).Subgraphs(0)
    if subgraph.InputsLength() != 1 or subgraph.OutputsLength() != 1:
        raise MicronetError(f"{path}: expected one input and one output, got "
                            f"{subgraph.InputsLength()} and {subgraph.OutputsLength()}")
    return {"input": _tensor_spec(schema, subgraph, subgraph.Inputs(0)),
            "output": _tensor_spec(schema, subgraph, subgraph.Outputs(0))}


def run_tflite(path: str | os.PathLike, batch_nchw_float: np.ndarray, threads: int = 1) -> np.ndarray:
    """Float32 logits (N, ...) of the .tflite at ``path`` for an NCHW float32 batch, in ai-edge-litert.

    Feeds the model the way it was built, through the inference core the benchmark and the on-device
    runner use (``micronet.inference``): transposed to NHWC when its input is channels-last, quantized
    with its own input scale/zero point when its input is integer, one chunk at a time when its batch is
    fixed (the whole batch at once when the batch dimension is dynamic). The output is dequantized with
    the model's output scale/zero point and keeps the model's output shape.
    """
    from micronet import inference as core
    from micronet.quiet import native_stderr

    batch = np.asarray(batch_nchw_float, dtype=np.float32)
    if batch.ndim != 4:
        raise MicronetError(f"run_tflite needs an NCHW batch, got shape {batch.shape}")
    try:
        with native_stderr():  # LiteRT announces its XNNPACK delegate on stderr here, once per process
            try:
                session = core.open_session("litert", str(path), threads)
            except core.DelegateFailed:  # parity is about the file's numbers: the built-in kernels compute them
                session = core.open_session("litert", str(path), threads, xnnpack=False)
            model = core.bind_model(session, None, str(path))
    except core.InferenceError as exc:
        raise MicronetError(str(exc)) from None
    spec = model.input
    if spec.chw != batch.shape[1:]:
        raise MicronetError(f"model input {[d or 1 for d in spec.shape]} fits neither NCHW nor NHWC of the batch "
                            f"{list(batch.shape)}")
    chunk = spec.fixed_batch or len(batch)
    if len(batch) % chunk:
        raise MicronetError(f"model batch is fixed at {chunk}; got {len(batch)} samples")
    with native_stderr():  # a dynamic batch is resized and re-allocated here
        natives = [model.prepare(batch[start:start + chunk]) for start in range(0, len(batch), chunk)]
    outputs = [np.array(model.run(native)) for native in natives]
    model.session.close()
    logits = np.concatenate(outputs)
    quant = model.output.quantization
    return (core.dequantize(logits, quant) if quant else logits).astype(np.float32)


def xnnpack_coverage(path: str | os.PathLike) -> dict[str, Any]:
    """What the XNNPACK delegate takes of the .tflite at ``path`` in this runtime (ai-edge-litert):
    ``micronet.inference.delegate_coverage`` of the loaded graph (ops, xnnpack_ops, partitions — each boundary
    between a delegated and a built-in op costs a hand-over — and not_delegated, the count per op left to
    TFLite's built-in kernels, which are much slower on large tensors: int8 MAXIMUM, SPLIT_V and CONCATENATION
    of more than four inputs, for example)."""
    from ai_edge_litert.interpreter import Interpreter

    from micronet.inference import delegate_coverage

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    return delegate_coverage(interpreter._get_ops_details())
