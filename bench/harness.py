"""``run_benchmark``: every (model, runtime, threads, XNNPACK) combination → one report.

The CLI calls this and only this; it composes the one-job modules beside it. A combination that
fails (a runtime that cannot load a model, a crash in an interpreter) becomes an ``invalid`` row
with its reason instead of ending the run, because one bad artifact should not cost the other
twenty measurements. Mistakes in the request itself (bad run count, unknown or missing runtime, a
model no requested runtime can load) are raised before anything is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from micronet.errors import MicronetError

from . import report as rep
from .accuracy import ClassMismatch, check_classes, evaluate
from .tasks import evaluate_dense
from .environment import collect_environment, noise_warnings
from .latency import measure_latency
from .memory import file_size, measure_memory, validate_inferences
from .options import MeasureOptions
from .runtimes import (
    RUNTIME_FORMATS,
    RUNTIMES,
    Runtime,
    available_runtimes,
    check_model_contents,
    check_threads,
    detect_format,
    get_runtime,
    read_manifest_for,
    runtime_class,
    runtimes_for_format,
)

Progress = Callable[[str], None]


@dataclass
class BenchModel:
    """One model to benchmark: a model file (its manifest is read from beside it) or a torch model.

    For torch give ``module`` (any ``torch.nn.Module``) or just ``variant`` (built with
    ``micronet.build_model``). ``input_size`` (pixels) is needed only for a module that does not
    record its own ``input_size``; ``name`` is the display name.
    """

    path: Path | None = None
    module: Any = None
    variant: str | None = None
    name: str | None = None
    input_size: int | tuple[int, int] | None = None
    manifest: dict | None = None

    def __post_init__(self) -> None:
        if self.path is not None:
            if self.module is not None:
                raise MicronetError("a benchmark target is a model file or a torch module, not both")
            self.path = Path(self.path)
            if self.format == "torch":
                raise MicronetError(f"cannot benchmark {self.path}: expected a .onnx or .tflite file")
            check_model_contents(self.path, self.format)  # a garbage file is the user's mistake: fail now
            if self.manifest is None:
                self.manifest = read_manifest_for(self.path)
        elif self.module is None and not self.variant:
            raise MicronetError("a benchmark target needs a model file, a torch module or a variant name")

    @classmethod
    def coerce(cls, item: Any) -> "BenchModel":
        """A path, a variant name, a torch module or a BenchModel → BenchModel."""
        if isinstance(item, BenchModel):
            return item
        if isinstance(item, (str, Path)):
            if detect_format(item) == "torch":
                return cls(variant=str(item))
            return cls(path=Path(item))
        return cls(module=item)

    @property
    def format(self) -> str:
        return detect_format(self.path) if self.path is not None else "torch"

    @property
    def source(self) -> Any:
        """What ``Runtime.load`` takes: the file, the module, or the variant name."""
        if self.path is not None:
            return self.path
        return self.module if self.module is not None else self.variant

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.path is not None:
            return self.path.name
        return self.variant or getattr(self.module, "name", None) or type(self.module).__name__

    @property
    def model_id(self) -> str:
        return str(self.path) if self.path is not None else f"torch:{self.label}"

    @property
    def variant_name(self) -> str | None:
        return self.variant or (self.manifest or {}).get("variant")

    @property
    def task(self) -> str:
        """classification, segmentation or pose: the manifest's, else the variant's, else the module's."""
        from .tasks import CLASSIFICATION, task_of_variant

        if self.manifest and self.manifest.get("task"):
            return str(self.manifest["task"])
        variant = self.variant or (self.manifest or {}).get("variant")
        if variant:
            try:
                return task_of_variant(variant)
            except MicronetError:
                return CLASSIFICATION
        return CLASSIFICATION

    @property
    def dense_size(self) -> tuple[int, int] | None:
        """(H, W) input of a pose or segmentation model; None for a classifier."""
        if self.task == "classification":
            return None
        size = self.input_size or (self.manifest or {}).get("input_size") or getattr(self.module, "input_size", None)
        if size is None:
            return None
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def num_classes(self) -> int | None:
        """Logits per image, when known without loading the model: the manifest's, or a MicroNet module's."""
        if self.manifest and isinstance(self.manifest.get("num_classes"), int):
            return self.manifest["num_classes"]
        if self.module is not None:
            value = getattr(self.module, "num_classes", None)
            return value if isinstance(value, int) else None
        return 1000 if self.variant and self.path is None else None  # a variant name builds the 1000-class model

    @property
    def quantize(self) -> str | None:
        return "float32" if self.format == "torch" else (self.manifest or {}).get("quantize")

    def size(self) -> tuple[int | None, float | None]:
        """(bytes, MiB) of the model file; None for an in-memory torch model."""
        if self.path is None:
            return None, None
        size = file_size(self.path)
        return int(size["bytes"]), float(size["mib"])

    def counts(self) -> tuple[int | None, int | None]:
        """(MAdds, params): the manifest's, or counted for a MicroNet module/variant; None when unknown."""
        m = self.manifest or {}
        if m.get("madds") is not None or m.get("params") is not None:
            return m.get("madds"), m.get("params")
        if self.format != "torch":
            return None, None
        from micronet.counting import count_model, count_variant
        from micronet.model import MicroNet

        if self.task != "classification" and self.variant_name:  # pose/seg: counted at the model's H x W
            c = count_variant(self.variant_name, self.dense_size)
            return c.madds, c.params
        if isinstance(self.module, MicroNet):
            c = count_model(self.module, self.input_size)
            return c.madds, c.params
        if self.module is None:
            c = count_variant(self.variant, self.input_size or 224)
            return c.madds, c.params
        params = sum(p.numel() for p in self.module.parameters() if p.requires_grad)
        return None, int(params)


