"""One interface over every local inference runtime the benchmark drives.

Why an interface: latency must time the same thing in every runtime (the call that runs the graph,
nothing else), and accuracy must see float32 logits whatever the model's I/O dtype. So each runtime
splits inference into four steps and only ``run`` is ever timed:

* ``load(source) -> init seconds``: parse the model, build the session/interpreter, allocate.
* ``prepare(batch)``: turn a float32 NCHW batch (what ``micronet.preprocess.load_batch`` gives) into
  the model's native input: NHWC if the model wants it, quantized to int8/uint8 with the model's
  scale/zero point, as a torch tensor for PyTorch.
* ``run(native) -> raw``: the graph, and only the graph (plus the copy in/out the runtime needs).
* ``to_logits(raw) -> float32 (N, classes)``: dequantize and flatten.

Where the I/O facts come from: a ``.json`` manifest beside the artifact (written by
``micronet.export``) gives layout, quantization and preprocessing; a foreign ``.onnx``/``.tflite``
with no manifest is read from the model itself (dtype, shape, TFLite quantization) and its layout is
inferred from the shape (channels = the axis of size 1 or 3). When both exist they must agree, so a
stale manifest is an error rather than silently wrong accuracy.

Which runtime runs which format (``RUNTIME_FORMATS``):

=================  ========  ==========================================================
runtime            format    Python package (``pip install ...``)
=================  ========  ==========================================================
``torch``          torch     ``torch==2.13.0`` (eager, a ``torch.nn.Module`` or variant)
``onnxruntime``    onnx      ``onnxruntime==1.23.0`` (CPU provider, sequential)
``litert``         tflite    ``ai-edge-litert==2.1.0`` (the recommended TFLite runtime)
``tflite-runtime`` tflite    ``tflite-runtime==2.14.0`` (legacy; needs numpy<2, slow int8)
``tf-lite``        tflite    ``tensorflow==2.19.0`` (``tf.lite.Interpreter``, deprecated)
=================  ========  ==========================================================

XNNPACK: the three TFLite runtimes apply the XNNPACK delegate by default. ``xnnpack=False`` loads
with ``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`` so the plain builtin kernels run instead.
Whether the delegate really took part is read back from the interpreter's node list (XNNPACK adds
a ``DELEGATE`` node that replaces the ops it took over) and reported as ``xnnpack_applied``.

Heavy libraries are imported inside the runtime that needs them, never at module import: the memory
child measures a runtime's footprint against an interpreter that has not loaded the others.
"""

from __future__ import annotations

import abc
import importlib
import importlib.metadata
import importlib.util
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from micronet.errors import MicronetError

LAYOUTS = ("NCHW", "NHWC")
_INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


# ---------------------------------------------------------------------------------------------- specs


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
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "layout": self.layout,
            "quantization": self.quantization.to_dict() if self.quantization else None,
        }


def quantize(x: np.ndarray, q: Quantization, dtype: str) -> np.ndarray:
    """Float → integer with the tensor's own scale/zero point, saturating like the runtimes do."""
    lo, hi = _INT_RANGES[dtype]
    return np.clip(np.round(x / q.scale + q.zero_point), lo, hi).astype(dtype)


def dequantize(y: np.ndarray, q: Quantization) -> np.ndarray:
    return (y.astype(np.float32) - np.float32(q.zero_point)) * np.float32(q.scale)


def infer_layout(shape: tuple[int | None, ...], default: str) -> str:
    """Guess NCHW vs NHWC of a 4-D image input from which axis has 1 or 3 channels.

    Used only when no manifest says; ambiguous shapes (e.g. 3×3×3) fall back to the format's
    convention (NCHW for ONNX/torch, NHWC for TFLite).
    """
    if len(shape) != 4:
        raise MicronetError(f"the benchmark feeds a 4-D image batch, but the model's input has shape {list(shape)}")
    first, last = shape[1] in (1, 3), shape[3] in (1, 3)
    if first and not last:
        return "NCHW"
    if last and not first:
        return "NHWC"
    return default


