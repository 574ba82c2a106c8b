"""Which rewrite broke exactness: the profile's rewrites switched on one at a time, each graph checked
against the training form."""

from __future__ import annotations

import copy
import dataclasses

import torch

from micronet.model import MicroNet

from .build import resolve_profile, to_fast_deploy
from .profiles import REWRITES, RuntimeProfile

__all__ = ["relative_error", "first_inexact_pass"]


def relative_error(model: MicroNet, profile: RuntimeProfile, x: torch.Tensor,
                   reference: torch.Tensor | None = None) -> float:
    """max |fast - training form| / max |training form| on ``x``, in float64 (``reference``: the training
    form's logits on ``x``, when already computed)."""
    with torch.no_grad():
        ref = copy.deepcopy(model).eval()(x).double() if reference is None else reference
        out = to_fast_deploy(model, profile=profile)(x).double()
    return float((out - ref).abs().max() / ref.abs().max())


def first_inexact_pass(model: MicroNet, profile: str | RuntimeProfile = "xnnpack", x: torch.Tensor | None = None,
                       limit: float = 1e-5) -> str | None:
    """The first rewrite (in ``REWRITES`` order) whose switching on makes the fast graph leave ``limit`` of the
    training form's logits, starting from ``profile`` with every rewrite off and switching its own on one by
    one; ``"baseline"`` if the graph with all of them off is already off; None if every step is exact."""
    profile = resolve_profile(profile)
    if x is None:
        size = model.input_size
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        reference = copy.deepcopy(model).eval()(x).double()
    current = dataclasses.replace(profile, **{name: False for name in REWRITES})
    if relative_error(model, current, x, reference) > limit:
        return "baseline"
    for name in REWRITES:
        if not getattr(profile, name):
            continue
        current = dataclasses.replace(current, **{name: True})
        if relative_error(model, current, x, reference) > limit:
            return name
    return None
