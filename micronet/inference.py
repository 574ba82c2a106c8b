"""The portable inference core: what every place that runs an exported model shares, and nothing else.

Why one file with only the standard library and numpy: the desktop benchmark (``micronet.bench``), the
export's parity check (``micronet.export.inspect``) and the on-device runner (``devices/runner.py``, on a
board with no micronet and often Python 3.8) must feed a model, time it and read its answer in exactly
the same way, or a Pi row and a desktop row in one table would measure different things. So this file
is pushed beside the runner (as ``micronet_inference.py``) and imported by the desktop code; a runtime
is added here, once. It must never import micronet; runtimes are imported lazily, inside functions, and
annotations stay strings (the ``__future__`` import) so that 3.8 can read the file.

It owns ``TensorSpec``/``Quantization`` with ``quantize``/``dequantize``; ``infer_layout`` and
``reconcile`` (a model's own view of a tensor merged with its manifest's); ``RUNTIMES`` (name → format,
module, library, distribution, pip) with one session per format (``open_session``: TFLite through
ai-edge-litert, tflite-runtime or ``tf.lite``; ONNX Runtime; OpenVINO, ncnn and MNN, each in float32
precision); ``prepare``/``to_logits``; the latency
loop (first inference alone, warm-up, then ``run`` timed with ``perf_counter_ns`` and the garbage
collector paused; sample std, linear-interpolated percentiles); and the report's ``ROW_FIELDS``.
Every mistake is an ``InferenceError`` (a ``ValueError``) whose message is the whole explanation.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

try:
    import numpy as np
except ImportError:  # a board without numpy can still list its runtimes (the runner's probe says what is missing)
    np = None  # type: ignore[assignment]

ROW_FIELDS = (
    "model", "name", "variant", "format", "quantize", "runtime", "runtime_version", "threads", "xnnpack",
    "xnnpack_applied", "xnnpack_coverage", "device", "input", "madds", "params", "size_bytes", "size_mib", "init_ms", "first_ms",
    "latency", "memory", "accuracy", "settings", "notes", "invalid", "invalid_reason",
)
LAYOUTS = ("NCHW", "NHWC")
INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
DEFAULT_MAX_RUNS = 100_000


class InferenceError(ValueError):
    """A model, manifest or input this core cannot run: one line for the user."""


class DelegateFailed(InferenceError):
    """The XNNPACK delegate could not prepare the model (the model itself loads without it)."""


class SwitchUnsupported(InferenceError):
    """The installed runtime cannot apply a requested setting (e.g. XNNPACK off on an old tflite-runtime)."""


def first_line(exc: BaseException) -> str:
    """An exception as one short line: runtimes raise multi-line C++ messages."""
    lines = str(exc).strip().splitlines()
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= 240 else line[:237] + "..."


# ============================================================================================ specs


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of one tensor: real = (q - zero_point) * scale."""

    scale: float
    zero_point: int

    def to_dict(self) -> dict[str, float | int]:
        return {"scale": self.scale, "zero_point": self.zero_point}


@dataclass(frozen=True)
class TensorSpec:
    """What a model's input or output tensor looks like. ``None`` in ``shape`` is a dynamic axis."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    layout: str | None = None  # "NCHW"/"NHWC" for the image input; None for outputs
    quantization: Quantization | None = None

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model insists on, or None when the batch axis is dynamic."""
        return self.shape[0] if self.shape else None

    @property
    def chw(self) -> tuple[int | None, int | None, int | None]:
        """(channels, height, width) whatever the layout: what error messages and callers reason in."""
        if len(self.shape) != 4:
            return (None, None, None)
        if self.layout == "NHWC":
            return (self.shape[3], self.shape[1], self.shape[2])
        return (self.shape[1], self.shape[2], self.shape[3])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "layout": self.layout,
                "quantization": self.quantization.to_dict() if self.quantization else None}


def quantize(x: np.ndarray, q: Quantization, dtype: str) -> np.ndarray:
    """Float → integer with the tensor's own scale/zero point, saturating like the runtimes do."""
    lo, hi = INT_RANGES[dtype]
    return np.clip(np.round(x / q.scale + q.zero_point), lo, hi).astype(dtype)


