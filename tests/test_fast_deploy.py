"""The fast deploy form (export/fast.py) against the training-form model: exact up to float32 rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from micronet.export.deploy import recalibrate_batchnorm
from micronet.export.fast import (_interleaved_cycles, _inv, _rotations, _through_shuffle, _before_shuffle,
                         to_fast_deploy)
from micronet.layers import shift_permutation, shuffle_permutation
from micronet.model import build_model

VARIANTS = ["m0", "m1", "m2", "m3", "release-m0", "release-m3"]
LIMIT = 1e-5  # max |fast - reference| relative to the largest reference logit


def _recalibrated(variant: str, size: int = 96):
    torch.manual_seed(0)
    model = build_model(variant, input_size=size).eval()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(8, 3, size, size, generator=gen) for _ in range(2)]
    recalibrate_batchnorm(model, batches)  # untrained stats collapse the logits (toolchain P15)
    return model


@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_matches_training_form(variant):
    model = _recalibrated(variant)
    x = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x).double()
        out = to_fast_deploy(model)(x).double()
    assert out.shape == ref.shape
    assert float((out - ref).abs().max() / ref.abs().max()) <= LIMIT


def test_fast_at_224_and_model_untouched():
    model = _recalibrated("m0", 224)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = to_fast_deploy(model)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, out = model(x).double(), fast(x).double()
    assert float((out - ref).abs().max() / ref.abs().max()) <= LIMIT
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())


@pytest.mark.parametrize("channels,groups", [(8, 2), (32, 8), (96, 8), (64, 16), (36, 36), (12, 1)])
def test_shift_is_one_rotation_in_interleaved_order(channels, groups):
    shift = np.asarray(shift_permutation(channels, groups))
    order, d = _interleaved_cycles(shift)
    assert sorted(order.tolist()) == list(range(channels))
    pi = _inv(order)[shift[order]]
    assert np.array_equal(pi, (np.arange(channels) + d) % channels)
    assert d == np.gcd(groups, channels // groups)


@pytest.mark.parametrize("channels,groups", [(24, 6), (32, 8), (64, 16)])
def test_shift_is_two_masked_rotations_in_natural_order(channels, groups):
    shift = np.asarray(shift_permutation(channels, groups))
    rot = _rotations(shift)
    assert rot is not None and len(rot) <= 2
    x = np.arange(channels)
    rebuilt = sum(np.where(mask, np.roll(x, -d), 0) for d, mask in rot.items())
    assert np.array_equal(rebuilt, x[shift])


def test_shuffle_relabelling_roundtrip():
    order = np.random.default_rng(0).permutation(24)
    assert np.array_equal(_before_shuffle(_through_shuffle(order, 4), 4), order)
    # The relabelled order really describes the shuffled tensor.
    logical = np.arange(24) * 10
    stored = logical[order]
    shuffled = logical[np.asarray(shuffle_permutation(24, 4))]
    assert np.array_equal(stored, shuffled[_through_shuffle(order, 4)])
