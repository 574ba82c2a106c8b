"""The export pipeline: check the request, prepare the model and images, build what the plan lists, write
the manifests, move the files into place.

The stages themselves live in export/stages.py, the choice of stages in export/plan.py, the parity ladder in
export/ladder.py. Artifacts are built in a staging folder inside the output folder and moved into place only
when every planned stage *and its parity rung* passed, so a failed or interrupted export never leaves a file
that looks finished.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

from micronet import interrupts
from micronet.atomic import remove_abandoned_staging, replace_dir, replacing, staging_dir
from micronet.errors import MicronetError
from micronet.preprocess import Preprocessing

from .batching import holdout_maps, images_per_batch
from .ladder import Ladder, ParityFailure, Progress
from .plan import TRAINING, ExportPlan, plan
from .request import (ALL_KINDS, FORMATS, QUANTIZATIONS, TFLITE_GRAPHS, ArtifactKind, ExportRequest,
                      ExportResult, artifact_name, resolve_kinds)
from .stages import STAGES, Artifact, ExportContext, lower_fast_graph

__all__ = ["ALL_KINDS", "FORMATS", "GRAPH_REVISION", "QUANTIZATIONS", "STAGING_PREFIX", "TFLITE_GRAPHS",
           "ArtifactKind", "ExportPlan", "ExportRequest", "ExportResult", "ParityFailure", "artifact_name", "export",
           "lower_fast_graph", "plan", "resolve_kinds"]

#: Bumped whenever a graph rewrite changes what an export produces, so cached exports are rebuilt.
GRAPH_REVISION = 7
#: Artifacts are built in ``<output>/.micronet-export-XXXX/`` (see ``export``); bench/cache.py exports through
#: the same function, so its cache folders are cleaned the same way.
STAGING_PREFIX = ".micronet-export-"


def export(request: ExportRequest, progress: Progress | None = None) -> ExportResult:
    """Run the whole export for ``request``; returns what was written, or raises ``MicronetError``."""
    say = _checking(progress)
    request, variant = resolved(request, say)
    steps = plan(request)
    ladder = Ladder(progress=say)
    tuning = _tuning(request, variant, say)  # reaches the device and checks a reused record before any work
    with ladder.stage("prepare"):
        ctx = prepare(request, variant, ladder, say)
    interrupts.check()
    if tuning is not None:
        with ladder.stage("tune"):
            from .tune import tune_export

            profiles, records = tune_export(tuning, ctx, say)
        ctx = dataclasses.replace(ctx, profiles=profiles, tuning=records)
    with staging_dir(request.output_dir, STAGING_PREFIX) as staging:
        ctx = dataclasses.replace(ctx, staging=staging)
        built = build(ctx, steps)
        files = write_manifests(ctx, steps, built)
        written = commit(files, request.output_dir)
    if request.reference_weights is not None:
        save_reference(ctx.model, request.reference_weights)
    return ExportResult(written, [_manifest_path(p) for p in written], ladder.rungs, ladder.timings, steps.names)


def save_reference(model, path: Path) -> None:
    """The exported network's PyTorch weights, atomically, in the layout ``load_weights`` reads."""
    import torch

    with replacing(path) as tmp:
        torch.save(model.state_dict(), tmp)


def validate(request: ExportRequest) -> str:
    """Refuse a request that cannot be exported; returns the canonical variant name."""
    return resolved(request)[1]


