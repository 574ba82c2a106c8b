"""Passes over a built fast graph's module tree: each returns a graph computing the same function in a form
another lowering or runtime prefers (rewrites 14, 18 and 20)."""

from __future__ import annotations

import copy

from .modules import FastMicroNet
from .shift_max import ShiftMax

__all__ = ["linear_coefficients", "relu_max_form", "batch_one_form"]


def linear_coefficients(fast: FastMicroNet) -> FastMicroNet:
    """In place: every Shift-Max hyper-function as Gemms on the flat pooled vector (rewrite 18), where no
    coefficient is masked (``Coefficients.linear_form``)."""
    for module in fast.modules():
        if isinstance(module, ShiftMax):
            module.coef = module.coef.linear_form() or module.coef
    return fast


def relu_max_form(fast: FastMicroNet) -> FastMicroNet:
    """A copy of the fast graph whose two-branch Shift-Maxes take their max as q + relu(p - q) (rewrite 14,
    the form lowered for int8 TFLite); the same weights, so nothing is built twice."""
    copied = copy.deepcopy(fast)
    for module in copied.modules():
        if isinstance(module, ShiftMax):
            module.relu_max = True
    return copied


def batch_one_form(fast: FastMicroNet) -> FastMicroNet:
    """A copy of an ONNX Runtime fast graph whose Shift-Max products are BatchNormalizations (rewrite 20):
    the same function, for a batch of one (BatchNormalization's scale is per channel, not per sample), which
    ``micronet export`` ships unless a dynamic batch is asked for. Widened coefficients (XNNPACK) cannot be
    a BatchNormalization scale."""
    copied = copy.deepcopy(fast)
    for module in copied.modules():
        if isinstance(module, ShiftMax):
            if module.widen is not None:
                raise ValueError("batch_one_form needs per-channel coefficients: build the graph for onnxruntime")
            module.batch_one = True
    return copied
