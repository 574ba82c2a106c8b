"""Exports made on the fly for ``micronet bench --variant``, cached by what determines them.

Benchmarking a variant means benchmarking its exported files; re-running onnx2tf (tens of seconds)
for every benchmark would make the tool unusable. A cache entry is a folder named by the hash of
everything the export depends on (variant, input size, classes, weights file content, calibration
folder and its file list, micronet and tool versions). An entry is reused only if every requested
artifact is there and its manifest still verifies (sha256 of the file).

Where: ``cache_root()`` (``$MICRONET_CACHE``, else ``$XDG_CACHE_HOME/micronet``, else
``~/.cache/micronet``), read when a cache is used, not when this module is imported, so that a test
session (or any caller) that points ``MICRONET_CACHE`` elsewhere after the import is obeyed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from micronet.errors import MicronetError



#: The PyTorch weights an untrained variant's cached files were exported from (ExportRequest.reference_weights).
REFERENCE_NAME = "pytorch-reference.pt"


def reference_weights(exported_file: Path) -> Path:
    """The weights file of the network a cached export of untrained weights holds: a fresh ``build_model``
    draws other random weights (and an untrained one's BatchNorm statistics make its outputs ~1e-22), so a
    PyTorch row built that way would time and score a different network than the files beside it."""
    return Path(exported_file).parent / REFERENCE_NAME


def cache_root() -> Path:
    """micronet's cache folder (exports here, the arm64 root file system of ``devices.emulation``).

    Evaluated at every use: a value frozen at import time would ignore a ``MICRONET_CACHE`` set later,
    and the test suite relies on redirecting it away from the user's home."""
    if os.environ.get("MICRONET_CACHE"):
        return Path(os.environ["MICRONET_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "micronet"


def exports_cache() -> Path:
    """The folder of ``micronet bench --variant``'s cached exports."""
    return cache_root() / "exports"


def _fingerprint(variant: str, input_size: int, num_classes: int, weights: Path | None,
                 calibration: Path | None) -> str:
    from micronet import __version__
    from micronet.export.manifest import sha256_file, tool_versions
    from micronet.export.pipeline import GRAPH_REVISION
    from micronet.images import file_list_sha256, find_images

    key = {
        "variant": variant,
        "input_size": input_size,
        "num_classes": num_classes,
        "weights": sha256_file(weights) if weights else None,
        "calibration": None if calibration is None else {
            "path": str(Path(calibration).resolve()),
            "files": file_list_sha256(find_images(calibration), calibration)},
        "micronet": __version__,
        "graph_revision": GRAPH_REVISION,
        "tools": tool_versions(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def exported(variant: str, kinds: Sequence[tuple[str, str]], *, input_size: int | tuple[int, int] = 224,
             num_classes: int = 1000, weights: Path | None = None, calibration: Path | None = None,
             cache_dir: Path | None = None, progress: Callable[[str], None] | None = None,
             keep_going: bool = False) -> list[Path]:
    """Paths of ``variant`` exported as each artifact kind (format, quantization) in ``kinds``, exporting if
    needed. ``keep_going``: when the TFLite conversion fails (onnx2tf cannot convert some pose/seg sizes),
    say its one line through ``progress`` and return the other kinds' paths instead of raising."""
    from micronet.export.manifest import read_manifest
    from micronet.export.pipeline import ExportRequest, artifact_name, export
    from micronet.registry import resolve_variant

    variant = resolve_variant(variant, task=None).name
    if weights is not None and not Path(weights).is_file():
        raise MicronetError(f"weights file not found: {weights}")
    size = input_size if isinstance(input_size, int) else f"{input_size[0]}x{input_size[1]}"
    folder = (cache_dir or exports_cache()) / f"{variant}-{size}-{_fingerprint(variant, input_size, num_classes, weights, calibration)}"
    paths = [folder / artifact_name(variant, input_size, f, q) for f, q in kinds]

    def valid(path: Path) -> bool:
        try:
            return path.exists() and read_manifest(path) is not None
        except MicronetError:  # a manifest that no longer verifies: re-export
            return False

    missing = [k for k, p in zip(kinds, paths) if not valid(p)]
    reference = None if weights is not None else folder / REFERENCE_NAME
    if reference is not None and not reference.is_file():
        missing = list(kinds)  # an entry written before references were kept: the export makes both
    if missing:
        if progress:
            progress(f"exporting {variant} ({', '.join(f'{f} {q}' for f, q in missing)}) into the cache {folder}")
        request = ExportRequest(variant=variant, kinds=list(missing), weights=weights, calibration=calibration,
                                input_size=input_size, num_classes=num_classes, output_dir=folder,
                                reference_weights=reference)
        try:
            export(request, progress=progress)
        except MicronetError as exc:
            others = [k for k in missing if k[0] != "tflite"]
            if not keep_going or len(others) == len(missing):
                raise
            if progress:
                progress(f"[yellow]TFLite not benchmarked:[/yellow] {str(exc).splitlines()[0]}")
            if others:
                export(dataclasses.replace(request, kinds=others), progress=progress)
            kept = [(k, p) for k, p in zip(kinds, paths) if k[0] != "tflite"]
            return [p for _, p in kept]
    elif progress:
        progress(f"using cached exports of {variant} in {folder}")
    return paths
