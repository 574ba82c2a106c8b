"""An arm64 Debian root file system run under qemu user-mode emulation: the Raspberry Pi's software path
(aarch64 Python, aarch64 numpy, the aarch64 LiteRT interpreter and its ARM kernels) checked on an x86 machine.

Why: the Pi's numbers can only come from a Pi, but whether *our runner* produces the same outputs
with the ARM builds of numpy and LiteRT can be checked anywhere. Latency under emulation is
meaningless (every instruction is translated), so an emulated row never carries timings: they are
removed and a note says why, so no table can show them as a Pi figure.

How it is built (``build_rootfs``), without touching the host's kernel settings: no binfmt_misc
handler is registered (that is machine-wide and often not allowed in containers), so debootstrap's
second stage, which would execute arm64 programs, cannot run. Instead:

1. ``debootstrap --foreign --arch=arm64 --variant=minbase --include=python3`` resolves and downloads
   the GPG-checked Debian packages (and unpacks the essential ones);
2. every downloaded package is unpacked with the host's ``dpkg-deb -x`` (no maintainer scripts are
   needed to run Python);
3. aarch64 wheels of numpy and ai-edge-litert are installed from PyPI with the host's pip
   (``--platform manylinux_2_17_aarch64 --only-binary=:all:``) into ``/opt/micronet-site``;
4. a smoke test imports them under ``qemu-aarch64-static -cpu cortex-a72 -L ROOT`` (``-L`` sends the
   emulated program's absolute-path file lookups to ROOT first: its loader, libc, libpython).

The emulated CPU is always named (``PI_CPUS``: the Pi 4's Cortex-A72 by default, the Pi 5's Cortex-A76),
never qemu's default ``-cpu max``: that one advertises every extension qemu can emulate (SVE, SME, ...), which
no Pi has, and XNNPACK picks its kernels from the CPU's features, so under ``max`` LiteRT ran kernels a Pi
never runs and gave wrong outputs for the dynamic-range file. The run's environment records the choice.

The result is cached (``$MICRONET_ARM64_ROOTFS``, else ``arm64-rootfs`` in micronet's cache folder:
``$MICRONET_CACHE``, ``$XDG_CACHE_HOME/micronet`` or ``~/.cache/micronet``, see ``bench.cache.cache_root``) and
built in ``<path>.partial`` first, so a half-built tree never looks finished. Needs root (debootstrap
creates device nodes and owned files), the Debian mirror and PyPI.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from micronet.errors import MicronetError

from .base import DeviceRun, Progress
from .remote import ProcessTransport, RunnerDevice
from .target import DeviceSpec

SUITE = "bookworm"  # Raspberry Pi OS 12 is Debian bookworm: the same Python 3.11 and glibc 2.36
MIRROR = "http://deb.debian.org/debian"
WHEELS = ("numpy==1.26.4", "ai-edge-litert==2.1.0")  # the desktop's pins, as aarch64 builds
QEMU = "qemu-aarch64-static"
SITE = "opt/micronet-site"
STAMP = "micronet-rootfs.json"
DEVICE_NAME = "qemu-arm64 (emulated)"
EMULATION_NOTE = ("emulated arm64 (qemu user mode): timings removed, they are not Raspberry Pi figures; "
                  "outputs and accuracy are the aarch64 builds' own")
#: The board each emulated run stands for → qemu's ``-cpu`` model (the board's cores).
PI_CPUS = {"pi4": "cortex-a72", "pi5": "cortex-a76"}
DEFAULT_PI = "pi4"
_WHEEL_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_27_aarch64",
                    "manylinux_2_28_aarch64")


def default_rootfs() -> Path:
    """Where the root file system is built and looked for: one cache folder for everything micronet
    caches, so that ``MICRONET_CACHE`` (which the test suite points at a temporary folder) moves it too."""
    from micronet.bench.cache import cache_root

    if os.environ.get("MICRONET_ARM64_ROOTFS"):
        return Path(os.environ["MICRONET_ARM64_ROOTFS"]).expanduser()
    return cache_root() / "arm64-rootfs"


def missing_tools() -> list[str]:
    """Host programs the emulation needs and does not find, with the Debian package that has them."""
    wanted = {"debootstrap": "debootstrap", QEMU: "qemu-user-static", "dpkg-deb": "dpkg"}
    return [f"{tool} (apt-get install {package})" for tool, package in wanted.items() if shutil.which(tool) is None]


def read_stamp(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def rootfs_ready(root: Path, wheels: tuple[str, ...] = WHEELS) -> bool:
    """Built completely, with the wheels asked for now (a changed pin means a rebuild)."""
    stamp = read_stamp(root)
    return bool(stamp) and stamp.get("wheels") == list(wheels) and (root / "usr" / "bin" / "python3").exists()


def _run(argv: list[str], what: str, timeout_s: float, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        tail = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()][-1:] or ["no output"]
        raise MicronetError(f"{what} failed (exit status {proc.returncode}): {tail[0]}")


def _python_version(root: Path) -> str:
    """"3.11" from the root file system's ``python3`` symlink, for pip's ``--python-version``."""
    target = os.readlink(root / "usr" / "bin" / "python3")
    version = target.removeprefix("python")
    if not version.replace(".", "").isdigit():
        raise MicronetError(f"cannot tell the Python version of the arm64 root file system ({target})")
    return version


def build_rootfs(root: Path | None = None, *, suite: str = SUITE, mirror: str = MIRROR,
                 wheels: tuple[str, ...] = WHEELS, progress: Progress | None = None) -> dict[str, Any]:
    """Build the arm64 root file system at ``root`` (see the module docstring); return its stamp."""
    say = progress or (lambda message: None)
    root = Path(root or default_rootfs())
    missing = missing_tools()
    if missing:
        raise MicronetError(f"the arm64 emulation needs {', '.join(missing)}")
    if os.geteuid() != 0:
        raise MicronetError("building the arm64 root file system needs root (debootstrap creates device nodes)")
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    say(f"debootstrap --foreign arm64 {suite} into {partial}")
    _run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", "--include=python3", suite,
          str(partial), mirror], "debootstrap", 1800)
    timings["debootstrap_s"] = time.perf_counter() - start

    start = time.perf_counter()
    archives = partial / "var" / "cache" / "apt" / "archives"
    debs = sorted(archives.glob("*.deb"))
    say(f"unpacking {len(debs)} packages")
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(partial)], f"dpkg-deb -x {deb.name}", 300)
        deb.unlink()
    timings["unpack_s"] = time.perf_counter() - start

    start = time.perf_counter()
    version = _python_version(partial)
    say(f"pip: aarch64 wheels for Python {version}: {' '.join(wheels)}")
    platforms = [arg for p in _WHEEL_PLATFORMS for arg in ("--platform", p)]
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-warn-conflicts",
          "--target", str(partial / SITE), "--only-binary=:all:", *platforms, "--python-version", version,
          "--implementation", "cp", "--abi", f"cp{version.replace('.', '')}", *wheels], "pip install (aarch64)", 1800)
    timings["pip_s"] = time.perf_counter() - start

    start = time.perf_counter()
    say("smoke test under qemu")
    argv, env = emulated_python(partial)
    _run([*argv, "-c", "import numpy, ai_edge_litert.interpreter, platform; assert platform.machine() == 'aarch64'"],
         "importing numpy and ai_edge_litert under qemu", 600, env)
    timings["smoke_s"] = time.perf_counter() - start

    stamp = {"suite": suite, "arch": "arm64", "python": version, "wheels": list(wheels), "mirror": mirror,
             "built_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "timings_s": timings}
    (partial / STAMP).write_text(json.dumps(stamp, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    os.replace(partial, root)
    return stamp


def ensure_rootfs(root: Path | None = None, progress: Progress | None = None) -> tuple[Path, dict[str, Any], bool]:
    """(root, stamp, built now?): the cached tree when complete, else a fresh build."""
    root = Path(root or default_rootfs())
    if rootfs_ready(root):
        return root, read_stamp(root) or {}, False
    return root, build_rootfs(root, progress=progress), True


def qemu_cpu(pi: str) -> str:
    """qemu's ``-cpu`` model for the board ``pi`` (a key of ``PI_CPUS``); anything else is one clear error."""
    try:
        return PI_CPUS[pi]
    except KeyError:
        raise MicronetError(f"unknown board {pi!r} for the arm64 emulation: choose one of "
                            f"{', '.join(PI_CPUS)}") from None


