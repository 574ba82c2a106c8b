"""Export every paper variant in every format and print the figures the export issue asks for.

Not a test: it takes several minutes (onnx2tf dominates). Usage:

    python scripts/export_matrix.py [--variants m0 m1 m2 m3] [--input-size 224] [--out exports/matrix]

Writes ``export_matrix.md`` and ``export_matrix.json`` into the output folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from micronet.export.pipeline import ALL_KINDS, ExportRequest, export


def _row(variant: str, manifests: dict[str, dict], wall_s: float) -> dict:
    def rung(name: str) -> dict:
        for m in manifests.values():
            for r in m["parity"]:
                if r["rung"] == name:
                    return r
        return {}

    def size(key: str) -> float:
        return manifests[key]["size_bytes"] / 2**20

    return {
        "variant": variant,
        "onnx_max_abs_err": rung("onnx").get("max_abs_err"),
        "tflite_fp32_max_abs_err": rung("tflite_float32").get("max_abs_err"),
        "fp16_rel_err": rung("tflite_float16").get("rel_max_abs_err"),
        "int8_cosine": rung("tflite_int8").get("cosine"),
        "int8_top1_agreement_pct": rung("tflite_int8").get("top1_agreement_pct"),
        "int8_top1_in_top5_pct": rung("tflite_int8").get("top1_in_top5_pct"),
        "size_mib": {k: round(size(k), 3) for k in manifests},
        "ops_fp32": manifests["float32"]["ops"]["total"],
        "ops_int8": manifests["int8"]["ops"]["total"],
        "export_wall_s": round(wall_s, 1),
        "stage_s": manifests["int8"]["timings_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["m0", "m1", "m2", "m3"])
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=Path("exports/matrix"))
    args = parser.parse_args()
    rows = []
    for variant in args.variants:
        start = time.perf_counter()
        result = export(ExportRequest(variant=variant, kinds=list(ALL_KINDS), input_size=args.input_size,
                                      output_dir=args.out / variant), progress=lambda m: print(f"[{variant}] {m}"))
        manifests = {json.loads(p.read_text())["quantize"] if json.loads(p.read_text())["format"] == "tflite"
                     else "onnx": json.loads(p.read_text()) for p in result.manifests}
        rows.append(_row(variant, manifests, time.perf_counter() - start))
    lines = [
        "| variant | ONNX max abs err | TFLite fp32 max abs err | fp16 rel err | int8 cosine | int8 top-1 agree | "
        "int8 ref-top-1 in top-5 | size ONNX / fp32 / int8 (MiB) | TFLite ops fp32 / int8 | export wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["size_mib"]
        lines.append(
            f"| {r['variant']} | {r['onnx_max_abs_err']:.2e} | {r['tflite_fp32_max_abs_err']:.2e} | "
            f"{r['fp16_rel_err']:.2e} | {r['int8_cosine']:.4f} | {r['int8_top1_agreement_pct']:.1f}% | "
            f"{r['int8_top1_in_top5_pct']:.1f}% | {s['onnx']:.2f} / {s['float32']:.2f} / {s['int8']:.2f} | "
            f"{r['ops_fp32']} / {r['ops_int8']} | {r['export_wall_s']:.0f} |")
    table = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "export_matrix.md").write_text(table + "\n")
    (args.out / "export_matrix.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
