"""The library calls behind ``micronet bench --device`` and ``micronet devices``: pick the device for a
target, turn model paths into jobs, run, and hand back report-schema rows (or a whole report).

Why here and not in the CLI: the CLI stays a thin argument parser, and the same calls serve scripts
and tests. Every mistake a user can make ends as one ``MicronetError`` line, raised before anything
is pushed to a device where possible.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from micronet.errors import MicronetError

from .base import BenchJob, Device, DeviceCheck, DeviceRun, ModelJob, Progress, ThermalPolicy
from .target import DEVICE_RUNTIMES, Inventory, Target, check_cpu_mask, load_inventory


DEFAULT_RETRIES = 3  # what --retry-throttled (a flag) means: up to 3 re-runs, each after cooling down


def make_device(target: Target) -> Device:
    """The ``Device`` implementation for a parsed target."""
    if target.kind == "local":
        from .local import LocalDevice

        return LocalDevice(target)
    if target.kind == "ssh":
        from .ssh import SshDevice

        return SshDevice(target)
    if target.kind == "adb":
        from .adb import AdbDevice

        return AdbDevice(target)
    raise AssertionError(target.kind)


def resolve(target: str, inventory: str | os.PathLike | Inventory | None = None) -> Target:
    """A target string or inventory name → ``Target`` (inventory looked up as in ``load_inventory``)."""
    return load_inventory(inventory).resolve(target)


def model_jobs(model_paths: Sequence[str | os.PathLike]) -> list[ModelJob]:
    """Model files → jobs with the row fields the host knows (manifest checked against its file)."""
    from micronet.bench.harness import BenchTarget

    if not model_paths:
        raise MicronetError("no models to benchmark")
    jobs = []
    for item in model_paths:
        path = Path(item)
        if path.suffix.lower() not in (".tflite", ".onnx"):
            raise MicronetError(f"cannot benchmark {path} on a device: expected a .tflite or .onnx file")
        t = BenchTarget(path=path)  # checks existence, reads and verifies the manifest
        madds, params = (None, None)
        try:
            madds, params = t.counts()
        except Exception:
            pass
        size_bytes, size_mib = t.size()
        row = {"model": t.model_id, "name": t.label, "variant": t.variant_name, "format": t.format,
               "quantize": t.quantize, "madds": madds, "params": params, "size_bytes": size_bytes, "size_mib": size_mib}
        jobs.append(ModelJob(path, t.manifest, row))
    return jobs


def _threads(value: int | Sequence[int] | None, target: Target) -> list[int]:
    if value is None:
        return list(target.options.threads or (1,))
    values = [value] if isinstance(value, int) else list(value)
    if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
        raise MicronetError(f"threads must be positive whole numbers, got {value!r}")
    return list(dict.fromkeys(values))


def benchmark_on_device(
    target: str | Target,
    model_paths: Sequence[str | os.PathLike],
    *,
    runtime: str | None = None,
    threads: int | Sequence[int] | None = None,
    warmup: int = 10,
    runs: int | None = 100,
    min_seconds: float | None = None,
    xnnpack: bool | Sequence[bool] = True,
    data: Any = None,
    limit: int | None = None,
    eval_inputs: str | os.PathLike | None = None,
    inventory: str | os.PathLike | Inventory | None = None,
    benchmark_binary: str | os.PathLike | None = None,
    cpu_mask: str | None = None,
    retry_throttled: int | bool | None = None,
    cooldown_s: float | None = None,
    memory: bool = True,
    seed: int = 0,
    keep_outputs: bool = False,
    progress: Progress | None = None,
) -> DeviceRun:
    """Benchmark model files on one device; the full answer (rows, device environment, raw outputs).

    See ``run_on_device`` for the arguments; ``keep_outputs`` also pulls back the raw outputs on the
    evaluation inputs (``DeviceRun.outputs[model index]``), which the arm64 parity check compares.
    """
    from micronet.bench.latency import validate_schedule

    resolved = target if isinstance(target, Target) else resolve(target, inventory)
    validate_schedule(warmup, runs, min_seconds)
    if runtime is not None and resolved.kind != "local" and runtime not in DEVICE_RUNTIMES:
        raise MicronetError(f"runtime {runtime!r} cannot run on {resolved.name}; choose from {', '.join(DEVICE_RUNTIMES)}")
    options = resolved.options
    jobs = model_jobs(model_paths)
    xnn = [bool(xnnpack)] if isinstance(xnnpack, bool) else list(dict.fromkeys(bool(x) for x in xnnpack))
    if isinstance(retry_throttled, bool):  # the CLI's --retry-throttled flag
        retry = DEFAULT_RETRIES if retry_throttled else 0
    else:
        retry = options.retry_throttled if retry_throttled is None else retry_throttled
    if not isinstance(retry, int) or retry < 0:
        raise MicronetError(f"retry_throttled must be a number of retries >= 0, got {retry_throttled!r}")
    thermal = ThermalPolicy(retry_throttled=retry, cooldown_s=options.cooldown_s if cooldown_s is None else float(cooldown_s),
                            max_temp_c=options.max_temp_c, cool_to_c=options.cool_to_c,
                            cool_timeout_s=options.cool_timeout_s)
    job = BenchJob(models=jobs, threads=_threads(threads, resolved), runtime=runtime or options.runtime, xnnpack=xnn,
                   warmup=warmup, runs=runs, min_seconds=min_seconds, seed=seed,
                   cpu_mask=check_cpu_mask(cpu_mask, "--cpu-mask") if cpu_mask else options.cpu_mask,
                   thermal=thermal, keep_outputs=keep_outputs, memory=memory,
                   benchmark_binary=Path(benchmark_binary).expanduser() if benchmark_binary else None)
    device = make_device(resolved)
    with tempfile.TemporaryDirectory(prefix="micronet-eval-") as scratch:
        _attach_eval(job, resolved.kind, data, limit, eval_inputs, Path(scratch))
        return device.benchmark(job, progress)


def _attach_eval(job: BenchJob, kind: str, data: Any, limit: int | None, eval_inputs: str | os.PathLike | None,
                 scratch: Path) -> None:
    """Accuracy inputs in the form each kind of device takes them."""
    if data is None and eval_inputs is None:
        return
    if data is not None and eval_inputs is not None:
        raise MicronetError("give data (an image folder) or eval_inputs (a prepared .npz), not both")
    if kind == "local":
        if eval_inputs is not None:
            raise MicronetError("the local device scores accuracy on an image folder: give data, not eval_inputs")
        job.data, job.limit = data, limit
    elif kind == "adb":
        job.eval_meta = {}  # benchmark_model feeds random inputs: every row says accuracy was not measured
    elif data is not None:
        from .evalset import build_eval_sets

        files, job.eval_meta = build_eval_sets([(m.path, m.manifest) for m in job.models], data, limit, scratch)
        job.models = [ModelJob(m.path, m.manifest, m.row, f) for m, f in zip(job.models, files)]
    else:
        from .evalset import check_eval_inputs

        file, job.eval_meta = check_eval_inputs(eval_inputs)
        job.models = [ModelJob(m.path, m.manifest, m.row, file) for m in job.models]


def run_on_device(
    target: str,
    model_paths: Sequence[str | os.PathLike],
    *,
    runtime: str | None = None,
    threads: int | Sequence[int] | None = None,
    warmup: int = 10,
    runs: int | None = 100,
    min_seconds: float | None = None,
    xnnpack: bool | Sequence[bool] = True,
    data: Any = None,
    limit: int | None = None,
    eval_inputs: str | os.PathLike | None = None,
    inventory: str | os.PathLike | Inventory | None = None,
    benchmark_binary: str | os.PathLike | None = None,
    cpu_mask: str | None = None,
    retry_throttled: int | bool | None = None,
    cooldown_s: float | None = None,
    memory: bool = True,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Benchmark model files on one device; report-schema v1 rows with ``device`` set.

    ``target``: ``local``, ``ssh://[user@]host[:port]``, ``adb[:SERIAL]`` or a ``devices.toml`` name
    (``inventory``: path or ``Inventory``; default lookup in ``target.load_inventory``).
    ``runtime``: litert | tflite-runtime | tf-lite | onnxruntime; None = the device's best for each
    model (Android always uses ``benchmark_model``). ``threads``: one count or several (each its own
    row); None = the inventory's, else 1. ``warmup``/``runs``/``min_seconds``: the latency schedule.
    ``xnnpack``: True, False, or both as a list. ``data``: a labelled image folder (or
    ``LabelledImages``) for accuracy: scored in-process locally, pushed as pre-processed ``.npz`` to an
    SSH device, not scored on Android (noted on the rows); ``limit`` caps the images.
    ``eval_inputs``: your own ``.npz`` (``x`` float32 N×C×H×W preprocessed, ``y`` labels) for SSH
    devices. ``benchmark_binary``: Android ``benchmark_model`` (else the inventory's).
    ``cpu_mask``: hex affinity mask. ``retry_throttled``: re-runs of a throttled measurement after
    cooling down (True = 3, None = the inventory's). ``cooldown_s``: pause between models, s.
    ``memory``: fresh-process RSS (local only; the others report what they can).
    """
    return benchmark_on_device(
        target, model_paths, runtime=runtime, threads=threads, warmup=warmup, runs=runs, min_seconds=min_seconds,
        xnnpack=xnnpack, data=data, limit=limit, eval_inputs=eval_inputs, inventory=inventory,
        benchmark_binary=benchmark_binary, cpu_mask=cpu_mask, retry_throttled=retry_throttled,
        cooldown_s=cooldown_s, memory=memory, seed=seed, progress=progress).rows