def _plan_runtimes(targets: Sequence[BenchModel], runtimes: Sequence[str] | None) -> dict[int, list[str]]:
    """Which runtimes run which target; raise for anything the user asked for that cannot happen."""
    if runtimes is not None:
        runtimes = list(dict.fromkeys(runtimes))
        if not runtimes:
            raise MicronetError("no runtimes given")
        for name in runtimes:
            runtime_class(name).require()  # unknown → lists the known ones; missing → names the pip package
        pool = runtimes
    else:
        pool = available_runtimes()
    plan: dict[int, list[str]] = {}
    for i, target in enumerate(targets):
        chosen = [r for r in pool if RUNTIME_FORMATS[r] == target.format]
        if not chosen:
            candidates = runtimes_for_format(target.format)
            if runtimes is not None:
                raise MicronetError(
                    f"none of the requested runtimes ({', '.join(runtimes)}) runs {target.label} "
                    f"({target.format}); use {' or '.join(candidates)}"
                )
            raise MicronetError(
                f"no installed runtime runs {target.format} models like {target.label}: "
                f"pip install {RUNTIMES[candidates[0]].pip}"
            )
        plan[i] = chosen
    return plan


def check_thread_counts(threads: Iterable[int]) -> list[int]:
    """Every thread count valid, each once, at least one (the harness and ``MeasureOptions.check`` share it)."""
    values = [check_threads(t) for t in dict.fromkeys(threads)]
    if not values:
        raise MicronetError("give at least one thread count")
    return values


def data_label(data: Any) -> str | None:
    """What a report says the accuracy data was: the folder, whether given as a path or already scanned."""
    if data is None:
        return None
    if isinstance(data, (str, os.PathLike)):
        return str(data)
    root = getattr(data, "root", None)
    return str(root) if root is not None else "LabelledImages"


def _load_data(data: Any, targets: Sequence[BenchModel]) -> Any:
    """Scan ``data`` as the targets' task's data (one task per run: the accuracy column is one metric)."""
    if data is None:
        return None
    tasks = list(dict.fromkeys(t.task for t in targets))
    if len(tasks) > 1:
        raise MicronetError(f"--data scores one task per run, but the models are {' and '.join(tasks)} models: "
                            "benchmark them in separate runs")
    if hasattr(data, "samples"):
        return data
    from .tasks import load_task_data

    return load_task_data(tasks[0], data)


def _preprocessing_for(runtime: Runtime) -> Any:
    """The manifest's preprocessing, or the MicroNet evaluation transform at the model's input size."""
    from micronet.preprocess import Preprocessing

    if runtime.preprocessing:
        return Preprocessing.from_dict(runtime.preprocessing)
    _, height, width = runtime.input_spec.chw
    if height is None or height != width:
        raise MicronetError(f"{runtime.source} has input {height}x{width}: give a manifest with its preprocessing")
    return Preprocessing(input_size=height)


