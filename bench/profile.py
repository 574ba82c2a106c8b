"""Per-block time of an exported MicroNet from the runtime's own profiler: ``micronet profile``.

Why: a whole-graph p50 says a model is slow, not where. ONNX Runtime's profiler (``SessionOptions.
enable_profiling``) times every node of the graph it really runs (after its own fusions and NCHWc layout
reorders); each node is joined to the MicroNet block it computes and each block to its MAdds
(``micronet.counting``, the convention of every "MAdds" figure here), at one thread and at N threads, so the
blocks where a second thread buys nothing stand out.

The join: the ONNX export writes each node's PyTorch module (``export.onnx.MODULE_KEY``); ONNX Runtime's
optimized graph keeps the original tensor names on the outputs of the nodes it fuses, so an optimized node is
the block of the original node that produced one of its outputs, else of one of its inputs, else of a
consumer (a layout reorder it inserted). What joins nothing is reported as ``(unjoined)``, never spread over
blocks. A block name is what ``micronet flops --per-layer`` sums by: ``stem``, ``blocks.<i>``, ``head``; for the
keypoint models ``head_blocks.<i>`` and ``heatmaps``; for segmentation MR-ASPP's parts (``mr_aspp.branch``,
``mr_aspp.attention``, ``mr_aspp.high_classifier``, ...) and the final ``upsample``. A counted block whose
nodes ONNX Runtime fused into a neighbour's is a row with 0 nodes and 0 ms (its time is in that neighbour).

TFLite: ai-edge-litert's Python interpreter exposes no op profiler and XNNPACK runs the graph as one delegate
node, so a ``.tflite`` file is timed per block another way, on any device (``bench.tflite_profile``: the file
cut after each block, the cuts timed on the device) and returned as the same ``Profile``. ONNX Runtime's
profiler runs in this process: an ``.onnx`` file is profiled on this machine only.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from micronet.errors import MicronetError

__all__ = ["BlockTime", "Profile", "block_of", "op_table", "profile_artifact", "profile_table", "write_profile"]

UNJOINED = "(unjoined)"
Progress = Callable[[str], None]


def block_of(module: str) -> str:
    """A module path → its per-block row, as ``micronet flops --per-layer`` sums (``micronet.counting.stage_of``,
    imported here so that importing this module does not import torch)."""
    from micronet.counting import stage_of

    return stage_of(module)


@dataclass
class BlockTime:
    """One block: its MAdds and its mean time per inference (ms) at each thread count, summed over its nodes."""

    block: str
    madds: int | None
    ms: dict[int, float]  # threads → ms per inference
    nodes: int  # optimized-graph nodes joined to it
    ops: dict[str, int] = field(default_factory=dict)  # op type → count


@dataclass
class Profile:
    artifact: str
    runtime: str
    version: str | None
    device: str
    threads: list[int]
    runs: int
    blocks: list[BlockTime]
    total_ms: dict[int, float]  # the profiler's node times summed, per thread count
    wall_ms: dict[int, float]  # median wall time of one profiled run (ONNX Runtime's model_run), per thread count
    variant: str | None
    input_size: int | None
    op_ms: dict[str, dict[int, float]] = field(default_factory=dict)  # op type → threads → ms per inference
    #: "profiler": the runtime's per-node times (ONNX Runtime); "prefixes": differences of the medians of the
    #: file cut after each block (TFLite, ``bench.tflite_profile``), ``rounds`` rounds of ``runs`` runs.
    method: str = "profiler"
    rounds: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["units"] = {"ms": "milliseconds per inference (mean over runs)" if self.method == "profiler" else
                              "milliseconds per inference (median over rounds; a block: its prefix less the one "
                              "before)",
                        "madds": "multiply-adds (micronet.counting)"}
        for row in out["blocks"]:
            row["ms"] = {str(k): v for k, v in row["ms"].items()}
        out["op_ms"] = {op: {str(k): v for k, v in ms.items()} for op, ms in self.op_ms.items()}
        out["total_ms"] = {str(k): v for k, v in self.total_ms.items()}
        out["wall_ms"] = {str(k): v for k, v in self.wall_ms.items()}
        return out


def profile_artifact(path: str | os.PathLike, *, device: str = "local", threads: Sequence[int] = (1, 2),
                     runs: int = 50, warmup: int = 10, rounds: int = 5, inventory=None,
                     progress: Progress | None = None) -> Profile:
    """Profile ``path`` at each thread count: an ``.onnx`` file (its manifest beside it gives the MAdds) with
    ONNX Runtime's profiler on this machine; a ``.tflite`` from the fast graph by its prefixes on ``device``
    (``bench.tflite_profile``; ``rounds`` applies to it only)."""
    path = Path(path)
    if not path.is_file():
        raise MicronetError(f"model file not found: {path}")
    if path.suffix.lower() not in (".onnx", ".tflite"):
        raise MicronetError(f"cannot profile {path}: expected an exported .onnx or .tflite file")
    threads = list(dict.fromkeys(int(t) for t in threads))
    if not threads or any(t < 1 for t in threads) or runs < 1 or warmup < 0 or rounds < 1:
        raise MicronetError("threads, runs and rounds must be positive whole numbers")
    if path.suffix.lower() == ".tflite":
        from .tflite_profile import profile_tflite

        return profile_tflite(path, device=device, threads=threads, runs=runs, warmup=warmup, rounds=rounds,
                              inventory=inventory, progress=progress)
    if device != "local":
        raise MicronetError(f"an .onnx file is profiled on this machine only (--device local), not {device!r}: "
                            "ONNX Runtime's profiler runs in this process")
    from micronet.export.manifest import read_manifest

    manifest = read_manifest(path) or {}
    say = progress or (lambda _m: None)
    per_thread: dict[int, dict[str, float]] = {}
    wall: dict[int, float] = {}
    ops: dict[str, str] = {}
    joined: dict[str, str] = {}
    for t in threads:
        say(f"profiling {path.name} in ONNX Runtime at {t} thread{'s' if t > 1 else ''} ({runs} runs)")
        per_thread[t], wall[t], ops, joined = _ort_node_times(path, t, runs, warmup)
    madds = _block_madds(manifest)
    order = {name: i for i, name in enumerate(madds or {})}  # the model's own order, where it is counted
    # A counted block whose nodes ONNX Runtime fused into a neighbour's (a 1x1 conv into the following Add)
    # stays a row, with 0 nodes and 0 ms, so the MAdds column still adds up to the model's.
    names = sorted({joined.get(n, UNJOINED) for times in per_thread.values() for n in times} | set(order),
                   key=lambda name: (0, order[name], 0) if name in order else (1, *_block_order(name)))
    blocks = []
    for name in names:
        members = [n for n in per_thread[threads[0]] if joined.get(n, UNJOINED) == name]
        kinds: dict[str, int] = {}
        for n in members:
            kinds[ops.get(n, "?")] = kinds.get(ops.get(n, "?"), 0) + 1
        blocks.append(BlockTime(name, madds.get(name) if madds else None,
                                {t: sum(v for n, v in per_thread[t].items() if joined.get(n, UNJOINED) == name)
                                 for t in threads}, len(members), kinds))
    # The same time by the runtime's op type: on large maps the elementwise ops, gathers and resizes that
    # count no MAdds can outweigh the convolutions.
    op_ms: dict[str, dict[int, float]] = {}
    for t in threads:
        for node, ms in per_thread[t].items():
            kind = op_ms.setdefault(ops.get(node, "?"), {u: 0.0 for u in threads})
            kind[t] += ms
    op_ms = dict(sorted(op_ms.items(), key=lambda item: -item[1][threads[0]]))
    import onnxruntime

    return Profile(str(path), "onnxruntime", onnxruntime.__version__, device, threads, runs, blocks,
                   {t: sum(per_thread[t].values()) for t in threads}, wall, manifest.get("variant"),
                   manifest.get("input_size"), op_ms)


def _block_order(name: str) -> tuple[int, int]:
    """Order without a manifest: stem, rows, head blocks, the rest, what joined nothing."""
    if name == "stem":
        return (0, 0)
    for rank, group in enumerate(("blocks.", "head_blocks."), start=1):
        if name.startswith(group) and name[len(group):].isdigit():
            return (rank, int(name[len(group):]))
    return (4, 0) if name == UNJOINED else (3, 0)


def _block_madds(manifest: dict) -> dict[str, int] | None:
    """Block → MAdds by ``micronet.counting`` for the manifest's variant and input size (None: no manifest)."""
    if not manifest.get("variant") or not manifest.get("input_size"):
        return None
    from micronet.counting import count_variant

    counts = count_variant(manifest["variant"], manifest["input_size"], manifest.get("num_classes"))
    return {stage["stage"]: stage["madds"] for stage in counts.by_stage()}