def _quantization(value: Any) -> Quantization | None:
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


def _reconcile(model: TensorSpec, manifest_io: dict | None, role: str, where: str, default_layout: str | None) -> TensorSpec:
    """Merge the model's own view of a tensor with the manifest's; contradictions are errors.

    The model is authoritative for dtype and (TFLite) quantization; the manifest adds what a model file
    cannot say (layout; quantization of an integer ONNX input). Disagreement means the manifest belongs
    to another export, and running on would report wrong accuracy, so it stops here.
    """
    manifest_io = manifest_io or {}
    dtype = manifest_io.get("dtype")
    if dtype and dtype != model.dtype:
        raise MicronetError(
            f"manifest for {where} says the {role} is {dtype} but the model's {role} is {model.dtype}: "
            "the manifest is stale, re-export the model"
        )
    q_model, q_manifest = model.quantization, _quantization(manifest_io.get("quantization"))
    if q_model and q_manifest and (
        abs(q_model.scale - q_manifest.scale) > 1e-6 * max(abs(q_model.scale), 1e-12)
        or q_model.zero_point != q_manifest.zero_point
    ):
        raise MicronetError(
            f"manifest for {where} gives {role} quantization scale={q_manifest.scale} zero_point={q_manifest.zero_point} "
            f"but the model has scale={q_model.scale} zero_point={q_model.zero_point}: the manifest is stale"
        )
    quant = q_model or q_manifest
    if model.dtype in _INT_RANGES and quant is None:
        raise MicronetError(
            f"the {role} of {where} is {model.dtype} but neither the model nor a manifest gives its scale and zero point"
        )
    layout = None
    if default_layout is not None:
        layout = manifest_io.get("layout") or infer_layout(model.shape, default_layout)
        if layout not in LAYOUTS:
            raise MicronetError(f"manifest for {where} gives input layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    return TensorSpec(model.name, model.shape, model.dtype, layout, quant)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 240 else line[:237] + "..."


def read_manifest_for(path: Path) -> dict | None:
    """The export manifest beside ``path`` (``<file>.json``), or None for a foreign model."""
    try:
        from micronet.export.manifest import read_manifest
    except ModuleNotFoundError as exc:  # the export stage is optional for benchmarking foreign files
        if exc.name in ("micronet.export", "micronet.export.manifest"):
            return None
        raise
    return read_manifest(path)


# -------------------------------------------------------------------------------------------- runtime


class Runtime(abc.ABC):
    """A model loaded in one runtime with fixed thread settings. Subclasses fill in the hooks."""

    name: ClassVar[str]
    format: ClassVar[str]  # "torch", "onnx" or "tflite": what this runtime can load
    module: ClassVar[str]  # importable module whose presence means "installed"
    library: ClassVar[str]  # the module load() needs, imported before init timing starts
    pip: ClassVar[str]  # what to install when it is missing
    distribution: ClassVar[str]  # package name for the version in reports
    default_layout: ClassVar[str] = "NCHW"

    def __init__(self, threads: int = 1) -> None:
        self.threads = check_threads(threads)
        self.manifest: dict | None = None
        self.source: str | None = None
        self._input: TensorSpec | None = None
        self._output: TensorSpec | None = None

    # -- public ------------------------------------------------------------------------------------

    @classmethod
    def is_available(cls) -> bool:
        return _find_spec(cls.module) is not None

    @classmethod
    def require(cls) -> None:
        if not cls.is_available():
            raise MicronetError(f"runtime {cls.name!r} is not installed: pip install {cls.pip}")

    @classmethod
    def version(cls) -> str | None:
        try:
            return importlib.metadata.version(cls.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    def import_library(self) -> Any:
        """Import the runtime's library now, so that neither init time nor model memory includes it."""
        self.require()
        self._lib = _import(type(self), self.library)
        return self._lib

    def load(self, source: Any, *, manifest: dict | None = None, input_size: int | None = None) -> float:
        """Load ``source``; return the init time in seconds (parse + session/interpreter + allocation).

        The library import is not part of it (a process pays that once, whatever it loads).
        ``manifest`` is read from beside a file when not given. ``input_size`` only matters for a torch
        module that does not record its own.
        """
        self.import_library()
        if self.format != "torch":
            path = _check_model_file(source, self.format)
            self.source = str(path)
            self.manifest = manifest if manifest is not None else read_manifest_for(path)
        else:
            self.source = source if isinstance(source, str) else type(source).__name__
            self.manifest = manifest
        start = time.perf_counter()
        try:
            model_in, model_out = self._load(source, input_size)
        except MicronetError:
            raise
        except Exception as exc:  # any runtime's parse/alloc failure on a bad file
            raise MicronetError(f"cannot load {self.source} with {self.name}: {_first_line(exc)}") from exc
        seconds = time.perf_counter() - start
        io = self.manifest or {}
        self._input = _reconcile(model_in, io.get("input"), "input", self.source, self.default_layout)
        self._output = _reconcile(model_out, io.get("output"), "output", self.source, None)
        return seconds

    @property
    def input_spec(self) -> TensorSpec:
        if self._input is None:
            raise MicronetError(f"runtime {self.name!r}: load a model first")
        return self._input

    @property
    def output_spec(self) -> TensorSpec:
        if self._output is None:
            raise MicronetError(f"runtime {self.name!r}: load a model first")
        return self._output

    @property
    def preprocessing(self) -> dict | None:
        """The manifest's ``input.preprocessing`` (``Preprocessing.to_dict()``), if the model has one."""
        return ((self.manifest or {}).get("input") or {}).get("preprocessing")

    def prepare(self, batch_nchw: np.ndarray) -> Any:
        """Float32 NCHW batch → the model's native input (layout, dtype, quantization). Not timed."""
        spec = self.input_spec
        x = np.asarray(batch_nchw, dtype=np.float32)
        if x.ndim != 4:
            raise MicronetError(f"expected an image batch of shape (N, 3, H, W), got shape {list(x.shape)}")
        want = spec.chw
        if any(w is not None and w != g for w, g in zip(want, x.shape[1:])):
            shown = "x".join("?" if w is None else str(w) for w in want)
            raise MicronetError(
                f"the batch is {x.shape[1]}x{x.shape[2]}x{x.shape[3]} (CxHxW) but {self.source} expects {shown}: "
                "check the input size"
            )
        if spec.fixed_batch is not None and x.shape[0] != spec.fixed_batch:
            raise MicronetError(f"{self.source} takes batches of exactly {spec.fixed_batch}, got a batch of {x.shape[0]}")
        if spec.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        x = quantize(x, spec.quantization, spec.dtype) if spec.quantization else x.astype(spec.dtype, copy=False)
        return self._native(np.ascontiguousarray(x))

    @abc.abstractmethod
    def run(self, native_input: Any) -> Any:
        """Run the graph once. The only call latency measurement times."""

    def to_logits(self, raw: Any) -> np.ndarray:
        """Raw output → float32 (N, classes): dequantized if the output is integer."""
        y = np.asarray(self._to_numpy(raw))
        q = self.output_spec.quantization
        y = dequantize(y, q) if q else y.astype(np.float32, copy=False)
        return y.reshape(y.shape[0], -1)

    def settings(self) -> dict[str, Any]:
        """Every knob that shaped the numbers, echoed into the report row."""
        return {"runtime": self.name, "version": self.version(), "threads": self.threads, "xnnpack": None,
                "xnnpack_applied": None}

    def close(self) -> None:
        """Drop the session/interpreter so the next runtime starts clean."""

    # -- hooks -------------------------------------------------------------------------------------

    @abc.abstractmethod
    def _load(self, source: Any, input_size: int | None) -> tuple[TensorSpec, TensorSpec]:
        """Load and return the model's own (input, output) specs; layout/quantization may be unknown."""

    def _native(self, x: np.ndarray) -> Any:
        return x

    def _to_numpy(self, raw: Any) -> np.ndarray:
        return raw


def check_threads(threads: Any) -> int:
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise MicronetError(f"threads must be a positive whole number, got {threads!r}")
    return threads


def _find_spec(module: str) -> Any:
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


def _import(runtime: type[Runtime], module: str) -> Any:
    """Import a runtime's library; a broken install (e.g. tflite-runtime on numpy 2) is a user error."""
    try:
        return importlib.import_module(module)
    except Exception as exc:
        raise MicronetError(
            f"runtime {runtime.name!r} is installed but fails to import ({_first_line(exc)}): reinstall {runtime.pip}"
        ) from exc


_SUFFIXES = {".onnx": "onnx", ".tflite": "tflite"}


def detect_format(source: Any) -> str:
    """"torch" for a module or variant name, else the file's format from its suffix."""
    if not isinstance(source, (str, Path)):
        return "torch"
    suffix = Path(source).suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    if isinstance(source, str) and suffix == "" and not Path(source).exists():
        return "torch"  # a variant name such as "m0"
    raise MicronetError(f"cannot benchmark {source}: expected a .onnx or .tflite file (or a torch model)")


def _check_model_file(source: Any, fmt: str) -> Path:
    """Existence and the cheapest possible sanity check, so a bad path fails with one clear line."""
    if not isinstance(source, (str, Path)):
        raise MicronetError(f"the {fmt} runtimes load a model file, got a {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise MicronetError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise MicronetError(f"model file is empty: {path}")
    if fmt == "tflite":
        with path.open("rb") as f:
            head = f.read(8)
        if head[4:8] != b"TFL3":  # flatbuffer file identifier of every .tflite
            raise MicronetError(f"{path} is not a TFLite flatbuffer (no TFL3 identifier): corrupt or wrong file")
    return path


def check_model_contents(path: Path, fmt: str) -> None:
    """The file exists and is what its suffix says, checked before any benchmark starts.

    TFLite: the flatbuffer identifier. ONNX: the protobuf parses into a model with a graph. A file
    that passes can still fail to load in a runtime; that makes an invalid row, not an error.
    """
    _check_model_file(path, fmt)
    if fmt != "onnx":
        return
    try:
        import onnx
    except ModuleNotFoundError:  # ONNX Runtime alone is enough to benchmark; then the runtime judges the file
        return
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:
        raise MicronetError(f"{path} is not an ONNX model ({_first_line(exc)}): corrupt or wrong file") from None
    if model.ir_version < 1 or not model.graph.node:
        raise MicronetError(f"{path} is not an ONNX model (no graph): corrupt or wrong file")


# ---------------------------------------------------------------------------------------------- torch


class TorchRuntime(Runtime):
    """PyTorch eager on CPU: the reference every exported artifact is compared with."""

    name = "torch"
    format = "torch"
    module = library = "torch"
    pip = "torch==2.13.0"
    distribution = "torch"

    def _load(self, source: Any, input_size: int | None) -> tuple[TensorSpec, TensorSpec]:
        torch = self._lib
        if isinstance(source, str):
            import micronet

            model = micronet.build_model(source, input_size=input_size or 224)
        elif isinstance(source, torch.nn.Module):
            model = source
        else:
            raise MicronetError(f"the torch runtime takes a torch.nn.Module or a variant name, got {type(source).__name__}")
        self._previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)  # process-wide: the harness runs one runtime at a time
        self._model = model.eval()
        size = input_size or getattr(model, "input_size", None) or 224
        classes = getattr(model, "num_classes", None)
        return (
            TensorSpec("input", (None, 3, size, size), "float32", "NCHW"),
            TensorSpec("logits", (None, classes), "float32"),
        )

    def _native(self, x: np.ndarray) -> Any:
        return self._lib.from_numpy(x)

    def run(self, native_input: Any) -> Any:
        with self._lib.inference_mode():
            return self._model(native_input)

    def _to_numpy(self, raw: Any) -> np.ndarray:
        if not isinstance(raw, self._lib.Tensor):
            raise MicronetError(f"the torch model returned {type(raw).__name__}; the benchmark expects one logits tensor")
        return raw.detach().numpy()

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "mode": "eager, inference_mode"}

    def close(self) -> None:
        if hasattr(self, "_previous_threads"):
            self._lib.set_num_threads(self._previous_threads)
        self._model = None


# ---------------------------------------------------------------------------------------------- onnx

_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
}


