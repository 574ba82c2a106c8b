"""The export's stages: each builds one artifact from another and, where it changes the computation, judges
it on the parity ladder.

Every stage has one signature, ``stage(ctx, source) -> Artifact``: ``source`` is the artifact it is built
from, carrying the logits the new one is judged against; the result carries the new artifact (a PyTorch
graph, a file or a SavedModel folder), its own logits and the manifest records of its making. ``STAGES``
maps every artifact name to the stage that builds it; export/plan.py says which of them an export needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from micronet.errors import MicronetError
from micronet.preprocess import Preprocessing

from .calibration import CalibrationData
from .ladder import Ladder, Progress
from .plan import TRAINING
from .request import FORMAT_QUANTIZATIONS, QUANTIZATIONS, ExportRequest, artifact_name

#: How the ladder names the training form's logits, the reference of every deploy-form rung.
TRAINING_REFERENCE = "pytorch training form"


@dataclass(frozen=True)
class Artifact:
    """One built thing and what the next stage needs of it."""

    name: str  # the plan's name for it; a judged artifact's rung has the same name
    value: Any  # a torch module, or the Path of a file or SavedModel folder
    logits: np.ndarray  # on the held-out images: the reference of the next rung
    reference: str  # whose logits ``logits`` are, as the next rung records it
    layout: str  # input layout: NCHW (PyTorch, ONNX) or NHWC (TensorFlow, TFLite)
    records: dict[str, dict]  # manifest ``stages`` records of its making (its sources' included)

    def judged_against(self, other: Artifact) -> Artifact:
        """This artifact as the source of a stage whose result is judged against ``other``'s logits (the
        quantized TFLite files against float32 TFLite): ``other``'s records join the lineage."""
        return dataclasses.replace(self, logits=other.logits, reference=other.reference,
                                   records={**other.records, **self.records})


