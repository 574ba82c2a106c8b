"""Memory footprint of a model in one runtime, measured in a fresh child process; model file size.

Why a child: peak RSS is a process-lifetime high-water mark and runtimes never give memory back
to the OS cleanly. Measured in the benchmarking process, the second runtime would inherit the first
one's arenas and TensorFlow's import would dwarf everything. So each (model, runtime, threads)
gets a new interpreter (``python -m micronet.bench._child``) that records its RSS at four points:

* ``baseline_rss_mib``: after Python and the harness's own light modules, before anything else;
* ``after_import_rss_mib``: after importing the runtime library (torch, onnxruntime, ...);
* ``after_load_rss_mib``: after loading the model (session/interpreter built, tensors allocated);
* ``peak_rss_mib``: ``ru_maxrss`` after ``inferences`` runs on one input, the lifetime peak.

``model_mib`` = peak − after_import is what the model itself costs on top of the library; the
library's own cost is after_import − baseline. MiB = 2**20 bytes throughout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from micronet.errors import MicronetError

MIB = 1024 * 1024
RESULT_PREFIX = "MICRONET_MEMORY "  # the child's one result line; libraries may print other lines


@dataclass(frozen=True)
class MemoryResult:
    baseline_rss_mib: float
    after_import_rss_mib: float
    after_load_rss_mib: float
    peak_rss_mib: float
    inferences: int

    @property
    def model_mib(self) -> float:
        return self.peak_rss_mib - self.after_import_rss_mib

    def to_dict(self) -> dict[str, Any]:
        """The report's ``memory`` object."""
        return {**asdict(self), "model_mib": self.model_mib}


def file_size(path: str | Path) -> dict[str, float | int]:
    """Size of a model file (or model folder: OpenVINO, ncnn) in bytes and MiB (what ships to the device)."""
    path = Path(path)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return {"bytes": size, "mib": size / MIB}


def validate_inferences(inferences: int) -> None:
    if isinstance(inferences, bool) or not isinstance(inferences, int) or inferences < 1:
        raise MicronetError(f"memory inferences must be a whole number >= 1, got {inferences!r}")


def measure_memory(
    runtime: str,
    source: Any,
    *,
    threads: int = 1,
    xnnpack: bool | None = None,
    inferences: int = 10,
    input_size: int | None = None,
    timeout_s: float = 600.0,
) -> MemoryResult:
    """Load ``source`` in ``runtime`` in a fresh child process, run it, and return its RSS figures.

    ``source`` is a model file, a variant name (built in the child) or a ``torch.nn.Module`` (pickled
    to a temporary file; its class must be importable in the child, which gets this process's
    ``sys.path``).
    """
    validate_inferences(inferences)
    with tempfile.TemporaryDirectory(prefix="micronet-mem-") as tmp:
        spec = {
            "runtime": runtime,
            "threads": threads,
            "xnnpack": xnnpack,
            "inferences": inferences,
            "input_size": input_size,
            "source": _source_spec(source, Path(tmp)),
        }
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # same micronet, same test modules
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "micronet.bench._child", json.dumps(spec)],
                capture_output=True, text=True, timeout=timeout_s, env=env,
            )
        except subprocess.TimeoutExpired:
            raise MicronetError(f"memory measurement of {runtime} timed out after {timeout_s:.0f} s") from None
    return _parse_child(proc, runtime)


def _source_spec(source: Any, tmp: Path) -> dict[str, str]:
    if isinstance(source, Path) or (isinstance(source, str) and Path(source).suffix in (".onnx", ".tflite", ".mnn",
                                                                                    ".openvino", ".ncnn")):
        return {"path": str(Path(source).resolve())}
    if isinstance(source, str):
        return {"variant": source}
    import torch  # only reached with a module, so torch is already loaded

    if isinstance(source, torch.nn.Module):
        path = tmp / "module.pt"
        torch.save(source, path)
        return {"pickle": str(path)}
    raise MicronetError(f"cannot measure memory of a {type(source).__name__}")


def _parse_child(proc: subprocess.CompletedProcess, runtime: str) -> MemoryResult:
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            payload = json.loads(line[len(RESULT_PREFIX):])
            if "error" in payload:
                raise MicronetError(payload["error"])
            return MemoryResult(**payload)
    tail = (proc.stderr or proc.stdout or "").strip().splitlines()
    raise MicronetError(
        f"memory child for {runtime} exited with code {proc.returncode} and no result"
        + (f": {tail[-1]}" if tail else "")
    )
