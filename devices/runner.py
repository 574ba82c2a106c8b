#!/usr/bin/env python3
"""micronet's on-device benchmark runner: pushed to a Raspberry Pi (or any Linux board), run there, and
its ``result.json`` pulled back.

Why a separate file: the device has no micronet, no torch, no image library, often an older Python
(3.8+). So this file imports only the standard library, numpy, whichever TFLite/ONNX runtime the
device has, and the portable inference core ``micronet/inference.py``, pushed beside it as
``micronet_inference.py`` (on the host it is imported from the package). The core is what the desktop
harness uses too: the same runtime sessions, input preparation, latency loop (first inference timed
on its own, warm-up, then ``run`` timed alone with the garbage collector paused, sample std,
linear-interpolated percentiles) and row fields, so that a Pi row and a desktop row in one table
measure the same thing. This file adds what only a board needs: the request, its fingerprint and the
thermal guard. Rows follow the report schema v1 field for field; the host re-checks them with
``make_row``.

Usage (the host does this)::

    python3 runner.py request.json     # writes result.json (+ outputs-N.npy) beside request.json
    python3 runner.py --supervise request.json   # the same in a child; reports a crash by signal
    python3 - --probe < bundle         # prints {"runtimes": ..., "environment": ...}; touches nothing
                                       # (bundle: the core registered as a module, then this file;
                                       # see ``micronet.devices.remote.probe_source``)

Device fingerprint and thermal guard: board model (``/proc/device-tree/model``), CPU, cores,
governor and frequency, SoC temperature (°C) and, on a Raspberry Pi, ``vcgencmd get_throttled``
before and after every measurement. A measurement during which the board throttled (or that ended
above ``max_temp_c``) is marked invalid; with ``retry_throttled`` the runner waits for the board to
cool and measures again.

Exit status: 0 with ``result.json`` written; 3 with one line ``micronet-runner: error: ...`` on stderr
for a request that cannot run at all (no numpy, runtime not installed, bad CPU mask).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone

try:
    import micronet_inference as core  # on a board: the core file pushed beside this one
except ImportError:
    try:
        from micronet import inference as core  # on the host, inside the package
    except ImportError:
        sys.stderr.write("micronet-runner: error: micronet_inference.py must sit beside runner.py\n")
        sys.exit(3)

CORE_FILE = "micronet_inference.py"  # the name the core has beside the runner on a device
PROTOCOL = 1
EXIT_FATAL = 3
RESULT_FILE = "result.json"

ROW_FIELDS = core.ROW_FIELDS
LIBRARIES = tuple(dict.fromkeys(info.distribution for info in core.RUNTIMES.values())) + ("numpy",)

# Raspberry Pi firmware throttle bits (vcgencmd get_throttled): 0-3 now, 16-19 "since boot".
THROTTLE_BITS = {
    0: "under-voltage", 1: "arm frequency capped", 2: "throttled", 3: "soft temperature limit",
}
_NOW_MASK = 0xF
_THERMAL_ZONES = ("cpu-thermal", "cpu_thermal", "soc_thermal", "soc-thermal", "x86_pkg_temp", "cpu0-thermal",
                  "CPU-therm", "cpu")
# ARM "CPU part" ids from /proc/cpuinfo, for boards whose kernel gives no model name.
_ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd44": "Cortex-X1",
    "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd48": "Cortex-X2", "0xd4d": "Cortex-A715",
    "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xb76": "ARM1176", "0xc07": "Cortex-A7",
}


class RunnerError(Exception):
    """A request that cannot run at all: one line for the user, exit status 3."""


# ================================================================================= fingerprint


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace").replace("\x00", "").strip()
        return text or None
    except OSError:
        return None


def _khz_to_mhz(text: str | None) -> float | None:
    try:
        return int(text) / 1000.0 if text is not None else None
    except ValueError:
        return None


def cpu_model() -> str | None:
    info = _read("/proc/cpuinfo") or ""
    found, part = None, None
    for line in info.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "cpu model") and not found:
            found = value
        elif key == "CPU part" and not part:
            part = value.lower()
    if found:
        return found
    if part:
        return _ARM_PARTS.get(part, f"ARM CPU part {part}")
    return platform.processor() or None


def _online_cores() -> int | None:
    text = _read("/sys/devices/system/cpu/online")
    if not text:
        return os.cpu_count()
    count = 0
    for chunk in text.split(","):
        lo, _, hi = chunk.partition("-")
        try:
            count += (int(hi) - int(lo) + 1) if hi else 1
        except ValueError:
            return os.cpu_count()
    return count


def temperature_c(root: str = "/sys/class/thermal") -> float | None:
    """SoC temperature in °C: the CPU thermal zone if one is named so, else zone 0."""
    try:
        zones = sorted(name for name in os.listdir(root) if name.startswith("thermal_zone"))
    except OSError:
        return None
    readings = {}
    for zone in zones:
        kind = _read(os.path.join(root, zone, "type")) or ""
        value = _read(os.path.join(root, zone, "temp"))
        try:
            readings[kind] = int(value) / 1000.0 if value is not None else None
        except ValueError:
            continue
        if kind in _THERMAL_ZONES and readings[kind] is not None:
            return readings[kind]
    values = [v for v in readings.values() if v is not None]
    return values[0] if values else None


def throttled() -> int | None:
    """The Raspberry Pi firmware's throttle word (``vcgencmd get_throttled``), None off a Pi."""
    exe = shutil.which("vcgencmd")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "get_throttled"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    _, _, value = out.strip().partition("=")
    try:
        return int(value, 16)
    except ValueError:
        return None