def resolved(request: ExportRequest, say: Progress | None = None) -> tuple[ExportRequest, str]:
    """``request`` with the task's defaults filled in (input size, output count; a dense task's graph), checked;
    and the canonical variant name. A pose or segmentation variant is exported from the reference graph
    (export/dense.py says why): asked for the fast one (the default), the export says so and goes on."""
    from micronet.registry import TASK_INPUT_SIZE, TASK_OUTPUTS, resolve_variant

    from .dense import DENSE_TASKS, check_kinds, check_size

    info = resolve_variant(request.variant, task=None)
    outputs = request.num_classes if request.num_classes is not None else TASK_OUTPUTS[info.task][0]
    dense = DENSE_TASKS.get(info.task)
    if dense is None:
        size = request.input_size if request.input_size is not None else TASK_INPUT_SIZE[info.task][0]
        if not isinstance(size, int):
            if size[0] != size[1]:
                raise MicronetError(f"--input-size {size[0]}x{size[1]} does not fit {info.name}: the classifiers "
                                    "take a square input, e.g. 224")
            size = int(size[0])
        request = dataclasses.replace(request, input_size=size, num_classes=outputs)
    else:
        size = check_size(request.input_size if request.input_size is not None else TASK_INPUT_SIZE[info.task],
                          info.name)
        check_kinds(dense, request.kinds, request.graph, info.name)
        if request.graph != dense.graph and say is not None:
            say(f"[yellow]note:[/yellow] {info.name} is exported from the {dense.graph} graph: the fast deploy "
                f"graph has no {info.task} head (README, \"Pose and segmentation\")")
        request = dataclasses.replace(request, input_size=size, num_classes=outputs, graph=dense.graph,
                                      optimize_for="portable")
    request.check()
    return request, info.name


def task_of(variant: str) -> str:
    """The task of ``variant`` ("classification", "pose", "segmentation"), or one line if it is unknown."""
    from micronet.registry import resolve_variant

    return resolve_variant(variant, task=None).task


def kinds_for(variant: str, fmt: str | None, quantize: str | None, all_formats: bool, graph: str = "fast"
              ) -> list[ArtifactKind]:
    """``resolve_kinds`` for ``variant``'s task: ``--all`` of a pose or segmentation variant means every kind
    of the formats its task is exported in (export/dense.py)."""
    from .dense import DENSE_TASKS

    dense = DENSE_TASKS.get(task_of(variant))
    if dense is None:
        return resolve_kinds(fmt, quantize, all_formats, graph)
    every = (fmt is not None and fmt.lower() == "all") or all_formats
    kinds = resolve_kinds(fmt, quantize, all_formats, dense.graph)
    return [kind for kind in kinds if kind.format in dense.formats] if every else kinds


def _tuning(request: ExportRequest, variant: str, say: Progress):
    if request.tune is None:
        return None
    from .tune import prepare_tuning

    return prepare_tuning(request, variant, say)


def prepare(request: ExportRequest, variant: str, ladder: Ladder, say: Progress) -> ExportContext:
    """Model, weights and images, every input checked before anything is written; stale staging folders of
    killed exports removed; BatchNorm statistics re-estimated for untrained weights."""
    import torch

    from micronet.model import build_model

    from . import calibration as calib
    from .deploy import recalibrate_batchnorm

    from .dense import DENSE_TASKS, build_dense_model
    from .dense_calibration import build_dense_calibration

    task = task_of(variant)
    with torch.random.fork_rng():  # untrained weights depend on --seed only: exports are reproducible
        torch.manual_seed(request.seed)
        if task in DENSE_TASKS:
            model = build_dense_model(variant, task, request.input_size, request.num_classes)
        else:
            model = build_model(variant, num_classes=request.num_classes, input_size=request.input_size)
    weights: dict = {"state": "untrained"}
    if request.weights:
        from micronet.weights import load_weights

        weights = {"state": "loaded", **load_weights(model, request.weights)}
    model.eval()
    if task in DENSE_TASKS:  # H x W person crops or frames: the classifiers' square crop does not apply
        preprocessing = Preprocessing()
        holdout = holdout_maps(request.holdout, *request.input_size)
        if holdout < request.holdout:
            say(f"[yellow]note:[/yellow] parity on {holdout} hold-out images at {request.input_size[0]}x"
                f"{request.input_size[1]} (not {request.holdout}): each rung keeps its maps in memory")
        data = build_dense_calibration(task, request.calibration, request.input_size, count=request.calib_count,
                                       seed=request.seed, holdout=holdout)
    else:
        preprocessing = Preprocessing(input_size=request.input_size)
        data = calib.build_calibration(request.calibration, count=request.calib_count, seed=request.seed,
                                       preprocessing=preprocessing, holdout=request.holdout)
    _check_output_dir(request.output_dir)
    for stale in remove_abandoned_staging(request.output_dir, STAGING_PREFIX):
        say(_plain(stale.describe()))
    interrupts.check()
    calibrated = {ArtifactKind("tflite", "int8"), ArtifactKind("openvino", "int8")} & set(request.kinds)
    if data.record.get("warning") and calibrated:  # only int8 activation ranges are fitted on them
        say(f"[bold yellow]warning:[/bold yellow] {data.record['warning']}")
    for line in (data.record.get("note"), calib.skipped_summary(data.record)):
        if line:
            say(f"[yellow]note:[/yellow] {_plain(line)}")
    ladder.untrained, ladder.task = weights["state"] == "untrained", task
    if ladder.untrained:
        say("untrained weights: re-estimating BatchNorm statistics on the calibration images")
        weights["batchnorm_recalibrated_on"] = recalibrate_batchnorm(model, batchnorm_batches(data.calibration))
    return ExportContext(request=request, variant=variant, model=model, weights=weights, data=data,
                         preprocessing=preprocessing, ladder=ladder, say=say, task=task)


