"""What ``micronet bench`` measures: model files as given, or variants exported on the fly.

Kept out of the CLI so Python users and tests build the same target lists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from micronet.errors import MicronetError
from micronet.export.request import ArtifactKind, resolve_kinds

from .harness import BenchModel

BENCH_FORMATS = ("torch", "onnx", "tflite", "openvino", "ncnn", "mnn", "all")
MATRIX_VARIANTS = ("m0", "m1", "m2", "m3")
#: "all": the float reference, ONNX, and the two TFLite files people ship.
ALL_FORMATS: tuple[ArtifactKind, ...] = (ArtifactKind("onnx", "float32"), ArtifactKind("tflite", "float32"),
                                         ArtifactKind("tflite", "int8"))


def exported_kinds(fmt: str, quantize: str | None) -> tuple[bool, list[ArtifactKind]]:
    """(include torch, artifact kinds to export) for one ``--format``/``--quantize`` choice."""
    if fmt not in BENCH_FORMATS:
        raise MicronetError(f"unknown format {fmt!r}; choose one of: {', '.join(BENCH_FORMATS)}")
    if fmt == "all":
        if quantize:
            raise MicronetError("--format all benchmarks torch, ONNX, TFLite float32 and int8; drop --quantize")
        return True, list(ALL_FORMATS)
    if fmt == "torch":
        if quantize not in (None, "float32"):
            raise MicronetError("--quantize applies to --format tflite, openvino, ncnn and mnn")
        return True, []
    return False, resolve_kinds(fmt, quantize, False)


def dense_variant(variant: str, input_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """(H, W) to benchmark a pose or segmentation ``variant`` at (its task's default when ``input_size`` is
    None); None for a classifier."""
    from micronet.export.dense import check_size
    from micronet.registry import TASK_INPUT_SIZE, resolve_variant

    info = resolve_variant(variant, task=None)
    if info.task == "classification":
        return None
    return check_size(input_size if input_size is not None else TASK_INPUT_SIZE[info.task], info.name)


def _dense_targets(variant: str, size: tuple[int, int], fmt: str | None, quantize: str | None, torch_too: bool,
                   weights: Path | None, calibration: Path | None, progress: Callable[[str], None] | None
                   ) -> list[BenchModel]:
    """The PyTorch model and the exports of a pose or segmentation variant at (H, W): ``--format all`` is
    every kind its task is exported in (ONNX, TFLite float32/float16/dynamic/int8)."""
    from micronet.export.dense import DENSE_TASKS, build_dense_model
    from micronet.export.pipeline import kinds_for
    from micronet.registry import TASK_OUTPUTS, resolve_variant

    from . import cache

    info = resolve_variant(variant, task=None)
    fmt = (fmt or "tflite").lower()
    paths: list[Path] = []
    if fmt != "torch":
        if fmt not in DENSE_TASKS[info.task].formats and fmt != "all":
            raise MicronetError(f"{info.name} is benchmarked as torch, onnx, tflite or all, not {fmt}")
        kinds = kinds_for(info.name, None if fmt == "all" else fmt, quantize, fmt == "all")
        paths = cache.exported(info.name, kinds, input_size=size, num_classes=TASK_OUTPUTS[info.task][0],
                               weights=weights, calibration=calibration, progress=progress, keep_going=True)
    targets: list[BenchModel] = []
    if torch_too:
        model = build_dense_model(info.name, info.task, size, TASK_OUTPUTS[info.task][0])
        _load_exported_network(model, weights, paths)
        targets.append(BenchModel(module=model.eval(), variant=info.name, name=f"{info.name} (PyTorch)",
                                  input_size=size))
    return targets + [BenchModel(path=p) for p in paths]


def _load_exported_network(model, weights: Path | None, exported: Sequence[Path]) -> None:
    """Give the PyTorch row the weights of the files it is compared with: ``--weights``, or, untrained, the
    seeded and BatchNorm-recalibrated weights the cached export was made from (bench/cache.py says why)."""
    from micronet.weights import load_weights

    from . import cache

    source = weights or (cache.reference_weights(exported[0]) if exported else None)
    if source is not None:
        load_weights(model, source)


def reference_target(manifest: dict) -> BenchModel:
    """The PyTorch float model an exported file came from, rebuilt from its manifest (for --max-drop)."""
    from micronet.model import build_model
    from micronet.weights import load_weights

    weights = manifest.get("weights") or {}
    if weights.get("state") != "loaded" or not weights.get("path") or not Path(weights["path"]).is_file():
        raise MicronetError(f"{manifest.get('artifact')}: its manifest names no weights file that exists here, "
                            "so there is no PyTorch reference to measure an accuracy drop against")
    task = manifest.get("task") or "classification"
    if task != "classification":
        from micronet.export.dense import build_dense_model

        size = tuple(manifest["input_size"])
        model = build_dense_model(manifest["variant"], task, size, manifest["num_classes"])
    else:
        size = manifest["input_size"]
        model = build_model(manifest["variant"], num_classes=manifest["num_classes"], input_size=size)
    load_weights(model, weights["path"])
    return BenchModel(module=model.eval(), variant=manifest["variant"], name=f"{manifest['variant']} (PyTorch)",
                      input_size=size)


def bench_targets(model_files: Sequence[Path] = (), *, variant: str | None = None, fmt: str | None = None,
                  quantize: str | None = None, matrix: bool = False, weights: Path | None = None,
                  calibration: Path | None = None, input_size: int | tuple[int, int] | None = 224,
                  num_classes: int = 1000,
                  with_reference: bool = False, progress: Callable[[str], None] | None = None) -> list[BenchModel]:
    """Targets for files, one variant, or the m0..m3 matrix; ``with_reference`` adds the PyTorch model."""
    from micronet.model import build_model

    from . import cache

    if sum(bool(x) for x in (model_files, variant, matrix)) != 1:
        raise MicronetError("give model files, or --variant, or --matrix (exactly one of them)")
    if model_files:
        if fmt or quantize:
            raise MicronetError("--format/--quantize choose what to export for --variant; a model file is what it is")
        targets = [BenchModel(path=Path(p)) for p in model_files]
        if with_reference:
            seen = {}
            for t in targets:
                if t.manifest and t.manifest.get("variant") and t.manifest["variant"] not in seen:
                    seen[t.manifest["variant"]] = reference_target(t.manifest)
            targets = list(seen.values()) + targets
        return targets

    include_torch, kinds = exported_kinds((fmt or ("all" if matrix else "tflite")).lower(), quantize)
    targets: list[BenchModel] = []
    for name in (MATRIX_VARIANTS if matrix else [variant]):
        dense = dense_variant(name, input_size)
        if dense is not None:
            targets += _dense_targets(name, dense, fmt, quantize, include_torch or with_reference, weights,
                                      calibration, progress)
            continue
        if not isinstance(input_size, int):  # a classifier: None is its default, a square H x W its side
            input_size = 224 if input_size is None else int(input_size[0])
        paths = [] if not kinds else cache.exported(name, kinds, input_size=input_size, num_classes=num_classes,
                                                     weights=weights, calibration=calibration, progress=progress)
        if include_torch or with_reference:
            model = build_model(name, num_classes=num_classes, input_size=input_size)
            _load_exported_network(model, weights, paths)
            targets.append(BenchModel(module=model.eval(), variant=model.config.name,
                                      name=f"{model.config.name} (PyTorch)", input_size=input_size))
        targets += [BenchModel(path=p) for p in paths]
    return targets