def throttle_flags(value: int | None) -> list[str]:
    """Human names of the bits set in a throttle word: "throttled", "soft temperature limit (since boot)", ..."""
    if value is None:
        return []
    names = [name for bit, name in THROTTLE_BITS.items() if value & (1 << bit)]
    names += [f"{name} (since boot)" for bit, name in THROTTLE_BITS.items() if value & (1 << (bit + 16))]
    return names


def thermal_state() -> dict:
    return {"temperature_c": temperature_c(), "throttled": throttled()}


def thermal_problems(before: dict, after: dict, max_temp_c: float | None) -> list[str]:
    """Why a measurement between two thermal readings cannot be trusted (empty list: it can).

    Throttling "now" bits at either end, or a "since boot" bit that appeared during the run (they
    are sticky, so one already set before says nothing about this run), or the end temperature above
    ``max_temp_c``.
    """
    problems = []
    b, a = before.get("throttled"), after.get("throttled")
    if a is not None:
        now = (a | (b or 0)) & _NOW_MASK
        new_sticky = (a >> 16) & ~((b or 0) >> 16) & _NOW_MASK
        bits = now | new_sticky
        if bits:
            names = [name for bit, name in THROTTLE_BITS.items() if bits & (1 << bit)]
            problems.append(f"board throttled during the run ({', '.join(names)}; vcgencmd get_throttled "
                            f"0x{b or 0:x} -> 0x{a:x})")
    t = after.get("temperature_c")
    if max_temp_c is not None and t is not None and t > max_temp_c:
        problems.append(f"SoC at {t:.1f} °C after the run, above max_temp_c {max_temp_c:g} °C")
    return problems


def library_versions() -> dict:
    return {name: core.distribution_version(name) for name in LIBRARIES}


def environment(threads: list | None = None) -> dict:
    """The report's ``environment`` object (``micronet.bench.environment`` shape) plus ``board``."""
    uname = platform.uname()
    cpufreq = "/sys/devices/system/cpu/cpu0/cpufreq/"
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    meminfo = _read("/proc/meminfo") or ""
    mem_kib = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:")), None)
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    state = thermal_state()
    return {
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "os": {"system": uname.system, "release": uname.release, "version": uname.version,
               "machine": uname.machine, "platform": platform.platform()},
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "cpu": {
            "model": cpu_model(), "arch": uname.machine or None, "logical_cores": _online_cores(),
            "physical_cores": None,
            "governor": _read(cpufreq + "scaling_governor"),
            "cur_mhz": _khz_to_mhz(_read(cpufreq + "scaling_cur_freq")),
            "min_mhz": _khz_to_mhz(_read(cpufreq + "scaling_min_freq")),
            "max_mhz": _khz_to_mhz(_read(cpufreq + "scaling_max_freq")),
            "load_avg_1m": load[0] if load else None, "load_avg_5m": load[1] if load else None,
            "load_avg_15m": load[2] if load else None,
        },
        "memory_total_mib": mem_kib / 1024.0 if mem_kib else None,
        "libraries": library_versions(),
        "micronet_git": None,
        "threads": {"requested": threads, "env": {k: os.environ.get(k) for k in (
            "OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")}, "cpu_affinity": affinity},
        "board": {
            "model": _read("/proc/device-tree/model"),
            "temperature_c": state["temperature_c"],
            "throttled": None if state["throttled"] is None else f"0x{state['throttled']:x}",
            "throttle_flags": throttle_flags(state["throttled"]),
        },
    }


