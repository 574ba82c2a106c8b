"""Segmentation models at Cityscapes sizes: seg-m0..m3 against the LR-ASPP peer, in one interleaved run
(``--variants pose-m0 ... --input-size 256x192`` times the keypoint models the same way).

    python scripts/build_peers.py --peers lraspp-mnv3-large --input-size 512x1024 --out reports/peers
    python scripts/bench_seg.py --input-size 512x1024 \\
        --peer-onnx lraspp-mnv3-large=reports/peers/lraspp-mnv3-large-512x1024.onnx --out reports/seg.md

Per MicroNet variant: ``micronet.export.export`` (the pipeline users run: reference graph, untrained weights
with BatchNorm re-estimated on the embedded photographs, parity ladder) writes ONNX, TFLite float32 and
int8; the PyTorch model is timed too. The peer (torchvision's ``lraspp_mobilenet_v3_large``, 19 classes, no
weights, built by scripts/build_peers.py in its own environment) goes through the same onnx2tf conversion as
the MicroNet files (``export.tflite``), float32 and int8 calibrated on the same images.

Latency: 1 thread, every session warmed up, then ``--rounds`` rounds of ``--per-round`` invocations
round-robin (the method of scripts/bench_fast.py), p50 / p90 ms. Peak memory: ``bench.memory`` (a fresh
child process per file and runtime; peak RSS and what the model adds over its runtime library, MiB). MAdds:
ours by ``micronet.counting``; the peer's from its ONNX graph (convolutions and matrix products, the same
multiply-accumulate rule). Figures depend on the machine; the script prints it and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fast import _interleaved, _Ort, _Tfl  # noqa: E402  (one timing method for every benchmark)
from build_peers import parse_size  # noqa: E402


class _Torch:
    def __init__(self, model, hw: tuple[int, int], threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.torch, self.model = torch, model.eval()
        self.x = torch.zeros(1, 3, *hw)

    def __call__(self):
        with self.torch.no_grad():
            self.model(self.x)


def onnx_madds(path: Path) -> int:
    """Multiply-accumulates of an ONNX file's Conv, ConvTranspose-free graph (Conv, MatMul, Gemm), from its
    inferred shapes: output elements × (input channels / groups) × kernel area for a Conv."""
    import onnx
    from onnx import shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            weight = inits.get(node.input[1]) or shapes.get(node.input[1])
            out = shapes.get(node.output[0])
            if weight and out:
                total += int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type in ("MatMul", "Gemm"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a and out:
                total += int(np.prod(out)) * int(a[-1])
    return total


def _file_key(path: Path) -> str:
    return "onnx" if path.suffix == ".onnx" else ("tfl_int8" if ".int8." in path.name else "tfl_f32")


def _export_files(variant: str, hw: tuple[int, int], out: Path, calib: int,
                  weights: str | None = None) -> tuple[dict[str, Path], str]:
    """ONNX, TFLite float32 and int8 of ``variant`` at ``hw`` by the export pipeline (a previous run's files in
    ``out`` are reused); TFLite is left out, with the reason, where onnx2tf cannot convert the graph."""
    from micronet.errors import MicronetError
    from micronet.export.pipeline import ExportRequest, export

    tag = f"{hw[0]}x{hw[1]}"
    existing = [p for p in sorted(out.glob(f"micronet-{variant}-{tag}.*")) if p.suffix in (".onnx", ".tflite")]
    if existing:
        return {_file_key(p): p for p in existing}, ""
    print(f"[{variant}] export ONNX, TFLite float32, int8 at {tag}", flush=True)
    request = dict(variant=variant, input_size=hw, calib_count=calib, holdout=4, graph="reference", output_dir=out,
                   weights=weights)
    try:
        kinds = [("onnx", "float32"), ("tflite", "float32"), ("tflite", "int8")]
        result = export(ExportRequest(kinds=kinds, **request))
        return {_file_key(p): p for p in result.artifacts}, ""
    except MicronetError as exc:  # onnx2tf fails at some sizes; an untrained int8 rung may break: keep what passes
        note = str(exc).splitlines()[0]
        for kinds, what in (([("onnx", "float32"), ("tflite", "float32")], "ONNX and TFLite float32"),
                            ([("onnx", "float32")], "ONNX only")):
            try:
                result = export(ExportRequest(kinds=kinds, **request))
            except MicronetError:
                continue
            print(f"  {note}; {what}", flush=True)
            return {_file_key(p): p for p in result.artifacts}, note
        raise


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["seg-m0", "seg-m1", "seg-m2", "seg-m3"])
    ap.add_argument("--peer-onnx", nargs="*", default=[], metavar="NAME=PATH")
    ap.add_argument("--input-size", type=parse_size, default=(512, 1024), help="HxW")
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--weights", nargs="*", default=[], metavar="VARIANT=PATH",
                    help="trained checkpoints (an untrained int8 rung may break; latency does not depend on them)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=4)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--time-unverified-int8", action="store_true",
                    help="where the export's int8 rung broke (untrained weights), convert the ONNX file to int8 "
                         "without the ladder and time it, marked unverified in the table")
    ap.add_argument("--work", type=Path, default=Path("reports") / "bench_seg_work")
    ap.add_argument("--out", type=Path, default=Path("reports") / "seg.md")
    args = ap.parse_args(argv)

    import torch

    from micronet.bench.memory import measure_memory
    from micronet.counting import count_model
    from micronet.errors import MicronetError
    from micronet.export import tflite as tflite_stage
    from micronet.export.calibration import nhwc
    from micronet.export.dense_calibration import build_dense_calibration
    from micronet.pose_model import build_pose_model
    from micronet.registry import resolve_variant
    from micronet.seg_model import build_seg_model

    hw = args.input_size
    tag = f"{hw[0]}x{hw[1]}"
    weights = dict(spec.split("=", 1) for spec in args.weights)
    rows: dict[str, dict] = {}
    for variant in args.variants:
        files, note = _export_files(variant, hw, args.work / variant, args.calib, weights.get(variant))
        torch.manual_seed(0)
        build = build_pose_model if resolve_variant(variant, task=None).task == "pose" else build_seg_model
        model = build(variant, input_size=hw).eval()
        counts = count_model(model)
        if args.time_unverified_int8 and "onnx" in files and "tfl_int8" not in files:
            unverified = args.work / variant / "unverified" / f"micronet-{variant}-{tag}.int8.tflite"
            if not unverified.exists():
                task = resolve_variant(variant, task=None).task
                data = build_dense_calibration(task, None, hw, count=args.calib, seed=0, holdout=4)
                print(f"[{variant}] int8 without the ladder (unverified)", flush=True)
                try:
                    saved, _ = tflite_stage.onnx_to_saved_model(files["onnx"], unverified.parent / "onnx2tf")
                    tflite_stage.saved_model_to_tflite(saved, unverified, "int8", nhwc(data.calibration))
                except MicronetError as exc:  # onnx2tf cannot convert this graph at all
                    print(f"  {str(exc).splitlines()[0]}", flush=True)
            if unverified.exists():
                files["tfl_int8"] = unverified
                note = (note + "; " if note else "") + "int8 timed from an unverified conversion"
        rows[variant] = {"files": files, "torch": model, "madds": counts.madds, "params": counts.params,
                         "note": note}

    if args.peer_onnx:
        data = build_dense_calibration("segmentation", None, hw, count=args.calib, seed=0, holdout=4)
        for spec in args.peer_onnx:
            name, path = spec.split("=", 1)
            work = args.work / "peers" / name
            print(f"[{name}] onnx2tf float32, int8", flush=True)
            saved, _ = tflite_stage.onnx_to_saved_model(Path(path), work / "onnx2tf")
            files = {"onnx": Path(path)}
            for key, quantize in (("tfl_f32", "float32"), ("tfl_int8", "int8")):
                files[key] = work / f"{name}.{quantize}.tflite"
                tflite_stage.saved_model_to_tflite(saved, files[key], quantize,
                                                   nhwc(data.calibration) if quantize == "int8" else None)
            rows[name] = {"files": files, "torch": None, "madds": onnx_madds(Path(path)), "params": None,
                          "note": ""}

    runners = {}
    for name, row in rows.items():
        if row["torch"] is not None:
            runners[(name, "torch")] = _Torch(row["torch"], hw)
        for key, path in row["files"].items():
            runners[(name, key)] = (_Ort if key == "onnx" else _Tfl)(path)
    print(f"timing {len(runners)} sessions: {args.rounds} interleaved rounds × {args.per_round}", flush=True)
    started = time.time()
    times = _interleaved(runners, args.rounds, args.per_round, warmup=2)
    memory: dict[tuple[str, str], float] = {}
    if not args.no_memory:
        for name, row in rows.items():
            for key, path in row["files"].items():
                runtime = "onnxruntime" if key == "onnx" else "litert"
                mem = measure_memory(runtime, path, inferences=2)
                memory[(name, key)] = mem.peak_rss_mib

    columns = [("torch", "PyTorch"), ("onnx", "ORT fp32"), ("tfl_f32", "TFLite fp32"), ("tfl_int8", "TFLite int8")]
    cell = lambda k: (f"{times[k][0]:.2f}" if times[k][0] < 10 else f"{times[k][0]:.1f}") if k in times else "—"  # noqa: E731
    mem_cell = lambda k: f"{memory[k]:.0f}" if k in memory else "—"  # noqa: E731
    lines = [f"Machine: {_cpu()}, {time.strftime('%Y-%m-%d', time.gmtime(started))}; input {tag}, 1 thread, "
             f"p50 ms over {args.rounds}×{args.per_round} interleaved runs; peak RSS MiB of a fresh process "
             "(runtime library included); untrained weights.", "",
             "| model | MAdds | params | " + " | ".join(f"{c} ms" for _, c in columns)
             + " | peak MiB ORT / TFLite fp32 / int8 |",
             "|---|---:|---:|" + "---:|" * len(columns) + "---|"]
    for name, row in rows.items():
        params = f"{row['params'] / 1e6:.2f}M" if row["params"] else "—"
        lines.append(f"| {name} | {row['madds'] / 1e9:.3f}B | {params} | "
                     + " | ".join(cell((name, k)) for k, _ in columns)
                     + f" | {mem_cell((name, 'onnx'))} / {mem_cell((name, 'tfl_f32'))} / "
                       f"{mem_cell((name, 'tfl_int8'))} |")
    lines += [""] + [f"- {name}: {row['note']}" for name, row in rows.items() if row["note"]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    report = {"machine": _cpu(), "date": time.strftime("%Y-%m-%d", time.gmtime(started)), "input_size": list(hw),
              "rows": {n: {"madds": r["madds"], "params": r["params"], "note": r["note"],
                           "files": {k: str(p) for k, p in r["files"].items()}} for n, r in rows.items()},
              "latency_ms": {f"{n}|{k}": {"p50": p[0], "p90": p[1]} for (n, k), p in times.items()},
              "peak_rss_mib": {f"{n}|{k}": v for (n, k), v in memory.items()}}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
