"""Which TFLite runtimes can load a .tflite: the oldest runtime version that has a kernel for every op version
the file declares.

A TFLite runtime refuses, at ``allocate_tensors``, an op whose version is newer than the kernels it was built
with. The converter picks each op's version from what the op needs (int8 with int16 activations, per-channel
weights, a dynamic-range FULLY_CONNECTED that keeps its float bias, ...), so a file made by TF 2.19 may need a
runtime newer than ``tflite-runtime`` 2.14.0, the last release of that package on PyPI and what a Raspberry Pi
user is likely to have. The manifest records the answer (``min_runtime_version``, ``runtime_requirement``) and
the export summary says it, so nobody finds out on the device.

``OP_MIN_RUNTIME`` is the part of TensorFlow's own table
(``tensorflow/lite/tools/versioning/runtime_version.cc``, ``FindMinimumRuntimeVersionForOp``, as of
TensorFlow 2.19) covering the ops MicroNet's TFLite files use. An (op, version) pair missing from it is
reported as unknown rather than guessed; tests/test_tflite_compat.py checks the claims both ways in a real
tflite-runtime 2.14.0.
"""

from __future__ import annotations

import os
from typing import Any

#: The tflite-runtime release that Raspberry Pi OS users install from PyPI (its last release).
TFLITE_RUNTIME_LATEST = "2.14.0"

#: (builtin op, op version) → the oldest TFLite runtime with a kernel for it. From TensorFlow's
#: tensorflow/lite/tools/versioning/runtime_version.cc; only the ops MicroNet's files use.
OP_MIN_RUNTIME: dict[tuple[str, int], str] = {
    **{("ADD", v): r for v, r in {1: "1.5.0", 2: "1.14.0", 3: "2.4.0", 4: "2.6.0", 5: "2.13.0"}.items()},
    **{("AVERAGE_POOL_2D", v): r for v, r in {1: "1.5.0", 2: "1.14.0", 3: "2.3.0"}.items()},
    **{("CONCATENATION", v): r for v, r in {1: "1.5.0", 2: "1.14.0", 3: "2.3.0", 4: "2.14.0"}.items()},
    **{("CONV_2D", v): r for v, r in {1: "1.5.0", 2: "1.14.0", 3: "1.14.0", 4: "2.3.0", 5: "2.4.0", 6: "2.9.0",
                                      7: "2.11.0", 8: "2.15.0"}.items()},
    **{("DEPTHWISE_CONV_2D", v): r for v, r in {1: "1.5.0", 2: "1.12.0", 3: "1.14.0", 4: "2.2.0", 5: "2.3.0",
                                                6: "2.3.0", 7: "2.11.0"}.items()},
    **{("DEQUANTIZE", v): r for v, r in {1: "1.13.1", 2: "1.14.0", 3: "1.15.0", 4: "2.2.0", 5: "2.7.0",
                                         6: "2.18.0"}.items()},
    **{("FULLY_CONNECTED", v): r for v, r in {1: "1.5.0", 2: "1.10.0", 3: "1.14.0", 4: "1.14.0", 5: "2.0.0",
                                              6: "2.1.0", 7: "2.3.0", 8: "2.3.0", 9: "2.3.0", 10: "2.11.0",
                                              11: "2.15.0", 12: "2.17.0", 13: "2.18.0"}.items()},
    **{("GATHER", v): r for v, r in {1: "1.6.0", 2: "1.14.0", 3: "1.15.0", 4: "2.4.0", 5: "2.5.0", 6: "2.13.0",
                                     7: "2.15.0"}.items()},
    **{("GATHER_ND", v): r for v, r in {1: "1.14.0", 2: "2.3.0", 3: "2.5.0", 4: "2.13.0", 5: "2.16.0"}.items()},
    ("HARD_SWISH", 1): "1.15.0",
    **{("LOGISTIC", v): r for v, r in {1: "1.14.0", 2: "1.14.0", 3: "2.3.0"}.items()},
    **{("MAXIMUM", v): r for v, r in {1: "1.14.0", 2: "1.14.0", 3: "2.3.0", 4: "2.3.0"}.items()},
    **{("MEAN", v): r for v, r in {1: "1.6.0", 2: "1.14.0", 3: "2.4.0"}.items()},
    **{("MINIMUM", v): r for v, r in {1: "1.14.0", 2: "1.14.0", 3: "2.3.0", 4: "2.3.0"}.items()},
    **{("MUL", v): r for v, r in {1: "1.5.0", 2: "1.14.0", 3: "1.15.0", 4: "2.3.0", 5: "2.6.0", 6: "2.11.0",
                                  7: "2.13.0"}.items()},
    **{("PAD", v): r for v, r in {1: "1.5.0", 2: "1.14.0", 3: "2.4.0", 4: "2.6.0"}.items()},
    **{("QUANTIZE", v): r for v, r in {1: "1.14.0", 2: "1.15.0", 3: "2.7.0"}.items()},
    **{("RELU", v): r for v, r in {1: "1.5.0", 2: "2.1.0", 3: "2.5.0"}.items()},
    **{("RELU6", v): r for v, r in {1: "1.5.0", 2: "1.14.0", 3: "2.5.0"}.items()},
    **{("RESIZE_BILINEAR", v): r for v, r in {1: "1.7.0", 2: "1.14.0", 3: "2.2.0", 4: "2.5.0"}.items()},
    ("RESHAPE", 1): "1.5.0",
    **{("SLICE", v): r for v, r in {1: "1.14.0", 2: "1.14.0", 3: "1.14.0", 4: "2.4.0", 5: "2.5.0",
                                    6: "2.14.0"}.items()},
    **{("SOFTMAX", v): r for v, r in {1: "1.5.0", 2: "1.14.0", 3: "2.3.0"}.items()},
    **{("SPLIT", v): r for v, r in {1: "1.5.0", 2: "1.14.0", 3: "1.14.0", 4: "2.3.0"}.items()},
    **{("SPLIT_V", v): r for v, r in {1: "1.13.1", 2: "2.3.0"}.items()},
    **{("SQUEEZE", v): r for v, r in {1: "1.6.0", 2: "2.5.0"}.items()},
    **{("STRIDED_SLICE", v): r for v, r in {1: "1.6.0", 2: "1.14.0", 3: "2.1.0", 4: "2.2.0", 5: "2.5.0",
                                            6: "2.6.0", 7: "2.14.0", 8: "2.14.0"}.items()},
    **{("SUB", v): r for v, r in {1: "1.6.0", 2: "1.14.0", 3: "2.3.0", 4: "2.4.0", 5: "2.4.0"}.items()},
    **{("TRANSPOSE", v): r for v, r in {1: "1.6.0", 2: "1.14.0", 3: "1.15.0", 4: "2.3.0", 5: "2.4.0",
                                        6: "2.12.0"}.items()},
}