def _onnx_spec(arg: Any) -> TensorSpec:
    dtype = _ONNX_DTYPES.get(arg.type)
    if dtype is None:
        raise MicronetError(f"ONNX tensor {arg.name!r} has type {arg.type}, which the benchmark cannot feed")
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorSpec(arg.name, shape, dtype)


class OnnxRuntime(Runtime):
    """ONNX Runtime, CPU provider, sequential execution so ``threads`` means intra-op threads only."""

    name = "onnxruntime"
    format = "onnx"
    module = library = "onnxruntime"
    pip = "onnxruntime==1.23.0"
    distribution = "onnxruntime"

    def _load(self, source: Any, input_size: int | None) -> tuple[TensorSpec, TensorSpec]:
        ort = self._lib
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: warnings about unused initializers are noise here
        self._session = ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1:
            raise MicronetError(f"{source} has {len(inputs)} inputs; the benchmark feeds exactly one image tensor")
        in_spec = _onnx_spec(inputs[0])
        out_spec = _pick_output([_onnx_spec(o) for o in outputs], self.manifest, str(source))
        self._in_name, self._out_names = in_spec.name, [out_spec.name]
        return in_spec, out_spec

    def run(self, native_input: Any) -> Any:
        return self._session.run(self._out_names, {self._in_name: native_input})[0]

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "inter_op_threads": 1, "execution_mode": "sequential",
                "graph_optimization": "all", "providers": ["CPUExecutionProvider"]}

    def close(self) -> None:
        self._session = None