def available_runtimes() -> dict:
    """{runtime name: version or "unknown"} of the runtimes installed on this device (nothing imported)."""
    versions = library_versions()
    return {name: versions.get(info.distribution) or "unknown" for name, info in core.RUNTIMES.items()
            if core.find_spec(info.module)}


def probe() -> dict:
    numpy_version = None
    if core.find_spec("numpy"):
        numpy_version = library_versions().get("numpy") or "unknown"
    return {"runner_protocol": PROTOCOL, "numpy": numpy_version, "runtimes": available_runtimes(),
            "environment": environment()}


# ================================================================================= models


class Model:
    """One model loaded in one runtime through the core: ``prepare`` (float32 NCHW → native), ``run``
    (timed), ``to_logits``; plus the row's ``input`` and ``settings``."""

    def __init__(self, runtime: str, path: str, manifest: dict | None, threads: int, xnnpack: bool | None):
        self.runtime, self.path, self.manifest = runtime, path, manifest or {}
        self.threads, self.xnnpack = threads, xnnpack
        self.format = core.RUNTIMES[runtime].format
        self.xnnpack_applied = None
        self.xnnpack_coverage = None
        self.lib = core.import_library(runtime)  # before init timing, like the harness

    def load(self) -> float:
        start = time.perf_counter()
        try:
            session = core.open_session(self.runtime, self.path, self.threads, self.xnnpack, lib=self.lib)
        except core.SwitchUnsupported as exc:
            raise RunnerError(str(exc)) from None
        seconds = time.perf_counter() - start
        self.xnnpack_applied = session.xnnpack_applied
        self.xnnpack_coverage = session.xnnpack_coverage
        self._model = core.bind_model(session, self.manifest, "the model")
        self.fixed_batch, self.chw = self._model.input.fixed_batch, self._model.input.chw
        return seconds

    def input_dict(self) -> dict:
        return dict(self._model.input.to_dict(), name=self.manifest.get("input", {}).get("name"))

    def prepare(self, x):
        return self._model.prepare(x)

    def run(self, native):
        return self._model.run(native)

    def to_logits(self, raw):
        return self._model.to_logits(raw)

    def settings(self) -> dict:
        out = {"runtime": self.runtime, "version": available_runtimes().get(self.runtime), "threads": self.threads,
               "xnnpack": self.xnnpack, "xnnpack_applied": self.xnnpack_applied}
        return {**out, **core.session_settings(self.format, self.xnnpack)}

    def close(self) -> None:
        model = getattr(self, "_model", None)
        if model is not None:
            model.session.close()
        self._model = None


# ================================================================================= measuring


def measure_latency(model: Model, native, warmup: int, runs: int | None, min_seconds: float | None) -> tuple:
    """(first_ms, latency object): the harness schedule, by the core's loop."""
    return core.measure(lambda: model.run(native), warmup, runs, min_seconds)


def _batches(np, model: Model, x):
    """(start, raw outputs of the real rows) per batch of ``x``, in the model's batch size; a short last batch
    is zero-padded and only its real rows are kept."""
    batch = model.fixed_batch or 1
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        n = len(chunk)
        if model.fixed_batch and n < model.fixed_batch:
            chunk = np.concatenate([chunk, np.zeros((model.fixed_batch - n,) + chunk.shape[1:], chunk.dtype)])
        yield start, np.asarray(model.run(model.prepare(chunk)))[:n]


