"""The library calls behind ``micronet bench --device`` and ``micronet devices``: pick the device for a
target, turn model paths into jobs, run, and hand back report-schema rows (or a whole report).

Why here and not in the CLI: the CLI stays a thin argument parser, and the same calls serve scripts
and tests. Every mistake a user can make ends as one ``MicronetError`` line, raised before anything
is pushed to a device where possible.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from micronet.bench.options import MeasureOptions
from micronet.errors import MicronetError

from .base import BenchJob, Device, DeviceCheck, DeviceRun, ModelJob, Progress, ThermalPolicy
from .target import DEVICE_RUNTIMES, DeviceSpec, Inventory, check_cpu_mask, load_inventory


DEFAULT_RETRIES = 3  # what --retry-throttled (a flag) means: up to 3 re-runs, each after cooling down


def make_device(target: DeviceSpec) -> Device:
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
    if target.kind == "emulated":
        from .emulation import DEFAULT_PI, EmulatedDevice, ensure_rootfs

        root, _, _ = ensure_rootfs()
        return EmulatedDevice(root, target.board or DEFAULT_PI)
    raise AssertionError(target.kind)


def resolve(target: str, inventory: str | os.PathLike | Inventory | None = None) -> DeviceSpec:
    """A target string or inventory name → ``DeviceSpec`` (inventory looked up as in ``load_inventory``)."""
    return load_inventory(inventory).resolve(target)


def model_jobs(model_paths: Sequence[str | os.PathLike]) -> list[ModelJob]:
    """Model files → jobs with the row fields the host knows (manifest checked against its file)."""
    from micronet.bench.harness import BenchModel

    if not model_paths:
        raise MicronetError("no models to benchmark")
    jobs = []
    for item in model_paths:
        path = Path(item)
        if path.suffix.lower() in (".openvino", ".ncnn", ".mnn"):
            raise MicronetError(f"cannot benchmark {path} on a device: the OpenVINO, ncnn and MNN runtimes are "
                                "measured on this machine only (micronet bench without --device, or --device local)")
        if path.suffix.lower() not in (".tflite", ".onnx"):
            raise MicronetError(f"cannot benchmark {path} on a device: expected a .tflite or .onnx file")
        t = BenchModel(path=path)  # checks existence, reads and verifies the manifest
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


def _threads(value: int | Sequence[int] | None, target: DeviceSpec) -> list[int]:
    if value is None:
        return list(target.options.threads or (1,))
    values = [value] if isinstance(value, int) else list(value)
    if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
        raise MicronetError(f"threads must be positive whole numbers, got {value!r}")
    return list(dict.fromkeys(values))


@dataclass(frozen=True)
class DeviceRunOptions:
    """What a device run needs beyond the measurement settings (``MeasureOptions``): each ``None`` means
    the inventory's value for the device (``devices.toml``), else the built-in default.

    ``runtime``: litert | tflite-runtime | tf-lite | onnxruntime; None = the device's best for each model
    (Android always uses ``benchmark_model``). ``eval_inputs``: your own ``.npz`` (``x`` float32 N×C×H×W
    preprocessed, ``y`` labels) for SSH devices. ``inventory``: path or ``Inventory``.
    ``benchmark_binary``: Android ``benchmark_model``. ``cpu_mask``: hex affinity mask.
    ``retry_throttled``: re-runs of a throttled measurement after cooling down (True = 3).
    ``cooldown_s``: pause between models, s. ``keep_outputs``: pull back the raw outputs on the
    evaluation inputs (``DeviceRun.outputs[model index]``), which the arm64 parity check compares.
    """

    runtime: str | None = None
    eval_inputs: str | os.PathLike | None = None
    inventory: str | os.PathLike | Inventory | None = None
    benchmark_binary: str | os.PathLike | None = None
    cpu_mask: str | None = None
    retry_throttled: int | bool | None = None
    cooldown_s: float | None = None
    keep_outputs: bool = False


def _options(measure: MeasureOptions | None, device: DeviceRunOptions | None,
             keywords: dict[str, Any]) -> tuple[MeasureOptions, DeviceRunOptions]:
    """The two option objects, with keyword overrides sorted into them (an unknown keyword: TypeError)."""
    mine, rest = MeasureOptions.split(keywords)
    return MeasureOptions.build(measure, **mine), dataclasses.replace(device or DeviceRunOptions(), **rest)


def benchmark_on_device(
    target: str | DeviceSpec,
    model_paths: Sequence[str | os.PathLike],
    measure: MeasureOptions | None = None,
    device: DeviceRunOptions | None = None,
    *,
    progress: Progress | None = None,
    **keywords: Any,
) -> DeviceRun:
    """Benchmark model files on one device; the full answer (rows, device environment, raw outputs).

    See ``run_on_device`` for the arguments.
    """
    from micronet.bench.latency import validate_schedule

    m, d = _options(measure, device, keywords)
    resolved = target if isinstance(target, DeviceSpec) else resolve(target, d.inventory)
    validate_schedule(m.warmup, m.runs, m.min_seconds)
    if d.runtime is not None and resolved.kind != "local" and d.runtime not in DEVICE_RUNTIMES:
        raise MicronetError(f"runtime {d.runtime!r} cannot run on {resolved.name}; choose from {', '.join(DEVICE_RUNTIMES)}")
    options = resolved.options
    jobs = model_jobs(model_paths)
    xnn = m.xnnpack_list()
    if isinstance(d.retry_throttled, bool):  # the CLI's --retry-throttled flag
        retry = DEFAULT_RETRIES if d.retry_throttled else 0
    else:
        retry = options.retry_throttled if d.retry_throttled is None else d.retry_throttled
    if not isinstance(retry, int) or retry < 0:
        raise MicronetError(f"retry_throttled must be a number of retries >= 0, got {d.retry_throttled!r}")
    thermal = ThermalPolicy(retry_throttled=retry,
                            cooldown_s=options.cooldown_s if d.cooldown_s is None else float(d.cooldown_s),
                            max_temp_c=options.max_temp_c, cool_to_c=options.cool_to_c,
                            cool_timeout_s=options.cool_timeout_s)
    job = BenchJob(models=jobs, threads=_threads(m.threads, resolved), runtime=d.runtime or options.runtime,
                   xnnpack=xnn, warmup=m.warmup, runs=m.runs, min_seconds=m.min_seconds, seed=m.seed,
                   cpu_mask=check_cpu_mask(d.cpu_mask, "--cpu-mask") if d.cpu_mask else options.cpu_mask,
                   thermal=thermal, keep_outputs=d.keep_outputs, memory=m.memory,
                   benchmark_binary=Path(d.benchmark_binary).expanduser() if d.benchmark_binary else None)
    dev = make_device(resolved)
    with tempfile.TemporaryDirectory(prefix="micronet-eval-") as scratch:
        scorers = _attach_eval(job, resolved.kind, m.data, m.limit, d.eval_inputs, Path(scratch))
        run = dev.benchmark(job, progress)
    if scorers:
        _score_dense(run, scorers, progress)
    return run


def _score_dense(run: DeviceRun, scorers: list, progress: Progress | None) -> None:
    """Put each pose/segmentation model's score, computed here from the device's answers, into its rows."""
    scores: dict[int, dict] = {}
    for row in run.rows:
        placeholder = row.get("accuracy") or {}
        if not placeholder.get("scored_on_host"):
            continue
        index = int(placeholder["model_index"])
        if index not in run.outputs:
            raise MicronetError(f"{run.device} scored {row.get('name')} but sent no answers back")
        if index not in scores:
            if progress is not None:
                progress(f"accuracy: {row.get('name')} from {run.device}'s answers")
            scores[index] = scorers[index](run.outputs[index], run.device)
        row["accuracy"] = scores[index]


def _attach_eval(job: BenchJob, kind: str, data: Any, limit: int | None, eval_inputs: str | os.PathLike | None,
                 scratch: Path) -> list:
    """Accuracy inputs in the form each kind of device takes them; for pose and segmentation models on a
    runner device, the functions that score each model's answers here (else an empty list)."""
    if data is None and eval_inputs is None:
        return []
    if data is not None and eval_inputs is not None:
        raise MicronetError("give data (an image folder) or eval_inputs (a prepared .npz), not both")
    if kind == "local":
        if eval_inputs is not None:
            raise MicronetError("the local device scores accuracy on an image folder: give data, not eval_inputs")
        job.data, job.limit = data, limit
    elif kind == "adb":
        job.eval_meta = {}  # benchmark_model feeds random inputs: every row says accuracy was not measured
    elif data is not None and getattr(data, "task", None) in ("segmentation", "pose"):
        from .evalset import build_dense_eval_sets

        files, job.eval_meta, scorers = build_dense_eval_sets([(m.path, m.manifest) for m in job.models], data,
                                                              limit, scratch)
        job.models = [ModelJob(m.path, m.manifest, m.row, f) for m, f in zip(job.models, files)]
        return scorers
    elif data is not None:
        from .evalset import build_eval_sets

        files, job.eval_meta = build_eval_sets([(m.path, m.manifest) for m in job.models], data, limit, scratch)
        job.models = [ModelJob(m.path, m.manifest, m.row, f) for m, f in zip(job.models, files)]
    else:
        from .evalset import check_eval_inputs

        file, job.eval_meta = check_eval_inputs(eval_inputs)
        job.models = [ModelJob(m.path, m.manifest, m.row, file) for m in job.models]
    return []


