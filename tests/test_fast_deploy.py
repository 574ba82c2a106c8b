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


# --- the rewrites, one by one (export/fast.py docstring numbers) ----------------------------------------
from micronet.export.fast import Coefficients, ShiftMax, _coefficients  # noqa: E402
from micronet.layers import DynamicShiftMax  # noqa: E402


def _shift_maxes(fast):
    return [m for m in fast.modules() if isinstance(m, ShiftMax)]


def test_block_a_shift_after_depthwise_is_one_rotation_by_the_multiplier():
    """Rewrite 2, diagonal taps: m0 blocks 2 and 3 (8 and 16 input channels, multiplier 4)."""
    fast = to_fast_deploy(_recalibrated("m0"))
    for block in (fast.blocks[1], fast.blocks[2]):
        dw_then_sm = block.steps[0]
        sm = dw_then_sm[1]
        assert sm.producer is None and sm.permutation is None and sm.rotations == (4,)


def test_block_bc_shift_after_depthwise_is_one_rotation():
    fast = to_fast_deploy(_recalibrated("m0"))
    for block in fast.blocks[3:6]:
        sm = block.steps[1][1]
        assert len(sm.rotations) == 1 and sm.permutation is None


def test_pending_shift_max_feeds_a_grouped_depthwise_with_two_inputs_per_group():
    """Rewrite 5: block 1's K=1 Shift-Max is a product only; block 2's depthwise sums its two parts."""
    fast = to_fast_deploy(_recalibrated("m0"))
    pending = fast.blocks[0].steps[1]
    assert isinstance(pending, ShiftMax) and pending.pending and pending.producer.out_channels == 16
    dw = fast.blocks[1].steps[0][0].conv
    assert dw.groups == 8 and dw.in_channels == 16 and dw.weight.shape[1] == 2


def test_final_block_stays_grouped():
    """Rewrite 6: m0's last 1×1 conv (96→576, 12 groups) is a grouped conv, x~ one rotation by a group."""
    fast = to_fast_deploy(_recalibrated("m0"))
    sm = fast.blocks[-1].steps[0]
    assert sm.producer.groups == 12 and sm.partner.groups == 12 and sm.rotations == (48,)


def test_no_gather_no_5d_reshape_in_the_exported_graph():
    fast = to_fast_deploy(_recalibrated("m0"))
    ops = {str(n.target) for n in torch.export.export(fast, (torch.zeros(1, 3, 96, 96),)).graph.nodes
           if n.op == "call_function"}
    assert not any("index" in op or "gather" in op or "view" in op or "permute" in op for op in ops), ops


def test_masked_coefficient_is_exactly_zero():
    sm = DynamicShiftMax(8, 2, 4, branches=1)
    with torch.no_grad():
        sm.fc2.weight.normal_()
        sm.fc2.bias.normal_()
    order = np.arange(8)
    mask = np.array([True, False] * 4)
    coef = _coefficients(sm, [[(0, order, None), (1, order, mask)]], torch.eye(8, dtype=torch.float64),
                         torch.zeros(8, dtype=torch.float64))
    assert isinstance(coef, Coefficients)
    theta = coef(torch.randn(3, 8, 1, 1))
    assert torch.all(theta[:, 8:][:, ~torch.as_tensor(mask)] == 0)
    assert torch.all(theta[:, 8:][:, torch.as_tensor(mask)] != 0)


@pytest.mark.parametrize("variant", ["m0", "m3"])
def test_fast_graph_in_onnx_runtime(variant, tmp_path):
    """The fast graph also exports to ONNX and runs in ONNX Runtime with the same logits."""
    from micronet.export.onnx import export_onnx, run_onnx

    model = _recalibrated(variant)
    fast = to_fast_deploy(model)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    export_onnx(fast, torch.zeros(1, 3, 96, 96), tmp_path / "fast.onnx")
    with torch.no_grad():
        ref = model(x).numpy()
    out = run_onnx(tmp_path / "fast.onnx", x.numpy())
    assert float(np.abs(out - ref).max() / np.abs(ref).max()) <= 1e-4