def dequantize(y: np.ndarray, q: Quantization) -> np.ndarray:
    return (y.astype(np.float32) - np.float32(q.zero_point)) * np.float32(q.scale)


def parse_quantization(value: Any) -> Quantization | None:
    """From a manifest's ``{"scale","zero_point"}`` or a TFLite ``(scale, zero_point)`` tuple; 0 scale = none."""
    if value is None:
        return None
    if isinstance(value, dict):
        scale, zero_point = value.get("scale"), value.get("zero_point")
    else:
        scale, zero_point = value
    if scale is None or float(scale) == 0.0:
        return None
    return Quantization(float(scale), int(zero_point or 0))


def infer_layout(shape: Tuple[Optional[int], ...], default: str) -> str:
    """Guess NCHW vs NHWC of a 4-D image input from which axis has 1 or 3 channels.

    Used only when no manifest says; ambiguous shapes (e.g. 3×3×3) fall back to the format's
    convention (NCHW for ONNX/torch, NHWC for TFLite).
    """
    if len(shape) != 4:
        raise InferenceError(f"the benchmark feeds a 4-D image batch, but the model's input has shape {list(shape)}")
    first, last = shape[1] in (1, 3), shape[3] in (1, 3)
    if first and not last:
        return "NCHW"
    if last and not first:
        return "NHWC"
    return default


