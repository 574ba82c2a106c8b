"""The export pipeline: variant → deploy form → ONNX → TFLite, every stage checked against the last.

One short function composes the stage modules (``deploy``, ``calibration``, ``onnx``, ``tflite``,
``parity``, ``manifest``). Artifacts are built in a staging folder inside the output folder and moved
into place only when every requested stage *and its parity rung* passed, so a failed or interrupted
export never leaves a file that looks finished.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from micronet import interrupts
from micronet.atomic import remove_abandoned_staging, staging_dir
from micronet.errors import MicronetError
from micronet.preprocess import Preprocessing

FORMATS = ("onnx", "tflite")
QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
ALL_TARGETS: tuple[tuple[str, str], ...] = (("onnx", "float32"),) + tuple(("tflite", q) for q in QUANTIZATIONS)
#: Logits of the deploy form vs the training form, relative to the largest logit. BatchNorm folding
#: and the folded Shift-Max constants re-associate float32 sums (measured 3e-6 on recalibrated m0).
DEPLOY_LIMIT = 1e-4

#: Graphs the artifacts can be built from. "fast": the ONNX artifact is export/fast.py's graph built for ONNX
#: Runtime (target "onnxruntime"), TFLite the one built for XNNPACK lowered op for op to TensorFlow in NHWC
#: (export/tf_graph.py; no onnx2tf). "reference": both from the reference deploy form (export/deploy.py),
#: TFLite through onnx2tf.
TFLITE_GRAPHS = ("fast", "reference")
#: Bumped whenever a graph rewrite changes what an export produces, so cached exports are rebuilt.
GRAPH_REVISION = 5

Progress = Callable[[str], None]
#: Artifacts are built in ``<output>/.micronet-export-XXXX/`` (see ``export``); bench/cache.py exports through
#: the same function, so its cache folders are cleaned the same way.
STAGING_PREFIX = ".micronet-export-"


class ParityFailure(MicronetError):
    """A rung of the parity ladder broke; ``rungs`` holds the whole ladder for the report."""

    def __init__(self, message: str, rungs: list[dict]) -> None:
        super().__init__(message)
        self.rungs = rungs


@dataclass
class ExportRequest:
    variant: str = "m0"
    targets: list[tuple[str, str]] = field(default_factory=lambda: [("tflite", "int8")])
    weights: Path | None = None
    calibration: Path | None = None
    calib_count: int = 200
    holdout: int = 32
    seed: int = 0
    input_size: int = 224
    num_classes: int = 1000
    output_dir: Path = Path("exports")
    io_dtype: str = "int8"  # int8 model input/output type: int8 or uint8
    per_channel: bool = True
    dynamic_batch: bool = False
    graph: str = "fast"  # the graph the artifacts are built from: "fast" (export/fast.py) or "reference"


@dataclass
class ExportResult:
    artifacts: list[Path]
    manifests: list[Path]
    rungs: list[dict]
    timings_s: dict[str, float]


def resolve_targets(fmt: str | None, quantize: str | None, all_formats: bool) -> list[tuple[str, str]]:
    """The (format, quantization) pairs the CLI's ``--format/--quantize/--all`` ask for."""
    if all_formats:
        if fmt or quantize:
            raise MicronetError("--all writes every format; do not combine it with --format or --quantize")
        return list(ALL_TARGETS)
    fmt = (fmt or "tflite").lower()
    if fmt not in FORMATS:
        raise MicronetError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise MicronetError(f"unknown quantization {quantize!r}; choose one of: {', '.join(QUANTIZATIONS)}")
    if fmt == "onnx":
        if quantize not in (None, "float32"):
            raise MicronetError(f"--quantize {quantize} applies to --format tflite; ONNX is exported in float32")
        return [("onnx", "float32")]
    return [("tflite", quantize or "int8")]


def artifact_name(variant: str, input_size: int, fmt: str, quantize: str) -> str:
    suffix = "onnx" if fmt == "onnx" else f"{quantize}.tflite"
    return f"micronet-{variant}-{input_size}.{suffix}"


