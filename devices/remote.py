"""Devices that run ``runner.py``: push runner + models + inputs, run, pull ``result.json``, clean up.

Why a transport split: the SSH device, the arm64 emulation check and tests all do the same five
steps (make a working folder, push, run, fetch, remove); only *how* differs (``ssh`` to a board,
a local subprocess, ``qemu-aarch64`` over a Debian root file system). ``RunnerDevice`` owns the
steps and the guarantee that the working folder is removed whatever happens; a ``Transport`` owns
the mechanics.

Files on the device get fixed, harmless names (``model-0.tflite``, ``eval-0.npz``): a user's file
name, however odd, never reaches a remote command line.
"""

from __future__ import annotations

import abc
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from micronet.bench import report as rep
from micronet.errors import MicronetError

from . import runner
from .base import BenchJob, Device, DeviceCheck, DeviceRun, Progress, RunnerFailed
from .fingerprint import summary_line
from .target import DeviceSpec

RUNNER_PATH = Path(runner.__file__).resolve()
CORE_PATH = Path(runner.core.__file__).resolve()  # micronet/inference.py, which the runner imports
RUNNER_FILES = {"runner.py": RUNNER_PATH, runner.CORE_FILE: CORE_PATH}  # {name on the device: local file}
WORKDIR_PREFIX = "micronet-run."


class Transport(abc.ABC):
    """How to reach one runner device. Every method raises ``MicronetError`` (one line) on failure."""

    @abc.abstractmethod
    def make_workdir(self) -> str:
        """Create a fresh, private working folder on the device; its absolute path."""

    @abc.abstractmethod
    def push(self, files: dict[str, Path], workdir: str) -> None:
        """Copy local files into ``workdir`` under the given (fixed, safe) names."""

    @abc.abstractmethod
    def run_runner(self, workdir: str, timeout_s: float) -> subprocess.CompletedProcess:
        """Run ``runner.py request.json`` in ``workdir``; return the finished process (bytes output)."""

    @abc.abstractmethod
    def fetch(self, workdir: str, name: str) -> bytes:
        """The content of ``workdir/name`` on the device."""

    @abc.abstractmethod
    def remove_workdir(self, workdir: str) -> None:
        """Delete ``workdir`` and everything in it."""

    @abc.abstractmethod
    def probe(self) -> dict[str, Any]:
        """``runner.py --probe`` output: runtimes and environment; nothing is written on the device."""


def probe_source() -> bytes:
    """``runner.py --probe`` as one script for ``python3 -`` (nothing is written on the device): the core
    registered as the module ``micronet_inference`` from its source text, then the runner run as ``__main__``."""
    name = Path(runner.CORE_FILE).stem
    script = (
        "import sys, types\n"
        f"core = types.ModuleType({name!r})\n"
        f"core.__file__ = {runner.CORE_FILE!r}\n"
        f"sys.modules[{name!r}] = core\n"
        f"exec(compile({CORE_PATH.read_text(encoding='utf-8')!r}, {runner.CORE_FILE!r}, 'exec'), core.__dict__)\n"
        f"exec(compile({RUNNER_PATH.read_text(encoding='utf-8')!r}, 'runner.py', 'exec'), "
        "{'__name__': '__main__', '__file__': 'runner.py'})\n"
    )
    return script.encode("utf-8")


def check_workdir(path: str) -> str:
    """The folder we are about to delete must be one we made: absolute, ours by name, one line."""
    text = path.strip()
    if (not text.startswith("/") or "\n" in text or "\0" in text
            or not os.path.basename(text.rstrip("/")).startswith(WORKDIR_PREFIX)):
        raise MicronetError(f"the device returned an unexpected working folder {path!r}")
    return text


def _without_prefix(message: str, where: str) -> str:
    return message[len(where) + 2:] if message.startswith(f"{where}: ") else message


def runner_failure(proc: subprocess.CompletedProcess, device: str) -> RunnerFailed:
    """One line for a runner that exited non-zero: its own error line, or how it died."""
    stderr = proc.stderr.decode("utf-8", "replace") if isinstance(proc.stderr, bytes) else (proc.stderr or "")
    lines = stderr.splitlines()
    for line in reversed(lines):
        if line.startswith("micronet-runner: error: "):
            return RunnerFailed(f"{device}: {line[len('micronet-runner: error: '):]}")
    code = proc.returncode
    signum = -code if code < 0 else code - 128 if 128 < code < 160 else None
    # The most telling line: Python's fatal-error line (a crash in native code), else the last line that
    # is not ours (for a Python exception, the exception itself).
    fatal = [line.strip() for line in lines if line.startswith("Fatal Python error")]
    others = [line.strip() for line in lines if line.strip() and not line.startswith("micronet-runner:")]
    last = (fatal or others or ["no error output"])[-1]
    if signum is None and code == 255 and not fatal:
        return RunnerFailed(f"the benchmark runner died on {device} (ssh exit status 255: killed, or the "
                            f"connection dropped): {last}")
    if signum:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return RunnerFailed(f"the benchmark runner crashed on {device} ({name}): {last}")
    return RunnerFailed(f"the benchmark runner failed on {device} (exit status {code}): {last}")