def device_report(target: str, model_paths: Sequence[str | os.PathLike], **kwargs: Any) -> dict[str, Any]:
    """Like ``run_on_device`` but a whole report (schema v1) whose ``environment`` is the *device's*
    fingerprint, so ``merge_reports`` tags the rows with the board's hostname and CPU, not the desktop's."""
    from micronet.bench import report as rep

    run = benchmark_on_device(target, model_paths, **kwargs)
    settings = {key: kwargs.get(key) for key in ("runtime", "threads", "warmup", "runs", "min_seconds", "xnnpack",
                                                  "limit", "cpu_mask", "retry_throttled", "cooldown_s", "seed")}
    settings["device"] = run.device
    settings["data"] = None if kwargs.get("data") is None else str(kwargs["data"])
    return rep.make_report(run.environment, settings, run.rows)


def iter_checks(names: Sequence[str] | None = None,
                inventory: str | os.PathLike | Inventory | None = None) -> Iterator[DeviceCheck]:
    """``micronet devices check``: every inventory device (or the given names/targets), one result each,
    yielded as soon as known (a board that times out should not hold back the lines of the others).
    Names are all resolved first, so a typo fails before any device is contacted."""
    inv = load_inventory(inventory)
    wanted = list(names) if names else ["local", *inv.devices]
    targets = [inv.resolve(name) for name in wanted]
    for target in targets:
        yield make_device(target).check()


