"""PyTorch → ONNX stage: export, simplify, check; and run the result with onnxruntime.

Exporter: ``torch.onnx.export(..., dynamo=True)``, which always writes opset 18 whatever opset is asked for.
Chosen over the legacy TorchScript exporter (opset 17, deprecated in torch 2.13) because its graphs convert to
faster float TFLite (onnx2tf turns its ``Split`` into SPLIT where the legacy graph yields STRIDED_SLICEs); it
costs a few seconds more per export. Simplifier: onnxsim (removes the few foldable nodes, verifies its result
with onnxruntime, and is what onnx2tf would otherwise run itself; the TFLite stage passes
``not_use_onnxsim``). The measured comparison is in ``docs/export-stages.md``.

Determinism: exporting the same model twice, in one process or two, gives byte-identical files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from micronet import interrupts
from micronet.errors import MicronetError

from micronet.atomic import replacing

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EXPORTER = "dynamo"
OPSET = 18  # what the dynamo exporter writes, whatever is requested


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter warns about optional torchvision ops and its own deprecations on every call;
    none of it concerns a plain CNN, and it would bury the pipeline's own output."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for category in (DeprecationWarning, FutureWarning, UserWarning):
                warnings.simplefilter("ignore", category)
            yield
    finally:
        registration.setLevel(level)


def _export(model, example, path: str, *, dynamic_batch: bool) -> None:
    import torch

    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    with _quiet_exporter(), torch.no_grad():
        # external_data=False: torch 2.13 otherwise writes the weights to a side file "<path>.data".
        torch.onnx.export(model, (example,), path, dynamo=True, opset_version=OPSET, verbose=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_shapes,
                          external_data=False)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(exc: BaseException) -> str:
    """The first line of the innermost cause: the exporter wraps the model's own error in pages of advice."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"


def _simplify(model_proto):
    import onnxsim

    simplified, ok = onnxsim.simplify(model_proto)
    if not ok:
        raise MicronetError("onnxsim could not validate the simplified ONNX graph against the original")
    return simplified


def export_onnx(model, example, path: str | os.PathLike, *, dynamic_batch: bool = False) -> dict[str, Any]:
    """Export ``model`` (in eval mode) for inputs shaped like ``example`` (NCHW float32) to ``path``.

    Input ``input``, output ``logits``, opset 18; simplified with onnxsim and checked with
    ``onnx.checker.check_model(full_check=True)``. ``dynamic_batch`` makes dimension 0 of input and output
    symbolic. The file is written to a temp file beside ``path`` and moved into place only when complete,
    so a failed export leaves no file. Returns a record: exporter, opset, tool versions, node counts
    before/after simplification, wall times (s), size.
    """
    import onnx
    import torch

    if model.training:
        raise MicronetError("the model is in training mode; call model.eval() before exporting")
    path = Path(path)
    with replacing(path) as tmp:
        start = time.perf_counter()
        try:
            _export(model, example, str(tmp), dynamic_batch=dynamic_batch)
        except Exception as exc:  # the exporter's messages run to pages; the chained traceback keeps them
            interrupts.check()  # an interrupt inside the exporter's lazy imports surfaces as AttributeError
            raise MicronetError(f"ONNX export of {type(model).__name__} failed: {_first_line(exc)}") from exc
        export_s = time.perf_counter() - start
        raw = onnx.load(str(tmp))
        start = time.perf_counter()
        simplified = _simplify(raw)
        simplify_s = time.perf_counter() - start
        annotate_modules(raw, simplified)
        try:
            onnx.checker.check_model(simplified, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise MicronetError(f"the exported ONNX graph is invalid: {_first_line(exc)}") from exc
        onnx.save(simplified, str(tmp))
    from importlib import metadata

    return {
        "stage": "onnx",
        "tool": "torch.onnx.export",
        "exporter": EXPORTER,
        "exporter_why": "dynamo graphs convert to ~20% faster float TFLite than legacy ones (see export/onnx.py)",
        "opset": next(o.version for o in simplified.opset_import if o.domain in ("", "ai.onnx")),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "simplifier": f"onnxsim {metadata.version('onnxsim')}",
        "dynamic_batch": dynamic_batch,
        "input": {"name": INPUT_NAME, "shape": [-1 if dynamic_batch else example.shape[0], *example.shape[1:]]},
        "output_name": OUTPUT_NAME,
        "nodes_raw": len(raw.graph.node),
        "nodes": len(simplified.graph.node),
        "export_s": round(export_s, 3),
        "simplify_s": round(simplify_s, 3),
        "size_bytes": path.stat().st_size,
    }


#: The metadata key naming the PyTorch module a node came from (``blocks.3.steps.1.0.0.conv``): the exporter's
#: name scopes, which onnxsim drops, carried over by node name so ``micronet profile`` can join a runtime's
#: per-node timings to MicroNet blocks.
MODULE_KEY = "micronet.module"


def annotate_modules(raw, simplified) -> int:
    """Copy each raw node's innermost module scope onto the simplified node of the same name (as
    ``MODULE_KEY``); nodes onnxsim made itself stay unannotated. Returns how many were annotated."""
    import ast

    scopes = {}
    for node in raw.graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                names = [n for n in ast.literal_eval(prop.value)[:-1] if n]  # the last is the op itself
                if names:
                    scopes[node.name] = names[-1]
    annotated = 0
    for node in simplified.graph.node:
        if node.name in scopes and not any(p.key == MODULE_KEY for p in node.metadata_props):
            entry = node.metadata_props.add()
            entry.key, entry.value = MODULE_KEY, scopes[node.name]
            annotated += 1
    return annotated


def run_onnx(path: str | os.PathLike, batch_nchw: np.ndarray, threads: int = 1) -> np.ndarray:
    """Float32 logits (N, classes) from onnxruntime's CPU provider with ``threads`` intra-op threads.

    A model exported with a fixed batch is run that many samples at a time.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    batch = np.ascontiguousarray(batch_nchw, dtype=np.float32)
    step = inp.shape[0] if isinstance(inp.shape[0], int) else len(batch)
    if len(batch) % step:
        raise MicronetError(f"{path}: batch is fixed at {step}; got {len(batch)} samples")
    outputs = [session.run(None, {inp.name: batch[i:i + step]})[0] for i in range(0, len(batch), step)]
    return np.concatenate(outputs).astype(np.float32)