def emulated_python(root: Path, pi: str = DEFAULT_PI) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run the root file system's Python 3 under qemu, emulating the
    cores of the board ``pi`` (``PI_CPUS``)."""
    cpu = qemu_cpu(pi)
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise MicronetError(f"{QEMU} not found (apt-get install qemu-user-static)")
    python = root / "usr" / "bin" / "python3"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root / SITE), "PYTHONNOUSERSITE": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/tmp"),
           "MICRONET_RUNNER_QUIET": "1"}
    return [qemu, "-cpu", cpu, "-L", str(root), str(python)], env


class HostRunnerDevice(RunnerDevice):
    """The same runner in a child process under this machine's Python: the x86 reference that the
    emulated arm64 outputs are compared with (same code path, only the CPU architecture differs)."""

    kind = "process"

    def __init__(self, python: str = sys.executable) -> None:
        super().__init__(DeviceSpec("process", f"process:{python}", f"runner on {platform.machine()}"),
                         ProcessTransport([python], env={**os.environ, "MICRONET_RUNNER_QUIET": "1"}))


class EmulatedDevice(RunnerDevice):
    """The runner inside the arm64 root file system, on the cores of the board ``pi`` (``PI_CPUS``). Rows keep
    outputs and accuracy, never timings."""

    kind = "emulated"

    def __init__(self, root: Path, pi: str = DEFAULT_PI) -> None:
        argv, env = emulated_python(root, pi)
        self.pi = pi
        super().__init__(DeviceSpec("emulated", f"qemu-arm64:{root}", DEVICE_NAME), ProcessTransport(argv, env=env))

    def _device_run(self, result: dict, outputs: dict) -> DeviceRun:
        run = super()._device_run(result, outputs)
        for row in run.rows:
            row.update(init_ms=None, first_ms=None, latency=None)
            row["notes"] = [EMULATION_NOTE, *row["notes"]]
        run.environment["emulated"] = {"qemu": QEMU, "board": self.pi, "cpu": PI_CPUS[self.pi],
                                       "note": EMULATION_NOTE}
        return run