class RunnerDevice(Device):
    """A device that runs ``runner.py`` through a ``Transport`` (SSH boards, emulation)."""

    def __init__(self, target: DeviceSpec, transport: Transport) -> None:
        super().__init__(target)
        self.transport = transport

    # -- check ----------------------------------------------------------------------------------

    def check(self) -> DeviceCheck:
        try:
            info = self.transport.probe()
        except MicronetError as exc:
            return DeviceCheck(self.name, self.target.text, False, problem=_without_prefix(str(exc), self.target.text))
        problem = None if info.get("numpy") else "numpy missing on the device (python3 -m pip install numpy)"
        if info.get("numpy") and not info.get("runtimes"):
            problem = "no runtime on the device (pip install ai-edge-litert, tflite-runtime or onnxruntime)"
        return DeviceCheck(self.name, self.target.text, True, dict(info.get("runtimes") or {}),
                           summary_line(info.get("environment") or {}), problem)

    # -- benchmark ------------------------------------------------------------------------------

    def request(self, job: BenchJob, names: list[str], manifests: list[str | None], evals: list[str | None]) -> dict:
        return {
            "runner_protocol": runner.PROTOCOL,
            "device": self.name,
            "models": [{"file": names[i], "manifest": manifests[i], "format": m.format, "row": m.row,
                        "eval": evals[i]} for i, m in enumerate(job.models)],
            "runtime": job.runtime, "threads": list(job.threads), "xnnpack": list(job.xnnpack),
            "warmup": job.warmup, "runs": job.runs, "min_seconds": job.min_seconds, "seed": job.seed,
            "cpu_mask": job.cpu_mask, "thermal": job.thermal.to_dict(), "eval_meta": job.eval_meta,
            "keep_outputs": job.keep_outputs,
        }

    def benchmark(self, job: BenchJob, progress: Progress | None = None) -> DeviceRun:
        say = progress or (lambda message: None)
        if job.data is not None:
            raise MicronetError("a remote device scores accuracy on pre-processed inputs: build them with "
                                "micronet.devices.evalset.build_eval_sets (run_on_device does this for data=)")
        with tempfile.TemporaryDirectory(prefix="micronet-stage-") as stage:
            files = self._stage(job, Path(stage))
            say(f"{self.name}: creating a working folder")
            workdir = self.transport.make_workdir()
            try:
                result, outputs = self._run(workdir, files, job, say)
            except BaseException:
                self._remove(workdir, quiet=True)
                raise
            self._remove(workdir, quiet=False)
        return self._device_run(result, outputs)

    def _stage(self, job: BenchJob, stage: Path) -> dict[str, Path]:
        """{name on the device: local file}: runner, models, manifests, eval inputs and the request."""
        files: dict[str, Path] = dict(RUNNER_FILES)
        names, manifests, evals = [], [], []
        eval_names: dict[Path, str] = {}
        for i, model in enumerate(job.models):
            name = f"model-{i}{model.path.suffix.lower()}"
            files[name] = model.path
            names.append(name)
            manifest_name = None
            if model.manifest is not None:
                manifest_name = f"{name}.json"
                (stage / manifest_name).write_text(json.dumps(model.manifest), encoding="utf-8")
                files[manifest_name] = stage / manifest_name
            manifests.append(manifest_name)
            if model.eval_file is not None and model.eval_file not in eval_names:
                eval_names[model.eval_file] = f"eval-{len(eval_names)}.npz"
                files[eval_names[model.eval_file]] = model.eval_file
            evals.append(eval_names.get(model.eval_file) if model.eval_file is not None else None)
        request = stage / "request.json"
        request.write_text(json.dumps(self.request(job, names, manifests, evals)), encoding="utf-8")
        files["request.json"] = request
        return files

    def _run(self, workdir: str, files: dict[str, Path], job: BenchJob, say: Progress) -> tuple[dict, dict]:
        size_mib = sum(p.stat().st_size for p in files.values()) / 2**20
        say(f"{self.name}: pushing {len(files)} files ({size_mib:.1f} MiB) to {workdir}")
        self.transport.push(files, workdir)
        say(f"{self.name}: running the benchmark")
        timeout = self.target.options.timeout_s
        try:
            proc = self.transport.run_runner(workdir, timeout)
        except subprocess.TimeoutExpired:
            raise RunnerFailed(f"the benchmark on {self.name} took longer than {timeout:g} s "
                               "(raise timeout_s for this device in devices.toml)") from None
        if proc.returncode != 0:
            raise runner_failure(proc, self.name)
        say(f"{self.name}: fetching results")
        try:
            result = json.loads(self.transport.fetch(workdir, runner.RESULT_FILE))
        except json.JSONDecodeError as exc:
            raise RunnerFailed(f"{self.name} wrote a corrupt {runner.RESULT_FILE}: {exc}") from None
        if result.get("runner_protocol") != runner.PROTOCOL:
            raise RunnerFailed(f"{self.name} answered with runner protocol {result.get('runner_protocol')!r}")
        outputs = {}
        for index, name in (result.get("outputs") or {}).items():
            outputs[int(index)] = np.load(io.BytesIO(self.transport.fetch(workdir, name)), allow_pickle=False)
        return result, outputs

    def _remove(self, workdir: str, quiet: bool) -> None:
        """Remove the working folder. ``quiet`` when another error is already on its way to the user:
        that one explains the failure; a second one-liner would hide it."""
        try:
            self.transport.remove_workdir(workdir)
        except MicronetError as exc:
            if not quiet:
                raise MicronetError(f"benchmark done but {workdir} could not be removed on {self.name}: {exc}") from None
            print(f"warning: {workdir} may remain on {self.name}: {exc}", file=sys.stderr)

    def _device_run(self, result: dict, outputs: dict) -> DeviceRun:
        rows = []
        for raw in result.get("results") or []:
            try:
                row = rep.make_row(**raw)
            except (TypeError, ValueError) as exc:
                raise RunnerFailed(f"{self.name} returned a malformed result row ({exc}): runner and host "
                                   "versions differ?") from None
            row["device"] = self.name
            row["settings"]["device"] = {"name": self.name, "kind": self.kind, "target": self.target.text}
            rows.append(row)
        env = dict(result.get("environment") or {})
        env["device"] = {"name": self.name, "kind": self.kind, "target": self.target.text}
        env["libraries"] = {**(env.get("libraries") or {}), "micronet": _micronet_version()}  # the runner's version
        return DeviceRun(self.name, rows, env, outputs)