def evaluate(np, model: Model, x, y, meta: dict) -> tuple:
    """(accuracy object, raw outputs) on pre-processed float32 NCHW inputs with integer labels."""
    batch = model.fixed_batch or 1
    top1 = top5 = 0
    raw_outputs = []
    for start, raw in _batches(np, model, x):
        n = len(raw)
        raw_outputs.append(raw.reshape(n, -1).copy())
        logits = model.to_logits(raw)
        labels = y[start:start + n]
        k = min(5, logits.shape[1])
        best = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        top1 += int((best[:, 0] == labels).sum())
        top5 += int((best == labels[:, None]).any(axis=1).sum())
    count = len(x)
    accuracy = {"top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count, "count": count,
                "skipped": int(meta.get("skipped") or 0), "skipped_examples": list(meta.get("skipped_examples") or []),
                "classes": meta.get("classes"), "limit": meta.get("limit"), "batch": batch}
    return accuracy, np.concatenate(raw_outputs)


def evaluate_dense(np, model: Model, x, answer: str, manifest: dict | None, index: int) -> tuple:
    """(placeholder accuracy, answers) of a pose or segmentation model on the host's recorded inputs.

    The metric needs the annotations and COCOeval, which stay on the host: the answers (segmentation labels
    as uint8 N×H×W, or pose heatmaps as float32 N×C×h×w) go back in ``outputs-<index>.npy`` and the host
    puts the score where the placeholder is (devices/api.py)."""
    output = (manifest or {}).get("output") or {}
    answers = []
    for _, raw in _batches(np, model, x):
        maps = core.dense_maps(model.to_logits(raw), output)
        answers.append(maps.argmax(axis=1).astype(np.uint8) if answer == "labels" else maps.astype(np.float32))
    placeholder = {"task": (manifest or {}).get("task"), "scored_on_host": True, "model_index": index, "count": len(x)}
    return placeholder, np.concatenate(answers)


def _synthetic(np, model: Model, seed: int):
    c, h, w = model.chw
    if None in (c, h, w):
        raise ValueError("the model has a dynamic input size; the runner needs a fixed one")
    return np.random.default_rng(seed).standard_normal((model.fixed_batch or 1, c, h, w)).astype(np.float32)


# ================================================================================= the request


def parse_mask(mask: str) -> list:
    value = int(mask, 16)
    return [cpu for cpu in range(value.bit_length()) if value >> cpu & 1]


def _set_affinity(mask: str | None) -> list | None:
    if not mask:
        return None
    cpus = parse_mask(mask)
    try:
        os.sched_setaffinity(0, cpus)
    except AttributeError:
        raise RunnerError("cpu_mask needs os.sched_setaffinity (Linux)") from None
    except OSError:
        try:
            online = sorted(os.sched_getaffinity(0))
        except OSError:
            online = "?"
        raise RunnerError(f"cpu_mask {mask} selects CPUs {cpus}, none of which this device can use "
                          f"(available: {online})") from None
    return sorted(os.sched_getaffinity(0))


def _choose_runtime(fmt: str, wanted: str | None, available: dict) -> str:
    if wanted:
        info = core.RUNTIMES.get(wanted)
        if info is None:
            raise RunnerError(f"unknown runtime {wanted!r}; choose from {', '.join(core.RUNTIMES)}")
        if info.format != fmt:
            raise RunnerError(f"runtime {wanted} runs {info.format} models, not {fmt}")
        if wanted not in available:
            raise RunnerError(f"runtime {wanted} is not installed on this device: pip install {info.distribution}")
        return wanted
    for name in core.PREFERENCE.get(fmt, ()):
        if name in available:
            return name
    names = " or ".join(core.RUNTIMES[n].distribution for n in core.PREFERENCE.get(fmt, ()))
    raise RunnerError(f"no {fmt} runtime on this device: pip install {names}")


def wait_cool(thermal: dict, say) -> float:
    """Sleep until the throttle "now" bits clear and the SoC is at most ``cool_to_c`` (default: 10 °C under
    ``max_temp_c`` when only that is set); returns seconds waited."""
    target = thermal.get("cool_to_c")
    if target is None and thermal.get("max_temp_c") is not None:
        target = float(thermal["max_temp_c"]) - 10.0
    limit = float(thermal.get("cool_timeout_s") or 600.0)
    start = time.monotonic()
    while time.monotonic() - start < limit:
        state = thermal_state()
        hot = target is not None and state["temperature_c"] is not None and state["temperature_c"] > target
        throttling = state["throttled"] is not None and state["throttled"] & _NOW_MASK
        if not hot and not throttling:
            break
        time.sleep(2.0)
    waited = time.monotonic() - start
    say(f"cooled down for {waited:.0f} s")
    return waited


