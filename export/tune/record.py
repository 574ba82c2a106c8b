"""Tuning records: what was measured where, reusable on the same kind of device with the same toolchain.

A record is keyed by the export it tunes (variant, input size, format, fast-graph profile, threads), the
device fingerprint and the toolchain. The fingerprint is what ``micronet devices check`` says about the device
(CPU model and core count, OS and architecture, Python; never temperatures or throttle flags) and the version
of the runtime that runs the candidates there: two boards of one kind share it, which is the point (a team
tunes once per board kind). The toolchain is the host's converters (torch, TensorFlow, ai-edge-litert, ONNX,
ONNX Runtime) and the fast graph's revision: a record from another toolchain may describe graphs this one no
longer builds. A record that differs in any of these is refused with one line, before anything is built.

Cached in ``<cache_root>/tuning/`` (``bench.cache.cache_root``: ``$MICRONET_CACHE`` or ``~/.cache/micronet``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from micronet.errors import MicronetError

SCHEMA = "micronet-tuning/1"
#: Host packages whose versions decide which graph a profile builds.
TOOLCHAIN = ("torch", "tensorflow", "ai-edge-litert", "onnx", "onnxscript", "onnxsim", "onnxruntime")
_VOLATILE = ("°C", "throttle flags")


def toolchain() -> dict[str, Any]:
    from micronet.export.manifest import tool_versions

    from ..pipeline import GRAPH_REVISION

    versions = tool_versions()
    return {**{name: versions.get(name) for name in TOOLCHAIN}, "graph_revision": GRAPH_REVISION}


def fingerprint(kind: str, summary: str, runtime: str, runtime_version: str | None) -> dict[str, Any]:
    """The device facts a record is valid for, and their hash (``id``)."""
    stable = " · ".join(part for part in summary.split(" · ") if not any(v in part for v in _VOLATILE))
    facts = {"kind": kind, "summary": stable, "runtime": runtime, "runtime_version": runtime_version}
    return {**facts, "id": _digest(facts)}


def record_key(export: dict[str, Any], device_id: str, tools: dict[str, Any]) -> str:
    """The cache file name of a record: readable fields, then a hash of everything that must match."""
    digest = _digest({"export": export, "device": device_id, "toolchain": tools})[:16]
    return f"{export['variant']}-{export['input_size']}-{export['format']}-{export['profile']}-" \
           f"t{export['threads']}-{digest}.json"


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def cache_dir() -> Path:
    from micronet.bench.cache import cache_root

    return cache_root() / "tuning"


def load_record(path: str | os.PathLike) -> dict[str, Any]:
    """A tuning record from its own file or from a tuned export's manifest (its ``tuning`` field)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MicronetError(f"tuning record not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MicronetError(f"unreadable tuning record {path}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("tuning"), dict):
        data = data["tuning"]
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise MicronetError(f"{path} is not a micronet tuning record ({SCHEMA}) or a tuned export's manifest")
    return data


def check_record(record: dict[str, Any], export: dict[str, Any], device: dict[str, Any],
                 tools: dict[str, Any], where: str) -> None:
    """Refuse ``record`` unless it was made for this export, this kind of device and this toolchain."""
    theirs = record.get("export", {})
    for field in ("variant", "input_size", "format", "profile", "threads"):
        if theirs.get(field) != export[field]:
            raise MicronetError(f"tuning record {where} is for {field} {theirs.get(field)!r}, this export is "
                                f"{export[field]!r}")
    mine = record.get("device", {})
    if mine.get("id") != device["id"]:
        raise MicronetError(f"tuning record {where} was measured on another device ({mine.get('summary')!r}, "
                            f"{mine.get('runtime')} {mine.get('runtime_version')}), not on this one "
                            f"({device['summary']!r}, {device['runtime']} {device['runtime_version']})")
    from .candidates import chosen_profile
    from ..fast import PROFILES

    if not isinstance(record.get("chosen"), dict) or not isinstance(record["chosen"].get("switches"), dict):
        raise MicronetError(f"tuning record {where} names no chosen graph")
    try:
        chosen_profile(PROFILES[export["profile"]], record["chosen"])
    except (MicronetError, TypeError) as exc:
        raise MicronetError(f"tuning record {where}: {exc}") from None
    if record.get("toolchain") != tools:
        changed = sorted(k for k in set(tools) | set(record.get("toolchain") or {})
                         if (record.get("toolchain") or {}).get(k) != tools.get(k))
        raise MicronetError(f"tuning record {where} was made with another toolchain (differs in "
                            f"{', '.join(changed)}): tune again")


def cached(key: str) -> dict[str, Any] | None:
    path = cache_dir() / key
    if not path.is_file():
        return None
    try:
        return load_record(path)
    except MicronetError:
        return None  # a damaged cache entry is measured again, and replaced


def store(key: str, record: dict[str, Any]) -> Path:
    from micronet.atomic import replacing

    path = cache_dir() / key
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path
