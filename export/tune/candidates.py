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
PHONE_RUNTIME = "benchmark_model"  # an Android phone has no Python: LiteRT's own benchmark tool times the file


def tuning_runtime(fmt: str, device_kind: str) -> str:
    """The runtime that times a ``fmt`` file on a device of ``device_kind`` (``local``, ``ssh``, ``adb``)."""
    if device_kind == "adb":
        if fmt != "tflite":
            raise MicronetError(f"an Android phone runs .tflite files (benchmark_model), not {fmt}: tune "
                                "--format tflite on it, and the ONNX file on this machine or an SSH board")
        return PHONE_RUNTIME
    return FORMAT_RUNTIME[fmt]


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


def with_block_switch(profile, block: int, name: str, value: bool):
    """``profile`` with ``name`` set to ``value`` in ``block`` only (an exception equal to the whole-graph
    value is dropped, so one graph has one name)."""
    from ..fast.profiles import check_block_overrides

    rest = [b for b in profile.blocks if b[:2] != (block, name)]
    if getattr(profile, name) != value:
        rest.append((block, name, value))
    return dataclasses.replace(profile, blocks=check_block_overrides(rest))


def plan_fingerprint(ctx, profile) -> str:
    """The fast plan's fingerprint for ``profile`` on the export's model (planning builds no module)."""
    from ..fast import fast_plan

    # The two switches the plan does not hold: the head's HardSwish op and the Gemm pass over the module tree.
    return f"{fast_plan(ctx.model, profile).fingerprint()}-{profile.hard_swish_op:d}{profile.linear_coefficients:d}"


def block_flips(ctx, profile, seen: set[str], only_off: bool = False) -> list[tuple[int, str]]:
    """The (block, switch) flips of ``profile`` that give a graph not in ``seen`` (each graph once), in block
    order: most switches do nothing in most blocks (no Shift-Max to widen, a dense conv to keep dense), and
    those are never built or timed. ``only_off``: flips that switch a rewrite off (the portable profile)."""
    from ..fast.profiles import BLOCK_SWITCHES

    flips, fingerprints = [], set(seen)
    for block in range(len(ctx.model.blocks)):
        current = profile.for_block(block)
        for name in BLOCK_SWITCHES:
            if only_off and not getattr(current, name):
                continue
            fingerprint = plan_fingerprint(ctx, with_block_switch(profile, block, name, not getattr(current, name)))
            if fingerprint not in fingerprints:
                fingerprints.add(fingerprint)
                flips.append((block, name))
    return flips


def chosen_profile(default, chosen: dict[str, Any]):
    """The profile a record's ``chosen`` names: its switches, and its per-block exceptions (none in records
    made before per-block tuning)."""
    from ..fast.profiles import check_block_overrides

    try:
        blocks = check_block_overrides(tuple(b) if isinstance(b, list) else b for b in chosen.get("blocks") or [])
    except ValueError as exc:
        raise MicronetError(f"tuning record's chosen graph: {exc}") from None
    return dataclasses.replace(default, **chosen["switches"], blocks=blocks)
