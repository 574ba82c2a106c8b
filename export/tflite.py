"""ONNX → TensorFlow SavedModel (onnx2tf, in a child process) → TFLite (TFLiteConverter, one file per quantization).

Two steps, because they cost very differently and fail for different reasons:

1. ``onnx_to_saved_model`` runs onnx2tf 1.29.24 once per ONNX file, in a child process inside a scratch
   working directory. onnx2tf rewrites the graph to channels-last, so the SavedModel (and every .tflite made
   from it) takes **NHWC** input; the record says so (``input_layout``), measured from the shapes rather than
   assumed. The child's very noisy output goes to ``<workdir>/onnx2tf.log``; a failure raises a one-line
   ``MicronetError`` naming the failing ONNX node and the log.

   Offline by construction: onnx2tf downloads a sample-data file from GitHub whenever the model input looks
   like a small-batch RGB image, unless a file of that name is in its working directory. The scratch folder
   gets a deterministic stub (``ONNX2TF_STUB``, float32 (20, 128, 128, 3) in [0, 1)), the proxies point at a
   dead local port, and the child refuses and records every outgoing connection (``network_attempts`` in the
   record; it must be empty).

   Flags: onnx2tf's own CLI run (``-osd``) spends part of its time on an onnxsim pass over a graph the ONNX
   stage already simplified (``not_use_onnxsim``) and on float32/float16 .tflite files this module rebuilds
   anyway (skipped with the API's ``disable_model_save``; the child then writes the SavedModel as ``-osd``
   does, its signature keyed ``input`` → ``logits``): same ops and bit-identical outputs in about half the
   time. ``-dgc`` (split grouped convs) was rejected: it makes much slower models. Figures in
   ``docs/export-stages.md``. ``-coion`` (rename the .tflite
   I/O) only acts on onnx2tf's own .tflite files, which are not used; no other flag is set.

   Known onnx2tf limit: it guesses which axis is the channel axis by size, so a reshape whose sizes collide
   (a channel shuffle ``view(b, 8, c/8, h, w)`` on an 8×8 map) can fail to convert (seen at 64×64 input on
   the test net; 96 and 224 convert). The error names the ONNX node.

   Determinism: repeated conversions give byte-identical .tflite files (also across processes) even though
   the SavedModel files themselves differ run to run.

2. ``saved_model_to_tflite`` converts the SavedModel with ``tf.lite.TFLiteConverter.from_saved_model`` into
   one of ``QUANTIZATIONS``. This is what onnx2tf's ``-oiqt`` does internally and gives identical int8
   results at a fraction of the time of onnx2tf's run that writes every variant. Only TFLite builtin ops are
   allowed, so a graph needing a Flex (SELECT_TF_OPS) op fails here, loudly, instead of producing a file
   the stock runtime cannot load. It runs in this process (TensorFlow is imported on first use, ~3-5 s,
   recorded as ``tensorflow_import_s``) with file descriptors 1 and 2 sent to a log, since the converter
   prints from C++.

   * ``float32``: no optimization.
   * ``float16``: float16 weights, float32 compute and I/O (every float constant; the export writes its float16
     file with export/tflite_fp16.py instead, which keeps vectors float32).
   * ``dynamic``: dynamic-range: int8 weights, activations quantized at run time; float32 I/O.
   * ``int8``: full-integer: ``representative_dataset`` from NHWC float32 calibration samples (fed one at a
     time), ``TFLITE_BUILTINS_INT8`` only, int8 (default) or uint8 input and output. Per-channel weight
     scales by default; ``per_channel=False`` sets the converter's ``_experimental_disable_per_channel``
     (a private attribute, the one onnx2tf's ``-qt per-tensor`` sets) for targets with per-tensor-only kernels.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from micronet import interrupts
from micronet.errors import MicronetError

from micronet.atomic import replacing

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
INT8_IO_DTYPES = ("int8", "uint8")
ONNX2TF_STUB = "calibration_image_sample_data_20x128x128x3_float32.npy"
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, so a connection fails at once
_CHILD = Path(__file__).with_name("_onnx2tf_child.py")
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def _write_stub(workdir: Path) -> None:
    """onnx2tf validates its conversion on this sample; random data in [0, 1) is what the real file holds
    (image pixels), and a fixed seed keeps its layout decisions reproducible."""
    sample = np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32)
    np.save(workdir / ONNX2TF_STUB, sample)


def offline_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({name: DEAD_PROXY for name in _PROXY_VARS})
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    env["PYTHONHASHSEED"] = "0"  # removes set-order randomness as a source of run-to-run differences
    env["CUDA_VISIBLE_DEVICES"] = "-1"  # conversion is CPU work; a visible GPU only adds start-up and noise
    env["TF_CPP_MIN_LOG_LEVEL"] = "1"
    return env


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _failure_summary(log: Path) -> str:
    """The most telling line of an onnx2tf log: the failing ONNX node and the last exception."""
    try:
        lines = [_ANSI.sub("", line).strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return "no log"
    node = next((line.split("onnx_op_name:", 1)[1].strip() for line in reversed(lines)
                 if "onnx_op_name:" in line), None)
    at = next((i for i in reversed(range(len(lines))) if re.match(r"^[A-Za-z_.]*(Error|Exception)\b.*:", lines[i])),
              None)
    exception = None
    if at is not None:
        # Keras puts the reason on the line after "Exception encountered when calling layer ...".
        detail = next((line for line in lines[at + 1:at + 3] if line and not line.startswith("Call arguments")), "")
        exception = f"{lines[at]} {detail}".strip()[:240]
    parts = ([f"at ONNX node {node}"] if node else []) + ([exception] if exception else [])
    return "; ".join(parts) or (lines[-1][:200] if lines else "empty log")


def _kept_log(log: Path) -> Path:
    """A copy of a failed conversion's log in the system's temporary folder: the export's work folder, where
    onnx2tf wrote it, is removed when the export fails, and the error line must name a file that exists."""
    try:
        handle, kept = tempfile.mkstemp(prefix="micronet-onnx2tf-", suffix=".log")
        with os.fdopen(handle, "wb") as out, open(log, "rb") as source:
            shutil.copyfileobj(source, out)
        return Path(kept)
    except OSError:
        return log


def _layout(onnx_shape: list[int], tf_shape: list[int]) -> str:
    """The SavedModel's input layout, read off the shapes onnx2tf produced for the NCHW ONNX input."""
    if len(onnx_shape) == 4 and len(tf_shape) == 4:
        n, c, h, w = onnx_shape
        if tf_shape == [n, h, w, c]:
            return "NHWC"
        if tf_shape == onnx_shape:
            return "NCHW"
    return "unknown"


