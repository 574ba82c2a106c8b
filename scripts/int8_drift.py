"""Where an exported int8 TFLite file loses agreement with its float32 twin, op by op.

    micronet export --variant pose-m2 --weights best.pt --all --calibration kp --input-size 256x192 --output ex
    python scripts/int8_drift.py ex/micronet-pose-m2-256x192.float32.tflite ex/micronet-pose-m2-256x192.int8.tflite

Both files must come from one export (the int8 file's manifest gives the task and input size). The inputs are
the export's own hold-out images (the embedded photographs, cropped as the export crops them, or
``--calibration`` a folder as the export took it). Prints the ops that lost the most cosine against their
inputs, the output's cosine, and writes every op to ``--csv``. A diagnostic: it asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from micronet.atomic import replacing  # noqa: E402
from micronet.errors import MicronetError  # noqa: E402
from micronet.export.int8_drift import int8_drift  # noqa: E402
from micronet.export.manifest import read_manifest  # noqa: E402


def holdout_images(manifest: dict, calibration: Path | None, count: int):
    """The export's parity images at the file's input size (its task's crop). The split keeps at most a fifth
    of what it draws for hold-out, so it draws five times ``count``."""
    task, size = manifest.get("task") or "classification", manifest["input_size"]
    if task == "classification":
        from micronet.export.calibration import build_calibration
        from micronet.preprocess import Preprocessing

        return build_calibration(calibration, count=4 * count, holdout=count,
                                 preprocessing=Preprocessing(input_size=int(size))).holdout
    from micronet.export.dense_calibration import build_dense_calibration

    return build_dense_calibration(task, calibration, tuple(size), count=4 * count, holdout=count).holdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("float32", type=Path)
    ap.add_argument("int8", type=Path)
    ap.add_argument("--calibration", type=Path, default=None, help="the folder the export calibrated on")
    ap.add_argument("--count", type=int, default=8, help="hold-out images compared")
    ap.add_argument("--top", type=int, default=15, help="ops listed, by the cosine they lost")
    ap.add_argument("--csv", type=Path, default=None, help="every compared op, in execution order")
    args = ap.parse_args(argv)
    try:
        return _report(args)
    except MicronetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _report(args: argparse.Namespace) -> int:
    for path in (args.float32, args.int8):
        if not path.is_file():
            raise MicronetError(f"{path} is not a file")
    manifest = read_manifest(args.int8)
    if manifest is None:
        raise MicronetError(f"{args.int8} has no manifest beside it ({args.int8.name}.json): give a file that "
                            "`micronet export` wrote")
    images = holdout_images(manifest, args.calibration, args.count)
    rows = int8_drift(args.float32, args.int8, images)
    print(f"{args.int8.name} against {args.float32.name}: {len(rows)} op outputs compared on {len(images)} images")
    print(f"{'step':>5} {'op':<18} {'cosine':>7} {'lost':>7}  tensor")
    for row in sorted(rows, key=lambda r: -r.drop)[:args.top]:
        print(f"{row.step:>5} {row.op:<18} {row.cosine:7.4f} {row.drop:7.4f}  {row.tensor} {list(row.shape)}")
    print(f"output: cosine {rows[-1].cosine:.4f} ({rows[-1].tensor})")
    by_op: dict[str, float] = {}
    for row in rows:
        by_op[row.op] = by_op.get(row.op, 0.0) + max(row.drop, 0.0)
    print("cosine lost, summed by op type: " + ", ".join(f"{op} {lost:.4f}" for op, lost in
                                                          sorted(by_op.items(), key=lambda kv: -kv[1])))
    if args.csv:
        with replacing(args.csv) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", "op", "tensor", "shape", "cosine", "lost"])
            for row in rows:
                writer.writerow([row.step, row.op, row.tensor, "x".join(map(str, row.shape)), f"{row.cosine:.6f}",
                                 f"{row.drop:.6f}"])
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