def _pick_output(outputs: list[TensorSpec], manifest: dict | None, where: str) -> TensorSpec:
    """The logits output: the manifest's name, or the only output there is."""
    wanted = ((manifest or {}).get("output") or {}).get("name")
    if wanted:
        for spec in outputs:
            if spec.name == wanted:
                return spec
        raise MicronetError(f"manifest for {where} names output {wanted!r}, the model has {[o.name for o in outputs]}")
    if len(outputs) != 1:
        raise MicronetError(f"{where} has {len(outputs)} outputs and no manifest says which holds the logits")
    return outputs[0]


# -------------------------------------------------------------------------------------------- tflite


class _TFLiteRuntime(Runtime):
    """The TFLite ``Interpreter`` API, shared by ai-edge-litert, tflite-runtime and tf.lite."""

    format = "tflite"
    default_layout = "NHWC"

    def __init__(self, threads: int = 1, xnnpack: bool = True) -> None:
        super().__init__(threads)
        self.xnnpack = bool(xnnpack)
        self.xnnpack_applied: bool | None = None

    def _interpreter_api(self) -> tuple[Any, Any]:
        """(Interpreter class, OpResolverType enum) of this package."""
        return self._lib.Interpreter, self._lib.OpResolverType

    def _load(self, source: Any, input_size: int | None) -> tuple[TensorSpec, TensorSpec]:
        interpreter_cls, resolver = self._interpreter_api()
        kind = resolver.AUTO if self.xnnpack else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite's deprecation notice (toolchain §6 P7) is known
            it = interpreter_cls(model_path=str(source), num_threads=self.threads, experimental_op_resolver_type=kind)
        it.allocate_tensors()
        self._interp = it
        self.xnnpack_applied = _has_delegate_node(it)
        inputs, outputs = it.get_input_details(), it.get_output_details()
        if len(inputs) != 1:
            raise MicronetError(f"{source} has {len(inputs)} inputs; the benchmark feeds exactly one image tensor")
        in_spec = _tflite_spec(inputs[0])
        out_specs = [_tflite_spec(o) for o in outputs]
        out_spec = _pick_output(out_specs, self.manifest, str(source))
        self._in_index = inputs[0]["index"]
        self._out_index = outputs[out_specs.index(out_spec)]["index"]
        return in_spec, out_spec

    def _native(self, x: np.ndarray) -> Any:
        current = tuple(self._interp.get_input_details()[0]["shape"])
        if x.shape != current:  # dynamic batch: resize once here, never inside the timed run
            try:
                self._interp.resize_tensor_input(self._in_index, list(x.shape), strict=True)  # only -1 axes
                self._interp.allocate_tensors()
            except Exception as exc:
                raise MicronetError(f"{self.source} cannot take an input of shape {list(x.shape)}: {_first_line(exc)}") from exc
        return x

    def run(self, native_input: Any) -> Any:
        it = self._interp
        it.set_tensor(self._in_index, native_input)
        it.invoke()
        return it.get_tensor(self._out_index)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "xnnpack": self.xnnpack, "xnnpack_applied": self.xnnpack_applied,
                "op_resolver": "AUTO" if self.xnnpack else "BUILTIN_WITHOUT_DEFAULT_DELEGATES"}

    def close(self) -> None:
        self._interp = None