def version_key(version: str) -> tuple[int, ...]:
    """``"2.17.0"`` → (2, 17, 0), for comparing runtime versions; bad input raises one clear ValueError."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise ValueError(f"not a runtime version (digits and dots): {version!r}") from None


def min_runtime_version(op_versions: dict[str, int]) -> dict[str, Any]:
    """The oldest runtime that runs every (op, version) of ``op_versions`` (from ``inspect.tflite_op_versions``).

    Returns ``min_runtime_version`` (None when no op is in the table), ``needed_by`` (the ops at that version,
    e.g. ``["FULLY_CONNECTED v12"]``) and ``unknown`` (ops whose version is not in ``OP_MIN_RUNTIME``: no
    claim is made about them).
    """
    known = {f"{op} v{v}": OP_MIN_RUNTIME[(op, v)] for op, v in op_versions.items() if (op, v) in OP_MIN_RUNTIME}
    unknown = sorted(f"{op} v{v}" for op, v in op_versions.items() if (op, v) not in OP_MIN_RUNTIME)
    if not known:
        return {"min_runtime_version": None, "needed_by": [], "unknown": unknown}
    newest = max(known.values(), key=version_key)
    return {"min_runtime_version": newest, "needed_by": sorted(k for k, r in known.items() if r == newest),
            "unknown": unknown}


def needs_newer_than(minimum: str | None, runtime: str = TFLITE_RUNTIME_LATEST) -> bool:
    """True when a file needing ``minimum`` does not load in ``runtime`` (default: tflite-runtime 2.14.0)."""
    return minimum is not None and version_key(minimum) > version_key(runtime)


def runtime_requirement(found: dict[str, Any]) -> str:
    """One sentence for the manifest and the export summary, from ``min_runtime_version``'s result."""
    minimum = found["min_runtime_version"]
    if minimum is None:
        return "no op version of this file is in micronet's table; its minimum TFLite runtime is unknown"
    because = ", ".join(found["needed_by"])
    if needs_newer_than(minimum):
        sentence = (f"needs TFLite runtime {minimum} or newer ({because}): it does not load in tflite-runtime "
                    f"{TFLITE_RUNTIME_LATEST}; use ai-edge-litert (LiteRT) or TensorFlow {minimum} or newer")
    else:
        sentence = (f"loads in TFLite runtime {minimum} or newer ({because}), including tflite-runtime "
                    f"{TFLITE_RUNTIME_LATEST}")
    if found["unknown"]:
        sentence += f"; ops not in micronet's table: {', '.join(found['unknown'])}"
    return sentence


def runtime_fields(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest fields of the .tflite at ``path``: ``min_runtime_version``, ``runtime_requirement`` and
    ``op_versions`` (highest version per op)."""
    from .inspect import tflite_op_versions

    versions = tflite_op_versions(path)
    found = min_runtime_version(versions)
    return {"min_runtime_version": found["min_runtime_version"], "runtime_requirement": runtime_requirement(found),
            "op_versions": versions}
