"""ONNX → the edge runtimes' own formats: OpenVINO IR, ncnn (through pnnx) and MNN.

Each converter takes the portable, fixed-batch ONNX file (export/plan.py routes it: the shipped ONNX file or an
unshipped one) and writes its artifact at ``target`` — a folder for OpenVINO (``model.xml`` + ``model.bin``) and
ncnn (``model.param`` + ``model.bin``), a file for MNN — and returns the manifest's stage record (tool versions,
options, files with their sha256, wall time). The stage (export/stages.py) then runs the artifact in its own
runtime (``micronet.inference``'s sessions, the ones ``micronet bench`` times) and judges it against ONNX
Runtime's logits of that ONNX file. A converter that fails raises one ``MicronetError`` line (with the
converter's last word) and leaves nothing at ``target``; its log, ``<target>.log`` beside it, is in the
export's staging folder, removed with it.

Why each is run the way it is:

* OpenVINO: ``openvino.convert_model`` + ``save_model`` in this process (``compress_to_fp16`` True only for
  float16). int8 is NNCF's post-training quantization of that model, calibrated on the same images as TFLite
  int8. OpenVINO's and NNCF's telemetry would write a client id under ``~/intel`` and send usage data: the
  ``openvino_telemetry`` module is made unimportable first, so both fall back to their no-op stubs.
* ncnn: the ``pnnx`` binary the pnnx wheel ships, as a child process in a scratch folder (it writes half a
  dozen side files next to its input); only ``*.ncnn.param``/``*.ncnn.bin`` are kept. ``fp16=1`` stores the
  weights in float16.
* MNN: MNN's converter (``_tools.mnnconvert``, what ``MNN.tools.mnnconvert`` wraps) in a child process. Never
  the ``mnnconvert`` console script: it pip-installs a logging SDK into the running interpreter and sends
  usage logs. ``--fp16`` stores float16 weights; ``--weightQuantBits 8`` int8 weights (computed in float).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from micronet.errors import MicronetError

#: The distributions each format's converter and runtime come from (pinned in pyproject.toml).
TOOLS: dict[str, tuple[str, ...]] = {"openvino": ("openvino", "nncf"), "ncnn": ("pnnx", "ncnn"), "mnn": ("mnn",)}
DISPLAY = {"openvino": "OpenVINO IR", "ncnn": "ncnn (pnnx)", "mnn": "MNN"}
#: The files of a folder artifact, in the names the runtimes' sessions look for.
FOLDER_FILES: dict[str, tuple[str, ...]] = {"openvino": ("model.xml", "model.bin"),
                                            "ncnn": ("model.param", "model.bin")}
CONVERT_TIMEOUT_S = 600.0


def tool_versions(fmt: str) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for dist in TOOLS[fmt]:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def convert(fmt: str, quantize: str, onnx_path: Path, target: Path, calibration: np.ndarray | None = None) -> dict:
    """Convert ``onnx_path`` into the ``fmt``/``quantize`` artifact at ``target``; returns its stage record."""
    missing = [dist for dist, version in tool_versions(fmt).items() if version is None]
    if missing:
        raise MicronetError(f"--format {fmt} needs {', '.join(missing)}: pip install "
                            + " ".join(f"{d}=={_PINS[d]}" for d in missing))
    start = time.perf_counter()
    if fmt == "openvino":
        options = to_openvino(onnx_path, target, quantize, calibration)
    elif fmt == "ncnn":
        options = to_ncnn(onnx_path, target, quantize)
    elif fmt == "mnn":
        options = to_mnn(onnx_path, target, quantize)
    else:
        raise ValueError(f"export/edge.py does not convert to {fmt!r}")
    return {"stage": fmt, "tool_versions": tool_versions(fmt), "quantize": quantize, "options": options,
            "source": onnx_path.name, "files": artifact_files(target),
            "wall_s": round(time.perf_counter() - start, 3)}


_PINS = {"openvino": "2026.4.1", "nncf": "3.4.0", "pnnx": "20261020", "ncnn": "1.0.20261020", "mnn": "3.6.1"}


# --- OpenVINO ----------------------------------------------------------------------------------------------------

def without_openvino_telemetry() -> None:
    """Make ``openvino_telemetry`` unimportable in this process (OpenVINO's converter and NNCF then use their
    no-op stubs). ``import openvino`` itself writes ``~/intel/openvino_ga_cid`` and counts usage otherwise,
    so this runs before every import of OpenVINO in micronet (``micronet.inference.before_import``)."""
    from micronet.inference import block_openvino_telemetry

    block_openvino_telemetry()


def to_openvino(onnx_path: Path, folder: Path, quantize: str, calibration: np.ndarray | None) -> dict:
    """OpenVINO IR (``model.xml`` + ``model.bin``) in ``folder``: float32, float16 weights, or NNCF int8
    calibrated on ``calibration`` (NCHW float32, the TFLite int8 images)."""
    without_openvino_telemetry()
    import openvino as ov

    from .tflite import output_to

    folder.mkdir(parents=True, exist_ok=True)
    log = folder.parent / f"{folder.name}.log"
    options: dict[str, Any] = {"compress_to_fp16": quantize == "float16"}
    try:
        with output_to(log):  # NNCF's progress bars and OpenVINO's warnings belong in the log
            model = ov.convert_model(str(onnx_path))
            if quantize == "int8":
                model, options["nncf"] = _nncf_int8(model, calibration)
            ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=quantize == "float16")
    except MicronetError:
        raise
    except Exception as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise MicronetError(f"OpenVINO could not convert {onnx_path.name} ({quantize}): {_first_line(exc)}") from None
    return options


def _nncf_int8(model: Any, calibration: np.ndarray | None) -> tuple[Any, dict]:
    import logging

    import nncf

    if calibration is None or len(calibration) == 0:
        raise MicronetError("OpenVINO int8 needs calibration images, got none")
    nncf.set_log_level(logging.ERROR)
    samples = [np.ascontiguousarray(calibration[i:i + 1], dtype=np.float32) for i in range(len(calibration))]
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
    return quantized, {"method": "nncf.quantize (post-training, weights and activations)",
                       "calibration_samples": len(samples), "preset": "performance (default)"}


# --- ncnn --------------------------------------------------------------------------------------------------------

def pnnx_binary() -> Path:
    """The ``pnnx`` executable the pnnx wheel ships (found without importing pnnx's torch helpers)."""
    from importlib.util import find_spec

    spec = find_spec("pnnx")
    if spec is None or not spec.submodule_search_locations:
        raise MicronetError("--format ncnn needs pnnx: pip install pnnx==20261020")
    binary = Path(list(spec.submodule_search_locations)[0]) / "pnnx"
    if not binary.is_file():
        raise MicronetError(f"the pnnx package has no pnnx executable at {binary}: reinstall pnnx==20261020")
    return binary


def to_ncnn(onnx_path: Path, folder: Path, quantize: str) -> dict:
    """ncnn ``model.param`` + ``model.bin`` in ``folder``, converted by pnnx (``fp16=1`` for float16)."""
    from .tflite import offline_env

    fp16 = int(quantize == "float16")
    options = {"pnnx": f"fp16={fp16}", "input_blob": "in0", "output_blob": "out0"}
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".pnnx-") as scratch:
        work = Path(scratch)
        shutil.copyfile(onnx_path, work / "model.onnx")
        log = folder.parent / f"{folder.name}.log"
        with open(log, "wb") as out:
            try:
                rc = subprocess.run([str(pnnx_binary()), "model.onnx", f"fp16={fp16}"], cwd=work,
                                    env=offline_env(), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, timeout=CONVERT_TIMEOUT_S).returncode
            except subprocess.TimeoutExpired:
                rc = None
        made = [work / "model.ncnn.param", work / "model.ncnn.bin"]
        if rc != 0 or not all(p.is_file() and p.stat().st_size for p in made):
            why = (f"timed out after {CONVERT_TIMEOUT_S:.0f} s" if rc is None else
                   f"exit code {rc}: {_last_line(log.read_text(errors='replace'))}")
            raise MicronetError(f"pnnx could not convert {onnx_path.name} to ncnn ({why})")
        _record_input_shape(made[0], _onnx_input_shape(onnx_path))
        _check_ncnn_loads(made, onnx_path, log)
        folder.mkdir(parents=True, exist_ok=True)
        for source, name in zip(made, FOLDER_FILES["ncnn"]):
            shutil.move(str(source), folder / name)
    return options


