"""The accuracy gate: how many top-1 points each exported model loses against PyTorch float.

An exported model is compared with the PyTorch row of the same variant in the same report (same
images, same preprocessing), so the drop measures the export alone and not the data.
"""

from __future__ import annotations

from typing import Any


def accuracy_drops(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per non-torch row with accuracy: its top-1, the reference top-1 and the drop (points)."""
    reference = {r["variant"]: r["accuracy"]["top1"] for r in rows
                 if r.get("format") == "torch" and r.get("accuracy") and not r.get("invalid")}
    drops = []
    for r in rows:
        if r.get("format") == "torch" or not r.get("accuracy") or r.get("invalid"):
            continue
        ref = reference.get(r.get("variant"))
        if ref is None:
            continue
        drops.append({"name": r["name"], "runtime": r["runtime"], "variant": r["variant"], "top1": r["accuracy"]["top1"],
                      "reference_top1": ref, "drop": ref - r["accuracy"]["top1"]})
    return drops


def over_budget(rows: list[dict[str, Any]], max_drop: float) -> list[dict[str, Any]]:
    return [d for d in accuracy_drops(rows) if d["drop"] > max_drop]
