"""Two sets of exports timed against each other in one interleaved run: did a change make a shipped file slower?

    python scripts/bench_compare.py before=exports-old after=exports-new --out reports/compare.md

Each folder holds files exported by ``micronet export`` (the same names in both, e.g. from ``--all``); every
``.tflite`` and ``.onnx`` name present in both is loaded in both versions and timed round-robin with the same
method as ``scripts/bench_fast.py`` (1 thread, ai-edge-litert with XNNPACK / ONNX Runtime CPU, warm-up, then
``--rounds`` rounds of ``--per-round`` invocations per model, so drift and background load hit every model
alike). The table gives p50 per version, their ratio, and whether the two files are byte-identical (then any
difference is noise, which the ratio of identical files shows). Figures depend on the machine: the script
prints the CPU and the date, and asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fast import _interleaved, _Ort, _Tfl  # noqa: E402  (the same timing method as bench_fast)

SUFFIXES = (".tflite", ".onnx")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _versions(specs: list[str]) -> dict[str, Path]:
    versions = {}
    for spec in specs:
        label, _, folder = spec.partition("=")
        if not folder or not Path(folder).is_dir():
            raise SystemExit(f"error: expected LABEL=FOLDER with an existing folder, got {spec!r}")
        versions[label] = Path(folder)
    if len(versions) != 2:
        raise SystemExit("error: give exactly two LABEL=FOLDER arguments")
    return versions


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("versions", nargs=2, metavar="LABEL=FOLDER")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = ap.parse_args(argv)
    versions = _versions(args.versions)
    (a, folder_a), (b, folder_b) = versions.items()
    names = sorted(p.name for p in folder_a.iterdir()
                   if p.suffix in SUFFIXES and (folder_b / p.name).is_file())
    if not names:
        raise SystemExit(f"error: no .tflite/.onnx file name is in both {folder_a} and {folder_b}")
    runners = {}
    for name in names:
        for label, folder in versions.items():
            path = folder / name
            runners[(name, label)] = _Tfl(path) if path.suffix == ".tflite" else _Ort(path)
    timings = _interleaved(runners, args.rounds, args.per_round)
    lines = [f"Interleaved run, {time.strftime('%Y-%m-%d')}, {_cpu()}, 1 thread, {args.rounds} rounds x "
             f"{args.per_round} invocations per model; p50 ms.", "",
             f"| file | {a} | {b} | {b}/{a} | identical bytes |", "|---|---:|---:|---:|---|"]
    for name in names:
        pa, pb = timings[(name, a)][0], timings[(name, b)][0]
        same = _sha256(folder_a / name) == _sha256(folder_b / name)
        lines.append(f"| {name} | {pa:.3f} | {pb:.3f} | {pb / pa:.3f} | {'yes' if same else 'no'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