def reconcile(model: TensorSpec, manifest_io: dict | None, role: str, where: str,
              default_layout: str | None) -> TensorSpec:
    """Merge the model's own view of a tensor with the manifest's; contradictions are errors.

    The model is authoritative for dtype and (TFLite) quantization; the manifest adds what a model file
    cannot say (layout; quantization of an integer ONNX input). Disagreement means the manifest belongs
    to another export, and running on would report wrong accuracy, so it stops here.
    """
    manifest_io = manifest_io or {}
    dtype = manifest_io.get("dtype")
    if dtype and dtype != model.dtype:
        raise InferenceError(
            f"manifest for {where} says the {role} is {dtype} but the model's {role} is {model.dtype}: "
            "the manifest is stale, re-export the model"
        )
    q_model, q_manifest = model.quantization, parse_quantization(manifest_io.get("quantization"))
    if q_model and q_manifest and (
        abs(q_model.scale - q_manifest.scale) > 1e-6 * max(abs(q_model.scale), 1e-12)
        or q_model.zero_point != q_manifest.zero_point
    ):
        raise InferenceError(
            f"manifest for {where} gives {role} quantization scale={q_manifest.scale} zero_point={q_manifest.zero_point} "
            f"but the model has scale={q_model.scale} zero_point={q_model.zero_point}: the manifest is stale"
        )
    quant = q_model or q_manifest
    if model.dtype in INT_RANGES and quant is None:
        raise InferenceError(
            f"the {role} of {where} is {model.dtype} but neither the model nor a manifest gives its scale and zero point"
        )
    layout = None
    if default_layout is not None:
        layout = manifest_io.get("layout") or infer_layout(model.shape, default_layout)
        if layout not in LAYOUTS:
            raise InferenceError(f"manifest for {where} gives input layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    return TensorSpec(model.name, model.shape, model.dtype, layout, quant)


def pick_output(outputs: List[TensorSpec], manifest: dict | None, where: str) -> int:
    """Index of the logits output: the manifest's name, or the only output there is."""
    wanted = ((manifest or {}).get("output") or {}).get("name")
    if wanted:
        for i, spec in enumerate(outputs):
            if spec.name == wanted:
                return i
        raise InferenceError(f"manifest for {where} names output {wanted!r}, the model has {[o.name for o in outputs]}")
    if len(outputs) != 1:
        raise InferenceError(f"{where} has {len(outputs)} outputs and no manifest says which holds the logits")
    return 0


def prepare(batch_nchw: Any, spec: TensorSpec, where: str) -> np.ndarray:
    """Float32 NCHW batch → the model's native input (layout, dtype, quantization), checked against ``spec``."""
    x = np.asarray(batch_nchw, dtype=np.float32)
    if x.ndim != 4:
        raise InferenceError(f"expected an image batch of shape (N, 3, H, W), got shape {list(x.shape)}")
    want = spec.chw
    if any(w is not None and w != g for w, g in zip(want, x.shape[1:])):
        shown = "x".join("?" if w is None else str(w) for w in want)
        raise InferenceError(
            f"the batch is {x.shape[1]}x{x.shape[2]}x{x.shape[3]} (CxHxW) but {where} expects {shown}: "
            "check the input size"
        )
    if spec.fixed_batch is not None and x.shape[0] != spec.fixed_batch:
        raise InferenceError(f"{where} takes batches of exactly {spec.fixed_batch}, got a batch of {x.shape[0]}")
    if spec.layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    if spec.quantization and spec.dtype in INT_RANGES:
        x = quantize(x, spec.quantization, spec.dtype)
    else:
        x = x.astype(spec.dtype, copy=False)
    return np.ascontiguousarray(x)


def to_logits(raw: Any, spec: TensorSpec) -> np.ndarray:
    """Raw output → float32 (N, classes): dequantized if the output is integer."""
    y = np.asarray(raw)
    y = dequantize(y, spec.quantization) if spec.quantization else y.astype(np.float32, copy=False)
    return y.reshape(y.shape[0], -1)


def dense_maps(flat: Any, output: dict) -> np.ndarray:
    """Flat dequantized outputs (N, -1) of a pose or segmentation file → (N, C, H, W) maps, PyTorch's order.

    ``output`` is the manifest's output record: its ``shape`` (with a batch axis) and ``layout`` (TFLite
    files give NHWC maps). One function for the desktop's dense runner and the on-device runner, so a
    board's maps are read exactly as the desktop's."""
    if not isinstance(output, dict) or not output.get("shape") or "stride" not in output:
        raise InferenceError("the manifest has no dense output (shape, layout, stride): export the pose or "
                             "segmentation variant with `micronet export`")
    shape = [int(d) for d in output["shape"][1:]]
    flat = np.asarray(flat)
    maps = flat.reshape(flat.shape[0], *shape)
    return np.ascontiguousarray(maps.transpose(0, 3, 1, 2)) if output.get("layout") == "NHWC" else maps


# ============================================================================================ runtimes


@dataclass(frozen=True)
class RuntimeInfo:
    """One file runtime: which format it runs and how it is found, imported, versioned and installed."""

    name: str
    format: str  # "tflite" or "onnx"
    module: str  # importable module whose presence means "installed" (checked without importing it)
    library: str  # the module a session needs, imported before init timing starts
    distribution: str  # package name for the version in reports (and what a board installs)
    pip: str  # the tested requirement on a desktop
    chatty: bool = False  # its C++ prints to stdout on import and load (MNN): silenced, see quiet_stdout

    @property
    def default_layout(self) -> str:
        return "NHWC" if self.format == "tflite" else "NCHW"


RUNTIMES: Dict[str, RuntimeInfo] = {info.name: info for info in (
    RuntimeInfo("litert", "tflite", "ai_edge_litert", "ai_edge_litert.interpreter", "ai-edge-litert",
                "ai-edge-litert==2.1.0"),
    RuntimeInfo("tflite-runtime", "tflite", "tflite_runtime", "tflite_runtime.interpreter", "tflite-runtime",
                "tflite-runtime==2.14.0"),
    RuntimeInfo("tf-lite", "tflite", "tensorflow", "tensorflow", "tensorflow", "tensorflow==2.19.0"),
    RuntimeInfo("onnxruntime", "onnx", "onnxruntime", "onnxruntime", "onnxruntime", "onnxruntime==1.23.0"),
    RuntimeInfo("openvino", "openvino", "openvino", "openvino", "openvino", "openvino==2026.4.1"),
    RuntimeInfo("ncnn", "ncnn", "ncnn", "ncnn", "ncnn", "ncnn==1.0.20261020"),
    RuntimeInfo("mnn", "mnn", "MNN", "MNN", "mnn", "mnn==3.6.1", chatty=True),
)}
PREFERENCE = {"tflite": ("litert", "tflite-runtime", "tf-lite"), "onnx": ("onnxruntime",),
              "openvino": ("openvino",), "ncnn": ("ncnn",), "mnn": ("mnn",)}


def find_spec(module: str) -> Any:
    """``importlib.util.find_spec`` that says None instead of raising for a broken parent package."""
    import importlib.util

    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


def distribution_version(distribution: str) -> str | None:
    try:
        from importlib import metadata
    except ImportError:  # Python < 3.8
        return None
    try:
        return metadata.version(distribution)
    except Exception:
        return None


def import_library(name: str) -> Any:
    """Import a runtime's library (the caller decides how an import failure reads)."""
    before_import(name)
    with quiet_stdout(RUNTIMES[name].chatty):
        return importlib.import_module(RUNTIMES[name].library)


def before_import(name: str) -> None:
    """What must happen before runtime ``name``'s library is first imported: OpenVINO's telemetry blocked."""
    if name == "openvino":
        block_openvino_telemetry()


def block_openvino_telemetry() -> bool:
    """Make ``openvino_telemetry`` unimportable (OpenVINO and NNCF then use their no-op stubs); returns whether
    that worked, i.e. it was not imported yet. ``import openvino`` imports it, and reading an ONNX file or
    converting a model would write ``~/intel/openvino_ga_cid`` and send usage data. Must run before the first
    ``import openvino`` of the process."""
    import sys

    if "openvino_telemetry" in sys.modules:
        return sys.modules["openvino_telemetry"] is None
    sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # import now raises ImportError
    return True


@contextlib.contextmanager
def quiet_stdout(active: bool = True) -> Iterator[None]:
    """Send file descriptor 1 to /dev/null while the block runs, C's stdio buffers flushed on the way out.

    MNN prints "The device supports: ..." when imported and "MNN use high precision" when a session is made,
    with printf, into the benchmark's table and the machine-read output of the on-device runner."""
    if not active:
        yield
        return
    import ctypes
    import os
    import sys

    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        try:
            ctypes.CDLL(None).fflush(None)  # what the block printf'ed goes to /dev/null, not to the next write
        except (OSError, AttributeError):
            pass
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


class Session:
    """One model loaded in one file runtime: its own tensor specs and ``run``.

    ``inputs``/``outputs`` are what the model file says (no layout; TFLite quantization only): merge them
    with a manifest through ``reconcile``. ``run`` is the call latency measurement times, and only it.
    """

    inputs: List[TensorSpec]
    outputs: List[TensorSpec]
    xnnpack_applied: Optional[bool] = None
    xnnpack_coverage: Optional[dict] = None

    def __init__(self, info: RuntimeInfo, lib: Any, path: str, threads: int, xnnpack: Optional[bool]) -> None:
        self.info, self.lib, self.path, self.threads, self.xnnpack = info, lib, path, threads, xnnpack
        self.output_index = 0

    def fit(self, x: np.ndarray) -> np.ndarray:
        """Make the session take an input of ``x``'s shape (a dynamic batch), outside the timed run."""
        return x

    def run(self, native: Any) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Drop the session/interpreter so the next one starts clean."""


class TFLiteSession(Session):
    """The TFLite ``Interpreter`` API, shared by ai-edge-litert, tflite-runtime and tf.lite.

    XNNPACK: the three apply the XNNPACK delegate by default; ``xnnpack=False`` loads with
    ``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES``. Whether the delegate took part is read back from
    the node list (XNNPACK adds a ``DELEGATE`` node), a private API, so any failure there means "unknown";
    how much it took is ``xnnpack_coverage`` (``delegate_coverage``).
    """

    def __init__(self, info: RuntimeInfo, lib: Any, path: str, threads: int, xnnpack: Optional[bool]) -> None:
        super().__init__(info, lib, path, threads, True if xnnpack is None else bool(xnnpack))
        api = lib.lite if info.name == "tf-lite" else lib  # tf.lite.Interpreter, tf.lite.experimental.OpResolverType
        resolver = getattr(getattr(api, "experimental", None) if info.name == "tf-lite" else api, "OpResolverType", None)
        kwargs = {"model_path": path, "num_threads": threads}
        if resolver is not None:
            kwargs["experimental_op_resolver_type"] = (
                resolver.AUTO if self.xnnpack else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        elif not self.xnnpack:
            raise SwitchUnsupported(f"this {info.name} cannot switch XNNPACK off (no OpResolverType): upgrade it")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite's deprecation notice is known
            it = api.Interpreter(**kwargs)
        try:
            it.allocate_tensors()
        except RuntimeError as exc:
            if self.xnnpack and "XNNPACK" in str(exc):
                raise DelegateFailed(f"{path}: the XNNPACK delegate cannot prepare this model "
                                     f"({str(exc).splitlines()[0]}); run it with XNNPACK off") from None
            raise
        self._it = it
        try:
            self.xnnpack_coverage = delegate_coverage(it._get_ops_details())
            self.xnnpack_applied = self.xnnpack_coverage["partitions"] > 0
        except Exception:
            self.xnnpack_coverage, self.xnnpack_applied = None, None
        details_in, details_out = it.get_input_details(), it.get_output_details()
        self._in_indices = [d["index"] for d in details_in]
        self._out_indices = [d["index"] for d in details_out]
        self.inputs = [_tflite_spec(d) for d in details_in]
        self.outputs = [_tflite_spec(d) for d in details_out]

    def fit(self, x: np.ndarray) -> np.ndarray:
        current = tuple(self._it.get_input_details()[0]["shape"])
        if x.shape != current:  # dynamic batch: resize once here, never inside the timed run
            try:
                self._it.resize_tensor_input(self._in_indices[0], list(x.shape), strict=True)  # only -1 axes
                self._it.allocate_tensors()
            except Exception as exc:
                raise InferenceError(f"{self.path} cannot take an input of shape {list(x.shape)}: {first_line(exc)}") from exc
        return x

    def run(self, native: Any) -> Any:
        it = self._it
        it.set_tensor(self._in_indices[0], native)
        it.invoke()
        return it.get_tensor(self._out_indices[self.output_index])

    def close(self) -> None:
        self._it = None


def delegate_coverage(ops: List[dict]) -> dict:
    """How much of a loaded TFLite graph a delegate (XNNPACK, the only one applied here) took, from an
    Interpreter's ``_get_ops_details()``: the model's own nodes plus one ``DELEGATE`` node per partition.

    Why it matters: a runtime may load a model and still run it on its built-in reference kernels (tflite-runtime
    2.14 delegates no int8 op), which changes its latency several-fold with nothing else to show for it. An op
    belongs to a partition when it lies on a path from the delegate node's inputs to its outputs. Returns
    ``ops`` (the model's nodes), ``xnnpack_ops`` (those taken), ``partitions`` (delegate nodes: each boundary
    with a built-in op is a hand-over) and ``not_delegated`` (count per op left to the built-in kernels).
    """
    producer = {}
    for op in ops:
        if op["op_name"] != "DELEGATE":
            for t in op["outputs"]:
                producer[int(t)] = op["index"]
    by_index = {op["index"]: op for op in ops}
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    inside = set()
    for node in delegates:
        boundary = {int(t) for t in node["inputs"]}
        stack, seen = [int(t) for t in node["outputs"]], set()
        while stack:
            tensor = stack.pop()
            if tensor in boundary or tensor in seen or tensor not in producer:
                continue
            seen.add(tensor)
            inside.add(producer[tensor])
            stack.extend(int(t) for t in by_index[producer[tensor]]["inputs"] if t >= 0)
    own = [op for op in ops if op["op_name"] != "DELEGATE"]
    left = {}  # type: Dict[str, int]
    for op in own:
        if op["index"] not in inside:
            left[op["op_name"]] = left.get(op["op_name"], 0) + 1
    return {"ops": len(own), "xnnpack_ops": len(inside), "partitions": len(delegates),
            "not_delegated": dict(sorted(left.items()))}


def _tflite_spec(detail: dict) -> TensorSpec:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    shape = tuple(int(d) if d > 0 else None for d in dims)
    return TensorSpec(detail["name"], shape, np.dtype(detail["dtype"]).name, None,
                      parse_quantization(detail.get("quantization")))


_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
                "tensor(int8)": "int8", "tensor(uint8)": "uint8"}


class OnnxSession(Session):
    """ONNX Runtime, CPU provider, sequential execution so ``threads`` means intra-op threads only."""

    def __init__(self, info: RuntimeInfo, lib: Any, path: str, threads: int, xnnpack: Optional[bool]) -> None:
        super().__init__(info, lib, path, threads, None)
        ort = lib
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: warnings about unused initializers are noise here
        self._session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self.inputs = [_onnx_spec(a) for a in self._session.get_inputs()]
        self.outputs = [_onnx_spec(a) for a in self._session.get_outputs()]

    def run(self, native: Any) -> Any:
        return self._session.run([self.outputs[self.output_index].name], {self.inputs[0].name: native})[0]

    def close(self) -> None:
        self._session = None


def _onnx_spec(arg: Any) -> TensorSpec:
    dtype = _ONNX_DTYPES.get(arg.type)
    if dtype is None:
        raise InferenceError(f"ONNX tensor {arg.name!r} has type {arg.type}, which the benchmark cannot feed")
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorSpec(arg.name, shape, dtype)


def model_file(path: str, suffix: str) -> str:
    """The one ``*<suffix>`` file of a model folder (OpenVINO's ``model.xml``, ncnn's ``model.param``), or
    ``path`` itself when it is such a file (its companion ``.bin`` beside it)."""
    import os

    if not os.path.isdir(path):
        if not path.endswith(suffix):
            raise InferenceError(f"{path} is not a {suffix} file or a folder holding one")
        return path
    found = sorted(name for name in os.listdir(path) if name.endswith(suffix))
    if len(found) != 1:
        raise InferenceError(f"{path} should hold exactly one {suffix} file, it holds {found or 'none'}")
    return os.path.join(path, found[0])


_OPENVINO_DTYPES = {"f32": "float32", "f16": "float16", "i8": "int8", "u8": "uint8"}
#: OpenVINO's CPU plugin computes in bfloat16 on CPUs that have it (AVX512-BF16, AMX) unless told otherwise:
#: 2.6e-2 relative error on m0, against ~1e-6 in float32. Every session here asks for float32.
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}


class OpenVinoSession(Session):
    """OpenVINO's CPU plugin on an IR (a folder with ``model.xml`` + ``model.bin``), one stream, float32
    inference precision (``OPENVINO_CONFIG``), ``threads`` inference threads."""

    def __init__(self, info: RuntimeInfo, lib: Any, path: str, threads: int, xnnpack: Optional[bool]) -> None:
        super().__init__(info, lib, path, threads, None)
        config = dict(OPENVINO_CONFIG, INFERENCE_NUM_THREADS=threads)
        self._compiled = lib.Core().compile_model(model_file(path, ".xml"), "CPU", config)
        self._request = self._compiled.create_infer_request()
        self.inputs = [_openvino_spec(p) for p in self._compiled.inputs]
        self.outputs = [_openvino_spec(p) for p in self._compiled.outputs]

    def run(self, native: Any) -> Any:
        self._request.infer({0: native})
        return np.array(self._request.get_output_tensor(self.output_index).data)  # a copy: the next run reuses it

    def close(self) -> None:
        self._request = self._compiled = None


def _openvino_spec(port: Any) -> TensorSpec:
    shape = tuple(int(d.get_length()) if d.is_static else None for d in port.get_partial_shape())
    kind = port.get_element_type().get_type_name()
    if kind not in _OPENVINO_DTYPES:
        raise InferenceError(f"OpenVINO tensor {port.get_any_name()!r} has type {kind}, which the benchmark cannot feed")
    return TensorSpec(port.get_any_name(), shape, _OPENVINO_DTYPES[kind])


class NcnnSession(Session):
    """ncnn on a folder with ``model.param`` + ``model.bin`` (pnnx's ``.ncnn.param``/``.ncnn.bin``), float32
    storage and arithmetic (a float16 file's weights are widened on load), one image at a time (an ncnn
    ``Mat`` has no batch axis). The input's size is read from the ``Input`` layer's 0=w 1=h 2=c (micronet
    writes them; pnnx alone does not: then (1, 3, ?, ?))."""

    def __init__(self, info: RuntimeInfo, lib: Any, path: str, threads: int, xnnpack: Optional[bool]) -> None:
        super().__init__(info, lib, path, threads, None)
        param = model_file(path, ".param")
        net = lib.Net()
        opt = net.opt
        opt.num_threads = threads
        opt.use_fp16_packed = opt.use_fp16_storage = opt.use_fp16_arithmetic = False
        opt.use_bf16_storage = False
        if net.load_param(param) != 0 or net.load_model(param[:-len(".param")] + ".bin") != 0:
            raise InferenceError(f"ncnn rejects {param} or its .bin (a layer ncnn does not have, or a corrupt file)")
        self._net = net
        sizes = _ncnn_input_sizes(param)
        self.inputs = [TensorSpec(name, sizes.get(name, (1, 3, None, None)), "float32") for name in net.input_names()]
        self.outputs = [TensorSpec(name, (1, None), "float32") for name in net.output_names()]

    def run(self, native: Any) -> Any:
        # ``Mat`` wraps ``native``'s memory without holding a reference: ``native`` must outlive the extraction.
        extractor = self._net.create_extractor()
        extractor.input(self.inputs[0].name, self.lib.Mat(native[0]))
        status, out = extractor.extract(self.outputs[self.output_index].name)
        if status != 0:
            raise InferenceError(f"ncnn failed to run {self.path} (status {status})")
        return np.array(out).reshape(1, -1)

    def close(self) -> None:
        self._net = None


def _ncnn_input_sizes(param: str) -> Dict[str, Tuple[int, ...]]:
    """blob name → (1, c, h, w) from the param file's ``Input`` layers that give 0=w 1=h 2=c."""
    sizes = {}
    with open(param) as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[0] == "Input":
                params = dict(f.split("=", 1) for f in fields[5:] if "=" in f)
                if {"0", "1", "2"} <= set(params):
                    sizes[fields[4]] = (1, int(params["2"]), int(params["1"]), int(params["0"]))
    return sizes


class MnnSession(Session):
    """MNN's module API on a ``.mnn`` file, CPU backend, ``precision: high`` (float32; "normal" lets MNN
    choose float16 or bfloat16 where the CPU has it), ``threads`` threads."""

    def __init__(self, info: RuntimeInfo, lib: Any, path: str, threads: int, xnnpack: Optional[bool]) -> None:
        super().__init__(info, lib, path, threads, None)
        with quiet_stdout():
            manager = lib.nn.create_runtime_manager(({"backend": "CPU", "precision": "high", "numThread": threads},))
            self._module = lib.nn.load_module_from_file(path, [], [], runtime_manager=manager)
        described = self._module.get_info()
        self.inputs = [TensorSpec(name, tuple(int(d) for d in var.shape), "float32")
                       for name, var in zip(described["inputNames"], described["inputs"])]
        self.outputs = [TensorSpec(name, (None, None), "float32") for name in described["outputNames"]]
        self._expr = lib.expr

    def run(self, native: Any) -> Any:
        out = self._module.forward(self._expr.const(native, list(native.shape), self._expr.NCHW))
        if isinstance(out, (list, tuple)):
            out = out[self.output_index]
        return np.array(out.read())

    def close(self) -> None:
        self._module = None


def session_settings(fmt: str, xnnpack: Optional[bool]) -> dict:
    """The knobs a format's session fixes (known before loading), for the report row's settings."""
    if fmt == "tflite":
        return {"op_resolver": "AUTO" if xnnpack else "BUILTIN_WITHOUT_DEFAULT_DELEGATES"}
    if fmt == "openvino":
        return {"device": "CPU", **{k.lower(): v for k, v in OPENVINO_CONFIG.items()}}
    if fmt == "ncnn":
        return {"fp16_storage": False, "fp16_arithmetic": False, "bf16_storage": False}
    if fmt == "mnn":
        return {"backend": "CPU", "precision": "high", "api": "nn.load_module_from_file"}
    return {"inter_op_threads": 1, "execution_mode": "sequential", "graph_optimization": "all",
            "providers": ["CPUExecutionProvider"]}


_SESSIONS = {"tflite": TFLiteSession, "onnx": OnnxSession, "openvino": OpenVinoSession, "ncnn": NcnnSession,
             "mnn": MnnSession}


def open_session(name: str, path: str, threads: int, xnnpack: Optional[bool] = None, lib: Any = None) -> Session:
    """Load the model at ``path`` in runtime ``name`` (its library imported now unless given as ``lib``)."""
    info = RUNTIMES[name]
    return _SESSIONS[info.format](info, import_library(name) if lib is None else lib, path, threads, xnnpack)


@dataclass
class Model:
    """A loaded session with its input/output merged with the manifest: ``prepare`` → ``run`` → ``to_logits``."""

    session: Session
    input: TensorSpec
    output: TensorSpec
    where: str

    def prepare(self, batch_nchw: Any) -> np.ndarray:
        return self.session.fit(prepare(batch_nchw, self.input, self.where))

    def run(self, native: Any) -> Any:
        return self.session.run(native)

    def to_logits(self, raw: Any) -> np.ndarray:
        return to_logits(raw, self.output)


def bind_model(session: Session, manifest: dict | None, where: str) -> Model:
    """A loaded session ready to feed: one image input, the logits output, both reconciled with ``manifest``."""
    if len(session.inputs) != 1:
        raise InferenceError(f"{where} has {len(session.inputs)} inputs; the benchmark feeds exactly one image tensor")
    index = pick_output(session.outputs, manifest, where)
    session.output_index = index
    io = manifest or {}
    model_in = reconcile(session.inputs[0], io.get("input"), "input", where, session.info.default_layout)
    model_out = reconcile(session.outputs[index], io.get("output"), "output", where, None)
    return Model(session, model_in, model_out, where)


# ============================================================================================ latency


def latency_stats(samples_ms: Any) -> dict:
    """count/min/mean/std/p50/p90/p99/max in ms; ``std_ms`` is the sample standard deviation."""
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])  # linear interpolation between order statistics
    return {"count": int(a.size), "min_ms": float(a.min()), "mean_ms": float(a.mean()),
            "std_ms": float(a.std(ddof=1)) if a.size > 1 else 0.0, "p50_ms": float(p50), "p90_ms": float(p90),
            "p99_ms": float(p99), "max_ms": float(a.max())}


