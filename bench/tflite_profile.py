"""Per-block time of a ``.tflite`` file, on any device, by timing the file cut after each block.

Why: XNNPACK runs a whole TFLite graph as one delegate node and ai-edge-litert's Python interpreter has no op
profiler, so there is no per-op timing to join to blocks (as ``bench.profile`` does for ONNX Runtime). What
*can* be timed anywhere the file runs (this machine, an SSH board, a phone's ``benchmark_model``) is a TFLite
file. So the file is cut: cut ``k`` is the same flatbuffer with the operators after block ``k`` dropped and
every tensor the dropped part would have read made an output (so nothing in it is dead code XNNPACK could
skip); cut 0 has no operator at all, the last has them all. Every cut names the graph's input as its first
output, the one a harness reads back after each run, so each pays the same read-back (``write_prefix`` says
why). All cuts and the file itself are timed interleaved, round by round
(``export.tune.measure.time_on_device``: the order alternates between rounds, so drift hits all alike); a
block's time is the median of its cut less the median of the cut before, so the blocks add up exactly to the
last cut less the empty one (the profile's ``total_ms``), and the file's own median is the ``wall_ms``.

What it costs in accuracy: a difference of two medians carries both files' noise (a block of a few µs can
read negative), and a cut's tensors are written out where the full graph would keep them in XNNPACK's
workspace. Blocks are named by the operators' output tensor names: the fast graph's TensorFlow lowering puts
each op in its block's name scope (``export.tf_graph``), so this works for the TFLite files ``micronet export``
makes from the fast graph (every classifier float and int8 file); a file from onnx2tf (the reference graph,
pose, segmentation) names no blocks and is refused with one line.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from micronet.errors import MicronetError

__all__ = ["Segment", "op_blocks", "segments", "write_prefix", "profile_tflite"]

Progress = Callable[[str], None]

# The first path component of a tensor name, less the ``_N`` TensorFlow appends to a re-entered name scope.
_SCOPE = re.compile(r"^(stem|head|heatmaps|upsample|blocks\.\d+|head_blocks\.\d+|mr_aspp\.[a-z_]+?)(?:_\d+)?/")


@dataclass(frozen=True)
class Segment:
    """A run of consecutive operators of one block: ``ops[start:end]``."""

    block: str
    start: int
    end: int


def _inputs(op) -> list[int]:
    """The tensors ``op`` reads (an omitted optional input, -1, left out)."""
    return [int(i) for i in (op.inputs if op.inputs is not None else []) if i >= 0]


def _outputs(op) -> list[int]:
    return [int(i) for i in (op.outputs if op.outputs is not None else []) if i >= 0]


def _model(path: Path):
    """The file's flatbuffer as objects, with every operator that reads only constants (a float16 file's weight
    DEQUANTIZEs, which the converter puts at the top) moved to just before its first reader: still in
    topological order, and then a cut never separates a weight from the operator that reads it."""
    from micronet.export.inspect import load_model

    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(load_model(path))  # load_model: one clear line for a file that is not one
    graph = model.subgraphs[0]
    movable = [op for op in graph.operators if _inputs(op) and _reads_only_constants(model, op)]
    if movable:
        rest = [op for op in graph.operators if not any(op is m for m in movable)]
        placed = []
        for op in rest:
            for m in list(movable):
                if set(_outputs(m)) & set(_inputs(op)):
                    placed.append(m)
                    movable.remove(m)
            placed.append(op)
        graph.operators = placed + movable  # one nobody reads stays, at the end
    return model


def _block_of_name(name: str) -> str | None:
    for part in name.split(";"):
        match = _SCOPE.match(part)
        if match:
            return match.group(1)
    return None


def op_blocks(model) -> list[str | None]:
    """The block of each operator of the main subgraph, from its outputs' tensor names (None: none named). A
    weight's DEQUANTIZE (named after the weight, or not at all) takes the block of the operator that reads it."""
    graph = model.subgraphs[0]
    names = [t.name.decode() if isinstance(t.name, bytes) else (t.name or "") for t in graph.tensors]
    out: list[str | None] = []
    for op in graph.operators:
        out.append(next((b for b in (_block_of_name(names[i]) for i in _outputs(op)) if b), None))
    codes = _op_names(model)
    for k in range(len(out) - 2, -1, -1):  # back to front: a run of DEQUANTIZEs before one reader
        if codes[graph.operators[k].opcodeIndex] == "DEQUANTIZE" and _reads_only_constants(model, graph.operators[k]):
            out[k] = out[k + 1] or out[k]
    return out


def _reads_only_constants(model, op) -> bool:
    """Every input of ``op`` is a tensor with data in the file (a weight), none computed at run time."""
    graph = model.subgraphs[0]
    for i in _inputs(op):
        buffer = graph.tensors[i].buffer
        data = model.buffers[buffer].data if 0 < buffer < len(model.buffers) else None
        if data is None or len(data) == 0:
            return False
    return True


def segments(blocks: Sequence[str | None]) -> list[Segment]:
    """Consecutive operators of one block as segments. An unnamed operator (a QUANTIZE at the input, the
    final RESHAPE) joins the block before it, or the first named one when it comes first."""
    named = [b for b in blocks if b]
    if not named:
        raise MicronetError("this .tflite names no MicroNet blocks (made by onnx2tf, or before per-block names "
                            "existed): profile the .onnx export, or re-export the file")
    current = named[0]
    filled = []
    for block in blocks:
        current = block or current
        filled.append(current)
    out: list[Segment] = []
    for i, block in enumerate(filled):
        if out and out[-1].block == block:
            out[-1] = Segment(block, out[-1].start, i + 1)
        else:
            out.append(Segment(block, i, i + 1))
    return out


