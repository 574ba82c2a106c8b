"""Which rewrite broke exactness: the profile's rewrites switched on one at a time, each graph checked
against the training form."""

from __future__ import annotations

import dataclasses

import torch

from micronet.model import MicroNet

from .profiles import REWRITES, RuntimeProfile

__all__ = ["relative_error", "first_inexact_pass"]


def relative_error(model: MicroNet, profile: RuntimeProfile, x: torch.Tensor) -> float:
    """max |fast - training form| / max |training form| on ``x``, in float64."""
    from . import to_fast_deploy

    with torch.no_grad():
        ref = model.eval()(x).double()
        out = to_fast_deploy(model, target=profile)(x).double()
    return float((out - ref).abs().max() / ref.abs().max())


def first_inexact_pass(model: MicroNet, target: str | RuntimeProfile = "xnnpack", x: torch.Tensor | None = None,
                       limit: float = 1e-5) -> str | None:
    """The first rewrite (in ``REWRITES`` order) whose switching on makes the fast graph leave ``limit`` of the
    training form's logits, starting from ``target`` with every rewrite off and switching its own on one by
    one; ``"baseline"`` if the graph with all of them off is already off; None if every step is exact."""
    from . import resolve_profile

    profile = resolve_profile(target)
    if x is None:
        size = model.input_size
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(8))
    current = dataclasses.replace(profile, **{name: False for name in REWRITES})
    if relative_error(model, current, x) > limit:
        return "baseline"
    for name in REWRITES:
        if not getattr(profile, name):
            continue
        current = dataclasses.replace(current, **{name: True})
        if relative_error(model, current, x) > limit:
            return name
    return None