def run_request(request: dict, workdir: str, say=lambda message: None) -> dict:
    """Measure every (model, runtime, XNNPACK, threads) combination of ``request``; return the result."""
    try:
        import numpy as np
    except ImportError:
        raise RunnerError("numpy is not installed on this device: python3 -m pip install numpy") from None
    if request.get("runner_protocol") != PROTOCOL:
        raise RunnerError(f"request protocol {request.get('runner_protocol')!r}, this runner speaks {PROTOCOL}")
    started = time.perf_counter()
    affinity = _set_affinity(request.get("cpu_mask"))
    threads_list = list(request.get("threads") or [1])
    thermal = request.get("thermal") or {}
    available = available_runtimes()
    plan = [(i, spec, _choose_runtime(spec["format"], request.get("runtime"), available))
            for i, spec in enumerate(request["models"])]
    env = environment(threads_list)
    rows, outputs = [], {}
    for i, spec, runtime in plan:
        if i > 0 and thermal.get("cooldown_s"):
            say(f"cooldown {thermal['cooldown_s']:g} s")
            time.sleep(float(thermal["cooldown_s"]))
        manifest = None
        if spec.get("manifest"):
            with open(os.path.join(workdir, spec["manifest"]), encoding="utf-8") as f:
                manifest = json.load(f)
        evaluation = None
        if spec.get("eval"):
            with np.load(os.path.join(workdir, spec["eval"]), allow_pickle=False) as data:
                if "dense" in data:  # pose/segmentation: no labels here, the answers go back to be scored
                    evaluation = (data["x"].astype(np.float32, copy=False), str(data["dense"]))
                else:
                    evaluation = (data["x"].astype(np.float32, copy=False), data["y"].astype(np.int64, copy=False))
        dense = evaluation is not None and isinstance(evaluation[1], str)
        xnn_list = list(request.get("xnnpack") or [True]) if core.RUNTIMES[runtime].format == "tflite" else [None]
        for xnn in xnn_list:
            accuracy = None
            for t in threads_list:
                row, raw = _measure_row(np, request, workdir, spec, manifest, runtime, t, xnn, evaluation, accuracy,
                                        thermal, affinity, say, index=i)
                accuracy = accuracy or row["accuracy"]
                if (request.get("keep_outputs") or dense) and raw is not None and str(i) not in outputs:
                    # raw (still quantized) outputs, for parity checks across devices; for a pose or
                    # segmentation model its maps or labels, which the host scores
                    name = f"outputs-{i}.npy"
                    np.save(os.path.join(workdir, name), raw)
                    outputs[str(i)] = name
                rows.append(row)
    return {"runner_protocol": PROTOCOL, "environment": env, "results": rows, "outputs": outputs,
            "wall_s": time.perf_counter() - started}