def timed_runs(step: Callable[[], Any], runs: int | None, min_seconds: float | None,
               max_runs: int = DEFAULT_MAX_RUNS, clock: Callable[[], int] = time.perf_counter_ns
               ) -> Tuple[List[float], float, str]:
    """(samples in ms, measured seconds, stopped_by): ``step`` timed run by run, the collector paused.

    The phase ends when *every* given bound is met (``runs`` samples and ``min_seconds`` elapsed);
    ``max_runs`` is a hard cap; ``stopped_by`` ("runs", "min_seconds", "max_runs") says which ended it.
    """
    min_ns = None if min_seconds is None else int(min_seconds * 1e9)
    samples: List[int] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        while True:
            t0 = clock()
            step()
            t1 = clock()
            samples.append(t1 - t0)
            n = len(samples)
            runs_done = runs is None or n >= runs
            time_done = min_ns is None or t1 - start >= min_ns
            if runs_done and time_done:
                stopped_by = "runs" if runs is not None and n == runs else "min_seconds"
                break
            if n >= max_runs:
                stopped_by = "max_runs"
                break
        elapsed = clock() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return [s / 1e6 for s in samples], elapsed / 1e9, stopped_by


def first_and_warmup(step: Callable[[], Any], warmup: int, clock: Callable[[], int] = time.perf_counter_ns) -> float:
    """The first inference timed on its own (ms), then ``warmup`` untimed runs."""
    t0 = clock()
    step()
    first_ms = (clock() - t0) / 1e6
    for _ in range(warmup):
        step()
    return first_ms


def measure(step: Callable[[], Any], warmup: int, runs: int | None, min_seconds: float | None,
            max_runs: int = DEFAULT_MAX_RUNS, clock: Callable[[], int] = time.perf_counter_ns) -> Tuple[float, dict]:
    """(first_ms, the report's ``latency`` object without an end-to-end phase) for ``step``."""
    first_ms = first_and_warmup(step, warmup, clock)
    samples_ms, measured_s, stopped_by = timed_runs(step, runs, min_seconds, max_runs, clock)
    latency = {"warmup": warmup, "runs_requested": runs, "min_seconds": min_seconds,
               **latency_stats(samples_ms), "measured_s": measured_s, "stopped_by": stopped_by,
               "samples_ms": samples_ms, "end_to_end": None}
    return first_ms, latency
