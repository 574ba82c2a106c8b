"""Where an int8 TFLite file parts from its float32 twin: the cosine of every op's output, in execution order.

When the int8 rung fails (cosine below its limit), the question is whether one layer breaks (an op with a
bad range: a softmax, a clip, a tiny-valued ReLU) or the error grows a little at every layer. The
converter's own ``QuantizationDebugger`` scores each op given *quantized* inputs, so it cannot tell the
second case apart; this module runs both files with every intermediate tensor kept and compares them
where they stand. Tensors are matched by name, which the TFLite converter keeps when the float32 and int8
files come from the same SavedModel (``micronet export --all`` writes both).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from micronet.errors import MicronetError


@dataclass(frozen=True)
class TensorDrift:
    """One op output of the int8 file against the same tensor of the float32 file, over the batch."""

    step: int  # the op's position in the int8 file's execution order
    op: str  # TFLite builtin name (CONV_2D, MUL, ...)
    tensor: str  # the converter's tensor name (what the SavedModel called it)
    shape: tuple[int, ...]
    cosine: float  # mean over the batch's samples
    drop: float  # the lowest cosine among the op's compared inputs (1.0: the model input) minus its own


def _interpreter(path: str | os.PathLike):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from micronet.quiet import native_stderr

    # Built-in kernels only: a delegate computes its partition's intermediate tensors out of the
    # interpreter's sight, and they would read as stale memory.
    with native_stderr():
        interpreter = Interpreter(str(path), experimental_preserve_all_tensors=True,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interpreter.allocate_tensors()
    return interpreter


def _feed(interpreter, sample_nchw: np.ndarray) -> None:
    detail = interpreter.get_input_details()[0]
    shape = tuple(detail["shape"][1:])
    x = sample_nchw[None]
    if shape != x.shape[1:]:
        x = x.transpose(0, 2, 3, 1)
        if shape != x.shape[1:]:
            raise MicronetError(f"input {list(detail['shape'])} fits neither NCHW nor NHWC of {list(sample_nchw.shape)}")
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        x = np.clip(np.round(x / scale + zero), info.min, info.max)
    interpreter.set_tensor(detail["index"], x.astype(detail["dtype"]))
    interpreter.invoke()


def _values(interpreter, index: int) -> np.ndarray | None:
    try:
        tensor = interpreter.get_tensor(index)
    except ValueError:  # a tensor the runtime never materialised
        return None
    detail = interpreter._get_tensor_details(index, 0)
    scale, zero = detail["quantization"]
    if tensor.dtype in (np.int8, np.uint8, np.int16) and scale:
        return (tensor.astype(np.float32) - zero) * scale
    return tensor.astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    if norms == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(a @ b / norms)


def int8_drift(float_path: str | os.PathLike, int8_path: str | os.PathLike, batch_nchw: np.ndarray
               ) -> list[TensorDrift]:
    """Every op output of ``int8_path`` that ``float_path`` also has, with its cosine to the float32 value
    over ``batch_nchw`` (N, C, H, W float32, preprocessed as the model's input), in execution order."""
    batch = np.asarray(batch_nchw, dtype=np.float32)
    if batch.ndim != 4 or not len(batch):
        raise MicronetError(f"int8_drift needs an NCHW batch of at least one image, got shape {batch.shape}")
    reference, quantized = _interpreter(float_path), _interpreter(int8_path)
    by_name = {d["name"]: d["index"] for d in reference.get_tensor_details()}
    steps, inputs = [], {}
    for op in quantized._get_ops_details():
        for index in op["outputs"]:
            name = quantized._get_tensor_details(int(index), 0)["name"]
            if name in by_name:
                steps.append((op["index"], op["op_name"], name, int(index), by_name[name]))
                inputs[op["index"]] = [int(i) for i in op["inputs"]]
    if not steps:
        raise MicronetError(f"{int8_path} and {float_path} share no tensor names: compare the float32 and int8 "
                            "files of one export")
    cosines: dict[int, list[float]] = {}
    shapes: dict[int, tuple[int, ...]] = {}
    for sample in batch:
        _feed(reference, sample)
        _feed(quantized, sample)
        for step, _, _, q_index, f_index in steps:
            q, f = _values(quantized, q_index), _values(reference, f_index)
            if q is None or f is None or q.shape != f.shape or q.size < 2:
                continue
            cosines.setdefault(step, []).append(_cosine(f, q))
            shapes[step] = q.shape
    rows, agreement = [], {}  # agreement: tensor index in the int8 file -> its cosine
    for step, op, name, q_index, _ in steps:
        if step not in cosines:
            continue
        cosine = float(np.mean(cosines[step]))
        before = min((agreement[i] for i in inputs[step] if i in agreement), default=1.0)
        agreement[q_index] = cosine
        rows.append(TensorDrift(step=step, op=op, tensor=name, shape=shapes[step], cosine=cosine,
                                drop=before - cosine))
    return rows