def _ort_node_times(path: Path, threads: int, runs: int, warmup: int
                    ) -> tuple[dict[str, float], float, dict[str, str], dict[str, str]]:
    """(node → ms per inference, median ms of a whole run, node → op type, node → block) of ONNX Runtime's
    optimized graph."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="micronet-profile-") as scratch:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(scratch) / "optimized.onnx")
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "profile")
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise MicronetError(f"cannot load {path} with onnxruntime: {str(exc).splitlines()[0]}") from None
        spec = session.get_inputs()[0]
        feed = {spec.name: np.random.default_rng(0).standard_normal(
            [d if isinstance(d, int) else 1 for d in spec.shape]).astype(np.float32)}
        for _ in range(warmup + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
        optimized = onnx.load(options.optimized_model_filepath)
    model_runs = sorted((e["ts"], e["dur"]) for e in events
                        if e.get("cat") == "Session" and e.get("name") == "model_run")
    measured_from = model_runs[warmup][0] if len(model_runs) > warmup else 0  # the warm-up runs' nodes are left out
    wall_ms = statistics.median(d for _, d in model_runs[warmup:]) / 1000.0 if model_runs[warmup:] else float("nan")
    times: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time") \
                and event.get("ts", 0) >= measured_from:
            name = event["name"][: -len("_kernel_time")]
            times[name] = times.get(name, 0.0) + event["dur"] / 1000.0  # µs → ms
    times = {name: total / runs for name, total in times.items()}
    original = onnx.load(str(path), load_external_data=False)
    return times, wall_ms, {n.name: n.op_type for n in optimized.graph.node}, join_blocks(original, optimized)


def join_blocks(original, optimized) -> dict[str, str]:
    """Optimized-graph node name → block, by tensor names (see the module docstring)."""
    from micronet.export.onnx import MODULE_KEY

    produced: dict[str, str] = {}
    for node in original.graph.node:
        module = next((p.value for p in node.metadata_props if p.key == MODULE_KEY), None)
        if module:
            for out in node.output:
                produced[out] = block_of(module)
    # An original node onnxsim made (no module) takes its producer's block, in graph (topological) order.
    for node in original.graph.node:
        for out in node.output:
            if out not in produced:
                known = [produced[i] for i in node.input if i in produced]
                if known:
                    produced[out] = known[0]
    result: dict[str, str] = {}
    consumers: dict[str, list[str]] = {}
    for node in optimized.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node.name)
        block = next((produced[o] for o in node.output if o in produced), None)
        block = block or next((produced[i] for i in node.input if i in produced), None)
        if block:
            result[node.name] = block
            for out in node.output:
                produced.setdefault(out, block)
    for node in optimized.graph.node:  # reorders ahead of their consumers' blocks
        if node.name not in result:
            block = next((result[c] for o in node.output for c in consumers.get(o, []) if c in result), None)
            if block:
                result[node.name] = block
    return result


def profile_table(profile: Profile):
    """The per-block table (rich): MAdds, ms at each thread count, share of the total, speed-up of the most
    threads over one."""
    from rich.table import Table

    first, last = profile.threads[0], profile.threads[-1]
    how = (f"mean of {profile.runs} profiled runs" if profile.method == "profiler" else
           f"median of {profile.rounds} rounds × {profile.runs} runs; a block = its prefix less the one before")
    table = Table(title=f"{Path(profile.artifact).name} · {profile.runtime} {profile.version} · {profile.device} · "
                        f"ms per inference ({how})")
    table.add_column("block", no_wrap=True)
    table.add_column("MAdds", justify="right", no_wrap=True)
    for t in profile.threads:
        table.add_column(f"ms@{t}T", justify="right", no_wrap=True)
    table.add_column(f"share@{first}T", justify="right", no_wrap=True)
    if last != first:
        table.add_column(f"×{last}T/{first}T", justify="right", no_wrap=True)
    table.add_column("nodes", justify="right", no_wrap=True)
    for row in profile.blocks:
        share = row.ms[first] / profile.total_ms[first] if profile.total_ms[first] else 0.0
        cells = [row.block, "—" if row.madds is None else f"{row.madds:,}",
                 *(f"{row.ms[t]:.4f}" for t in profile.threads), f"{100 * share:.1f}%"]
        if last != first:
            cells.append(f"{row.ms[first] / row.ms[last]:.2f}" if row.ms[last] > 0 and row.ms[first] > 0 else "—")
        table.add_row(*cells, str(row.nodes))
    counted = [r.madds for r in profile.blocks if r.madds is not None]
    cells = ["total", f"{sum(counted):,}" if counted else "—", *(f"{profile.total_ms[t]:.4f}" for t in profile.threads), "100.0%"]
    if last != first:
        cells.append(f"{profile.total_ms[first] / profile.total_ms[last]:.2f}" if profile.total_ms[last] else "—")
    table.add_row(*cells, str(sum(r.nodes for r in profile.blocks)))
    # The profiler times each node from its own start to its end, thread-pool hand-offs included: where the
    # nodes' sum exceeds the whole run's wall time, that is the threads' overhead (or another load on the CPU).
    # For a .tflite the total is the last cut less the empty one, the wall the file's own median (input set
    # and logits read included).
    cells = ["wall (run)", "", *(f"{profile.wall_ms[t]:.4f}" for t in profile.threads), ""]
    if last != first:
        cells.append(f"{profile.wall_ms[first] / profile.wall_ms[last]:.2f}" if profile.wall_ms[last] else "—")
    table.add_row(*cells, "")
    return table


def op_table(profile: Profile):
    """Time per op type of the graph the runtime ran (rich), most expensive first."""
    from rich.table import Table

    first, last = profile.threads[0], profile.threads[-1]
    table = Table(title="by op type (ONNX Runtime's optimized graph)")
    table.add_column("op type", no_wrap=True)
    for t in profile.threads:
        table.add_column(f"ms@{t}T", justify="right", no_wrap=True)
    table.add_column(f"share@{first}T", justify="right", no_wrap=True)
    if last != first:
        table.add_column(f"×{last}T/{first}T", justify="right", no_wrap=True)
    for op, ms in profile.op_ms.items():
        share = ms[first] / profile.total_ms[first] if profile.total_ms[first] else 0.0
        cells = [op, *(f"{ms[t]:.4f}" for t in profile.threads), f"{100 * share:.1f}%"]
        if last != first:
            cells.append(f"{ms[first] / ms[last]:.2f}" if ms[last] else "—")
        table.add_row(*cells)
    return table


def to_csv(profile: Profile) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["block", "madds", *(f"ms_{t}_threads" for t in profile.threads), "nodes"])
    for row in profile.blocks:
        writer.writerow([row.block, row.madds if row.madds is not None else "",
                         *(f"{row.ms[t]:.6f}" for t in profile.threads), row.nodes])
    return buffer.getvalue()


def write_profile(profile: Profile, out: str | os.PathLike) -> tuple[Path, Path]:
    """``<out>.json`` and ``<out>.csv`` (``out`` plus a suffix, so ``model.onnx.profile`` never replaces the
    manifest ``model.onnx.json``), each written whole or not at all."""
    from micronet.atomic import replacing

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = (out.with_name(out.name + ".json"), out.with_name(out.name + ".csv"))
    with replacing(paths[0]) as tmp:
        tmp.write_text(json.dumps(profile.to_dict(), indent=2) + "\n")
    with replacing(paths[1]) as tmp:
        tmp.write_text(to_csv(profile))
    return paths
