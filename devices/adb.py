"""Android phones over ``adb``: push the ``.tflite`` and LiteRT's ``benchmark_model``, run, parse, clean up.

Why ``benchmark_model`` and not the Python runner: phones have no Python; ``benchmark_model`` is the
LiteRT team's own measurement tool and runs the same interpreter and XNNPACK delegate an app does. It
cannot be fetched at run time (no network assumptions, and it must match the phone's ABI), so its
path comes from the inventory (``benchmark_binary``) or ``--benchmark-binary``; the README says where
to get it. Its ELF header is checked against the phone's ABI list before anything is pushed.

Everything lives in a fresh ``/data/local/tmp/micronet-run.XXXXXXXX`` (``workdir`` in the inventory
changes the base) that is removed afterwards, also on failure. ``adb shell`` hands its command to the
phone's shell, so every device-side command is built with ``shlex.join`` from fixed words and quoted
values; the ``cpu_mask`` was validated as hex in ``target.py``.

Failures that each get one line: adb not installed, no device, several devices and no serial, the
serial not connected, an unauthorized or offline device, no ``benchmark_model`` given, a binary for
the wrong ABI, ``benchmark_model`` failing on the phone.
"""

from __future__ import annotations

import hashlib
import secrets
import shlex
import subprocess
from pathlib import Path
from typing import Any

from micronet.errors import MicronetError

from . import benchmark_model as bm
from .base import AuthError, BenchJob, Device, DeviceCheck, DeviceError, DeviceRun, Progress, UnreachableError
from .fingerprint import android_environment, android_problems, parse_getprop, parse_thermal, summary_line
from .remote import WORKDIR_PREFIX

DEFAULT_BASE = "/data/local/tmp"
RUNTIME = "benchmark_model"
_ELF_ABI = {183: "arm64-v8a", 40: "armeabi-v7a", 62: "x86_64", 3: "x86"}
README_SECTION = "Android phones over adb"  # a heading of README.md (tests/test_devices_adb.py checks it exists)
HOW_TO_GET = f"see the README, section '{README_SECTION}', for where to get benchmark_model"


def binary_abi(path: Path) -> str | None:
    """The Android ABI an ELF executable is built for; None for a script (``#!``), which runs anywhere."""
    try:
        with path.open("rb") as f:
            head = f.read(20)
    except OSError as exc:
        raise MicronetError(f"cannot read benchmark_model {path}: {exc.strerror}") from None
    if head.startswith(b"#!"):
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise MicronetError(f"{path} is not an executable (no ELF header); {HOW_TO_GET}")
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return _ELF_ABI.get(machine, f"ELF machine {machine}")


def parse_devices(text: str) -> list[tuple[str, str]]:
    """``adb devices`` → [(serial, state)]; state is "device", "unauthorized", "offline", "no permissions"..."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(("List of devices", "*")):
            continue
        serial, _, rest = line.strip().replace("\t", " ").partition(" ")
        rest = rest.strip()
        # "device", "unauthorized", "offline"; "no permissions (...)" is two words; `devices -l` adds key:value pairs
        state = "no permissions" if rest.startswith("no permissions") else (rest.split() or ["unknown"])[0]
        out.append((serial, state))
    return out


def binary_digest(binary: Path) -> str:
    """SHA-256 (hex) of the benchmark_model binary pushed to the phone: what names the runtime in a row, a
    device check and a tuning record's fingerprint."""
    return hashlib.sha256(Path(binary).read_bytes()).hexdigest()


