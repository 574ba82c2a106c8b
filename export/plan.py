"""Which graphs and files an export builds: only those the requested artifact kinds need.

A plan is data: a list of steps, each naming the artifact it builds (``stages.STAGES`` holds the stage that
builds it), the artifact it is built from and, for the quantized TFLite files, the artifact it is judged
against. Tests and ``micronet export`` read it without building anything.

With the fast graph (the default):

* ONNX: the fast graph for the ``--optimize-for`` target (export/onnx_targets.py). ``portable`` (the default):
  the portable fast graph (rung ``deploy_fast_portable``) and the ONNX file (rung ``onnx``). ``onnxruntime``:
  the fast graph for ONNX Runtime (rung ``deploy_fast_onnxruntime``), its batch-of-one form unless
  ``--dynamic-batch``, the ONNX file.
* TFLite: the fast graph for XNNPACK (rung ``deploy_fast``), its SavedModel, float32 TFLite (rung
  ``tflite_float32``, judged against the fast graph it was lowered from; the reference of every quantized
  file, so it is built even when not asked for); int8 also the ``relu_max`` form and its SavedModel; float16 is
  rewritten from the float32 file (weights in float16, vectors kept float32: export/tflite_fp16.py).
* The other formats (OpenVINO, ncnn, MNN): each converted from a portable, fixed-batch ONNX file (rung
  ``<format>_<quantize>``, judged against that file in ONNX Runtime): the shipped ONNX file when it is one,
  else an unshipped one (steps ``deploy_fast_portable``, ``onnx_portable``).

With ``--graph reference``: the reference deploy form (rung ``deploy``) and its ONNX file, which onnx2tf
converts to the SavedModel of every TFLite file (float32 judged against the ONNX file) and the other formats'
converters take as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import parity
from .onnx_targets import ONNX_TARGETS
from .request import ALL_KINDS, QUANTIZATIONS, ArtifactKind, ExportRequest

#: The artifact every plan starts from: the training form and its logits (export/stages.py).
TRAINING = "training"


@dataclass(frozen=True)
class Step:
    name: str  # the artifact it builds; a judged artifact's rung has the same name
    source: str  # the artifact it is built from (and, unless ``reference`` is set, judged against)
    reference: str | None = None  # judged against this artifact's logits instead


@dataclass(frozen=True)
class ExportPlan:
    steps: tuple[Step, ...]
    shipped: dict[ArtifactKind, str]  # each requested kind → the step that builds its file

    @property
    def names(self) -> list[str]:
        return [step.name for step in self.steps]

    def lineage(self, name: str) -> list[str]:
        """The rungs that judge artifact ``name`` and everything it was built or judged from, sources first:
        the ``parity`` list of its manifest."""
        if name == TRAINING:
            return []
        step = next(s for s in self.steps if s.name == name)
        rungs = self.lineage(step.source)
        for rung in self.lineage(step.reference) if step.reference else []:
            if rung not in rungs:
                rungs.append(rung)
        return rungs + ([name] if name in parity.THRESHOLDS else [])


def plan(request: ExportRequest) -> ExportPlan:
    """The steps that build ``request.kinds`` and nothing else."""
    onnx = ArtifactKind("onnx", "float32") in request.kinds
    quantized = [q for q in QUANTIZATIONS if ArtifactKind("tflite", q) in request.kinds and q != "float32"]
    tflite = quantized or ArtifactKind("tflite", "float32") in request.kinds
    others = [kind for kind in request.kinds if kind.format not in ("onnx", "tflite")]
    if request.graph == "reference":
        steps = _reference_steps(tflite, quantized)
        others_source = "onnx"
    else:
        steps = _onnx_steps(request.optimize_for, request.dynamic_batch) if onnx else []
        others_source = "onnx" if onnx and _portable_fixed_batch(request) else "onnx_portable"
        if others and others_source == "onnx_portable":
            steps += [Step("deploy_fast_portable", TRAINING), Step("onnx_portable", "deploy_fast_portable")]
        steps += _tflite_steps(quantized) if tflite else []
    steps += [Step(artifact_step(kind), others_source) for kind in others]
    shipped = {kind: artifact_step(kind) for kind in ALL_KINDS if kind in request.kinds}
    return ExportPlan(tuple(steps), shipped)


def artifact_step(kind: ArtifactKind) -> str:
    """The step (and rung) that builds the file of ``kind``: ``onnx``, ``tflite_int8``, ``openvino_float16``."""
    return "onnx" if kind.format == "onnx" else f"{kind.format}_{kind.quantize}"


def _portable_fixed_batch(request: ExportRequest) -> bool:
    """Whether the shipped ONNX file is the one the other formats' converters take (pnnx needs fixed shapes)."""
    return not ONNX_TARGETS[request.optimize_for].known_to_fail_in and not request.dynamic_batch


def _onnx_steps(optimize_for: str, dynamic_batch: bool) -> list[Step]:
    target = ONNX_TARGETS[optimize_for]
    steps = [Step(f"deploy_fast_{target.profile}", TRAINING)]
    if target.batch_one and not dynamic_batch:
        steps.append(Step("batch_one", steps[-1].name))
    return steps + [Step("onnx", steps[-1].name)]


def _tflite_steps(quantized: list[str]) -> list[Step]:
    steps = [Step("deploy_fast", TRAINING), Step("tf_graph", "deploy_fast")]
    if "int8" in quantized:
        steps += [Step("relu_max", "deploy_fast"), Step("tf_graph_int8", "relu_max")]
    steps.append(Step("tflite_float32", "tf_graph"))
    return steps + [_quantized_step(q, "tf_graph_int8" if q == "int8" else "tf_graph") for q in quantized]


def _quantized_step(quantize: str, saved_model: str) -> Step:
    """float16 is rewritten from the float32 file (export/tflite_fp16.py), the others converted from the
    SavedModel; every one is judged against float32 TFLite."""
    if quantize == "float16":
        return Step("tflite_float16", "tflite_float32")
    return Step(f"tflite_{quantize}", saved_model, reference="tflite_float32")


def _reference_steps(tflite: bool, quantized: list[str]) -> list[Step]:
    """``--graph reference``: the ONNX file is always built; onnx2tf converts it for TFLite."""
    steps = [Step("deploy", TRAINING), Step("onnx", "deploy")]
    if tflite:
        steps += [Step("onnx2tf", "onnx"), Step("tflite_float32", "onnx2tf")]
        steps += [_quantized_step(q, "onnx2tf") for q in quantized]
    return steps