def _dense_size(target: BenchModel, runtime: Runtime) -> tuple[int, int]:
    """(H, W) the dense model was built for: the target's, else its input tensor's."""
    size = target.dense_size
    if size is not None:
        return size
    _, height, width = runtime.input_spec.chw
    if height is None or width is None:
        raise MicronetError(f"{runtime.source} has a dynamic input size; give its manifest")
    return int(height), int(width)


def _synthetic_batch(runtime: Runtime, seed: int) -> np.ndarray:
    """Deterministic N(0,1) input, the scale of a normalised image, at the model's own shape."""
    c, h, w = runtime.input_spec.chw
    if None in (c, h, w):
        raise MicronetError(f"{runtime.source} has a dynamic input size; give the target an input_size")
    batch = runtime.input_spec.fixed_batch or 1
    return np.random.default_rng(seed).standard_normal((batch, c, h, w)).astype(np.float32)


def _end_to_end_loader(runtime: Runtime, images: Any) -> Callable[[], np.ndarray]:
    """Decode + resize + normalise one real image per call: the first data image, else a bundled photo."""
    from micronet.preprocess import load_batch

    if images is not None and images.samples:
        photo = images.samples[0][0]
    else:
        from micronet.sample_images import bundled_photographs

        photos = bundled_photographs()
        if not photos:
            raise MicronetError("end-to-end timing needs an image: give data")
        photo = photos[0]
    p = _preprocessing_for(runtime)
    fixed = runtime.input_spec.fixed_batch or 1
    return lambda: np.repeat(load_batch([photo], p)[0], fixed, axis=0)


def run_benchmark(
    models: Sequence[Any],
    runtimes: Sequence[str] | None = None,
    options: MeasureOptions | None = None,
    progress: Progress | None = None,
    *,
    memory_inferences: int = 10,
    batch: int = 1,
    end_to_end: bool = False,
    **measure: Any,
) -> dict[str, Any]:
    """Benchmark every model in every applicable runtime; return the report dict (``report`` schema).

    ``models``: ``BenchModel``s, model file paths, variant names or torch modules.
    ``runtimes``: names from ``RUNTIMES``; None = every installed runtime that fits each format.
    ``options`` (``MeasureOptions``; its fields may also be given as keywords, which override it):
    ``threads``: thread counts to try (each is its own row; default 1). ``xnnpack``: TFLite delegate
    settings to try (``(True, False)`` compares them). ``warmup``/``runs``/``min_seconds``: the latency
    schedule (``micronet.bench.latency``). ``data``: a labelled image folder (or ``LabelledImages``) for
    accuracy, scored once per model/runtime/XNNPACK and shared by its thread rows; ``limit`` caps the
    image count. ``memory``: measure peak RSS in a fresh process per row (a few seconds each).
    ``end_to_end``: also time preprocessing + inference per image. ``progress(message)`` is called
    before each step.
    """
    opts = MeasureOptions.build(options, **measure)
    opts.check(batch)
    warmup, runs, min_seconds, data, limit, memory, seed = (
        opts.warmup, opts.runs, opts.min_seconds, opts.data, opts.limit, opts.memory, opts.seed)
    if memory:
        validate_inferences(memory_inferences)
    thread_list = check_thread_counts((1,) if opts.threads is None else opts.threads)
    xnn_list = opts.xnnpack_list()
    targets = [BenchModel.coerce(m) for m in models]
    if not targets:
        raise MicronetError("no models to benchmark")
    plan = _plan_runtimes(targets, runtimes)
    images = _load_data(data, targets)
    if images is not None and targets[0].task == "classification":
        for target in targets:  # a label space that is not the model's is a mistake in the request, not a row
            check_classes(len(images.classes), target.num_classes, target.label)
    say = progress or (lambda message: None)
    environment = collect_environment(thread_list)  # before measuring: the load average is other work's
    # Not said through progress: the report carries them and print_report shows them once, by the table.
    warnings = noise_warnings(environment, thread_list)

    rows: list[dict[str, Any]] = []
    for i, target in enumerate(targets):
        madds, params = _safe_counts(target)
        size_bytes, size_mib = target.size()
        for runtime_name in plan[i]:
            is_tflite = RUNTIME_FORMATS[runtime_name] == "tflite"
            for xnn in (xnn_list if is_tflite else [None]):
                accuracy: dict[str, Any] | None = None
                for t in thread_list:
                    what = f"{target.label} · {runtime_name} · {t} thread{'s' if t > 1 else ''}"
                    if xnn is False:
                        what += " · XNNPACK off"
                    base = dict(model=target.model_id, name=target.label, variant=target.variant_name,
                                format=target.format, quantize=target.quantize, runtime=runtime_name,
                                runtime_version=RUNTIMES[runtime_name].version(), threads=t, xnnpack=xnn,
                                madds=madds, params=params, size_bytes=size_bytes, size_mib=size_mib)
                    try:
                        say(f"latency: {what}")
                        fields, accuracy = _measure(target, runtime_name, t, xnn, opts, images, batch, end_to_end,
                                                    accuracy, say, what)
                    except ClassMismatch:  # found only on loading (no manifest): no row of this run can be scored
                        raise
                    except Exception as exc:  # one broken combination must not end the run
                        reason = str(exc) if isinstance(exc, MicronetError) else f"{type(exc).__name__}: {exc}"
                        rows.append(rep.make_row(**base, invalid=True, invalid_reason=reason.splitlines()[0]))
                        continue
                    notes = fields.pop("notes")
                    if memory:
                        say(f"memory: {what}")
                        try:
                            fields["memory"] = measure_memory(
                                runtime_name, target.source, threads=t, xnnpack=xnn, inferences=memory_inferences,
                                input_size=target.input_size).to_dict()
                        except MicronetError as exc:
                            notes.append(f"memory not measured: {exc}")
                    rows.append(rep.make_row(**base, **fields, notes=notes))

    settings = {
        "warmup": warmup, "runs": runs, "min_seconds": min_seconds, "threads": thread_list,
        "runtimes": sorted({r for names in plan.values() for r in names}), "xnnpack": xnn_list,
        "memory": memory, "memory_inferences": memory_inferences,
        "data": data_label(data),
        "limit": limit, "batch": batch, "end_to_end": end_to_end, "seed": seed,
    }
    return rep.make_report(environment, settings, rows, [*warnings, *rep.builtin_kernel_warnings(rows)])