def write_prefix(model, end: int, out: Path) -> Path:
    """``model`` cut after operator ``end - 1`` (``end`` 0: no operator at all), written to ``out``. Outputs: the
    graph's input first, then every tensor the prefix makes that a dropped operator reads, and the model's
    outputs the prefix makes.

    Why the input first: a benchmark harness reads one output back after each run (a copy), and a cut feature
    map written by two cores costs a second core's cache transfer to read (on a 2-core VM, 0.05 ms for m0's
    112×112×6 stem map at 2 threads, more than the stem's own gain); every cut reading the same input tensor
    back costs the same, which the empty cut's time then takes out."""
    import copy

    import flatbuffers

    prefix = copy.deepcopy(model)
    graph = prefix.subgraphs[0]
    kept, dropped = graph.operators[:end], graph.operators[end:]
    made = {i for op in kept for i in _outputs(op)}
    read_later = {i for op in dropped for i in _inputs(op)}
    first = int(graph.inputs[0])
    rest = sorted(((made & read_later) | (made & {int(i) for i in graph.outputs})) - {first})
    graph.operators = kept
    graph.outputs = [first, *rest]
    prefix.signatureDefs = []  # the signature names the full model's outputs
    builder = flatbuffers.Builder(1024)
    builder.Finish(prefix.Pack(builder), file_identifier=b"TFL3")
    out.write_bytes(bytes(builder.Output()))
    return out


def profile_tflite(path: str | os.PathLike, *, device: str = "local", threads: Sequence[int] = (1, 2),
                   runs: int = 50, warmup: int = 10, rounds: int = 5, inventory=None,
                   progress: Progress | None = None):
    """Per-block times of ``path`` at each thread count on ``device``, as a ``bench.profile.Profile``
    (method ``prefixes``; ``ms`` is the median per inference over ``rounds`` rounds of ``runs`` runs)."""
    from micronet.devices.api import make_device, resolve
    from micronet.export.manifest import read_manifest
    from micronet.export.tune.candidates import tuning_runtime
    from micronet.export.tune.measure import time_on_device

    from .profile import BlockTime, Profile, _block_madds

    path = Path(path)
    say = progress or (lambda _m: None)
    model = _model(path)
    parts = segments(op_blocks(model))
    target = resolve(device, inventory)
    if target.kind not in ("local", "ssh", "adb"):
        raise MicronetError(f"micronet profile times a .tflite on this machine (local), an SSH board or an adb "
                            f"phone, not on {target.kind} device {target.name}")
    runtime = tuning_runtime("tflite", target.kind)
    check = make_device(target).check()
    if not check.reachable:
        raise MicronetError(f"cannot profile on {check.line()}")
    if runtime not in check.runtimes:
        why = f": {check.problem}" if check.problem else ""
        raise MicronetError(f"cannot profile {path.name} on {target.name}: it has no {runtime}{why}")
    manifest = read_manifest(path) or {}
    ops = model.subgraphs[0].operators
    codes = _op_names(model)
    medians: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="micronet-profile-") as scratch:
        ends = [0, *(part.end for part in parts)]  # the empty cut, then one after each segment
        files = [_described(write_prefix(model, end, Path(scratch) / f"cut{k:03d}.tflite"), manifest)
                 for k, end in enumerate(ends)] + [path]  # and the file itself, for the wall time
        for t in threads:
            say(f"timing {len(files) - 1} cuts of {path.name} and the file on {target.name} at {t} thread"
                f"{'s' if t > 1 else ''} ({rounds} rounds of {runs} runs)")
            timings, _env = time_on_device(target, files, threads=t, runtime=runtime, rounds=rounds, runs=runs,
                                           warmup=warmup, inventory=inventory, say=say)
            medians[t] = [timing.median_ms for timing in timings]
    per_block: dict[str, BlockTime] = {}
    for k, part in enumerate(parts, start=1):
        row = per_block.setdefault(part.block, BlockTime(part.block, None, {t: 0.0 for t in threads}, 0, {}))
        for t in threads:
            row.ms[t] += medians[t][k] - medians[t][k - 1]
        row.nodes += part.end - part.start
        for op in ops[part.start:part.end]:
            name = codes[op.opcodeIndex]
            row.ops[name] = row.ops.get(name, 0) + 1
    madds = _block_madds(manifest)
    for name, row in per_block.items():
        row.madds = (madds or {}).get(name)
    ops_ms = {t: medians[t][-2] - medians[t][0] for t in threads}  # the last cut less the empty one
    wall = {t: medians[t][-1] for t in threads}  # the file as a user's harness runs it
    version = check.runtimes.get(runtime)
    return Profile(str(path), runtime, version, target.name, list(threads), runs, list(per_block.values()), ops_ms,
                   wall, manifest.get("variant"), manifest.get("input_size"), {}, method="prefixes", rounds=rounds)


def _described(prefix: Path, manifest: dict) -> Path:
    """A manifest beside the cut ``prefix`` naming its first output (the graph's input, ``write_prefix``) as the
    one the harness reads back, and the full file's input spec where it has one."""
    from micronet.export.inspect import tflite_output_specs
    from micronet.export.manifest import write_manifest

    data = {"output": tflite_output_specs(prefix)[0]}
    if manifest.get("input"):
        data["input"] = manifest["input"]
    write_manifest(prefix, data)
    return prefix


def _op_names(model) -> list[str]:
    """Each operator code's name (``export.inspect.op_code_name``), by code index."""
    from micronet.export.inspect import op_code_name

    return [op_code_name(code.builtinCode, code.deprecatedBuiltinCode, code.customCode)
            for code in model.operatorCodes]
