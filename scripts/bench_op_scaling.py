"""What one op costs in XNNPACK at 1 and N threads, per op kind and map size: where a second thread is lost.

    python scripts/bench_op_scaling.py --threads 1 2 --out reports/op_scaling.md

``micronet profile <file>.tflite`` says which blocks of a MicroNet lose time at N threads; this says which
*kinds* of operator do, on the machine it runs on. For each op kind MicroNet's fast graph uses (a broadcast
MUL, a channel roll as slice + slice + concat and the same slice padded back instead of concatenated, the
2-D roll of rewrite 10, a channel transpose, a Shift-Max
coefficient path, a grouped and a dense 1x1 conv, a 3x3 depthwise conv) it builds a TFLite file that applies
it ``--chain`` times in a row to an H x W x C map, and one with none; all files are timed interleaved at each
thread count with ai-edge-litert's default XNNPACK delegate (``bench_fast._interleaved``: round-robin, so
drift hits all files alike), and an op's cost is (chain file - empty file) / chain, from the medians. The
input is set once (as the fast-export benchmark does); a user's input written each run adds a cache transfer
to the first op that no chain here has.

Figures depend on the machine (core count, caches, whether two vCPUs share a core) and are not assertions:
the script writes a Markdown table and a JSON file.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fast import _interleaved, _Tfl  # noqa: E402  (one timing method for every benchmark)

#: (H, C): MicroNet-m0's maps at 224 px from stride 4 to stride 32.
SHAPES = ((56, 16), (28, 32), (14, 96), (7, 384))


def _kinds(tf, h: int, c: int) -> dict[str, Callable]:
    rng = np.random.default_rng(0)
    group = max(c // 8, 1)

    def const(*shape, scale=0.1):
        return tf.constant(rng.standard_normal(shape).astype(np.float32) * scale)

    def roll(x, k):
        return tf.concat([x[..., group:], x[..., :group]], axis=-1)

    def shift(x, k):  # the roll's slice without its concat: what CONCATENATION adds is the difference
        return tf.pad(x[..., group:], [[0, 0], [0, 0], [0, 0], [0, group]])

    def roll_2d(x, k):
        v = tf.reshape(x, [h * h, 8, c // 8])
        v = tf.concat([v[..., 1:], v[..., :1]], axis=-1)
        v = tf.concat([v[:, 1:], v[:, :1]], axis=1)
        return tf.reshape(v, [1, h, h, c])

    def transpose(x, k):
        return tf.reshape(tf.transpose(tf.reshape(x, [h * h, 2, 8, c // 16]), [0, 2, 1, 3]), [1, h, h, c])

    def coefficients(x, k, w1=const(1, 1, c, max(c // 16, 4)), w2=const(1, 1, max(c // 16, 4), c)):
        p = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        p = tf.nn.relu6(tf.nn.conv2d(tf.nn.relu(tf.nn.conv2d(p, w1, 1, "VALID")), w2, 1, "VALID"))
        return x * p

    def mul(x, k, a=const(1, 1, 1, c, scale=1.0)):
        return x * a

    def grouped_1x1(x, k, w=const(1, 1, c // 8, c)):
        return tf.nn.conv2d(x, w, 1, "VALID")

    def dense_1x1(x, k, w=const(1, 1, c, c, scale=0.05)):
        return tf.nn.conv2d(x, w, 1, "VALID")

    def depthwise_3x3(x, k, w=const(3, 3, c, 1)):
        return tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME")

    return {"broadcast MUL": mul, "roll (slice+slice+concat)": roll,
            "shift (slice+pad)": shift, "2-D roll (rewrite 10)": roll_2d,
            "channel transpose": transpose, "coefficient path": coefficients, "grouped 1x1 conv (8 groups)": grouped_1x1,
            "dense 1x1 conv": dense_1x1, "3x3 depthwise conv": depthwise_3x3}


def _build(tf, h: int, c: int, op: Callable | None, chain: int, path: Path) -> Path:
    @tf.function(input_signature=[tf.TensorSpec([1, h, h, c], tf.float32)], autograph=False)
    def graph(x):
        for k in range(chain if op else 0):
            x = op(x, k)
        return x + 1.0

    converter = tf.lite.TFLiteConverter.from_concrete_functions([graph.get_concrete_function()])
    path.write_bytes(converter.convert())
    return path


def measure(shapes, threads, chain: int, rounds: int, per_round: int, work: Path, say=print) -> list[dict]:
    from micronet.quiet import import_tensorflow

    tf = import_tensorflow()
    files: dict[tuple[int, int, str], Path] = {}
    for h, c in shapes:
        files[(h, c, "")] = _build(tf, h, c, None, chain, work / f"h{h}c{c}-empty.tflite")
        for i, (name, op) in enumerate(_kinds(tf, h, c).items()):
            files[(h, c, name)] = _build(tf, h, c, op, chain, work / f"h{h}c{c}-{i}.tflite")
    rows = []
    for t in threads:
        say(f"timing {len(files)} files at {t} thread{'s' if t > 1 else ''}")
        p50 = {key: 1e3 * p50_ms for key, (p50_ms, _p90) in
               _interleaved({key: _Tfl(path, t) for key, path in files.items()}, rounds, per_round).items()}
        for (h, c, name) in files:
            if name:
                rows.append({"op": name, "h": h, "w": h, "c": c, "threads": t,
                             "us_per_op": (p50[(h, c, name)] - p50[(h, c, "")]) / chain})
    return rows


def markdown(rows: list[dict], threads: list[int]) -> str:
    first, last = threads[0], threads[-1]
    by = {(r["op"], r["h"], r["c"], r["threads"]): r["us_per_op"] for r in rows}
    head = "| op | map | " + " | ".join(f"µs/op {t}T" for t in threads) + (f" | ×{last}T/{first}T |" if last != first else " |")
    lines = [head, "|---|---|" + "---:|" * (len(threads) + (last != first))]
    for op, h, c in dict.fromkeys((r["op"], r["h"], r["c"]) for r in rows):
        cells = [f"{by[(op, h, c, t)]:.2f}" for t in threads]
        if last != first:
            ratio = by[(op, h, c, first)] / by[(op, h, c, last)] if by[(op, h, c, last)] > 0 else float("nan")
            cells.append(f"{ratio:.2f}")
        lines.append(f"| {op} | {h}×{h}×{c} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="thread counts (default: 1, 2 and every core this process may use)")
    ap.add_argument("--shapes", nargs="+", default=[f"{h}x{c}" for h, c in SHAPES], metavar="HxC",
                    help="square maps as H x channels (default: m0's at 224 px, stride 4 to 32)")
    ap.add_argument("--chain", type=int, default=20, help="ops in a row per file")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=60)
    ap.add_argument("--out", type=Path, default=Path("reports") / "op_scaling.md")
    args = ap.parse_args(argv)
    from micronet.bench.request import matrix_thread_counts
    from micronet.bench.environment import cpu_model

    threads = args.threads or matrix_thread_counts()
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
    with tempfile.TemporaryDirectory(prefix="micronet-op-scaling-") as work:
        rows = measure(shapes, threads, args.chain, args.rounds, args.per_round, Path(work))
    machine = f"{cpu_model() or platform.processor() or 'unknown CPU'}, {platform.machine()}"
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    text = (f"# XNNPACK cost per op at {', '.join(map(str, threads))} threads\n\n{machine}, {stamp}; chains of "
            f"{args.chain} ops, medians of {args.rounds} interleaved rounds × {args.per_round} runs.\n\n"
            + markdown(rows, threads))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "date": stamp, "threads": threads,
                                                        "chain": args.chain, "rows": rows}, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