@dataclass(frozen=True)
class ExportContext:
    """What every stage may read: the request, the prepared model and images, where to write, the ladder."""

    request: ExportRequest
    variant: str  # the canonical variant name
    model: Any  # the training form, in eval mode (BatchNorm re-estimated for untrained weights)
    weights: dict  # the manifest's ``weights`` record
    data: CalibrationData
    preprocessing: Preprocessing
    ladder: Ladder
    say: Progress
    staging: Path | None = None  # the staging folder, once the export has one
    #: Tuned fast-graph profiles by profile name (``--tune``; export/tune/); empty: every profile's default.
    profiles: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: The tuning record of each tuned format ("tflite", "onnx"), for the manifests.
    tuning: dict[str, dict] = dataclasses.field(default_factory=dict)
    task: str = "classification"  # the registry's task: "pose" and "segmentation" have dense outputs

    @property
    def dense(self) -> bool:
        """Whether the outputs are maps (heatmaps, per-pixel logits) rather than class logits."""
        return self.task != "classification"

    @property
    def hw(self) -> tuple[int, int]:
        size = self.request.input_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @cached_property
    def output_shape(self) -> tuple[int, ...]:
        """One sample's output as PyTorch gives it: (classes,) or (maps, H / stride, W / stride)."""
        if not self.dense:
            return (self.request.num_classes,)
        from .dense import DENSE_TASKS

        stride = DENSE_TASKS[self.task].output_stride
        return (self.request.num_classes, self.hw[0] // stride, self.hw[1] // stride)

    def dense_output_fields(self, layout: str) -> dict:
        """The manifest's output additions of a dense model (layout, stride, names)."""
        from .dense import DENSE_TASKS, output_fields

        return output_fields(DENSE_TASKS[self.task], list(self.output_shape), layout)

    def as_reference_layout(self, outputs: np.ndarray) -> np.ndarray:
        """A file's outputs with (C, H, W) maps in PyTorch's NCHW order: TFLite files give NHWC maps. The
        layout is decided by the shape; a file whose output fits neither order is one error line."""
        outputs = np.asarray(outputs)
        if not self.dense or outputs.shape[1:] == self.output_shape:
            return outputs
        c, h, w = self.output_shape
        if outputs.shape[1:] == (h, w, c):
            return np.ascontiguousarray(outputs.transpose(0, 3, 1, 2))
        raise MicronetError(f"the file's output {list(outputs.shape[1:])} is neither NCHW nor NHWC of "
                            f"{list(self.output_shape)}")

    @cached_property
    def holdout(self):
        """The held-out images as a tensor (NCHW float32)."""
        import torch

        return torch.from_numpy(self.data.holdout)

    @property
    def example(self):
        """The example input the exporters trace: one zero image."""
        import torch

        return torch.zeros(1, 3, *self.hw)

    @cached_property
    def calibration_nhwc(self) -> np.ndarray:
        from .calibration import nhwc

        return nhwc(self.data.calibration)

    def training(self) -> Artifact:
        """The training form with its logits: the source of every deploy form."""
        logits = forward_in_batches(self.model, self.holdout)
        return Artifact(TRAINING, self.model, logits, TRAINING_REFERENCE, "NCHW", {})

    def file(self, fmt: str, quantize: str) -> Path:
        """Where the artifact of that kind is written in the staging folder."""
        assert self.staging is not None, "files are written only inside the staging folder"
        return self.staging / artifact_name(self.variant, self.request.input_size, fmt, quantize)


Stage = Callable[[ExportContext, Artifact], Artifact]


# --- PyTorch graphs --------------------------------------------------------------------------------------------

def forward_in_batches(graph, images) -> np.ndarray:
    """``graph``'s outputs on ``images`` (an NCHW tensor), run a pixel-bounded batch at a time
    (export/batching.py: a whole hold-out set of large frames does not fit in memory)."""
    import torch

    from .batching import images_per_batch

    step = images_per_batch(images.shape[2], images.shape[3])
    with torch.no_grad():
        return np.concatenate([graph(images[i:i + step]).numpy() for i in range(0, len(images), step)])


def _judged_form(ctx: ExportContext, name: str, graph, source: Artifact) -> Artifact:
    """``graph`` judged against ``source``'s logits as rung ``name`` (quietly: no progress line)."""
    logits = forward_in_batches(graph, ctx.holdout)
    ctx.ladder.judge(name, source.reference, source.logits, logits, announce=False)
    return Artifact(name, graph, logits, name, "NCHW", source.records)


def _transformed(source: Artifact, name: str, graph) -> Artifact:
    """A form of ``source`` that computes the same function (not judged: its successor is, against
    ``source``'s logits)."""
    return dataclasses.replace(source, name=name, value=graph)


def deploy_form(ctx: ExportContext, training: Artifact) -> Artifact:
    """The reference deploy form (BatchNorm folded, Shift-Max constants folded): ``--graph reference``."""
    import torch

    from .deploy import to_deploy

    permutes = {}
    if ctx.dense:
        from .dense import DENSE_TASKS

        gather = DENSE_TASKS[ctx.task].permutes
        permutes = {"shift": gather, "shuffle": gather}
    with torch.no_grad():
        graph = to_deploy(training.value, **permutes)
    return _judged_form(ctx, "deploy", graph, training)


def fast_graph_for(profile: str) -> Stage:
    """The stage that builds export/fast/'s graph for the ONNX runtime profile ``profile`` ("portable" or
    "onnxruntime"; export/onnx_targets.py): the source of an ONNX file. Rung ``deploy_fast_<profile>``."""

    def stage(ctx: ExportContext, training: Artifact) -> Artifact:
        import torch

        from .fast import to_fast_deploy

        ctx.say(f"building the fast deploy graph ({profile} profile) for ONNX")
        with torch.no_grad():
            graph = to_fast_deploy(training.value, profile=ctx.profiles.get(profile, profile))
        return _judged_form(ctx, f"deploy_fast_{profile}", graph, training)

    stage.__name__ = stage.__qualname__ = f"fast_graph_for_{profile}"
    return stage


def batch_one(ctx: ExportContext, graph: Artifact) -> Artifact:
    """The batch-of-one form for an ONNX file with a fixed batch: its products are BatchNormalizations with
    mean 0, variance 1, epsilon 0 and compute exactly the same (the onnx rung checks the file against the
    logits of the graph it came from)."""
    from .fast import batch_one_form

    return _transformed(graph, "batch_one", batch_one_form(graph.value))


def fast_graph_for_xnnpack(ctx: ExportContext, training: Artifact) -> Artifact:
    """export/fast/'s graph built for XNNPACK (permutations folded into weights): the source of TFLite."""
    import torch

    from .fast import to_fast_deploy

    ctx.say("building the fast deploy graph (permutations folded into weights) and lowering it to TensorFlow")
    with torch.no_grad():
        graph = to_fast_deploy(training.value, profile=ctx.profiles.get("xnnpack", "xnnpack"))
    return _judged_form(ctx, "deploy_fast", graph, training)


def relu_max(ctx: ExportContext, graph: Artifact) -> Artifact:
    """The fast graph's ``relu_max`` form (max(p, q) as q + relu(p - q), p - q formed on the coefficients), the
    source of int8 TFLite: XNNPACK runs int8 MAXIMUM in its slow built-in kernel, and its int8 MUL/ADD are
    slower than float ones."""
    from .fast import relu_max_form

    return _transformed(graph, "relu_max", relu_max_form(graph.value))


# --- files -----------------------------------------------------------------------------------------------------

def onnx_file(ctx: ExportContext, graph: Artifact) -> Artifact:
    """The ONNX file, judged in ONNX Runtime against the graph it was exported from (rung ``onnx``)."""
    from .onnx_targets import ONNX_TARGETS

    fast = ctx.request.graph == "fast"
    target = ONNX_TARGETS[ctx.request.optimize_for] if fast else None
    artifact = _onnx(ctx, graph, "onnx", ctx.file("onnx", "float32"), ctx.request.dynamic_batch)
    record = artifact.records["onnx"]
    record["graph"] = f"fast/{target.profile}" if target else "reference"
    record["optimized_for"] = target.name if target else "portable"
    record["known_to_fail_in"] = dict(target.known_to_fail_in) if target else {}
    return artifact


def portable_onnx_file(ctx: ExportContext, graph: Artifact) -> Artifact:
    """A portable, fixed-batch ONNX file that is not shipped (rung ``onnx_portable``): the other formats'
    converters take it when the shipped ONNX file is built for ONNX Runtime or has a symbolic batch."""
    assert ctx.staging is not None
    artifact = _onnx(ctx, graph, "onnx_portable", ctx.staging / "portable" / "model.onnx", False)
    artifact.records["onnx_portable"]["graph"] = "fast/portable"
    return artifact


def _onnx(ctx: ExportContext, graph: Artifact, name: str, path: Path, dynamic_batch: bool) -> Artifact:
    from . import onnx as onnx_export

    ctx.say("exporting ONNX" if name == "onnx" else "exporting a portable ONNX file for the other converters")
    path.parent.mkdir(parents=True, exist_ok=True)
    record = onnx_export.export_onnx(graph.value, ctx.example, path, dynamic_batch=dynamic_batch)
    record["batch_one_products"] = graph.name == "batch_one"
    logits = onnx_export.run_onnx(path, ctx.data.holdout)
    ctx.ladder.judge(name, graph.reference, graph.logits, logits)
    return Artifact(name, path, logits, name, "NCHW", {**graph.records, name: record})


def lower_to_saved_model(graph, example, folder: Path, *, relu_max: bool = False) -> dict:
    """A fast graph lowered op for op to a TensorFlow SavedModel in ``folder`` (NHWC; export/tf_graph.py);
    a ``relu_max`` form is lowered with max(a, b) written as b + relu(a - b). Returns the stage record."""
    from . import tf_graph

    record = tf_graph.export_saved_model(graph, example, folder, max_via_relu=relu_max)
    return {**record, "relu_max": True} if relu_max else record


def lower_fast_graph(fast, example, folder: Path, int8: bool = True) -> tuple[dict[str, Path], dict[str, dict]]:
    """The fast graph lowered to TensorFlow SavedModels in ``folder``: ``float`` (for float32, float16 and
    dynamic TFLite) and, with ``int8``, its ``relu_max`` form. Returns the SavedModel folders and their manifest
    stage records (``tf_graph``, ``tf_graph_int8``). scripts/bench_fast.py calls this, so it times exactly
    what the export ships."""
    from .fast import relu_max_form

    folders = {"float": folder / "tf_graph"}
    records = {"tf_graph": lower_to_saved_model(fast, example, folders["float"])}
    if int8:
        folders["int8"] = folder / "tf_graph_int8"
        records["tf_graph_int8"] = lower_to_saved_model(relu_max_form(fast), example, folders["int8"], relu_max=True)
    return folders, records


def _saved_model(ctx: ExportContext, graph: Artifact, name: str) -> Artifact:
    assert ctx.staging is not None
    folder = ctx.staging / name
    record = lower_to_saved_model(graph.value, ctx.example, folder, relu_max=graph.name == "relu_max")
    return dataclasses.replace(graph, name=name, value=folder, layout=record["input_layout"],
                               records={**graph.records, name: record})


def tf_graph(ctx: ExportContext, graph: Artifact) -> Artifact:
    """The fast graph as a SavedModel: the source of float32, float16 and dynamic-range TFLite."""
    return _saved_model(ctx, graph, "tf_graph")


def tf_graph_int8(ctx: ExportContext, graph: Artifact) -> Artifact:
    """The ``relu_max`` form as a SavedModel: the source of int8 TFLite."""
    return _saved_model(ctx, graph, "tf_graph_int8")


def onnx2tf(ctx: ExportContext, onnx: Artifact) -> Artifact:
    """The ONNX file converted to a SavedModel by onnx2tf (``--graph reference``)."""
    from . import tflite as tflite_convert

    assert ctx.staging is not None
    ctx.say("converting ONNX → TensorFlow SavedModel with onnx2tf (the slow step)")
    saved_model, record = tflite_convert.onnx_to_saved_model(onnx.value, ctx.staging / "onnx2tf")
    return dataclasses.replace(onnx, name="onnx2tf", value=saved_model, layout=record.get("input_layout", "NHWC"),
                               records={**onnx.records, "onnx2tf": record})


def tflite(quantize: str) -> Stage:
    """The stage that converts a SavedModel to a TFLite file in ``quantize`` (rung ``tflite_<quantize>``,
    judged against the source's logits: the graph it was lowered from for float32, float32 TFLite else)."""

    def stage(ctx: ExportContext, saved_model: Artifact) -> Artifact:
        from . import inspect as tfl_inspect
        from . import tflite as tflite_convert

        ctx.say(f"building TFLite {quantize}")
        path = ctx.file("tflite", quantize)
        record = tflite_convert.saved_model_to_tflite(
            saved_model.value, path, quantize, ctx.calibration_nhwc if quantize == "int8" else None,
            io_dtype=ctx.request.io_dtype, per_channel=ctx.request.per_channel)
        foreign = tfl_inspect.non_builtin_ops(tfl_inspect.tflite_op_inventory(path))
        if foreign:
            raise MicronetError(f"TFLite {quantize} uses non-builtin ops {foreign}; only builtin ops are allowed")
        logits = ctx.as_reference_layout(tfl_inspect.run_tflite(path, ctx.data.holdout))
        name = f"tflite_{quantize}"
        ctx.ladder.judge(name, saved_model.reference, saved_model.logits, logits)
        # A quantized file's source carries float32 TFLite's records (its reference): its own replaces that one.
        sources = {k: v for k, v in saved_model.records.items() if k != "tflite"}
        return Artifact(name, path, logits, name, saved_model.layout, {**sources, "tflite": record})

    stage.__name__ = stage.__qualname__ = f"tflite_{quantize}"
    return stage


def tflite_float16(ctx: ExportContext, float32: Artifact) -> Artifact:
    """Float16 TFLite rewritten from the float32 file: filters and weight matrices in float16, vectors kept
    float32 (export/tflite_fp16.py says why), judged against float32 TFLite (rung ``tflite_float16``)."""
    from . import inspect as tfl_inspect
    from .tflite_fp16 import float16_weights

    ctx.say("building TFLite float16 (weights in float16, vectors kept float32)")
    path = ctx.file("tflite", "float16")
    record = float16_weights(float32.value, path, keep_vectors_float32=True)
    logits = ctx.as_reference_layout(tfl_inspect.run_tflite(path, ctx.data.holdout))
    ctx.ladder.judge("tflite_float16", float32.reference, float32.logits, logits)
    sources = {k: v for k, v in float32.records.items() if k != "tflite"}
    return Artifact("tflite_float16", path, logits, "tflite_float16", float32.layout,
                    {**sources, "tflite_float32": float32.records["tflite"], "tflite": record})


def edge_format(fmt: str, quantize: str) -> Stage:
    """The stage that converts the portable ONNX file to ``fmt`` (OpenVINO, ncnn, MNN; export/edge.py) in
    ``quantize`` and judges it in its own runtime against the ONNX file's logits in ONNX Runtime (rung
    ``<fmt>_<quantize>``). OpenVINO int8 is calibrated on the images TFLite int8 uses."""

    def stage(ctx: ExportContext, onnx: Artifact) -> Artifact:
        from . import edge

        ctx.say(f"converting ONNX → {edge.DISPLAY[fmt]} {quantize}")
        path = ctx.file(fmt, quantize)
        calibration = ctx.data.calibration if quantize == "int8" else None
        record = edge.convert(fmt, quantize, onnx.value, path, calibration)
        logits = edge.run_edge(fmt, path, ctx.data.holdout)
        name = f"{fmt}_{quantize}"
        ctx.ladder.judge(name, onnx.reference, onnx.logits, logits)
        return Artifact(name, path, logits, name, "NCHW", {**onnx.records, fmt: record})

    stage.__name__ = stage.__qualname__ = f"{fmt}_{quantize}"
    return stage


#: The stage that builds each artifact the plan can name.
STAGES: dict[str, Stage] = {
    "deploy": deploy_form,
    "deploy_fast_onnxruntime": fast_graph_for("onnxruntime"),
    "deploy_fast_portable": fast_graph_for("portable"),
    "batch_one": batch_one,
    "onnx": onnx_file,
    "onnx_portable": portable_onnx_file,
    "deploy_fast": fast_graph_for_xnnpack,
    "relu_max": relu_max,
    "tf_graph": tf_graph,
    "tf_graph_int8": tf_graph_int8,
    "onnx2tf": onnx2tf,
    **{f"tflite_{q}": tflite(q) for q in QUANTIZATIONS if q != "float16"},
    "tflite_float16": tflite_float16,
    **{f"{fmt}_{q}": edge_format(fmt, q) for fmt, qs in FORMAT_QUANTIZATIONS.items() if fmt not in ("onnx", "tflite")
       for q in qs},
}
