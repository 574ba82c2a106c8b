"""The accuracy gate: how many points of its task's metric (top-1, mIoU, AP) each exported model loses
against PyTorch float.

An exported model is compared with the PyTorch row of the same variant in the same report (same
images, same preprocessing), so the drop measures the export alone and not the data.
"""

from __future__ import annotations

from typing import Any

from .tasks import headline, metric_of


def accuracy_drops(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per non-torch row with accuracy: its figure (``top1`` holds top-1 %, mIoU or AP points, named by
    ``metric``), the reference's and the drop (points)."""
    reference = {r["variant"]: headline(r["accuracy"]) for r in rows
                 if r.get("format") == "torch" and headline(r.get("accuracy")) is not None and not r.get("invalid")}
    drops = []
    for r in rows:
        value = headline(r.get("accuracy"))
        if r.get("format") == "torch" or value is None or r.get("invalid"):
            continue
        ref = reference.get(r.get("variant"))
        if ref is None:
            continue
        metric = metric_of(r["accuracy"])
        drops.append({"name": r["name"], "runtime": r["runtime"], "variant": r["variant"], "top1": value,
                      "reference_top1": ref, "drop": ref - value, "metric": metric.name, "unit": metric.unit})
    return drops


def over_budget(rows: list[dict[str, Any]], max_drop: float) -> list[dict[str, Any]]:
    return [d for d in accuracy_drops(rows) if d["drop"] > max_drop]
