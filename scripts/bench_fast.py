"""The fast-export benchmark: naive vs fast MicroNet exports and the peers, timed in one interleaved run.

    python scripts/bench_fast.py --variants m0 m1 m2 m3 --out reports/fast_deploy.md \\
        --peer-onnx mnv3s-0.50=reports/peers/mnv3s-0.50.onnx ...   # from scripts/build_peers.py

Per variant, from one set of weights:

* **naive**: the reference deploy graph (``export.deploy.to_deploy``) → ONNX (the pipeline's ONNX stage) →
  onnx2tf → TFLite float32 and int8: the export as it was before the fast graph (issue "Make the exported
  MicroNet fast").
* **fast**: ``export.fast.to_fast_deploy`` → ``export.tf_graph`` → TFLite float32 and int8 (int8 from the
  ``relu_max`` form lowered with max(a, b) as b + relu(a - b)), exactly what ``micronet export`` now ships; and
  ``batch_one_form(to_fast_deploy(model, profile="onnxruntime"))`` → ONNX, the ``micronet export --format onnx``
  artifact, for ONNX Runtime (the naive row's ONNX Runtime column runs the reference ONNX).
* **peers** (``--peer-onnx NAME=PATH``): timm MobileNetV3-Small / LCNet ONNX files through the same onnx2tf
  conversion and the same timing.

Weights: untrained MicroNets have Shift-Max hyper-functions initialised at N(0, 0.01), so every coefficient
sits at its offset and int8 calibration sees products that are nearly zero (XNNPACK then refuses int8 ADDs
whose input scales differ by more than its limit, and timings say nothing about a trained model). The
benchmark therefore gives the hyper-function Linears PyTorch's default initialisation and the BatchNorm
affine parameters random values (``trained_like``), then re-estimates BatchNorm statistics on the
calibration images (toolchain P15). Latency does not depend on the weights beyond that; accuracy is
checked on trained weights by the digits gate (tests/test_e2e_digits.py).

Timing: at each of ``--threads`` (default 1, 2 and all cores, each once: ``bench.request.matrix_thread_counts``),
ai-edge-litert with its default XNNPACK delegate, ONNX Runtime CPU; every session is warmed up, then timed
``--rounds`` times round-robin, ``--per-round`` invocations each, so drift and background load hit all
models alike; p50 / p90 in ms over all rounds, one table per thread count. Figures depend on the machine and
are not assertions (see the README); the script writes a Markdown table and a JSON file.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from micronet.export import onnx as onnx_stage
from micronet.export import parity, tflite as tflite_stage
from micronet.export.calibration import build_calibration, nhwc
from micronet.export.deploy import recalibrate_batchnorm, to_deploy
from micronet.export.fast import batch_one_form, to_fast_deploy
from micronet.export.inspect import run_tflite, tflite_op_inventory, xnnpack_coverage
from micronet.export.pipeline import lower_fast_graph
from micronet.layers import DynamicShiftMax
from micronet.model import build_model
from micronet.preprocess import Preprocessing


def trained_like(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Hyper-function Linears at PyTorch's default init (U(±1/sqrt(fan_in))), BatchNorm affine random."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DynamicShiftMax):
                for linear in (module.fc1, module.fc2):
                    bound = linear.in_features ** -0.5
                    linear.weight.uniform_(-bound, bound, generator=gen)
                    linear.bias.uniform_(-bound, bound, generator=gen)
            elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.5, 1.5, generator=gen)
                module.bias.normal_(0.0, 0.1, generator=gen)
    return model


def _onnx2tf(onnx_path: Path, work: Path, calib_nhwc: np.ndarray) -> dict[str, Path]:
    saved, _ = tflite_stage.onnx_to_saved_model(onnx_path, work / "onnx2tf")
    out = {}
    for q in ("float32", "int8"):
        out[q] = work / f"{onnx_path.stem}.{q}.tflite"
        tflite_stage.saved_model_to_tflite(saved, out[q], q, calib_nhwc if q == "int8" else None)
    return out


def _fast_tflite(fast: torch.nn.Module, example: torch.Tensor, work: Path, calib_nhwc: np.ndarray) -> dict[str, Path]:
    """What the pipeline ships: the fast graph for float32, its relu_max form for int8."""
    out = {"float32": work / "fast.float32.tflite", "int8": work / "fast.int8.tflite"}
    folders, _ = lower_fast_graph(fast, example, work)
    tflite_stage.saved_model_to_tflite(folders["float"], out["float32"], "float32")
    tflite_stage.saved_model_to_tflite(folders["int8"], out["int8"], "int8", calib_nhwc)
    return out


class _Tfl:
    def __init__(self, path: Path, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.it = Interpreter(model_path=str(path), num_threads=threads)
        self.it.allocate_tensors()
        d = self.it.get_input_details()[0]
        self.it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))

    def __call__(self):
        self.it.invoke()


class _Ort:
    def __init__(self, path: Path, threads: int = 1):
        import onnxruntime as ort

        o = ort.SessionOptions()
        o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
        o.log_severity_level = 3
        self.s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
        i = self.s.get_inputs()[0]
        self.feed = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)}

    def __call__(self):
        self.s.run(None, self.feed)


def _interleaved(runners: dict, rounds: int, per_round: int, warmup: int = 30) -> dict:
    samples = {k: [] for k in runners}
    for r in runners.values():
        for _ in range(warmup):
            r()
    for _ in range(rounds):
        for k, r in runners.items():
            for _ in range(per_round):
                t = time.perf_counter()
                r()
                samples[k].append(time.perf_counter() - t)
    return {k: (1e3 * float(np.percentile(v, 50)), 1e3 * float(np.percentile(v, 90))) for k, v in samples.items()}


def _tfl_info(path: Path) -> dict:
    ops = tflite_op_inventory(path)
    return {"ops": sum(ops.values()), "by_op": ops, "xnnpack": xnnpack_coverage(path)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["m0", "m1", "m2", "m3"])
    ap.add_argument("--peer-onnx", nargs="*", default=[], metavar="NAME=PATH")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=50)
    ap.add_argument("--work", type=Path, default=Path("reports") / "bench_fast_work")
    ap.add_argument("--out", type=Path, default=Path("reports") / "fast_deploy.md")
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="thread counts (default: 1, 2 and every core this process may use)")
    args = ap.parse_args(argv)
    from micronet.bench.request import matrix_thread_counts

    thread_counts = args.threads or matrix_thread_counts()

    size = args.input_size
    data = build_calibration(None, count=args.calib, seed=0, preprocessing=Preprocessing(input_size=size), holdout=16)
    calib_nhwc = nhwc(data.calibration)
    example = torch.zeros(1, 3, size, size)
    rows: dict[str, dict] = {}
    for variant in args.variants:
        torch.manual_seed(0)
        model = trained_like(build_model(variant, input_size=size).eval())
        recalibrate_batchnorm(model, [torch.from_numpy(data.calibration[i:i + 32])
                                      for i in range(0, len(data.calibration), 32)])
        with torch.no_grad():
            ref = model(torch.from_numpy(data.holdout)).numpy()
            fast = to_fast_deploy(model)
            fast_ref = fast(torch.from_numpy(data.holdout)).numpy()
        work = args.work / variant
        print(f"[{variant}] naive: reference graph → ONNX → onnx2tf", flush=True)
        naive_onnx = work / "naive" / f"{variant}-reference.onnx"
        onnx_stage.export_onnx(to_deploy(model), example, naive_onnx)
        naive = _onnx2tf(naive_onnx, work / "naive", calib_nhwc)
        print(f"[{variant}] fast: fast graph → tf_graph, fast graph for ONNX Runtime → ONNX", flush=True)
        fast_onnx = work / "fast" / f"{variant}-fast-onnxruntime.onnx"
        onnx_stage.export_onnx(batch_one_form(to_fast_deploy(model, profile="onnxruntime")), example, fast_onnx)
        fast_ort = onnx_stage.run_onnx(fast_onnx, data.holdout)
        fast_files = _fast_tflite(fast, example, work / "fast", calib_nhwc)
        naive32, fast32 = run_tflite(naive["float32"], data.holdout), run_tflite(fast_files["float32"], data.holdout)
        naive8, fast8 = run_tflite(naive["int8"], data.holdout), run_tflite(fast_files["int8"], data.holdout)
        rows[f"{variant}/naive"] = {"kind": "naive", "files": {**naive, "onnx": naive_onnx},
                                    "tflite": _tfl_info(naive["float32"]), "tflite_int8": _tfl_info(naive["int8"]),
                                    "rel_err_f32": parity.compare(ref, naive32)["rel_max_abs_err"],
                                    "int8_cosine": parity.compare(naive32, naive8)["cosine"]}
        rows[f"{variant}/fast"] = {"kind": "fast", "files": {**fast_files, "onnx": fast_onnx},
                                   "tflite": _tfl_info(fast_files["float32"]),
                                   "tflite_int8": _tfl_info(fast_files["int8"]),
                                   "rel_err_f32": parity.compare(ref, fast32)["rel_max_abs_err"],
                                   "rel_err_fast_vs_pytorch": parity.compare(ref, fast_ref)["rel_max_abs_err"],
                                   "rel_err_onnx_vs_pytorch": parity.compare(ref, fast_ort)["rel_max_abs_err"],
                                   "int8_cosine": parity.compare(fast32, fast8)["cosine"]}
    for spec in args.peer_onnx:
        name, path = spec.split("=", 1)
        print(f"[{name}] onnx2tf", flush=True)
        files = _onnx2tf(Path(path), args.work / "peers" / name, calib_nhwc)
        rows[f"peer/{name}"] = {"kind": "peer", "files": {**files, "onnx": Path(path)},
                                "tflite": _tfl_info(files["float32"]), "tflite_int8": _tfl_info(files["int8"])}

    times: dict[tuple[str, str, int], tuple[float, float]] = {}
    for threads in thread_counts:  # one interleaved run per thread count: sessions of one count compete
        runners = {}
        for name, row in rows.items():
            runners[(name, "tfl_f32", threads)] = _Tfl(row["files"]["float32"], threads)
            runners[(name, "tfl_int8", threads)] = _Tfl(row["files"]["int8"], threads)
            runners[(name, "ort_f32", threads)] = _Ort(row["files"]["onnx"], threads)
        print(f"timing {len(runners)} sessions at {threads} thread(s): {args.rounds} interleaved rounds × "
              f"{args.per_round}", flush=True)
        times.update(_interleaved(runners, args.rounds, args.per_round))

    fmt = lambda p: f"{p[0]:.3f} / {p[1]:.3f}"  # noqa: E731
    lines = []
    for threads in thread_counts:
        lines += [f"Machine: {platform.processor() or platform.machine()}, {size}×{size}, {threads} thread(s), "
                  f"p50 / p90 ms over {args.rounds}×{args.per_round} interleaved runs.", "",
                  "| model | TFLite ops | DEPTHWISE_CONV_2D | TRANSPOSE | GATHER | not delegated (f32 / int8) "
                  "| TFLite fp32 | TFLite int8 | ORT fp32 | rel err fp32 vs PyTorch | int8 cosine |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, row in rows.items():
            ops = row["tflite"]["by_op"]
            nd = lambda info: sum(info["xnnpack"]["not_delegated"].values())  # noqa: E731
            err = f"{row['rel_err_f32']:.1e}" if "rel_err_f32" in row else "—"
            cos = f"{row['int8_cosine']:.4f}" if "int8_cosine" in row else "—"
            gathers = ops.get("GATHER", 0) + ops.get("GATHER_ND", 0)
            lines.append(f"| {name} | {row['tflite']['ops']} | {ops.get('DEPTHWISE_CONV_2D', 0)} "
                         f"| {ops.get('TRANSPOSE', 0)} | {gathers} | {nd(row['tflite'])} / {nd(row['tflite_int8'])} "
                         f"| {fmt(times[(name, 'tfl_f32', threads)])} | {fmt(times[(name, 'tfl_int8', threads)])} "
                         f"| {fmt(times[(name, 'ort_f32', threads)])} | {err} | {cos} |")
        lines.append("")
    for name, row in rows.items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(row["tflite"]["by_op"].items(),
                                                                              key=lambda kv: -kv[1]))
                     + f"; int8 not delegated: {row['tflite_int8']['xnnpack']['not_delegated'] or 'none'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    report = {"settings": vars(args) | {"work": str(args.work), "out": str(args.out)},
              "rows": {name: {**{k: v for k, v in row.items() if k != "files"},
                              "files": {k: str(p) for k, p in row["files"].items()}} for name, row in rows.items()},
              "latency_ms": {f"{n}|{k}|t{t}": {"p50": p[0], "p90": p[1]} for (n, k, t), p in times.items()}}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