def _tflite_spec(detail: dict) -> TensorSpec:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    shape = tuple(int(d) if d > 0 else None for d in dims)
    return TensorSpec(detail["name"], shape, np.dtype(detail["dtype"]).name, None, _quantization(detail.get("quantization")))


def _has_delegate_node(interpreter: Any) -> bool | None:
    """True when a delegate (XNNPACK, the only default one on CPU) replaced part of the graph.

    Reads the interpreter's node list, where a delegate shows up as an extra ``DELEGATE`` node. It is a
    private API, so any failure means "unknown" rather than a crash.
    """
    try:
        return any(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())
    except Exception:
        return None


class LiteRTRuntime(_TFLiteRuntime):
    name = "litert"
    module = "ai_edge_litert"
    pip = "ai-edge-litert==2.1.0"
    library = "ai_edge_litert.interpreter"
    distribution = "ai-edge-litert"


class TFLiteRuntimeRuntime(_TFLiteRuntime):
    name = "tflite-runtime"
    module = "tflite_runtime"
    pip = "tflite-runtime==2.14.0"
    library = "tflite_runtime.interpreter"
    distribution = "tflite-runtime"


class TFLiteTensorFlowRuntime(_TFLiteRuntime):
    name = "tf-lite"
    module = "tensorflow"
    pip = "tensorflow==2.19.0"
    library = "tensorflow"
    distribution = "tensorflow"

    def _interpreter_api(self) -> tuple[Any, Any]:
        return self._lib.lite.Interpreter, self._lib.lite.experimental.OpResolverType


