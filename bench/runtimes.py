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
``openvino``       openvino  ``openvino==2026.4.1`` (CPU plugin, float32 precision hint)
``ncnn``           ncnn      ``ncnn==1.0.20261020`` (float32 storage and arithmetic)
``mnn``            mnn       ``mnn==3.6.1`` (CPU backend, precision high)
=================  ========  ==========================================================

XNNPACK: the three TFLite runtimes apply the XNNPACK delegate by default. ``xnnpack=False`` loads
with ``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`` so the plain builtin kernels run instead.
Whether the delegate really took part is read back from the interpreter's node list (XNNPACK adds
a ``DELEGATE`` node that replaces the ops it took over) and reported as ``xnnpack_applied``.

Heavy libraries are imported inside the runtime that needs them, never at module import: the memory
child measures a runtime's footprint against an interpreter that has not loaded the others.

What is shared with the export check and the on-device runner (tensor specs, quantization, layout
inference, the file runtimes' sessions and their table) lives in ``micronet.inference``; this module
adds what only a desktop has: torch, the manifest beside the file, and ``MicronetError`` messages.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import time
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np

from micronet import inference as core
from micronet.errors import MicronetError
from micronet.inference import LAYOUTS, Quantization, TensorSpec, dequantize, quantize  # noqa: F401 (public names)

_find_spec = core.find_spec  # module-level so tests can pretend a runtime is missing
_first_line = core.first_line


def infer_layout(shape: tuple[int | None, ...], default: str) -> str:
    """``micronet.inference.infer_layout`` with its complaint as a ``MicronetError``."""
    with user_errors():
        return core.infer_layout(shape, default)


@contextlib.contextmanager
def user_errors(cannot: str | None = None) -> Iterator[None]:
    """The core's ``InferenceError`` as a ``MicronetError``; with ``cannot``, any other failure too
    (``"<cannot>: <first line>"``): a runtime's parse/alloc failure on a bad file is the user's."""
    try:
        yield
    except MicronetError:
        raise
    except core.InferenceError as exc:
        raise MicronetError(str(exc)) from None
    except Exception as exc:
        if cannot is None:
            raise
        raise MicronetError(f"{cannot}: {_first_line(exc)}") from exc


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
        return core.distribution_version(cls.distribution)

    def import_library(self) -> Any:
        """Import the runtime's library now, so that neither init time nor model memory includes it."""
        self.require()
        self._lib = _import(type(self), self.library)
        return self._lib

    def load(self, source: Any, *, manifest: dict | None = None, input_size: int | tuple[int, int] | None = None) -> float:
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
        with user_errors(f"cannot load {self.source} with {self.name}"):
            loaded = self._load(source, input_size)
        seconds = time.perf_counter() - start
        with user_errors():
            self._input, self._output = self._bind(loaded)
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
        with user_errors():
            return self._native(core.prepare(batch_nchw, self.input_spec, self.source))

    @abc.abstractmethod
    def run(self, native_input: Any) -> Any:
        """Run the graph once. The only call latency measurement times."""

    def to_logits(self, raw: Any) -> np.ndarray:
        """Raw output → float32 (N, classes): dequantized if the output is integer."""
        return core.to_logits(self._to_numpy(raw), self.output_spec)

    def settings(self) -> dict[str, Any]:
        """Every knob that shaped the numbers, echoed into the report row."""
        return {"runtime": self.name, "version": self.version(), "threads": self.threads, "xnnpack": None,
                "xnnpack_applied": None}

    def close(self) -> None:
        """Drop the session/interpreter so the next runtime starts clean."""

    # -- hooks -------------------------------------------------------------------------------------

    @abc.abstractmethod
    def _load(self, source: Any, input_size: int | tuple[int, int] | None) -> Any:
        """Load (the timed part); return what ``_bind`` needs."""

    def _bind(self, loaded: Any) -> tuple[TensorSpec, TensorSpec]:
        """The model's (input, output) specs, merged with the manifest (layout, quantization)."""
        model_in, model_out = loaded
        io = self.manifest or {}
        return (core.reconcile(model_in, io.get("input"), "input", self.source, self.default_layout),
                core.reconcile(model_out, io.get("output"), "output", self.source, None))

    def _native(self, x: np.ndarray) -> Any:
        return x

    def _to_numpy(self, raw: Any) -> np.ndarray:
        return raw


def check_threads(threads: Any) -> int:
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise MicronetError(f"threads must be a positive whole number, got {threads!r}")
    return threads


def _import(runtime: type[Runtime], module: str) -> Any:
    """Import a runtime's library; a broken install (e.g. tflite-runtime on numpy 2) is a user error."""
    try:
        info = core.RUNTIMES.get(runtime.name)
        core.before_import(runtime.name)
        with core.quiet_stdout(bool(info and info.chatty)):
            return importlib.import_module(module)
    except Exception as exc:
        raise MicronetError(
            f"runtime {runtime.name!r} is installed but fails to import ({_first_line(exc)}): reinstall {runtime.pip}"
        ) from exc


_SUFFIXES = {".onnx": "onnx", ".tflite": "tflite", ".mnn": "mnn", ".openvino": "openvino", ".ncnn": "ncnn"}
#: Formats whose model is a folder (``micronet-m0-224.float32.openvino/`` with model.xml + model.bin; ncnn's
#: model.param + model.bin), as ``micronet export`` writes them.
FOLDER_FORMATS = ("openvino", "ncnn")
SUPPORTED = "a .onnx, .tflite or .mnn file, a .openvino or .ncnn folder"


def detect_format(source: Any) -> str:
    """"torch" for a module or variant name, else the file's (or model folder's) format from its suffix."""
    if not isinstance(source, (str, Path)):
        return "torch"
    suffix = Path(source).suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    if isinstance(source, str) and suffix == "" and not Path(source).exists():
        return "torch"  # a variant name such as "m0"
    raise MicronetError(f"cannot benchmark {source}: expected {SUPPORTED} (or a torch model)")


def _check_model_file(source: Any, fmt: str) -> Path:
    """Existence and the cheapest possible sanity check, so a bad path fails with one clear line."""
    if not isinstance(source, (str, Path)):
        raise MicronetError(f"the {fmt} runtimes load a model file, got a {type(source).__name__}")
    path = Path(source)
    if fmt in FOLDER_FORMATS:
        wanted = {"openvino": (".xml", ".bin"), "ncnn": (".param", ".bin")}[fmt]
        if not path.is_dir():
            raise MicronetError(f"model folder not found: {path} (an {fmt} model is a folder with "
                                f"{' and '.join('model' + w for w in wanted)})")
        for ending in wanted:
            if not [p for p in path.iterdir() if p.name.endswith(ending) and p.stat().st_size]:
                raise MicronetError(f"{path} holds no {ending} file: an incomplete {fmt} model")
        return path
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

    def _load(self, source: Any, input_size: int | tuple[int, int] | None) -> tuple[TensorSpec, TensorSpec]:
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
        height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        classes = getattr(model, "num_classes", None)
        return (
            TensorSpec("input", (None, 3, height, width), "float32", "NCHW"),
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

    def to_maps(self, raw: Any) -> np.ndarray:
        """A pose or segmentation model's output as float32 (N, C, H, W), not flattened (bench/dense.py)."""
        return np.asarray(self._to_numpy(raw), dtype=np.float32)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "mode": "eager, inference_mode"}

    def close(self) -> None:
        if hasattr(self, "_previous_threads"):
            self._lib.set_num_threads(self._previous_threads)
        self._model = None


# ------------------------------------------------------------------------------------- file runtimes


class FileRuntime(Runtime):
    """A runtime of ``micronet.inference.RUNTIMES``: the core's session, with the desktop's checks and errors.

    One class serves every file runtime; ``_file_runtime`` makes one subclass per table entry, so a
    runtime added to the core's table is benchmarked here too.
    """

    info: ClassVar[core.RuntimeInfo]

    def __init__(self, threads: int = 1, xnnpack: bool | None = None) -> None:
        super().__init__(threads)
        self.xnnpack = (True if xnnpack is None else bool(xnnpack)) if self.format == "tflite" else None
        self.xnnpack_applied: bool | None = None
        self.xnnpack_coverage: dict | None = None  # core.delegate_coverage of the loaded graph
        self._session: core.Session | None = None

    def _load(self, source: Any, input_size: int | None) -> core.Session:
        self._session = core.open_session(self.name, str(source), self.threads, self.xnnpack, lib=self._lib)
        self.xnnpack_applied = self._session.xnnpack_applied
        self.xnnpack_coverage = self._session.xnnpack_coverage
        return self._session

    def _bind(self, session: core.Session) -> tuple[TensorSpec, TensorSpec]:
        model = core.bind_model(session, self.manifest, self.source)
        return model.input, model.output

    def _native(self, x: np.ndarray) -> Any:
        return self._session.fit(x)

    def run(self, native_input: Any) -> Any:
        return self._session.run(native_input)

    def settings(self) -> dict[str, Any]:
        out = super().settings()
        if self.format == "tflite":
            out.update(xnnpack=self.xnnpack, xnnpack_applied=self.xnnpack_applied)
        return {**out, **core.session_settings(self.format, self.xnnpack)}

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        self._session = None


def _file_runtime(info: core.RuntimeInfo) -> type[FileRuntime]:
    attrs = {"info": info, "name": info.name, "format": info.format, "module": info.module, "library": info.library,
             "pip": info.pip, "distribution": info.distribution, "default_layout": info.default_layout,
             "__doc__": f"{info.name}: runs {info.format} models (pip install {info.pip})."}
    return type(f"{info.name.title().replace('-', '')}Runtime", (FileRuntime,), attrs)


# -------------------------------------------------------------------------------------------- registry

_FORMAT_ORDER = ("torch", "onnx", "tflite", "openvino", "ncnn", "mnn")  # how runtimes are listed: reference first
RUNTIMES: dict[str, type[Runtime]] = {
    "torch": TorchRuntime,
    **{name: _file_runtime(info)
       for name, info in sorted(core.RUNTIMES.items(), key=lambda item: _FORMAT_ORDER.index(item[1].format))},
}
RUNTIME_FORMATS: dict[str, str] = {name: cls.format for name, cls in RUNTIMES.items()}


def runtimes_for_format(fmt: str) -> list[str]:
    """Runtime names that can load ``fmt`` ("torch", "onnx", "tflite", "openvino", "ncnn", "mnn"), installed
    or not."""
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
    if cls.format == "tflite":
        return cls(threads, xnnpack=xnnpack)
    if xnnpack is not None:
        raise MicronetError(f"the XNNPACK switch applies to the TFLite runtimes only, not {name!r}")
    return cls(threads)