def check_devices(names: Sequence[str] | None = None,
                  inventory: str | os.PathLike | Inventory | None = None) -> list[DeviceCheck]:
    return list(iter_checks(names, inventory))


_SHOWN = ("python", "runtime", "threads", "cpu_mask", "benchmark_binary", "identity", "ssh_config", "ssh_options",
          "adb", "workdir", "connect_timeout_s", "timeout_s", "cooldown_s", "max_temp_c", "cool_to_c",
          "retry_throttled", "description")


def describe_inventory(inventory: str | os.PathLike | Inventory | None = None) -> tuple[list[str], dict[str, Any]]:
    """``micronet devices list``: (lines, JSON-able data). Options are shown where they differ from the defaults."""
    from dataclasses import asdict

    from .target import DeviceOptions, inventory_candidates, parse_target

    inv = load_inventory(inventory)
    default = DeviceOptions()
    entries = [("local", parse_target("local", options=inv.defaults))] + [(n, e.target) for n, e in inv.devices.items()]
    data: dict[str, Any] = {"inventory": str(inv.path) if inv.path else None, "devices": []}
    if inv.path:
        lines = [f"inventory: {inv.path}"]
    else:
        lines = ["inventory: none found (looked in: " + ", ".join(str(p) for p in inventory_candidates()) + ")"]
    width = max(len(name) for name, _ in entries)
    target_width = max(len(t.text) for _, t in entries)
    for name, target in entries:
        changed = {key: getattr(target.options, key) for key in _SHOWN
                   if getattr(target.options, key) != getattr(default, key)}
        shown = " ".join(f"{k}={_show(v)}" for k, v in changed.items() if _applies(k, target.kind))
        lines.append(f"{name:<{width}}  {target.kind:<5}  {target.text:<{target_width}}  {shown}".rstrip())
        data["devices"].append({"name": name, "kind": target.kind, "target": target.text,
                                "options": {k: _show(v) for k, v in asdict(target.options).items()}})
    return lines, data


def _applies(option: str, kind: str) -> bool:
    """Whether an option means anything for this kind of device (``[defaults]`` reach every device)."""
    from .target import _ADB_ONLY, _SSH_ONLY

    if kind == "local":
        return option in ("threads", "cpu_mask", "runtime", "description")
    return option not in (_SSH_ONLY if kind == "adb" else _ADB_ONLY)


def _show(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return value
