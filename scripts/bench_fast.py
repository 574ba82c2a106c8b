"""Naive (export.deploy.to_deploy) vs fast (export.fast.to_fast_deploy) exports, timed in one interleaved run.

    python scripts/bench_fast.py --variants m0 m1 m2 m3 --out reports/fast_deploy.md [--peer-onnx name=path ...]

Per variant and graph: ONNX (the pipeline's export_onnx), onnx2tf → SavedModel, TFLite float32 and int8 (the
pipeline's converter, calibrated on the bundled photographs after ``recalibrate_batchnorm``), TFLite op counts,
parity (ONNX vs PyTorch, TFLite fp32 vs ONNX, int8 cosine vs fp32). Latency: 1 thread, ai-edge-litert (XNNPACK
default) and onnxruntime; every model is timed in rounds, round-robin, so drift hits all alike; p50/p90 over all
rounds. Peer models (timm MobileNetV3-Small / LCNet, built by ``scripts/build_peers.py`` in a separate venv)
are given as ONNX files and go through the same conversion and timing. Medians only; no assertion on timings.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from micronet.export import onnx as onnx_stage
from micronet.export import parity, tflite as tflite_stage
from micronet.export.calibration import build_calibration, nhwc
from micronet.export.deploy import recalibrate_batchnorm, to_deploy
from micronet.export.fast import to_fast_deploy
from micronet.export.inspect import run_tflite, tflite_op_inventory
from micronet.model import build_model
from micronet.preprocess import Preprocessing


def _convert(onnx_path: Path, work: Path, calib_nhwc: np.ndarray) -> dict[str, Path]:
    saved, _ = tflite_stage.onnx_to_saved_model(onnx_path, work / "onnx2tf")
    out = {"onnx": onnx_path}
    for q in ("float32", "int8"):
        path = work / f"{onnx_path.stem}.{q}.tflite"
        tflite_stage.saved_model_to_tflite(saved, path, q, calib_nhwc if q == "int8" else None)
        out[q] = path
    return out


class _Tfl:
    def __init__(self, path: Path):
        from ai_edge_litert.interpreter import Interpreter

        self.it = Interpreter(model_path=str(path), num_threads=1)
        self.it.allocate_tensors()
        d = self.it.get_input_details()[0]
        self.it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))

    def __call__(self):
        self.it.invoke()


class _Ort:
    def __init__(self, path: Path):
        import onnxruntime as ort

        o = ort.SessionOptions()
        o.intra_op_num_threads = o.inter_op_num_threads = 1
        o.log_severity_level = 3
        self.s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
        i = self.s.get_inputs()[0]
        self.feed = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)}

    def __call__(self):
        self.s.run(None, self.feed)


def _interleaved(runners: dict[str, object], rounds: int, per_round: int, warmup: int = 20) -> dict[str, tuple]:
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["m0", "m1", "m2", "m3"])
    ap.add_argument("--graphs", nargs="+", default=["naive", "fast"], choices=["naive", "fast"])
    ap.add_argument("--peer-onnx", nargs="*", default=[], metavar="NAME=PATH")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=50)
    ap.add_argument("--work", type=Path, default=Path("reports") / "bench_fast_work")
    ap.add_argument("--out", type=Path, default=Path("reports") / "fast_deploy.md")
    args = ap.parse_args(argv)

    size = args.input_size
    data = build_calibration(None, count=args.calib, seed=0, preprocessing=Preprocessing(input_size=size), holdout=16)
    calib_nhwc = nhwc(data.calibration)
    models: dict[str, dict] = {}
    for variant in args.variants:
        torch.manual_seed(0)
        model = build_model(variant, input_size=size).eval()
        recalibrate_batchnorm(model, [torch.from_numpy(data.calibration[i:i + 32])
                                      for i in range(0, len(data.calibration), 32)])
        with torch.no_grad():
            ref = model(torch.from_numpy(data.holdout)).numpy()
        for graph in args.graphs:
            name = f"{variant}/{graph}"
            deployed = to_deploy(model) if graph == "naive" else to_fast_deploy(model)
            work = args.work / variant / graph
            onnx_path = work / f"{variant}-{graph}.onnx"
            print(f"[{name}] export + convert", flush=True)
            onnx_stage.export_onnx(deployed, torch.zeros(1, 3, size, size), onnx_path)
            onnx_logits = onnx_stage.run_onnx(onnx_path, data.holdout)
            files = _convert(onnx_path, work, calib_nhwc)
            f32 = run_tflite(files["float32"], data.holdout)
            i8 = run_tflite(files["int8"], data.holdout)
            models[name] = {"files": files, "ops": tflite_op_inventory(files["float32"]),
                            "onnx_rel": parity.compare(ref, onnx_logits)["rel_max_abs_err"],
                            "tfl_rel": parity.compare(ref, f32)["rel_max_abs_err"],
                            "int8_cos": parity.compare(f32, i8)["cosine"]}
    for spec in args.peer_onnx:
        name, path = spec.split("=", 1)
        work = args.work / "peers" / name
        files = _convert(Path(path), work, calib_nhwc)
        models[f"peer/{name}"] = {"files": files, "ops": tflite_op_inventory(files["float32"])}

    runners = {}
    for name, m in models.items():
        runners[(name, "tfl_f32")] = _Tfl(m["files"]["float32"])
        runners[(name, "tfl_int8")] = _Tfl(m["files"]["int8"])
        runners[(name, "ort_f32")] = _Ort(m["files"]["onnx"])
    print(f"timing {len(runners)} sessions, {args.rounds} interleaved rounds × {args.per_round}", flush=True)
    times = _interleaved(runners, args.rounds, args.per_round)

    lines = ["| model | TFLite ops | DEPTHWISE_CONV_2D | TRANSPOSE | GATHER | TFLite fp32 p50 / p90 ms "
             "| TFLite int8 p50 / p90 ms | ORT fp32 p50 / p90 ms | rel err ONNX / TFLite vs PyTorch | int8 cos |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        t = {k: times[(name, k)] for k in ("tfl_f32", "tfl_int8", "ort_f32")}
        fmt = lambda p: f"{p[0]:.2f} / {p[1]:.2f}"  # noqa: E731
        err = f"{m['onnx_rel']:.1e} / {m['tfl_rel']:.1e}" if "onnx_rel" in m else "—"
        cos = f"{m['int8_cos']:.4f}" if "int8_cos" in m else "—"
        lines.append(f"| {name} | {sum(m['ops'].values())} | {m['ops'].get('DEPTHWISE_CONV_2D', 0)} | "
                     f"{m['ops'].get('TRANSPOSE', 0)} | {m['ops'].get('GATHER', 0)} | {fmt(t['tfl_f32'])} | "
                     f"{fmt(t['tfl_int8'])} | {fmt(t['ort_f32'])} | {err} | {cos} |")
    lines.append("")
    for name, m in models.items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(m["ops"].items(), key=lambda kv: -kv[1])))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