def _check_ncnn_loads(files: list[Path], onnx_path: Path, log: Path) -> None:
    """pnnx exits 0 even when it wrote a layer ncnn does not have (an ONNX file built for ONNX Runtime gives
    ``F.batch_norm``): load the pair in ncnn now, so the refusal names the converter."""
    import ncnn

    from .tflite import output_to

    net = ncnn.Net()
    with output_to(log):  # ncnn prints its complaint from C++
        loaded = net.load_param(str(files[0])) == 0 and net.load_model(str(files[1])) == 0
    if not loaded:
        unknown = [line.split()[0] for line in files[0].read_text().splitlines()[2:]
                   if line.split() and "." in line.split()[0]]
        what = f" (layers ncnn does not have: {', '.join(sorted(set(unknown)))})" if unknown else ""
        raise MicronetError(f"pnnx could not convert {onnx_path.name} to a model ncnn loads{what}")


def _onnx_input_shape(onnx_path: Path) -> list[int]:
    import onnx

    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value for d in dims]


def _record_input_shape(param: Path, shape: list[int]) -> None:
    """Write the input's size into the param file's ``Input`` layer (its parameters 0=w 1=h 2=c, which ncnn
    defines for exactly this): pnnx leaves them out, and without them nothing tells a reader of the model
    (the benchmark's memory child, a C++ app) what to feed it."""
    _, c, h, w = shape
    lines = param.read_text().splitlines()
    for i, line in enumerate(lines):
        fields = line.split()
        if fields and fields[0] == "Input" and not any("=" in f for f in fields):
            lines[i] = f"{line} 0={w} 1={h} 2={c}"
    param.write_text("\n".join(lines) + "\n")