def run_on_device(
    target: str | DeviceSpec,
    model_paths: Sequence[str | os.PathLike],
    measure: MeasureOptions | None = None,
    device: DeviceRunOptions | None = None,
    *,
    progress: Progress | None = None,
    **keywords: Any,
) -> list[dict[str, Any]]:
    """Benchmark model files on one device; report-schema v1 rows with ``device`` set.

    ``target``: ``local``, ``ssh://[user@]host[:port]``, ``adb[:SERIAL]`` or a ``devices.toml`` name
    (looked up in ``device.inventory``, default lookup in ``target.load_inventory``).
    ``measure`` (``MeasureOptions``): ``threads``: one count or several (each its own row); None = the
    inventory's, else 1. ``warmup``/``runs``/``min_seconds``: the latency schedule. ``xnnpack``: True,
    False, or both as a list. ``data``: a labelled image folder (or ``LabelledImages``) for accuracy:
    scored in-process locally, pushed as pre-processed ``.npz`` to an SSH device, not scored on Android
    (noted on the rows); a pose or segmentation folder (``bench.tasks.DenseData``) is scored on the
    desktop from the board's answers (``evalset.build_dense_eval_sets``); ``limit`` caps the images.
    ``memory``: fresh-process RSS (local only; the others report what they can). ``device``: see ``DeviceRunOptions``. The fields of either object may also
    be given as keywords (``run_on_device("pi", files, runs=20, cpu_mask="f")``), which override them.
    """
    return benchmark_on_device(target, model_paths, measure, device, progress=progress, **keywords).rows


def device_report(
    target: str | DeviceSpec,
    model_paths: Sequence[str | os.PathLike],
    measure: MeasureOptions | None = None,
    device: DeviceRunOptions | None = None,
    *,
    progress: Progress | None = None,
    **keywords: Any,
) -> dict[str, Any]:
    """Like ``run_on_device`` but a whole report (schema v1) whose ``environment`` is the *device's*
    fingerprint, so ``merge_reports`` tags the rows with the board's hostname and CPU, not the desktop's."""
    from micronet.bench import report as rep
    from micronet.bench.harness import data_label

    m, d = _options(measure, device, keywords)
    run = benchmark_on_device(target, model_paths, m, d, progress=progress)
    settings = {"runtime": d.runtime, "threads": m.threads, "warmup": m.warmup, "runs": m.runs,
                "min_seconds": m.min_seconds, "xnnpack": m.xnnpack, "limit": m.limit, "cpu_mask": d.cpu_mask,
                "retry_throttled": d.retry_throttled, "cooldown_s": d.cooldown_s, "seed": m.seed,
                "device": run.device, "data": data_label(m.data)}
    return rep.make_report(run.environment, settings, run.rows, rep.builtin_kernel_warnings(run.rows))


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