# -------------------------------------------------------------------------------------------- registry

RUNTIMES: dict[str, type[Runtime]] = {
    cls.name: cls for cls in (TorchRuntime, OnnxRuntime, LiteRTRuntime, TFLiteRuntimeRuntime, TFLiteTensorFlowRuntime)
}
RUNTIME_FORMATS: dict[str, str] = {name: cls.format for name, cls in RUNTIMES.items()}


def runtimes_for_format(fmt: str) -> list[str]:
    """Runtime names that can load ``fmt`` ("torch", "onnx", "tflite"), installed or not."""
    return [name for name, f in RUNTIME_FORMATS.items() if f == fmt]


def available_runtimes() -> list[str]:
    """Names of the runtimes whose package is installed here (checked without importing them)."""
    return [name for name, cls in RUNTIMES.items() if cls.is_available()]


def runtime_class(name: str) -> type[Runtime]:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise MicronetError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}") from None


def get_runtime(name: str, *, threads: int = 1, xnnpack: bool | None = None) -> Runtime:
    """A fresh, unloaded runtime. ``xnnpack`` is a TFLite switch (None = the default, on)."""
    cls = runtime_class(name)
    cls.require()
    if issubclass(cls, _TFLiteRuntime):
        return cls(threads, xnnpack=True if xnnpack is None else xnnpack)
    if xnnpack is not None:
        raise MicronetError(f"the XNNPACK switch applies to the TFLite runtimes only, not {name!r}")
    return cls(threads)
