"""Parity metrics between two sets of logits, and the pass/fail rule for each rung of the export ladder.

Every rung compares a candidate's logits with its reference's on the same held-out inputs, row by row:

==============  ==========================  ===============================  =====================
rung            candidate vs. reference     judged by                        limit
==============  ==========================  ===============================  =====================
deploy, deploy_fast, deploy_fast_onnxruntime, deploy_fast_portable
                deploy form vs. training    rel_max_abs_err                  ≤ 1e-4
onnx, onnx_portable
                ONNX (ORT) vs. its graph    rel_max_abs_err                  ≤ 1e-4
tflite_float32  TFLite fp32 vs. its graph   rel_max_abs_err                  ≤ 1e-4
tflite_float16  TFLite fp16 vs. TFLite fp32 rel_max_abs_err                  ≤ 1e-2
tflite_dynamic  dynamic-range vs. fp32      cosine                           ≥ 0.99
tflite_int8     full-integer vs. fp32       cosine                           ≥ 0.98 (provisional)
openvino_float32, ncnn_float32, mnn_float32
                file in its runtime vs ONNX rel_max_abs_err                  ≤ 1e-4
openvino_float16, ncnn_float16, mnn_float16
                fp16 weights vs ONNX        cosine                           ≥ 0.998
openvino_int8   NNCF int8 vs ONNX           cosine                           ≥ 0.98 (provisional)
mnn_int8        int8 weights vs ONNX        cosine                           ≥ 0.99
==============  ==========================  ===============================  =====================

"Its graph" is the PyTorch graph the file was exported from (``deploy_fast_portable`` for ONNX, or
``deploy_fast_onnxruntime`` with ``--optimize-for onnxruntime``; ``deploy_fast``
for TFLite; with ``--graph reference`` the deploy form for ONNX and the ONNX file for TFLite, which onnx2tf
converts); every rung records the name of its reference. The deploy forms (BatchNorm folded, Shift-Max
constants folded, the fast graphs' permutations folded into weights) are judged against the training form.

``rel_max_abs_err`` is max|candidate − reference| divided by max|reference|: an absolute 1e-5 means nothing
without the logit scale (a random net's logits span ±0.3, a trained one's ±20).

Why these limits (measured on the lead's m0 at 224×224 with re-estimated BN, and on the test net):

* Float32 rungs compute the same function; the difference is float32 rounding from re-associated sums, fused
  multiply-adds and folded BatchNorm. Measured: ORT vs PyTorch 2.2e-6 (m0) and 4.1e-6 (test net); TFLite vs
  ONNX 6.3e-6 and 7.0e-6. PyTorch float32 is itself 1.7e-6 away from float64 on m0, so this is the noise
  floor, not a defect. A limit of 1e-5 would sit within 1.5× of honest rounding and fail correct conversions
  of slightly worse-conditioned (e.g. trained) weights. Small conversion bugs are far larger: weights
  silently rounded to float16 moved the logits by 1.9e-3 (test net) and 2.8e-3 (m0) relative, a BatchNorm
  epsilon of 1e-3 instead of 1e-5 by 0.83 and 0.98, layout or channel-order bugs by ~1. 1e-4 is ≥ 14× above
  the noise and ≥ 19× below the smallest of those. Top-1 agreement is reported but not judged: a near-tie can flip on a 1e-7 perturbation.
* float16 stores filters and weight matrices in half precision, keeps vectors float32 and computes in float32
  (export/tflite_fp16.py; the reference kernels and XNNPACK agree to 4e-6). Measured rel_max_abs_err
  (untrained, 224 px): m0 fast graph 2.6e-3, m0 reference graph 2.3e-3, m1 2.8e-3, m3 2.2e-3; m0 at 64 px
  1.6e-3. Rounding the fast graph's folded coefficient vectors to float16 as well (what TensorFlow's
  converter does) gave 2.5e-2 on m0, and cosine could not tell it apart (0.99988 against 0.999999), so
  this rung is judged by the relative error: 1e-2 is 3.6× above the worst honest file and 2.5× below that
  one, trained or not.
* dynamic-range (int8 weights, activations quantized at run time): measured cosine 0.9985 on m0; ≥ 0.99.
* full-integer int8 is judged by cosine, not top-1: with untrained weights the top-1/top-2 margins are
  smaller than the int8 error, so top-1 agreement mostly measures near-ties flipping.
  Measured 0.993 on m0 (random-normal calibration), 0.983 in the toolchain spec; 0.98 stays provisional
  until measured on trained weights with real calibration images.
* OpenVINO, ncnn, MNN (export/edge.py), measured on m0 at 224 (docs/export-stages.md): float32 files 2.0e-6
  to 3.4e-6 relative (the ONNX limit applies); float16 weights cosine 0.99988 (OpenVINO, ncnn) and 0.99950
  (MNN), held like TFLite float16; OpenVINO int8 (NNCF, activations too) 0.9905, held like TFLite int8; MNN
  int8 stores int8 weights only and computes in float: 0.9988, held like dynamic-range TFLite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Threshold:
    metric: str  # a key of compare()'s result
    limit: float
    higher_is_better: bool
    reference: str  # what the candidate is compared with, for reports


#: The formats converted from a portable ONNX file by export/edge.py.
EDGE_FORMATS = ("openvino", "ncnn", "mnn")

#: Logits of a deploy form vs the training form, relative to the largest logit. BatchNorm folding and the
#: folded Shift-Max constants re-associate float32 sums (measured 3e-6 on recalibrated m0).
DEPLOY_LIMIT = 1e-4

THRESHOLDS: dict[str, Threshold] = {
    **{form: Threshold("rel_max_abs_err", DEPLOY_LIMIT, False, "pytorch training form")
       for form in ("deploy", "deploy_fast", "deploy_fast_onnxruntime", "deploy_fast_portable")},
    **{rung: Threshold("rel_max_abs_err", 1e-4, False, "pytorch") for rung in ("onnx", "onnx_portable")},
    "tflite_float32": Threshold("rel_max_abs_err", 1e-4, False, "deploy_fast"),
    "tflite_float16": Threshold("rel_max_abs_err", 1e-2, False, "tflite_float32"),
    "tflite_dynamic": Threshold("cosine", 0.99, True, "tflite_float32"),
    "tflite_int8": Threshold("cosine", 0.98, True, "tflite_float32"),
    # The edge formats, each judged in its own runtime against the ONNX file it was converted from (in ONNX
    # Runtime). Float32: the same function, the ONNX limit. Float16 weights: as TFLite float16. OpenVINO int8
    # (NNCF, weights and activations): as TFLite int8. MNN int8 is weight-only, computed in float: as
    # TFLite's dynamic range.
    **{f"{fmt}_float32": Threshold("rel_max_abs_err", 1e-4, False, "onnx") for fmt in EDGE_FORMATS},
    **{f"{fmt}_float16": Threshold("cosine", 0.998, True, "onnx") for fmt in EDGE_FORMATS},
    "openvino_int8": Threshold("cosine", 0.98, True, "onnx"),
    "mnn_int8": Threshold("cosine", 0.99, True, "onnx"),
}

#: Quantized rungs of an export WITHOUT trained weights (random init, BatchNorm re-estimated on the
#: calibration images). Such a network's logits are nearly tied and its multiplicative Shift-Max gates
#: amplify rounding block after block, so honest int8 lands at cosine 0.97-0.99 (m0..m3 at 224); the
#: rung must still catch a broken conversion (a layout or channel-order bug gives cosine < 0.5).
#: Trained weights are held to THRESHOLDS (digits m0: int8 cosine 0.9994).
UNTRAINED_LIMITS: dict[str, float] = {"tflite_int8": 0.95, "tflite_dynamic": 0.98,
                                      **{f"{fmt}_float16": 0.99 for fmt in EDGE_FORMATS},
                                      "openvino_int8": 0.95, "mnn_int8": 0.98}

#: Full-integer rungs of an untrained *keypoint* model, whose 17 heatmaps at stride 4 are held per image as
#: one vector. Honest int8 of untrained pose-m0..m3 at 256x192, calibrated on the embedded photographs
#: (200 crops, 32 held out): cosine 0.903-0.928; the same file's float32 heatmaps broken the ways a conversion
#: breaks them read: left/right channels swapped 0.03, mirrored 0.10, each map replaced by its mean 0.17,
#: shifted 2 px 0.58, 1 px 0.84 (README, "Pose models"). 0.87 sits between the 1-px shift and the worst
#: honest file; trained weights are held to THRESHOLDS (trained pose-m0..m3 at 256x192: 0.984-0.990).
UNTRAINED_TASK_LIMITS: dict[str, dict[str, float]] = {"pose": {"tflite_int8": 0.87, "openvino_int8": 0.87}}



@dataclass(frozen=True)
class Rung:
    name: str
    passed: bool
    metric: str
    value: float
    limit: float
    reference: str
    metrics: dict[str, Any]

    def summary(self) -> str:
        relation = "≥" if THRESHOLDS[self.name].higher_is_better else "≤"
        verdict = "pass" if self.passed else "FAIL"
        return f"{self.name}: {verdict} ({self.metric} {self.value:.6g}, limit {relation} {self.limit:g})"


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """Parity of ``candidate`` logits against ``reference`` logits, both (N, classes) or, for the dense tasks,
    (N, C, H, W) maps (heatmaps, per-pixel logits), each sample then flattened to one row.

    Returns max/mean absolute error, the max error relative to the largest reference logit, the mean of
    the per-row cosine similarities, top-1 agreement (%) and the share of rows whose reference top-1 is
    among the candidate's top-5 (%); for maps also ``pixel_label_agreement_pct``, the share of positions whose
    arg-max over C (a segmentation's pixel label) is the reference's.
    """
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.ndim not in (2, 4) or reference.shape != candidate.shape:
        raise ValueError(f"compare needs two (N, classes) or (N, C, H, W) arrays of one shape, got "
                         f"{reference.shape} and {candidate.shape}")
    nan_rows = sum(not np.isfinite(row).all() for row in candidate)
    if nan_rows:
        raise ValueError(f"candidate logits contain NaN/inf in {nan_rows} of {len(candidate)} rows")
    # One sample at a time, in float64: a batch of segmentation maps at full resolution would need several
    # float64 copies of the whole batch at once.
    max_abs, sum_abs, scale, agree, positions = 0.0, 0.0, 0.0, 0, 0
    cosines, top1, top1_in_top5 = [], [], []
    for ref, cand in zip(reference, candidate):
        ref, cand = ref.astype(np.float64), cand.astype(np.float64)
        if ref.ndim == 3:
            same = ref.argmax(axis=0) == cand.argmax(axis=0)
            agree, positions = agree + int(same.sum()), positions + same.size
        ref, cand = ref.ravel(), cand.ravel()
        diff = np.abs(cand - ref)
        max_abs, sum_abs = max(max_abs, float(diff.max())), sum_abs + float(diff.sum())
        scale = max(scale, float(np.abs(ref).max()))
        norms = np.linalg.norm(ref) * np.linalg.norm(cand)
        cosines.append(float(ref @ cand) / max(norms, np.finfo(np.float64).tiny))
        ref_top1 = int(ref.argmax())
        top1.append(int(cand.argmax()) == ref_top1)
        top1_in_top5.append(_in_top_k(cand, ref_top1, min(5, ref.size)))
    extra = {"pixel_label_agreement_pct": 100.0 * agree / positions} if reference.ndim == 4 else {}
    return {
        "samples": int(len(reference)),
        "max_abs_err": max_abs,
        "mean_abs_err": sum_abs / reference.size,
        "logit_scale": scale,
        "rel_max_abs_err": max_abs / scale if scale > 0 else max_abs,
        "cosine": float(np.mean(cosines)),
        "min_cosine": float(np.min(cosines)),
        "top1_agreement_pct": float(100.0 * np.mean(top1)),
        "top1_in_top5_pct": float(100.0 * np.mean(top1_in_top5)),
        **extra,
    }


def _in_top_k(values: np.ndarray, index: int, k: int) -> bool:
    """Whether ``index`` is among the ``k`` largest ``values``, ties broken by position (a stable descending
    sort's first k), in linear time: a map's rows have millions of entries."""
    kth = np.partition(values, values.size - k)[values.size - k]
    if values[index] != kth:
        return bool(values[index] > kth)
    room = k - int(np.count_nonzero(values > kth))
    return bool(index in np.flatnonzero(values == kth)[:room])


def check_rung(name: str, metrics: dict[str, Any], *, untrained: bool = False,
               task: str = "classification") -> Rung:
    """Judge ``metrics`` (from ``compare``) against the rung's threshold (for an export without weights,
    ``UNTRAINED_TASK_LIMITS`` of its task, else ``UNTRAINED_LIMITS``)."""
    try:
        threshold = THRESHOLDS[name]
    except KeyError:
        raise ValueError(f"unknown parity rung {name!r}; known: {', '.join(THRESHOLDS)}") from None
    limits = {**UNTRAINED_LIMITS, **UNTRAINED_TASK_LIMITS.get(task, {})}
    if untrained and name in limits:
        threshold = Threshold(threshold.metric, limits[name], threshold.higher_is_better, threshold.reference)
    value = float(metrics[threshold.metric])
    passed = value >= threshold.limit if threshold.higher_is_better else value <= threshold.limit
    return Rung(name, passed, threshold.metric, value, threshold.limit, threshold.reference, dict(metrics))
