"""What the ONNX file is built for (``micronet export --optimize-for``): a declarative table.

The default, ``portable``, is the file to hand out: it runs correctly in every ONNX consumer we test
(tests/test_conformance.py: ONNX Runtime, the ONNX reference evaluator, OpenVINO, onnx2tf, MNN, pnnx → ncnn,
and ONNX Runtime's mobile checker rates it usable for NNAPI and CoreML). ``onnxruntime`` keeps the rewrites
only ONNX Runtime takes (docs/fast-graph.md, "The portable profile") and records, in its manifest, the
consumers it is known to fail in, measured when the table was written.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OnnxTarget:
    name: str
    profile: str  # the fast graph's runtime profile (export/fast/profiles.py)
    batch_one: bool  # a fixed-batch file gets the batch-of-one BatchNormalization products
    summary: str  # for --help and the manifest
    #: consumer → how it fails (the manifest's ``known_to_fail_in``); empty for a portable file.
    known_to_fail_in: dict[str, str]


ONNX_TARGETS: dict[str, OnnxTarget] = {
    "portable": OnnxTarget(
        "portable", "portable", batch_one=False,
        summary="runs in any ONNX consumer (ONNX Runtime, OpenVINO, onnx2tf, MNN, ncnn via pnnx, NNAPI/CoreML)",
        known_to_fail_in={}),
    "onnxruntime": OnnxTarget(
        "onnxruntime", "onnxruntime", batch_one=True,
        summary="fastest in ONNX Runtime; uses BatchNormalization with run-time scales, channel Gathers and a "
                "broadcast border constant that other consumers reject",
        known_to_fail_in={
            "onnx2tf 1.29.24": "fails at the stem's (1, C, 1, W) border Add (\"Dimensions must be equal\")",
            "MNN 3.6.1 (mnnconvert)": "crashes: \"BatchNorm's gamma not valid\" (scale computed at run time)",
            "pnnx 20261020 → ncnn": "fails: F.batch_norm with run-time scales is not an ncnn layer",
            "ONNX Runtime mobile (NNAPI, CoreML)": "split into many partitions (BatchNormalization, Gather, "
                                                   "HardSigmoid): rated not recommended",
        }),
}
