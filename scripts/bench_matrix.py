"""The benchmark matrix: m0..m3 x PyTorch / ONNX Runtime / TFLite float32 / TFLite int8, one thread.

Not a test (it takes minutes and its figures depend on the machine). Usage:

    python scripts/bench_matrix.py [--out reports/matrix] [--runs 200] [--threads 1] [--weights ...]

Exports come from the cache of ``micronet bench`` (made on first use). Writes the JSON/CSV/Markdown
report and the plots of ``micronet report`` into ``--out`` and prints the p50/p90 table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from micronet.bench import report
from micronet.bench.harness import run_benchmark
from micronet.bench.plots import plot_all
from micronet.bench.targets import bench_targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/matrix"))
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime", "litert"])
    args = parser.parse_args()
    targets = bench_targets(matrix=True, input_size=args.input_size, progress=print)
    result = run_benchmark(targets, runtimes=args.runtimes, threads=[args.threads], warmup=args.warmup,
                           runs=args.runs, progress=print)
    paths = report.write_all(result, args.out, stem="matrix")
    paths += plot_all(result["results"], args.out)
    lines = ["| variant | MAdds | runtime | format | p50 ms | p90 ms | peak RSS MiB | size MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in result["results"]:
        if r["invalid"]:
            lines.append(f"| {r['variant']} | | {r['runtime']} | {r['format']} {r['quantize']} | invalid: {r['invalid_reason']} | | | |")
            continue
        lat, mem = r["latency"], r.get("memory") or {}
        size = f"{r['size_mib']:.2f}" if r.get("size_mib") else "-"
        lines.append(f"| {r['variant']} | {r['madds'] / 1e6:.2f}M | {r['runtime']} | {r['format']} {r['quantize']} | "
                     f"{lat['p50_ms']:.2f} | {lat['p90_ms']:.2f} | {mem.get('peak_rss_mib', float('nan')):.0f} | {size} |")
    table = "\n".join(lines)
    (args.out / "matrix_table.md").write_text(table + "\n")
    print(table)
    print("written:", ", ".join(map(str, paths)))


if __name__ == "__main__":
    main()