class AdbDevice(Device):
    kind = "adb"

    def __init__(self, target) -> None:
        super().__init__(target)
        self.adb = target.options.adb

    # -- adb calls ----------------------------------------------------------------------------------

    def _adb(self, args: list[str], *, serial: str | None = None, timeout_s: float = 120,
             check: bool = True) -> subprocess.CompletedProcess:
        argv = [self.adb, *(["-s", serial] if serial else []), *args]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
        except FileNotFoundError:
            raise MicronetError(f"adb not found ({self.adb!r}): install Android platform-tools (Debian/Ubuntu: "
                                "apt-get install adb) or set adb = \"/path/to/adb\" in devices.toml") from None
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.name}: adb {args[0]} did not finish within {timeout_s:g} s") from None
        if check and proc.returncode != 0:
            last = bm.error_line(proc.stderr + "\n" + proc.stdout)
            raise DeviceError(f"{self.name}: adb {args[0]} failed: {last.removeprefix('adb: ')}")
        return proc

    def shell(self, serial: str, argv: list[str], *, timeout_s: float = 120, check: bool = True
              ) -> subprocess.CompletedProcess:
        """Run ``argv`` on the phone; the phone's shell receives it quoted word by word."""
        return self._adb(["shell", shlex.join(argv)], serial=serial, timeout_s=timeout_s, check=check)

    def resolve_serial(self) -> str:
        """The serial of the one ready device this target means, or a one-line reason why there is none."""
        listed = parse_devices(self._adb(["devices"]).stdout)
        wanted = self.target.serial
        if wanted is not None:
            match = [state for serial, state in listed if serial == wanted]
            if not match:
                seen = ", ".join(s for s, _ in listed) or "none"
                raise UnreachableError(f"{self.name}: unreachable: Android device {wanted} is not connected (adb devices lists: {seen})")
            return self._ready(wanted, match[0])
        if not listed:
            raise UnreachableError(f"{self.name}: unreachable: no Android device connected (adb devices lists none): plug one in "
                                   "with USB debugging enabled")
        if len(listed) > 1:
            raise MicronetError(f"{self.name}: several Android devices connected ({', '.join(s for s, _ in listed)}): "
                                "choose one with adb:SERIAL")
        return self._ready(*listed[0])

    def _ready(self, serial: str, state: str) -> str:
        if state == "device":
            return serial
        if state == "unauthorized":
            raise AuthError(f"{self.name}: device {serial} is unauthorized: unlock the phone and accept the "
                            "'Allow USB debugging?' prompt, then retry")
        if state == "offline":
            raise UnreachableError(f"{self.name}: unreachable: device {serial} is offline: reconnect the cable or run adb kill-server")
        if state.startswith("no permissions"):
            raise AuthError(f"{self.name}: no permission to talk to device {serial}: add a udev rule for it "
                            "(Debian: apt-get install android-sdk-platform-tools-common) and replug")
        raise UnreachableError(f"{self.name}: unreachable: device {serial} is not ready (state: {state})")

    # -- fingerprint --------------------------------------------------------------------------------

    def thermal(self, serial: str) -> dict[str, Any]:
        proc = self.shell(serial, ["dumpsys", "thermalservice"], timeout_s=30, check=False)
        if proc.returncode != 0:
            return {"status": None, "status_name": None, "cpu_temperature_c": None, "skin_temperature_c": None}
        return parse_thermal(proc.stdout)

    def _cores(self, serial: str) -> int | None:
        text = self.shell(serial, ["cat", "/sys/devices/system/cpu/possible"], timeout_s=30, check=False).stdout.strip()
        try:
            lo, _, hi = text.partition("-")
            return int(hi) - int(lo) + 1 if hi else 1
        except ValueError:
            return None

    def environment(self, serial: str, binary: dict[str, Any] | None = None) -> dict[str, Any]:
        props = parse_getprop(self.shell(serial, ["getprop"], timeout_s=30).stdout)
        return android_environment(props, serial=serial, cores=self._cores(serial), thermal=self.thermal(serial),
                                   binary=binary)

    # -- check ----------------------------------------------------------------------------------------

    def _binary(self, job_binary: Path | None) -> Path:
        path = job_binary or self.target.options.benchmark_binary
        if path is None:
            raise MicronetError(f"{self.name}: no benchmark_model binary: give --benchmark-binary or set "
                                f"benchmark_binary in devices.toml ({HOW_TO_GET})")
        path = Path(path).expanduser()
        if not path.is_file():
            raise MicronetError(f"benchmark_model binary not found: {path} ({HOW_TO_GET})")
        return path

    def _check_abi(self, binary: Path, env: dict[str, Any]) -> str | None:
        abi = binary_abi(binary)
        board = env.get("board") or {}
        supported = [a for a in (board.get("abilist") or board.get("abi") or "").split(",") if a]
        if abi is not None and supported and abi not in supported:
            raise MicronetError(f"{binary} is built for {abi} but {self.name} runs {', '.join(supported)}: use the "
                                f"benchmark_model for {supported[0]} ({HOW_TO_GET})")
        return abi

    def check(self) -> DeviceCheck:
        try:
            serial = self.resolve_serial()
            env = self.environment(serial)
        except MicronetError as exc:
            return DeviceCheck(self.name, self.target.text, False,
                               problem=str(exc).removeprefix(f"{self.name}: ").removeprefix(f"{self.target.text}: "))
        runtimes: dict[str, str] = {}
        problem = None
        try:
            binary = self._binary(None)
            abi = self._check_abi(binary, env)
            # The binary identifies the runtime: benchmark_model prints no version, so its ABI and digest do
            # (a tuning record made with another build of the tool is refused by it).
            runtimes[RUNTIME] = f"{abi or 'script'} sha256:{binary_digest(binary)[:16]}"  # a script: any ABI
        except MicronetError as exc:
            problem = str(exc)
        return DeviceCheck(self.name, self.target.text, True, runtimes, summary_line(env), problem)

    # -- benchmark ------------------------------------------------------------------------------------

    def benchmark(self, job: BenchJob, progress: Progress | None = None) -> DeviceRun:
        say = progress or (lambda message: None)
        for model in job.models:
            if model.format != "tflite":
                raise MicronetError(f"Android runs .tflite models (benchmark_model); {model.path.name} is {model.format}")
        if job.runtime not in (None, RUNTIME, "litert", "tflite-runtime", "tf-lite"):
            raise MicronetError(f"{self.name} runs TFLite models with benchmark_model, not {job.runtime}")
        binary = self._binary(job.benchmark_binary)
        serial = self.resolve_serial()
        binary_info = {"name": binary.name, "sha256": binary_digest(binary), "path": str(binary)}
        env = self.environment(serial, binary_info)
        binary_info["abi"] = self._check_abi(binary, env)
        base = (self.target.options.workdir or DEFAULT_BASE).rstrip("/") or "/"
        workdir = f"{base}/{WORKDIR_PREFIX}{secrets.token_hex(4)}"
        say(f"{self.name}: creating {workdir}")
        self.shell(serial, ["mkdir", "-p", workdir])
        try:
            rows = self._run(serial, workdir, binary, binary_info, job, env, say)
        except BaseException:
            self._remove(serial, workdir, quiet=True)
            raise
        self._remove(serial, workdir, quiet=False)
        env["device"] = {"name": self.name, "kind": self.kind, "target": self.target.text}
        return DeviceRun(self.name, rows, env)

    def _remove(self, serial: str, workdir: str, quiet: bool) -> None:
        try:
            self.shell(serial, ["rm", "-rf", workdir], timeout_s=60)
        except MicronetError as exc:
            if not quiet:
                raise MicronetError(f"benchmark done but {workdir} could not be removed on {self.name}: {exc}") from None

    def _push(self, serial: str, local: Path, remote: str) -> None:
        self._adb(["push", str(local), remote], serial=serial, timeout_s=600)

    def _run(self, serial: str, workdir: str, binary: Path, binary_info: dict[str, Any], job: BenchJob,
             env: dict[str, Any], say: Progress) -> list[dict[str, Any]]:
        from micronet.bench import report as rep

        remote_binary = f"{workdir}/benchmark_model"
        say(f"{self.name}: pushing benchmark_model and {len(job.models)} model(s)")
        self._push(serial, binary, remote_binary)
        self.shell(serial, ["chmod", "755", remote_binary])
        cpu_mask = job.cpu_mask or self.target.options.cpu_mask
        runs = job.runs if job.runs is not None else 50  # benchmark_model's own default count
        rows = []
        for i, model in enumerate(job.models):
            if i > 0 and job.thermal.cooldown_s:
                say(f"{self.name}: cooldown {job.thermal.cooldown_s:g} s")
                self._sleep(job.thermal.cooldown_s)
            graph = f"{workdir}/model-{i}.tflite"
            self._push(serial, model.path, graph)
            for xnn in job.xnnpack:
                for threads in job.threads:
                    argv = bm.build_command(remote_binary, graph, threads=threads, warmup=job.warmup, runs=runs,
                                            min_seconds=job.min_seconds, xnnpack=xnn, cpu_mask=cpu_mask)
                    fields = self._measure(serial, argv, job, runs, say, f"{model.row['name']} · {threads} thread{'s' if threads > 1 else ''}")
                    settings = {"runtime": RUNTIME, "binary": binary_info, "threads": threads, "xnnpack": xnn,
                                "cpu_mask": cpu_mask, "command": argv, "thermal": fields.pop("thermal"),
                                "device": {"name": self.name, "kind": self.kind, "target": self.target.text}}
                    if "thermal_attempts" in fields:
                        settings["thermal_attempts"] = fields.pop("thermal_attempts")
                    notes = fields.pop("notes")
                    if job.eval_meta is not None:
                        notes.append("accuracy not measured on Android: benchmark_model feeds random inputs")
                    manifest_input = (model.manifest or {}).get("input")
                    rows.append(rep.make_row(
                        **model.row, runtime=RUNTIME, runtime_version=f"sha256:{binary_info['sha256'][:12]}",
                        threads=threads, xnnpack=xnn, device=self.name, settings=settings, notes=notes,
                        input={k: manifest_input.get(k) for k in ("name", "shape", "dtype", "layout", "quantization")}
                        if manifest_input else None, **fields))
        return rows

    def _measure(self, serial: str, argv: list[str], job: BenchJob, runs: int, say: Progress, what: str
                 ) -> dict[str, Any]:
        attempts: list[dict[str, Any]] = []
        while True:
            say(f"{self.name}: benchmark_model {what}")
            before = self.thermal(serial)
            proc = self.shell(serial, argv, timeout_s=self.target.options.timeout_s, check=False)
            after = self.thermal(serial)
            output = proc.stdout + "\n" + proc.stderr
            try:
                result = bm.parse_output(output)
                fields: dict[str, Any] = bm.row_fields(result, warmup=job.warmup, runs=runs,
                                                       min_seconds=job.min_seconds)
                fields["xnnpack_applied"] = True if result.xnnpack_nodes else (False if "--use_xnnpack=false" in argv
                                                                                 else None)
                error = None
            except MicronetError as exc:
                fields, error = {}, str(exc)
            problems = [] if error else android_problems(before, after)
            hot = after.get("cpu_temperature_c")
            if not error and job.thermal.max_temp_c is not None and hot is not None and hot > job.thermal.max_temp_c:
                problems.append(f"CPU at {hot:.1f} °C after the run, above max_temp_c {job.thermal.max_temp_c:g} °C")
            attempts.append({"before": before, "after": after, "problems": problems})
            if problems and len(attempts) <= job.thermal.retry_throttled:
                say(f"{self.name}: throttled ({problems[0]}): waiting to cool down")
                attempts[-1]["cooled_s"] = self._wait_cool(serial, job)
                continue
            break
        fields["thermal"] = attempts[-1]
        if len(attempts) > 1:
            fields["thermal_attempts"] = attempts
        fields["notes"] = [f"measured {len(attempts)} times: earlier attempts throttled"] if len(attempts) > 1 else []
        if error:
            fields.update(invalid=True, invalid_reason=error)
        elif problems:
            fields.update(invalid=True, invalid_reason=problems[0])
        return fields

    def _wait_cool(self, serial: str, job: BenchJob) -> float:
        """Poll the thermal status every 5 s until it is back to none (and below ``cool_to_c``) or time is up."""
        import time

        start = time.monotonic()
        while time.monotonic() - start < job.thermal.cool_timeout_s:
            state = self.thermal(serial)
            hot = job.thermal.cool_to_c is not None and (state.get("cpu_temperature_c") or 0) > job.thermal.cool_to_c
            if not (state.get("status") or 0) and not hot:
                break
            self._sleep(5.0)
        return time.monotonic() - start

    @staticmethod
    def _sleep(seconds: float) -> None:
        import time

        time.sleep(seconds)