def _micronet_version() -> str | None:
    import micronet

    return getattr(micronet, "__version__", None)


class ProcessTransport(Transport):
    """Run the runner in a local child process, under any interpreter command (``qemu-aarch64 ... python3``
    for the emulated board, the desktop's Python for the reference it is compared with)."""

    def __init__(self, interpreter: list[str], *, env: dict[str, str] | None = None,
                 base_dir: str | os.PathLike | None = None) -> None:
        self.interpreter = list(interpreter)
        self.env = env
        self.base_dir = base_dir

    def make_workdir(self) -> str:
        return tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=self.base_dir)

    def push(self, files: dict[str, Path], workdir: str) -> None:
        for name, source in files.items():
            shutil.copyfile(source, os.path.join(workdir, name))

    def run_runner(self, workdir: str, timeout_s: float) -> subprocess.CompletedProcess:
        argv = [*self.interpreter, os.path.join(workdir, "runner.py"), os.path.join(workdir, "request.json")]
        return self._run(argv, None, timeout_s)

    def fetch(self, workdir: str, name: str) -> bytes:
        try:
            return Path(workdir, name).read_bytes()
        except OSError as exc:
            raise RunnerFailed(f"cannot read {name} from the run: {exc.strerror}") from None

    def remove_workdir(self, workdir: str) -> None:
        try:
            shutil.rmtree(check_workdir(workdir))
        except OSError as exc:
            raise MicronetError(f"cannot remove {workdir}: {exc.strerror}") from None

    def probe(self) -> dict[str, Any]:
        proc = self._run([*self.interpreter, "-", "--probe"], probe_source(), 300)
        if proc.returncode != 0:
            raise runner_failure(proc, "the interpreter")
        return json.loads(proc.stdout)

    def _run(self, argv: list[str], stdin: bytes | None, timeout_s: float) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout_s, env=self.env)
        except FileNotFoundError:
            raise MicronetError(f"cannot run {argv[0]}: not found") from None