def _measure_row(np, request, workdir, spec, manifest, runtime, threads, xnn, evaluation, accuracy, thermal,
                 affinity, say, index: int = 0) -> tuple:
    """(row, raw eval outputs or None): latency between two thermal readings, then accuracy."""
    base = dict(spec.get("row") or {})
    base.update(runtime=runtime, runtime_version=available_runtimes().get(runtime), threads=threads, xnnpack=xnn,
                device=request.get("device") or "remote")
    what = f"{base.get('name')} · {runtime} · {threads} thread{'s' if threads > 1 else ''}"
    retries = int(thermal.get("retry_throttled") or 0)
    attempts = []
    while True:
        say(f"latency: {what}")
        before = thermal_state()
        model = None
        try:
            model = Model(runtime, os.path.join(workdir, spec["file"]), manifest, threads, xnn)
            init_s = model.load()
            native = model.prepare(_synthetic(np, model, int(request.get("seed") or 0)))
            first_ms, latency = measure_latency(model, native, int(request.get("warmup", 10)),
                                                request.get("runs"), request.get("min_seconds"))
            after = thermal_state()
            fields = {"input": model.input_dict(), "xnnpack_applied": model.xnnpack_applied,
                      "xnnpack_coverage": model.xnnpack_coverage, "init_ms": init_s * 1e3,
                      "first_ms": first_ms, "latency": latency, "settings": model.settings()}
            error = None
        except RunnerError:
            raise
        except Exception as exc:  # one broken combination must not end the run
            after, fields = thermal_state(), {}
            # ValueError carries the runner's own explanations; anything else is named by its type.
            error = core.first_line(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {core.first_line(exc)}"
        problems = [] if error else thermal_problems(before, after, thermal.get("max_temp_c"))
        attempts.append({"temp_before_c": before["temperature_c"], "temp_after_c": after["temperature_c"],
                         "throttled_before": _hex(before["throttled"]), "throttled_after": _hex(after["throttled"]),
                         "problems": problems})
        if problems and len(attempts) <= retries:
            say(f"throttled ({problems[0]}): waiting to cool down, then measuring again")
            attempts[-1]["cooled_s"] = wait_cool(thermal, say)
            if model is not None:
                model.close()
            continue
        break
    notes = []
    row = dict(base, **fields)
    settings = dict(row.get("settings") or {})
    settings["thermal"] = attempts[-1]
    if len(attempts) > 1:
        settings["thermal_attempts"] = attempts
        notes.append(f"measured {len(attempts)} times: earlier attempts throttled")
    if affinity is not None:
        settings["cpu_affinity"] = affinity
    row["settings"] = settings
    raw = None
    if error is None and evaluation is not None and model is not None:
        try:
            if accuracy is None:
                say(f"accuracy: {what}")
                if isinstance(evaluation[1], str):
                    row["accuracy"], raw = evaluate_dense(np, model, evaluation[0], evaluation[1], manifest, index)
                else:
                    row["accuracy"], raw = evaluate(np, model, evaluation[0], evaluation[1],
                                                    request.get("eval_meta") or {})
            else:
                row["accuracy"] = accuracy
                notes.append("accuracy measured once per model/runtime at the first thread count")
        except Exception as exc:
            notes.append(f"accuracy not measured: {type(exc).__name__}: {core.first_line(exc)}")
    if model is not None:
        model.close()
    notes.append("memory not measured on remote devices (the runner measures in one process)")
    if error:
        row.update(invalid=True, invalid_reason=error)
    elif attempts[-1]["problems"]:
        row.update(invalid=True, invalid_reason=attempts[-1]["problems"][0])
    row["notes"] = notes
    out = {key: row.get(key) for key in ROW_FIELDS}
    out["invalid"] = bool(out["invalid"])
    return out, raw


def _hex(value: int | None) -> str | None:
    return None if value is None else f"0x{value:x}"


def _write_json_atomic(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, allow_nan=False)
    os.replace(tmp, path)


def supervise(argv: list) -> int:
    """Run the runner in a child with faulthandler on, and say how it died if it did.

    Why: over SSH a process killed by a signal only shows up as ssh's exit status 255, which is also
    what a lost connection gives. A supervisor on the device turns SIGSEGV/SIGKILL/... into a line the
    host can report (and faulthandler prints the Python stack of a crash in native code).
    """
    import signal

    child = subprocess.run([sys.executable, "-X", "faulthandler", os.path.abspath(__file__), *argv])
    code = child.returncode
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        sys.stderr.write(f"micronet-runner: crashed: killed by {name}\n")
        return 128 - code
    return code


def main(argv: list) -> int:
    if argv[:1] == ["--supervise"]:
        return supervise(argv[1:])
    if argv[:1] == ["--probe"]:
        json.dump(probe(), sys.stdout)
        sys.stdout.write("\n")
        return 0
    if len(argv) != 1:
        sys.stderr.write("usage: runner.py REQUEST.json | --probe\n")
        return 2
    request_path = os.path.abspath(argv[0])
    workdir = os.path.dirname(request_path)
    verbose = os.environ.get("MICRONET_RUNNER_QUIET") is None

    def say(message: str) -> None:
        if verbose:
            sys.stderr.write(f"micronet-runner: {message}\n")
            sys.stderr.flush()

    try:
        with open(request_path, encoding="utf-8") as f:
            request = json.load(f)
        result = run_request(request, workdir, say)
    except RunnerError as exc:
        sys.stderr.write(f"micronet-runner: error: {exc}\n")
        return EXIT_FATAL
    _write_json_atomic(os.path.join(workdir, RESULT_FILE), result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