def batchnorm_batches(images: np.ndarray) -> list[torch.Tensor]:
    """The calibration images (N, C, H, W) in batches bounded by pixels (export/batching.py), of at least 2
    images (a batch of one gives a pooled 1x1 map a zero variance); a last batch of one is dropped."""
    import torch

    per_batch = images_per_batch(images.shape[2], images.shape[3], at_least=2)
    batches = [torch.from_numpy(images[i:i + per_batch]) for i in range(0, len(images), per_batch)]
    return [b for b in batches if len(b) > 1] or [torch.from_numpy(images)]


def build(ctx: ExportContext, export_plan: ExportPlan) -> dict[str, Artifact]:
    """Run the plan's steps in order, each timed on the ladder; returns every artifact by name."""
    built = {TRAINING: ctx.training()}
    for step in export_plan.steps:
        source = built[step.source]
        if step.reference:
            source = source.judged_against(built[step.reference])
        interrupts.check()
        with ctx.ladder.stage(step.name):
            built[step.name] = STAGES[step.name](ctx, source)
    return built


def write_manifests(ctx: ExportContext, export_plan: ExportPlan, built: dict[str, Artifact]) -> list[Path]:
    """Write the manifest of every requested file (in the staging folder); returns the files."""
    from micronet.counting import count_model

    from .manifest import write_manifest

    counts = count_model(ctx.model)
    size = ctx.request.input_size
    base = {"variant": ctx.variant, "task": ctx.task, "num_classes": ctx.request.num_classes,
            "input_size": size if isinstance(size, int) else list(size), "params": counts.params, "madds": counts.madds, "weights": ctx.weights, "calibration": ctx.data.record}
    files = []
    for kind, name in export_plan.shipped.items():
        artifact = built[name]
        describe = {"onnx": _onnx_fields, "tflite": _tflite_fields}.get(kind.format, _edge_fields)
        write_manifest(artifact.value, {**base, "format": kind.format, "quantize": kind.quantize,
                                        **describe(ctx, kind, artifact),
                                        "graph": ctx.request.graph, "graph_revision": GRAPH_REVISION,
                                        "stages": artifact.records,
                                        "parity": ctx.ladder.records(export_plan.lineage(name)),
                                        "timings_s": ctx.ladder.rounded_timings(),
                                        **_tuning_field(ctx, kind)})
        files.append(artifact.value)
    return files


def commit(files: list[Path], output_dir: Path) -> list[Path]:
    """Move the finished files into ``output_dir``, each manifest first; returns the files' new paths."""
    interrupts.check()  # the last point where an interrupt leaves nothing behind
    written = []
    with interrupts.deferred():  # renames within one file system: milliseconds, and never half done
        for path in files:
            target = output_dir / path.name
            shutil.move(str(_manifest_path(path)), _manifest_path(target))
            if path.is_dir():  # OpenVINO, ncnn: a folder (shutil.move would move it *into* an old one)
                replace_dir(path, target)
            else:
                shutil.move(str(path), target)
            written.append(target)
    return written


def _tuning_field(ctx: ExportContext, kind: ArtifactKind) -> dict:
    """``{"tuning": record}`` for a file built from a tuned fast graph (``--tune``); nothing otherwise."""
    record = ctx.tuning.get(kind.format) if kind.format in ("tflite", "onnx") else None
    return {"tuning": record} if record else {}


