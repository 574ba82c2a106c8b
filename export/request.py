"""What an export is asked for: the artifact kinds (format, quantization), the request, and what comes back.

An ``ArtifactKind`` is one file the user can ask for (ONNX float32, TFLite int8, ...). It is a named tuple so
``("tflite", "int8")`` still compares equal to it, but it has its own name: "target" means a runtime profile, a
device and a benchmark model elsewhere in micronet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from micronet.errors import MicronetError

from .onnx_targets import ONNX_TARGETS

if TYPE_CHECKING:
    from .tune import TuneRequest

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")  # TFLite's
#: Every format and the quantizations it is exported in, its default first.
FORMAT_QUANTIZATIONS: dict[str, tuple[str, ...]] = {
    "onnx": ("float32",),
    "tflite": ("int8", "float32", "float16", "dynamic"),
    # The edge runtimes' own formats (export/edge.py), each converted from a portable ONNX file. OpenVINO int8
    # is NNCF's post-training quantization (weights and activations); MNN int8 is weight-only (--weightQuantBits
    # 8, computed in float); ncnn's int8 needs its own calibration tool and is not offered.
    "openvino": ("float32", "float16", "int8"),
    "ncnn": ("float32", "float16"),
    "mnn": ("float32", "float16", "int8"),
}
#: Formats written as a folder of files (OpenVINO .xml + .bin, ncnn .param + .bin) rather than one file.
FOLDER_FORMATS = ("openvino", "ncnn")
FORMATS = tuple(FORMAT_QUANTIZATIONS)
#: Graphs the artifacts can be built from. "fast": the ONNX artifact is export/fast/'s graph built for ONNX
#: Runtime (target "onnxruntime"), TFLite the one built for XNNPACK lowered op for op to TensorFlow in NHWC
#: (export/tf_graph.py; no onnx2tf). "reference": both from the reference deploy form (export/deploy.py),
#: TFLite through onnx2tf.
TFLITE_GRAPHS = ("fast", "reference")


class ArtifactKind(NamedTuple):
    """One kind of file an export writes: its format and quantization."""

    format: str  # a key of FORMAT_QUANTIZATIONS
    quantize: str  # one of FORMAT_QUANTIZATIONS[format]


ALL_KINDS: tuple[ArtifactKind, ...] = (ArtifactKind("onnx", "float32"),) + tuple(
    ArtifactKind("tflite", q) for q in QUANTIZATIONS) + tuple(
    ArtifactKind(fmt, q) for fmt, qs in FORMAT_QUANTIZATIONS.items() if fmt not in ("onnx", "tflite") for q in qs)


@dataclass
class ExportRequest:
    variant: str = "m0"
    kinds: list[ArtifactKind] = field(default_factory=lambda: [ArtifactKind("tflite", "int8")])
    weights: Path | None = None
    calibration: Path | None = None
    calib_count: int = 200
    holdout: int = 32
    seed: int = 0
    input_size: int | tuple[int, int] | None = None  # None: the task's (224; pose 256x192; seg 1024x2048)
    num_classes: int | None = None  # None: the task's (1000 classes; 17 heatmaps; 19 classes)
    output_dir: Path = Path("exports")
    io_dtype: str = "int8"  # int8 model input/output type: int8 or uint8
    per_channel: bool = True
    dynamic_batch: bool = False
    graph: str = "fast"  # the graph the artifacts are built from: "fast" (export/fast/) or "reference"
    optimize_for: str = "portable"  # what the ONNX file is built for: a key of export/onnx_targets.ONNX_TARGETS
    tune: "TuneRequest | None" = None  # --tune: measure the fast graph's choices on a device (export/tune/)
    #: Where to also save the PyTorch weights the files were exported from. Untrained weights are drawn from
    #: ``seed`` and get BatchNorm statistics re-estimated on the calibration images: only this file lets
    #: ``bench --variant`` put beside the exports the very network they hold (bench/cache.py).
    reference_weights: Path | None = None

    def __post_init__(self) -> None:
        self.kinds = [ArtifactKind(*kind) for kind in self.kinds]  # plain (format, quantize) tuples are welcome

    def check(self) -> None:
        """Refuse a request that cannot be exported, before any work (the export takes minutes)."""
        if not self.kinds:
            raise MicronetError("nothing to export: no format requested")
        for kind in self.kinds:
            if kind not in ALL_KINDS:
                raise MicronetError(f"cannot export {kind.format} {kind.quantize}; "
                                    f"choose from: {', '.join(f'{f} {q}' for f, q in ALL_KINDS)}")
        if self.calib_count < 1:
            raise MicronetError(f"--calib-count must be at least 1, got {self.calib_count}")
        if self.graph not in TFLITE_GRAPHS:
            raise MicronetError(f"unknown graph {self.graph!r}; choose one of: {', '.join(TFLITE_GRAPHS)}")
        if self.optimize_for not in ONNX_TARGETS:
            raise MicronetError(f"unknown --optimize-for {self.optimize_for!r}; choose one of: "
                                f"{', '.join(ONNX_TARGETS)}")
        if self.optimize_for != "portable":
            if self.graph != "fast":
                raise MicronetError(f"--optimize-for {self.optimize_for} shapes the fast graph's ONNX file; "
                                    "it does not combine with --graph reference")
            if ArtifactKind("onnx", "float32") not in self.kinds:
                raise MicronetError(f"--optimize-for {self.optimize_for} shapes the ONNX file; "
                                    "add --format onnx (or --all)")
        if self.graph == "reference" and any(kind.format == "ncnn" for kind in self.kinds):
            raise MicronetError("--format ncnn needs the fast graph: pnnx cannot convert the reference graph's "
                                "ONNX (it fails at the channel shuffle); drop --graph reference")
        if self.io_dtype not in ("int8", "uint8"):
            raise MicronetError(f"int8 input/output type must be int8 or uint8, got {self.io_dtype!r}")


@dataclass
class ExportResult:
    artifacts: list[Path]
    manifests: list[Path]
    rungs: list[dict]  # the whole parity ladder, in the order it was judged
    timings_s: dict[str, float]
    steps: list[str] = field(default_factory=list)  # the plan's steps that ran, in order (export/plan.py)


def resolve_kinds(fmt: str | None, quantize: str | None, all_formats: bool, graph: str = "fast"
                  ) -> list[ArtifactKind]:
    """The artifact kinds the CLI's ``--format/--quantize/--all`` ask for (``--format all`` is ``--all``).
    With ``--graph reference``, "every format" leaves out ncnn, which pnnx cannot convert from that graph."""
    if fmt is not None and fmt.lower() == "all":
        fmt, all_formats = None, True
    if all_formats:
        if fmt or quantize:
            raise MicronetError("--all writes every format; do not combine it with --format or --quantize")
        return [kind for kind in ALL_KINDS if not (graph == "reference" and kind.format == "ncnn")]
    fmt = (fmt or "tflite").lower()
    if fmt not in FORMATS:
        raise MicronetError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)} (or all)")
    allowed = FORMAT_QUANTIZATIONS[fmt]
    if quantize is not None and quantize not in allowed:
        if len(allowed) == 1:
            raise MicronetError(f"--format {fmt} is exported in {allowed[0]} only; got --quantize {quantize}")
        raise MicronetError(f"--format {fmt} is exported in {', '.join(allowed)}; got --quantize {quantize}")
    return [ArtifactKind(fmt, quantize or allowed[0])]


def artifact_name(variant: str, input_size: int | tuple[int, int], fmt: str, quantize: str) -> str:
    """The file (or, for FOLDER_FORMATS, folder) name: ``micronet-m0-224.int8.tflite``,
    ``micronet-m0-224.float16.openvino/``, ``micronet-pose-m0-256x192.int8.tflite`` (an (H, W) size is
    written H x W); its manifest is the name plus ``.json``."""
    suffix = "onnx" if fmt == "onnx" else f"{quantize}.{fmt}"
    size = input_size if isinstance(input_size, int) else f"{input_size[0]}x{input_size[1]}"
    return f"micronet-{variant}-{size}.{suffix}"
