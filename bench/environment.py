"""Fingerprint of the machine and software that produced a benchmark report.

Why: a latency figure means nothing without the CPU, its frequency policy, the thread settings and
the library versions behind it, and reports from different machines get merged. Every field is
best effort: anything unreadable (no cpufreq in a VM, no git, no psutil) becomes ``None`` and
collection never fails.

Fields (the report's ``environment`` object):

* ``timestamp_utc``: ISO 8601, UTC, when collected.
* ``hostname``.
* ``os``: ``system``, ``release`` (kernel), ``version``, ``machine`` (arch), ``platform`` (one line).
* ``python``: ``version``, ``implementation``, ``executable``.
* ``cpu``: ``model``, ``arch``, ``logical_cores``, ``physical_cores``, ``governor`` (cpufreq scaling
  governor of cpu0), ``cur_mhz``/``min_mhz``/``max_mhz`` (cpu0, from /sys or psutil),
  ``load_avg_1m``/``5m``/``15m`` (a busy machine explains noisy numbers).
* ``memory_total_mib``.
* ``libraries``: installed version of torch, onnxruntime, ai-edge-litert, tflite-runtime,
  tensorflow, numpy, micronet (``None`` = not installed); read from package metadata, nothing is
  imported.
* ``micronet_git``: ``sha``, ``dirty`` when micronet runs from a git checkout, else ``None``.
* ``threads``: the thread counts the run asked for, plus the environment variables that silently
  change threading (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``,
  ``TF_NUM_INTRAOP_THREADS``, ``TF_NUM_INTEROP_THREADS``), and the CPU affinity set.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

LIBRARIES = ("torch", "onnxruntime", "ai-edge-litert", "tflite-runtime", "tensorflow", "numpy", "micronet")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
              "TF_NUM_INTEROP_THREADS")
_CPUFREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq")


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:
        return None


def _read(path: Path) -> str | None:
    return _safe(lambda: path.read_text().strip() or None)


def _khz_to_mhz(text: str | None) -> float | None:
    return None if text is None else _safe(lambda: int(text) / 1000.0)


def cpu_model() -> str | None:
    """The marketing name from /proc/cpuinfo (Linux), sysctl (macOS) or platform.processor()."""
    info = _read(Path("/proc/cpuinfo"))
    if info:
        for line in info.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                return value.strip()
    if sys.platform == "darwin":
        out = _safe(lambda: subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                           text=True, timeout=5).stdout.strip())
        if out:
            return out
    return platform.processor() or None


def _cpu() -> dict[str, Any]:
    import psutil  # pinned dependency; imported here so importing this module stays free

    freq = _safe(psutil.cpu_freq)
    load = _safe(os.getloadavg)
    return {
        "model": cpu_model(),
        "arch": platform.machine() or None,
        "logical_cores": _safe(lambda: psutil.cpu_count(logical=True)),
        "physical_cores": _safe(lambda: psutil.cpu_count(logical=False)),
        "governor": _read(_CPUFREQ / "scaling_governor"),
        "cur_mhz": _khz_to_mhz(_read(_CPUFREQ / "scaling_cur_freq")) or (freq.current if freq else None),
        "min_mhz": _khz_to_mhz(_read(_CPUFREQ / "scaling_min_freq")) or (freq.min if freq and freq.min else None),
        "max_mhz": _khz_to_mhz(_read(_CPUFREQ / "scaling_max_freq")) or (freq.max if freq and freq.max else None),
        "load_avg_1m": load[0] if load else None,
        "load_avg_5m": load[1] if load else None,
        "load_avg_15m": load[2] if load else None,
    }


def library_versions(names: Iterable[str] = LIBRARIES) -> dict[str, str | None]:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if name == "micronet":  # a source checkout that was never pip-installed
                return _safe(lambda: __import__("micronet").__version__)
            return None

    return {name: version(name) for name in names}


def micronet_git() -> dict[str, Any] | None:
    """SHA (and whether the tree has local changes) of the checkout micronet is imported from."""
    import micronet

    root = Path(micronet.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()

    sha = _safe(lambda: git("rev-parse", "HEAD"))
    if not sha:
        return None
    status = _safe(lambda: git("status", "--porcelain", "--untracked-files=no"))
    return {"sha": sha, "dirty": None if status is None else bool(status)}


def _affinity() -> list[int] | None:
    return _safe(lambda: sorted(os.sched_getaffinity(0)))


def collect_environment(threads: Iterable[int] | None = None) -> dict[str, Any]:
    """The report's ``environment`` object; ``threads`` are the thread counts the run will use."""
    uname = platform.uname()
    return {
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": _safe(socket.gethostname),
        "os": {
            "system": uname.system,
            "release": uname.release,
            "version": uname.version,
            "machine": uname.machine,
            "platform": platform.platform(),
        },
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "cpu": _safe(_cpu) or {},
        "memory_total_mib": _safe(lambda: __import__("psutil").virtual_memory().total / 2**20),
        "libraries": library_versions(),
        "micronet_git": _safe(micronet_git),
        "threads": {
            "requested": sorted(set(threads)) if threads is not None else None,
            "env": {name: os.environ.get(name) for name in THREAD_ENV},
            "cpu_affinity": _affinity(),
        },
    }


def noise_warnings(env: dict[str, Any], threads: Iterable[int] = ()) -> list[str]:
    """Conditions that make latency figures noisy, stated up front instead of discovered in the plots."""
    cpu = env.get("cpu") or {}
    cores = len((env.get("threads") or {}).get("cpu_affinity") or []) or cpu.get("logical_cores")
    warnings = []
    load = cpu.get("load_avg_1m")
    if load is not None and cores and load > 0.5 * cores:
        warnings.append(f"machine busy: 1-minute load average {load:.1f} on {cores} CPUs; latency will be noisy")
    too_many = sorted(t for t in set(threads) if cores and t > cores)
    if too_many:
        warnings.append(f"threads {too_many} exceed the {cores} CPUs available to this process; threads will time-share")
    governor = cpu.get("governor")
    if governor and governor != "performance":
        warnings.append(f"CPU frequency governor is {governor!r}; 'performance' gives steadier latency")
    return warnings