def _check_output_dir(path: Path) -> None:
    """Fail before any work if the output folder cannot be written (the export takes minutes)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".micronet-write-test-"):
            pass
    except OSError as exc:
        raise MicronetError(f"cannot write to output folder {path}: {exc.strerror or exc}") from None


def _rung_record(rung) -> dict:
    return {"rung": rung.name, "reference": rung.reference, "passed": rung.passed, "metric": rung.metric,
            "value": rung.value, "limit": rung.limit, **{k: v for k, v in rung.metrics.items()}}


def _io_spec(io: dict, preprocessing: Preprocessing | None = None) -> dict:
    spec = {"name": io["name"], "shape": [int(d) for d in io["shape"]], "dtype": io["dtype"],
            "quantization": io.get("quantization")}
    if "layout" in io:
        spec["layout"] = io["layout"]
    if preprocessing is not None:
        spec["preprocessing"] = preprocessing.to_dict()
    return spec


def export(request: ExportRequest, progress: Progress | None = None) -> ExportResult:
    """Run the whole export for ``request``; returns what was written, or raises ``MicronetError``."""
    import torch

    from micronet.counting import count_model
    from micronet.model import build_model
    from micronet.registry import resolve_variant

    from . import calibration as calib
    from . import deploy, manifest, onnx as onnx_stage, parity

    say = _checking(progress)
    timings: dict[str, float] = {}
    variant = resolve_variant(request.variant).name
    if not request.targets:
        raise MicronetError("nothing to export: no format requested")
    if request.calib_count < 1:
        raise MicronetError(f"--calib-count must be at least 1, got {request.calib_count}")
    if request.graph not in TFLITE_GRAPHS:
        raise MicronetError(f"unknown graph {request.graph!r}; choose one of: {', '.join(TFLITE_GRAPHS)}")
    if request.io_dtype not in ("int8", "uint8"):
        raise MicronetError(f"int8 input/output type must be int8 or uint8, got {request.io_dtype!r}")

    # 1. Model, weights and images: every input is checked before anything is written.
    start = time.perf_counter()
    with torch.random.fork_rng():  # untrained weights depend on --seed only: exports are reproducible
        torch.manual_seed(request.seed)
        model = build_model(variant, num_classes=request.num_classes, input_size=request.input_size)
    weights_record: dict[str, Any] = {"state": "untrained"}
    if request.weights:
        from micronet.weights import load_weights

        weights_record = {"state": "loaded", **load_weights(model, request.weights)}
    model.eval()
    preprocessing = Preprocessing(input_size=request.input_size)
    data = calib.build_calibration(request.calibration, count=request.calib_count, seed=request.seed,
                                   preprocessing=preprocessing, holdout=request.holdout)
    _check_output_dir(request.output_dir)
    for stale in remove_abandoned_staging(request.output_dir, STAGING_PREFIX):
        say(_plain(stale.describe()))
    timings["prepare_s"] = time.perf_counter() - start
    interrupts.check()
    if data.record.get("warning") and ("tflite", "int8") in request.targets:  # only int8 ranges come from them
        say(f"[bold yellow]warning:[/bold yellow] {data.record['warning']}")
    for line in (data.record.get("note"), calib.skipped_summary(data.record)):
        if line:
            say(f"[yellow]note:[/yellow] {_plain(line)}")

    if weights_record["state"] == "untrained":
        say("untrained weights: re-estimating BatchNorm statistics on the calibration images")
        batches = [torch.from_numpy(data.calibration[i:i + 32]) for i in range(0, len(data.calibration), 32)]
        batches = [b for b in batches if len(b) > 1] or [torch.from_numpy(data.calibration)]
        weights_record["batchnorm_recalibrated_on"] = deploy.recalibrate_batchnorm(model, batches)

    counts = count_model(model)
    holdout = torch.from_numpy(data.holdout)
    with torch.no_grad():
        reference = model(holdout).numpy()
        deployed = deploy.to_deploy(model)
    rungs: list[dict] = []
    deploy_logits = _form_rung("deploy", deployed, reference, holdout, rungs)

    def judge(name: str, ref: np.ndarray, candidate: np.ndarray) -> np.ndarray:
        interrupts.check()  # a stage that swallowed the interrupt must not be judged, let alone shipped
        rung = parity.check_rung(name, parity.compare(ref, candidate), untrained=weights_record["state"] == "untrained")
        rungs.append(_rung_record(rung))
        say(("[green]✓[/green] " if rung.passed else "[red]✗[/red] ") + rung.summary())
        if not rung.passed:
            raise ParityFailure(f"parity rung '{name}' broke: {rung.summary()}", rungs)
        return candidate

    base = {
        "variant": variant,
        "num_classes": request.num_classes,
        "input_size": request.input_size,
        "params": counts.params,
        "madds": counts.madds,
        "weights": weights_record,
        "calibration": data.record,
    }
    interrupts.check()
    with staging_dir(request.output_dir, STAGING_PREFIX) as staging:
        staged: list[tuple[Path, dict]] = []
        # 2. ONNX, always: the TFLite float32 rung is judged against it (and onnx2tf converts it for --graph reference).
        example = torch.zeros(1, 3, request.input_size, request.input_size)
        onnx_source, onnx_source_logits = deployed, deploy_logits
        batch_one = False
        if request.graph == "fast":
            from .fast import batch_one_form, to_fast_deploy

            say("building the fast deploy graph for ONNX Runtime")
            with torch.no_grad():
                onnx_source = to_fast_deploy(model, target="onnxruntime")
            # Judged batched; the batch-of-one form exported for a fixed batch computes exactly the same
            # (its products are BatchNormalizations with mean 0, variance 1, epsilon 0), and the onnx rung
            # checks the exported file against these logits.
            onnx_source_logits = _form_rung("deploy_fast_onnxruntime", onnx_source, reference, holdout, rungs)
            batch_one = not request.dynamic_batch
            if batch_one:
                onnx_source = batch_one_form(onnx_source)
        say("exporting ONNX")
        onnx_path = staging / artifact_name(variant, request.input_size, "onnx", "float32")
        onnx_record = onnx_stage.export_onnx(onnx_source, example, onnx_path, dynamic_batch=request.dynamic_batch)
        onnx_record["graph"] = "fast/onnxruntime" if request.graph == "fast" else "reference"
        onnx_record["batch_one_products"] = batch_one
        timings["onnx_s"] = onnx_record["export_s"] + onnx_record["simplify_s"]
        onnx_logits = judge("onnx", onnx_source_logits, onnx_stage.run_onnx(onnx_path, data.holdout))
        if ("onnx", "float32") in request.targets:
            spec_in = {"name": "input", "layout": "NCHW", "shape": onnx_record["input"]["shape"], "dtype": "float32"}
            spec_out = {"name": "logits", "shape": [onnx_record["input"]["shape"][0], request.num_classes],
                        "dtype": "float32"}
            staged.append((onnx_path, {**base, "format": "onnx", "quantize": "float32",
                                       "input": _io_spec(spec_in, preprocessing), "output": _io_spec(spec_out),
                                       "calibration": calib.record_for_artifact(data.record, int8=False),
                                       "graph": request.graph, "graph_revision": GRAPH_REVISION,
                                       "stages": {"onnx": onnx_record}}))

        quantizations = [q for f, q in request.targets if f == "tflite"]
        if quantizations:
            if request.graph == "fast":
                source = _fast_saved_models(model, reference, holdout, example, quantizations, onnx_record, staging,
                                            rungs, say, timings)
            else:
                source = _onnx2tf_saved_model(onnx_path, onnx_record, staging, say, timings)
            staged += _tflite(request, variant, quantizations, source, onnx_logits, data, preprocessing, base,
                              staging, judge, say, timings)

        # 3. Everything passed: write manifests, then move artifacts into place, manifest first.
        written, manifests = [], []
        for path, record in staged:
            record["parity"] = [r for r in rungs if r["rung"] in _ladder_for(record)]
            record["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
            manifests.append(manifest.write_manifest(path, record))
        interrupts.check()  # the last point where an interrupt leaves nothing behind
        with interrupts.deferred():  # renames within one file system: milliseconds, and never half done
            for path, _ in staged:
                target = request.output_dir / path.name
                man = manifest.manifest_path(path)
                shutil.move(str(man), manifest.manifest_path(target))
                shutil.move(str(path), target)
                written.append(target)
        return ExportResult(written, [manifest.manifest_path(p) for p in written], rungs, timings)


def _plain(text: str) -> str:
    """``text`` with its square brackets escaped: progress lines are console markup, and file names are not."""
    from rich.markup import escape

    return escape(text)


def _checking(progress: Progress | None) -> Progress:
    """``progress`` that first stops the export if an interrupt arrived: every stage announces itself, so an
    interrupt a stage swallowed (TensorFlow's converter can) ends the export at the next one at the latest."""

    def say(message: str) -> None:
        interrupts.check()
        if progress:
            progress(message)

    return say


def _ladder_for(record: dict) -> set[str]:
    if record["format"] == "onnx":
        return {"deploy", "deploy_fast_onnxruntime", "onnx"}
    rungs = {"deploy", "deploy_fast_onnxruntime", "onnx", "deploy_fast", "tflite_float32"}
    rungs.add(f"tflite_{record['quantize']}")
    return rungs


@dataclass
class _TfliteSource:
    """Where the TFLite files come from: a SavedModel per quantization and the records of its making."""

    saved_models: dict[str, Path]  # quantization → SavedModel (int8 may use its own lowering)
    stages: dict[str, Any]  # manifest "stages" entries (onnx, onnx2tf or tf_graph records)
    input_layout: str


def _fast_saved_models(model, reference, holdout, example, quantizations, onnx_record, staging, rungs, say,
                       timings) -> _TfliteSource:
    """The fast deploy graph (rung ``deploy_fast`` against the training form), lowered to TensorFlow.

    Float formats come from one lowering; int8 from the fast graph's ``relu_max`` form (max(p, q) as
    q + relu(p - q), p - q formed on the coefficients) lowered with max(a, b) written as b + relu(a - b),
    because XNNPACK runs int8 MAXIMUM in its slow built-in kernel (measured in export/tf_graph.py) and its
    int8 MUL/ADD are slower than float ones."""
    import torch

    from .fast import to_fast_deploy

    say("building the fast deploy graph (permutations folded into weights) and lowering it to TensorFlow")
    start = time.perf_counter()
    with torch.no_grad():
        fast = to_fast_deploy(model)
    _form_rung("deploy_fast", fast, reference, holdout, rungs)
    folders, records = lower_fast_graph(fast, example, staging, int8="int8" in quantizations)
    saved = {"float32": folders["float"], "float16": folders["float"], "dynamic": folders["float"]}
    if "int8" in folders:
        saved["int8"] = folders["int8"]
    timings["tf_graph_s"] = time.perf_counter() - start
    return _TfliteSource(saved, {"onnx": onnx_record, **records}, records["tf_graph"]["input_layout"])


def _form_rung(name: str, fast, reference: np.ndarray, holdout, rungs: list[dict]) -> np.ndarray:
    """Judge a deploy form's logits (the reference or a fast graph) against the training form's, as rung
    ``name``; returns them."""
    import torch

    from . import parity

    with torch.no_grad():
        logits = fast(holdout).numpy()
    metrics = parity.compare(reference, logits)
    rungs.append({"rung": name, "reference": "pytorch training form",
                  "passed": metrics["rel_max_abs_err"] <= DEPLOY_LIMIT, "metric": "rel_max_abs_err",
                  "value": metrics["rel_max_abs_err"], "limit": DEPLOY_LIMIT, **metrics})
    if not rungs[-1]["passed"]:
        raise ParityFailure(f"parity rung '{name}' broke: rel_max_abs_err "
                            f"{metrics['rel_max_abs_err']:.3g} > {DEPLOY_LIMIT:g}", rungs)
    return logits


def lower_fast_graph(fast, example, folder: Path, int8: bool = True) -> tuple[dict[str, Path], dict[str, dict]]:
    """The fast graph lowered to TensorFlow SavedModels in ``folder``: ``float`` (for float32, float16 and
    dynamic TFLite) and, with ``int8``, the ``relu_max`` form lowered with max(a, b) as b + relu(a - b).
    Returns the SavedModel folders and their manifest stage records (``tf_graph``, ``tf_graph_int8``).
    scripts/bench_fast.py calls this too, so it times exactly what the export ships."""
    from . import tf_graph
    from .fast import relu_max_form

    folders = {"float": folder / "tf_graph"}
    records = {"tf_graph": tf_graph.export_saved_model(fast, example, folders["float"])}
    if int8:
        folders["int8"] = folder / "tf_graph_int8"
        records["tf_graph_int8"] = {**tf_graph.export_saved_model(relu_max_form(fast), example, folders["int8"],
                                                                  max_via_relu=True), "relu_max": True}
    return folders, records


def _onnx2tf_saved_model(onnx_path, onnx_record, staging, say, timings) -> _TfliteSource:
    from . import tflite as tflite_stage

    say("converting ONNX → TensorFlow SavedModel with onnx2tf (the slow step)")
    saved_model, convert_record = tflite_stage.onnx_to_saved_model(onnx_path, staging / "onnx2tf")
    timings["onnx2tf_s"] = convert_record.get("wall_s", 0.0)
    return _TfliteSource({q: saved_model for q in QUANTIZATIONS}, {"onnx": onnx_record, "onnx2tf": convert_record},
                         convert_record.get("input_layout", "NHWC"))


def _tflite(request, variant, quantizations, source: _TfliteSource, onnx_logits, data, preprocessing, base,
            staging, judge, say, timings) -> list[tuple[Path, dict]]:
    from . import inspect as tfl_inspect
    from . import tflite as tflite_stage
    from .calibration import nhwc, record_for_artifact

    # float32 is always built: it is the reference of the quantized rungs.
    order = ["float32"] + [q for q in QUANTIZATIONS if q in quantizations and q != "float32"]
    calibration_nhwc = nhwc(data.calibration)
    float_logits = None
    staged = []
    for quantize in order:
        say(f"building TFLite {quantize}")
        path = staging / artifact_name(variant, request.input_size, "tflite", quantize)
        start = time.perf_counter()
        record = tflite_stage.saved_model_to_tflite(source.saved_models[quantize], path, quantize,
                                                    calibration_nhwc if quantize == "int8" else None,
                                                    io_dtype=request.io_dtype, per_channel=request.per_channel)
        timings[f"tflite_{quantize}_s"] = time.perf_counter() - start
        inventory = tfl_inspect.tflite_op_inventory(path)
        foreign = tfl_inspect.non_builtin_ops(inventory)
        if foreign:
            raise MicronetError(f"TFLite {quantize} uses non-builtin ops {foreign}; only builtin ops are allowed")
        logits = tfl_inspect.run_tflite(path, data.holdout)
        if quantize == "float32":
            float_logits = judge("tflite_float32", onnx_logits, logits)
        else:
            judge(f"tflite_{quantize}", float_logits, logits)
        if quantize not in quantizations:
            continue
        io = tfl_inspect.tflite_io_spec(path)
        staged.append((path, {**base, "format": "tflite", "quantize": quantize,
                              "calibration": record_for_artifact(data.record, int8=quantize == "int8"),
                              "per_channel": request.per_channel if quantize in ("int8", "dynamic") else None,
                              "input": _io_spec({**io["input"], "layout": source.input_layout}, preprocessing),
                              "output": _io_spec(io["output"]),
                              "ops": {"total": sum(inventory.values()), "by_op": inventory},
                              "graph": request.graph,
                              "graph_revision": GRAPH_REVISION,
                              "stages": {**source.stages, "tflite": record}}))
    return staged