def _onnx_input_shape(onnx_path: Path) -> list[int]:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else -1 for d in dims]


def onnx_to_saved_model(onnx_path: str | os.PathLike, workdir: str | os.PathLike, *,
                        timeout_s: float = 1800.0) -> tuple[Path, dict[str, Any]]:
    """Convert ``onnx_path`` with onnx2tf into ``<workdir>/saved_model`` (replacing any old one).

    Returns the SavedModel folder and a record: onnx2tf/TF versions, wall time (s), the child's own split
    (import/convert/save s), input/output shapes, ``input_layout`` ("NHWC"), ``network_attempts`` (empty)
    and the log path. On failure nothing is left at ``<workdir>/saved_model`` and a ``MicronetError`` names
    the failing node and the log.
    """
    onnx_path = Path(onnx_path).resolve()
    workdir = Path(workdir).resolve()
    if not onnx_path.is_file():
        raise MicronetError(f"no ONNX file at {onnx_path}")
    workdir.mkdir(parents=True, exist_ok=True)
    saved_model = workdir / "saved_model"
    shutil.rmtree(saved_model, ignore_errors=True)
    log, child_record = workdir / "onnx2tf.log", workdir / "onnx2tf_record.json"
    child_record.unlink(missing_ok=True)
    _write_stub(workdir)
    # onnx2tf re-saves the file it is given (without the exporter's metadata): it converts a copy, so the
    # ONNX file the ladder judged and the export ships stays byte for byte what was judged.
    source = workdir / "onnx2tf_input.onnx"
    shutil.copyfile(onnx_path, source)

    command = [sys.executable, "-P", str(_CHILD), str(source), str(saved_model), str(child_record)]
    start = time.perf_counter()
    with open(log, "wb") as log_file:
        try:
            returncode = subprocess.run(command, cwd=workdir, env=offline_env(), stdin=subprocess.DEVNULL,
                                        stdout=log_file, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            returncode = None
    wall_s = time.perf_counter() - start
    child = json.loads(child_record.read_text()) if child_record.is_file() else {}

    if returncode != 0 or "inputs" not in child or not (saved_model / "saved_model.pb").is_file():
        shutil.rmtree(saved_model, ignore_errors=True)
        why = f"timed out after {timeout_s:.0f} s" if returncode is None else _failure_summary(log)
        raise MicronetError(f"onnx2tf could not convert {onnx_path.name}: {why} (full log: {_kept_log(log)})")
    if child.get("network_attempts"):
        raise MicronetError(f"onnx2tf tried to reach the network {child['network_attempts']} (log: {log})")

    from importlib import metadata

    onnx_shape = _onnx_input_shape(onnx_path)
    tf_shape = child["inputs"][0]["shape"]
    record = {
        "stage": "onnx2tf",
        "tool": "onnx2tf",
        "onnx2tf": metadata.version("onnx2tf"),
        "tensorflow": metadata.version("tensorflow"),
        "options": {"not_use_onnxsim": True, "output_signaturedefs": True, "disable_model_save": True},
        "wall_s": round(wall_s, 3),
        "child_s": {key: child[key] for key in ("import_s", "convert_s", "save_s")},
        "onnx_input_shape": onnx_shape,
        "inputs": child["inputs"],
        "outputs": child["outputs"],
        "input_layout": _layout(onnx_shape, tf_shape),
        "network_attempts": child["network_attempts"],
        "stub": ONNX2TF_STUB,
        "log": str(log),
    }
    return saved_model, record


@contextlib.contextmanager
def output_to(log: Path) -> Iterator[None]:
    """Send this process's stdout/stderr file descriptors to ``log``: TensorFlow's converter writes its
    chatter from C++, below ``sys.stderr``, so only redirecting the descriptors catches it."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log, "ab") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            yield
    finally:
        with interrupts.deferred():  # a second interrupt here would leave stdout and stderr in the log
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _check_calibration(calibration_nhwc: np.ndarray | None) -> np.ndarray:
    if calibration_nhwc is None:
        raise MicronetError("int8 quantization needs calibration samples (NHWC float32), got none")
    data = np.asarray(calibration_nhwc, dtype=np.float32)
    if data.ndim != 4 or len(data) == 0:
        raise MicronetError(f"calibration must be a non-empty (N, H, W, C) array, got shape {data.shape}")
    if data.shape[1] <= 4 and data.shape[3] > 4:
        raise MicronetError(f"calibration of shape {data.shape} looks NCHW; the converter needs NHWC")
    if not np.isfinite(data).all():
        raise MicronetError("calibration samples contain NaN or inf")
    return data


def _converter_failure(exc: Exception) -> str:
    """One line for a converter exception, whose message is a page of MLIR locations: the list of ops that
    have no builtin kernel when that is the cause, else the first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    missing = next((line for line in lines if line.startswith(("Custom ops:", "TF Select ops:"))), None)
    if missing:
        return f"ops without a TFLite builtin kernel ({missing})"
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"


def _converter(tf, saved_model_dir: Path, quantize: str, calibration: np.ndarray | None, io_dtype: str,
               per_channel: bool):
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize in ("dynamic", "int8") and not per_channel:
        converter._experimental_disable_per_channel = True
    if quantize == "int8":
        converter.representative_dataset = lambda: ([sample[None]] for sample in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = getattr(tf, io_dtype)
    return converter


def saved_model_to_tflite(saved_model_dir: str | os.PathLike, out_path: str | os.PathLike, quantize: str,
                          calibration_nhwc: np.ndarray | None = None, io_dtype: str = "int8",
                          per_channel: bool = True, *, log_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Convert the SavedModel into ``out_path`` as ``quantize`` (one of ``QUANTIZATIONS``).

    ``calibration_nhwc`` (N, H, W, C float32, preprocessed like the model's input) is required for ``int8``
    and ignored otherwise; ``io_dtype`` ("int8"/"uint8") applies to ``int8`` only; ``per_channel`` to
    ``dynamic`` and ``int8``. The converter's output goes to ``log_path`` (default: ``tflite_<quantize>.log``
    beside the SavedModel). The file appears only when complete; on failure a ``MicronetError`` is raised and
    ``out_path`` is left untouched.
    """
    if quantize not in QUANTIZATIONS:
        raise MicronetError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZATIONS)}")
    if quantize == "int8" and io_dtype not in INT8_IO_DTYPES:
        raise MicronetError(f"int8 input/output type must be one of {INT8_IO_DTYPES}, got {io_dtype!r}")
    saved_model_dir, out_path = Path(saved_model_dir), Path(out_path)
    if not (saved_model_dir / "saved_model.pb").is_file():
        raise MicronetError(f"no SavedModel at {saved_model_dir}")
    calibration = _check_calibration(calibration_nhwc) if quantize == "int8" else None
    log = Path(log_path) if log_path else saved_model_dir.parent / f"tflite_{quantize}.log"
    out_path.parent.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    with output_to(log):
        import_start = time.perf_counter()
        from micronet.quiet import import_tensorflow

        tf = import_tensorflow()  # seconds on first use; counted apart so stage times compare across calls

        import_s = time.perf_counter() - import_start
        try:
            payload = _converter(tf, saved_model_dir, quantize, calibration, io_dtype, per_channel).convert()
        except Exception as exc:  # TF raises ConverterError, ValueError, RuntimeError, OSError...
            interrupts.check()  # the converter turned an interrupt in its Python callback into an error
            print(f"\n{type(exc).__name__}: {exc}", file=sys.stderr)  # into the log: the full story
            failure = _converter_failure(exc)
        else:
            failure = None
    if failure:
        raise MicronetError(f"TFLite {quantize} conversion of {saved_model_dir} failed: {failure} (log: {log})")
    with replacing(out_path) as tmp:
        tmp.write_bytes(payload)
    wall_s = time.perf_counter() - start

    options: dict[str, Any] = {"supported_ops": "TFLITE_BUILTINS_INT8" if quantize == "int8" else "TFLITE_BUILTINS"}
    if quantize in ("dynamic", "int8"):
        options["per_channel"] = per_channel
    if quantize == "int8":
        options.update(io_dtype=io_dtype, calibration_samples=len(calibration))
    return {
        "stage": f"tflite_{quantize}",
        "tool": "tf.lite.TFLiteConverter.from_saved_model",
        "tensorflow": tf.__version__,
        "quantize": quantize,
        "options": options,
        "wall_s": round(wall_s, 3),
        "tensorflow_import_s": round(import_s, 3),
        "size_bytes": out_path.stat().st_size,
        "log": str(log),
    }
