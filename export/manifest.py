"""The JSON manifest written beside every exported artifact (``m0_int8.tflite`` → ``m0_int8.tflite.json``).

A manifest is what every consumer (the benchmark harness, device scripts) reads instead of guessing: how to
feed the model (``input``: name, layout, shape, dtype, quantization, preprocessing), how to read it
(``output``), which file it describes (``sha256``, ``size_bytes``; for a folder artifact, OpenVINO's or ncnn's, the
sha256 of its ``sha256sum`` listing and the sum of its files) and which tools made it. It is written
atomically (temp file in the same folder + ``os.replace``) so a reader never sees half a manifest, and
``read_manifest`` refuses one whose hash no longer matches its artifact (a re-export that did not finish).

The io spec format, checked on write::

    "input":  {"name": str, "layout": "NCHW" | "NHWC", "shape": [int, ...], "dtype": "float32" | "int8" | "uint8",
               "quantization": {"scale": float, "zero_point": int} | null, "preprocessing": {...}}
    "output": {"name": str, "shape": [int, ...], "dtype": ..., "quantization": ... | null}

A dimension of -1 in ``shape`` is dynamic (the batch, when exported with a dynamic batch).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from micronet.errors import MicronetError

from micronet.atomic import replacing

SCHEMA_VERSION = 1

# Distribution names as pip knows them; the manifest records the installed version of each (None if absent).
TOOL_DISTRIBUTIONS = ("torch", "onnx", "onnxruntime", "onnxscript", "onnxsim", "onnxslim", "onnx2tf",
                      "tensorflow", "ai-edge-litert", "openvino", "nncf", "pnnx", "ncnn", "mnn", "numpy")

LAYOUTS = ("NCHW", "NHWC")
IO_DTYPES = ("float32", "int8", "uint8")
_COMPUTED = ("schema_version", "artifact", "sha256", "size_bytes", "tool_versions")


def tool_versions() -> dict[str, str | None]:
    """Versions from package metadata: no import of the (slow) packages themselves."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in TOOL_DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """sha256 of an artifact: of the file, or for a folder artifact (OpenVINO, ncnn) of its listing in
    ``sha256sum`` form (``<sha256>  <name>`` lines, sorted by name), so a changed, added or removed file all
    change it."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    lines = "".join(f"{sha256_file(p)}  {p.relative_to(path).as_posix()}\n"
                    for p in sorted(path.rglob("*")) if p.is_file())
    return hashlib.sha256(lines.encode()).hexdigest()


def size_bytes(path: str | os.PathLike) -> int:
    """Bytes of an artifact: the file's, or the sum of a folder artifact's files."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def manifest_path(artifact_path: str | os.PathLike) -> Path:
    artifact = Path(artifact_path)
    return artifact.with_name(artifact.name + ".json")


def check_io_spec(spec: Any, which: str) -> None:
    """Raise ValueError when ``spec`` does not follow the io format above (a bug in the writer, not the user)."""
    required = ("name", "shape", "dtype", "quantization") + (("layout", "preprocessing") if which == "input" else ())
    if not isinstance(spec, dict):
        raise ValueError(f"manifest {which!r} must be a dict, got {type(spec).__name__}")
    missing = [key for key in required if key not in spec]
    if missing:
        raise ValueError(f"manifest {which!r} lacks {missing}")
    if which == "input" and spec["layout"] not in LAYOUTS:
        raise ValueError(f"manifest input layout must be one of {LAYOUTS}, got {spec['layout']!r}")
    if spec["dtype"] not in IO_DTYPES:
        raise ValueError(f"manifest {which} dtype must be one of {IO_DTYPES}, got {spec['dtype']!r}")
    if not (isinstance(spec["shape"], list) and all(isinstance(d, int) for d in spec["shape"])):
        raise ValueError(f"manifest {which} shape must be a list of ints, got {spec['shape']!r}")
    quant = spec["quantization"]
    if spec["dtype"] == "float32" and quant is not None:
        raise ValueError(f"manifest {which} is float32 but carries quantization {quant!r}")
    if spec["dtype"] != "float32" and not (isinstance(quant, dict) and set(quant) == {"scale", "zero_point"}):
        raise ValueError(f"manifest {which} is {spec['dtype']} and needs quantization {{scale, zero_point}}")


def write_manifest(artifact_path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write ``<artifact>.json``: ``data`` plus the fields computed here, which ``data`` may not set."""
    artifact = Path(artifact_path)
    if not (artifact.is_file() or artifact.is_dir()):
        raise MicronetError(f"cannot write a manifest for {artifact}: no such file or folder")
    clash = sorted(set(data) & set(_COMPUTED))
    if clash:
        raise ValueError(f"manifest fields {clash} are computed by write_manifest, not passed in")
    for which in ("input", "output"):
        if which in data:
            check_io_spec(data[which], which)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "artifact": artifact.name,
        "sha256": sha256_path(artifact),
        "size_bytes": size_bytes(artifact),
        "tool_versions": tool_versions(),
        **data,
    }
    text = json.dumps(manifest, indent=2, sort_keys=False, allow_nan=False) + "\n"
    target = manifest_path(artifact)
    with replacing(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target


def read_manifest(artifact_path: str | os.PathLike, *, verify: bool = True) -> dict[str, Any] | None:
    """The manifest beside ``artifact_path``, or None when there is none.

    With ``verify`` the artifact's sha256 must match the manifest's: a stale manifest describing an older
    file would make the harness feed the model the wrong way, which is worse than no manifest.
    """
    target = manifest_path(artifact_path)
    if not target.is_file():
        return None
    try:
        manifest = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MicronetError(f"unreadable manifest {target}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        raise MicronetError(f"{target} is not a micronet manifest of schema version {SCHEMA_VERSION}")
    if verify:
        artifact = Path(artifact_path)
        if not (artifact.is_file() or artifact.is_dir()):
            raise MicronetError(f"manifest {target} describes {artifact.name}, which is missing")
        if sha256_path(artifact) != manifest.get("sha256"):
            raise MicronetError(f"manifest {target} does not match {artifact.name} (sha256 differs): re-export it")
    return manifest