def _safe_counts(target: BenchModel) -> tuple[int | None, int | None]:
    try:
        return target.counts()
    except Exception:  # counting is a label on the row; never a reason to skip a measurement
        return None, None


def _measure(target: BenchModel, runtime_name: str, threads: int, xnn: bool | None, opts: MeasureOptions,
             images: Any, batch: int, end_to_end: bool, accuracy: dict | None, say: Progress, what: str,
             ) -> tuple[dict[str, Any], dict | None]:
    """Load once, time, score; returns the row fields and the accuracy to reuse for other thread counts."""
    runtime = get_runtime(runtime_name, threads=threads, xnnpack=xnn)
    try:
        init_s = runtime.load(target.source, manifest=target.manifest, input_size=target.input_size)
        native = runtime.prepare(_synthetic_batch(runtime, opts.seed))
        loader = _end_to_end_loader(runtime, images) if end_to_end else None
        latency = measure_latency(runtime, native, warmup=opts.warmup, runs=opts.runs, min_seconds=opts.min_seconds,
                                  end_to_end=loader)
        notes: list[str] = []
        if images is not None:
            if accuracy is None:
                say(f"accuracy: {what}")
                if target.task == "classification":
                    accuracy = evaluate(runtime, images, _preprocessing_for(runtime), limit=opts.limit, batch=batch)
                else:
                    accuracy = evaluate_dense(runtime, images, _dense_size(target, runtime), limit=opts.limit)
            else:
                notes.append("accuracy measured once per model/runtime at the first thread count")
        return {
            "input": runtime.input_spec.to_dict(),
            "xnnpack_applied": runtime.settings().get("xnnpack_applied"),
            "xnnpack_coverage": getattr(runtime, "xnnpack_coverage", None),
            "init_ms": init_s * 1e3,
            "first_ms": latency.first_ms,
            "latency": latency.to_dict(),
            "accuracy": accuracy,
            "settings": runtime.settings(),
            "notes": notes,
        }, accuracy
    finally:
        runtime.close()
