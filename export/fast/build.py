"""Parse, plan, emit: the training form to the fast graph for one runtime profile."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch

from micronet.model import MicroNet

from .emit import emit_graph
from .forms import linear_coefficients, relu_max_form
from .modules import FastMicroNet
from .parse import ParsedNet, parse
from .plan import FastPlan
from .planner import make_plan
from .profiles import PROFILES, RuntimeProfile

__all__ = ["resolve_profile", "fast_plan", "to_fast_deploy"]


def resolve_profile(profile: str | RuntimeProfile = "xnnpack", disable: Iterable[str] = ()) -> RuntimeProfile:
    """A profile by name (a key of ``PROFILES``) or as given, with the named rewrites switched off."""
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise ValueError(f"unknown runtime profile {profile!r}; choose from {sorted(PROFILES)}")
        profile = PROFILES[profile]
    disable = tuple(disable)
    return profile.without(*disable) if disable else profile


def _parsed(model: MicroNet) -> ParsedNet:
    return parse(copy.deepcopy(model).eval())


def fast_plan(model: MicroNet, profile: str | RuntimeProfile = "xnnpack", disable: Iterable[str] = ()) -> FastPlan:
    """The layout plan ``to_fast_deploy`` would emit for ``model`` (training form), for inspection."""
    with torch.no_grad():
        return make_plan(_parsed(model), resolve_profile(profile, disable))


def to_fast_deploy(model: MicroNet, relu_max: bool = False, profile: str | RuntimeProfile = "xnnpack",
                   disable: Iterable[str] = ()) -> FastMicroNet:
    """A fast, eval-mode deploy form of ``model`` (training form) computing the same logits, built for the
    runtime profile ``profile`` (a key of ``PROFILES``, or a ``RuntimeProfile``) with the rewrites named in
    ``disable`` switched off (``REWRITES``); with ``relu_max``, its ``relu_max_form``."""
    profile = resolve_profile(profile, disable)
    with torch.no_grad():
        net = _parsed(model)
        fast = emit_graph(net, make_plan(net, profile))
        if profile.linear_coefficients:
            linear_coefficients(fast)
    fast.requires_grad_(False)
    fast = fast.eval()
    return relu_max_form(fast) if relu_max else fast