def _onnx_fields(ctx: ExportContext, kind: ArtifactKind, artifact: Artifact) -> dict:
    from .calibration import record_for_artifact

    shape = artifact.records["onnx"]["input"]["shape"]
    spec_in = {"name": "input", "layout": "NCHW", "shape": shape, "dtype": "float32"}
    spec_out = {"name": "logits", "shape": [shape[0], *ctx.output_shape], "dtype": "float32"}
    onnx = artifact.records["onnx"]
    output = _io_spec(spec_out)
    if ctx.dense:
        output.update(ctx.dense_output_fields("NCHW"))
    return {"calibration": record_for_artifact(ctx.data.record, int8=False),
            "optimized_for": onnx["optimized_for"], "known_to_fail_in": onnx["known_to_fail_in"],
            "input": _io_spec(spec_in, ctx.preprocessing, ctx), "output": output}


def _tflite_fields(ctx: ExportContext, kind: ArtifactKind, artifact: Artifact) -> dict:
    from . import inspect as tfl_inspect
    from .calibration import record_for_artifact
    from .tflite_versions import runtime_fields

    io = tfl_inspect.tflite_io_spec(artifact.value)
    inventory = tfl_inspect.tflite_op_inventory(artifact.value)
    output = _io_spec(io["output"])
    if ctx.dense:
        output.update(ctx.dense_output_fields(_dense_layout(io["output"]["shape"], ctx.output_shape)))
    return {"calibration": record_for_artifact(ctx.data.record, int8=kind.quantize == "int8"),
            "per_channel": ctx.request.per_channel if kind.quantize in ("int8", "dynamic") else None,
            "input": _io_spec({**io["input"], "layout": artifact.layout}, ctx.preprocessing, ctx),
            "output": output,
            "ops": {"total": sum(inventory.values()), "by_op": inventory},
            **runtime_fields(artifact.value)}


def _edge_fields(ctx: ExportContext, kind: ArtifactKind, artifact: Artifact) -> dict:
    """OpenVINO, ncnn, MNN: float32 NCHW in, logits out (the ONNX file's interface; the quantization is
    inside the model); the files, the converter's tool versions and options are in ``stages.<format>``."""
    from .calibration import record_for_artifact

    size = ctx.request.input_size
    record = artifact.records[kind.format]
    spec_in = {"name": _EDGE_IO[kind.format][0], "layout": "NCHW", "shape": [1, 3, size, size], "dtype": "float32"}
    spec_out = {"name": _EDGE_IO[kind.format][1], "shape": [1, ctx.request.num_classes], "dtype": "float32"}
    return {"calibration": record_for_artifact(ctx.data.record, int8=kind.format == "openvino" and
                                               kind.quantize == "int8"),
            "files": record["files"], "converter": record["tool_versions"],
            "input": _io_spec(spec_in, ctx.preprocessing), "output": _io_spec(spec_out)}


#: (input, output) tensor names as each runtime calls them: pnnx renames the blobs in0/out0.
_EDGE_IO = {"openvino": ("input", "logits"), "ncnn": ("in0", "out0"), "mnn": ("input", "logits")}


def _io_spec(io: dict, preprocessing: Preprocessing | None = None, ctx: ExportContext | None = None) -> dict:
    spec = {"name": io["name"], "shape": [int(d) for d in io["shape"]], "dtype": io["dtype"],
            "quantization": io.get("quantization")}
    if "layout" in io:
        spec["layout"] = io["layout"]
    if ctx is not None and ctx.dense:  # crops or frames at H x W (export/dense_calibration.py)
        spec["preprocessing"] = ctx.data.record["preprocessing"]
    elif preprocessing is not None:
        spec["preprocessing"] = preprocessing.to_dict()
    return spec


def _dense_layout(shape, nchw: tuple[int, ...]) -> str:
    """NCHW or NHWC: how a file's 4-D output holds the (C, H, W) maps."""
    return "NCHW" if tuple(int(d) for d in shape[1:]) == tuple(nchw) else "NHWC"


def _manifest_path(artifact: Path) -> Path:
    from .manifest import manifest_path

    return manifest_path(artifact)


def _check_output_dir(path: Path) -> None:
    """Fail before any work if the output folder cannot be written (the export takes minutes)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".micronet-write-test-"):
            pass
    except OSError as exc:
        raise MicronetError(f"cannot write to output folder {path}: {exc.strerror or exc}") from None


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