# --- MNN ---------------------------------------------------------------------------------------------------------

#: The child that runs MNN's converter: the extension module the ``mnnconvert`` script wraps, without the
#: script's pip install and usage log.
_MNN_CHILD = "import sys, _tools; _tools.mnnconvert(sys.argv[1:])"


def to_mnn(onnx_path: Path, path: Path, quantize: str) -> dict:
    """An ``.mnn`` file at ``path``: float32, ``--fp16`` (float16 weights) or ``--weightQuantBits 8``."""
    from .tflite import offline_env

    extra = {"float32": [], "float16": ["--fp16"], "int8": ["--weightQuantBits", "8"]}[quantize]
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.parent / f"{path.name}.log"
    command = [sys.executable, "-c", _MNN_CHILD, "mnnconvert", "-f", "ONNX", "--modelFile", str(onnx_path),
               "--MNNModel", str(path), "--bizCode", "micronet", *extra]
    with open(log, "wb") as out:
        try:
            rc = subprocess.run(command, env=offline_env(), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, timeout=CONVERT_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            rc = None
    text = log.read_text(errors="replace")
    if rc != 0 or "Converted Success" not in text or not path.is_file() or not path.stat().st_size:
        path.unlink(missing_ok=True)
        why = f"timed out after {CONVERT_TIMEOUT_S:.0f} s" if rc is None else _last_line(text) or f"exit code {rc}"
        raise MicronetError(f"MNN could not convert {onnx_path.name} ({quantize}): {why}")
    return {"mnnconvert": ["-f", "ONNX", "--bizCode", "micronet", *extra]}


# --- running and describing the artifacts ------------------------------------------------------------------------

def run_edge(fmt: str, path: Path, batch: np.ndarray, threads: int = 1) -> np.ndarray:
    """Float32 logits (N, classes) of the artifact at ``path`` in its own runtime, one image at a time (the
    files have a batch of one), through the session ``micronet bench`` times."""
    from micronet import inference as core

    if fmt == "openvino":
        without_openvino_telemetry()
    runtime = core.PREFERENCE[fmt][0]
    try:
        session = core.open_session(runtime, str(path), threads)
        model = core.bind_model(session, None, str(path))
    except Exception as exc:
        raise MicronetError(f"{runtime} cannot load {path.name}: {_first_line(exc)}") from None
    try:
        rows = [model.to_logits(model.run(model.prepare(batch[i:i + 1]))) for i in range(len(batch))]
    finally:
        session.close()
    return np.concatenate(rows).astype(np.float32)


def artifact_files(path: Path) -> dict[str, dict]:
    """name → {sha256, size_bytes} of an artifact's files (a folder's, or the one file)."""
    from .manifest import sha256_file

    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return {p.name: {"sha256": sha256_file(p), "size_bytes": p.stat().st_size} for p in files}


def _first_line(exc: BaseException) -> str:
    from micronet.inference import first_line

    return first_line(exc)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:240] if lines else ""


__all__ = ["FOLDER_FILES", "TOOLS", "artifact_files", "convert", "pnnx_binary", "run_edge", "tool_versions",
           "without_openvino_telemetry"]
