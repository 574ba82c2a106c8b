"""One candidate: a ``RuntimeProfile`` built into the file its runtime loads, checked exact before it is timed.

The file is what the export would ship for that profile (float32 TFLite lowered op for op for XNNPACK; the
ONNX file, in its batch-of-one form when the target takes it), made by the export's own functions, and judged
by the export's own parity rungs: the graph against the training form (``deploy_fast*``), the file against
the graph (``tflite_float32`` / ``onnx``). The shipped file is judged again by the export's ladder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from micronet.errors import MicronetError

from .. import parity

#: Which fast-graph profile each format's file is built from, and the runtime that times it.
FORMAT_RUNTIME = {"tflite": "litert", "onnx": "onnxruntime"}


@dataclass(frozen=True)
class Built:
    path: Path
    parity: dict[str, Any]  # rung → the judged metric's value


def switches(profile) -> dict[str, bool]:
    from ..fast import REWRITES

    return {name: getattr(profile, name) for name in REWRITES}


def build_candidate(ctx, fmt: str, profile, folder: Path) -> Built:
    """Build ``profile``'s file for ``fmt`` in ``folder``; raises ``MicronetError`` if it is not exact."""
    import torch

    from ..fast import batch_one_form, to_fast_deploy

    folder.mkdir(parents=True, exist_ok=True)
    untrained = ctx.ladder.untrained
    with torch.no_grad():
        graph = to_fast_deploy(ctx.model, profile=profile)
        graph_logits = graph(ctx.holdout).numpy()
    reference = ctx.training().logits
    rung_graph = "deploy_fast" if fmt == "tflite" else f"deploy_fast_{profile.name}"  # the export's rung names
    results = {rung_graph: _judge(rung_graph, reference, graph_logits, untrained)}
    if fmt == "tflite":
        from ..inspect import run_tflite
        from ..stages import lower_to_saved_model
        from ..tflite import saved_model_to_tflite

        lower_to_saved_model(graph, ctx.example, folder / "tf_graph")
        path = folder / "candidate.float32.tflite"
        saved_model_to_tflite(folder / "tf_graph", path, "float32")
        logits = run_tflite(path, ctx.data.holdout)
        results["tflite_float32"] = _judge("tflite_float32", graph_logits, logits, untrained)
    else:
        from ..onnx import export_onnx, run_onnx
        from ..onnx_targets import ONNX_TARGETS

        if ONNX_TARGETS[ctx.request.optimize_for].batch_one and not ctx.request.dynamic_batch:
            graph = batch_one_form(graph)
        path = folder / "candidate.onnx"
        export_onnx(graph, ctx.example, path, dynamic_batch=ctx.request.dynamic_batch)
        results["onnx"] = _judge("onnx", graph_logits, run_onnx(path, ctx.data.holdout), untrained)
    return Built(path, results)


def _judge(rung: str, reference, candidate, untrained: bool) -> float:
    result = parity.check_rung(rung, parity.compare(reference, candidate), untrained=untrained)
    if not result.passed:
        raise MicronetError(f"inexact: {result.summary()}")
    return result.value


def changed(profile, default) -> dict[str, bool]:
    """The switches where ``profile`` differs from ``default``: a candidate's name in the record."""
    mine, base = switches(profile), switches(default)
    return {name: value for name, value in mine.items() if base[name] != value}


def with_switch(profile, name: str, value: bool):
    return dataclasses.replace(profile, **{name: value})
