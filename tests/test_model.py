"""The reference model: structure, numerics of its building blocks, shapes, exportability."""

from __future__ import annotations

import pytest
import torch

from micronet.config import CONFIGS
from micronet.errors import MicronetError
from micronet.layers import ChannelShuffle, DynamicShiftMax, make_divisible, shift_permutation, shuffle_permutation
from micronet.model import build_model
from micronet.registry import VARIANTS, resolve_variant

ALL = list(VARIANTS)


def test_shift_index_matches_released_code():
    assert shift_permutation(8, 2) == [5, 6, 7, 4, 1, 2, 3, 0]


def test_shift_index_is_a_permutation_for_every_layer():
    for name in ALL:
        model = build_model(name)
        for m in model.modules():
            if isinstance(m, DynamicShiftMax):
                assert sorted(m.shift_index.tolist()) == list(range(m.channels))


def test_channel_shuffle_matches_its_permutation():
    x = torch.arange(12.0).view(1, 12, 1, 1)
    out = ChannelShuffle(3)(x).flatten().tolist()
    assert out == [float(i) for i in shuffle_permutation(12, 3)] == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]


def test_make_divisible_rounds_like_mobilenet():
    assert make_divisible(2) == 4 and make_divisible(12) == 12 and make_divisible(36) == 36
    assert make_divisible(10) == 12  # nearest multiple of 4 (round half up)
    assert make_divisible(7, 8) == 8


def _hand_shift_max(x, w1, b1, w2, b2, index, branches, init_a, init_b):
    """The formula of the paper/released code written out element by element (no torch.split)."""
    bsz, c = x.shape[:2]
    pooled = x.mean(dim=(2, 3))
    hidden = torch.clamp(pooled @ w1.T + b1, min=0)
    h = torch.clamp(hidden @ w2.T + b2 + 3, 0, 6) / 6
    theta = (h - 0.5) * 4.0
    out = torch.empty_like(x)
    for n in range(bsz):
        for ch in range(c):
            xs = x[n, index[ch]]
            z1 = (theta[n, ch] + init_a[0]) * x[n, ch] + (theta[n, c + ch] + init_b[0]) * xs
            if branches == 2:
                z2 = (theta[n, 2 * c + ch] + init_a[1]) * x[n, ch] + (theta[n, 3 * c + ch] + init_b[1]) * xs
                z1 = torch.maximum(z1, z2)
            out[n, ch] = z1
    return out


@pytest.mark.parametrize("branches", [1, 2])
def test_shift_max_matches_hand_formula(branches):
    act = DynamicShiftMax(8, groups=2, reduction=2, branches=branches, init_a=(1.0, 0.5), init_b=(0.0, 0.5))
    torch.nn.init.normal_(act.fc1.weight, 0, 0.5)
    torch.nn.init.normal_(act.fc2.weight, 0, 0.5)
    torch.nn.init.normal_(act.fc2.bias, 0, 0.5)
    x = torch.randn(2, 8, 3, 3)
    expected = _hand_shift_max(x, act.fc1.weight, act.fc1.bias, act.fc2.weight, act.fc2.bias,
                               shift_permutation(8, 2), branches, act.init_a, act.init_b)
    torch.testing.assert_close(act(x), expected, rtol=1e-5, atol=1e-6)


def test_k1_starts_as_identity_and_k2_takes_the_max():
    x = torch.randn(1, 8, 4, 4)
    k1 = DynamicShiftMax(8, 2, 2, branches=1, init_a=(1.0, 0.0), init_b=(0.0, 0.0))
    torch.nn.init.zeros_(k1.fc2.weight)  # hyper-function outputs 0.5 -> theta 0 -> a1 = 1, b1 = 0
    torch.nn.init.zeros_(k1.fc2.bias)
    torch.testing.assert_close(k1(x), x)
    assert k1.fc2.out_features == 2 * 8
    k2 = DynamicShiftMax(8, 2, 2, branches=2, init_a=(1.0, -1.0), init_b=(0.0, 0.0))
    torch.nn.init.zeros_(k2.fc2.weight)
    torch.nn.init.zeros_(k2.fc2.bias)
    torch.testing.assert_close(k2(x), x.abs())  # max(x, -x)
    assert k2.fc2.out_features == 4 * 8


def test_residual_rule():
    for name, cfg in CONFIGS.items():
        model = build_model(name)
        cin = cfg.stem_channels
        for row, block in zip(cfg.rows, model.blocks):
            cout = cin * row.expansion1 * row.expansion2 if row.kind == "final" else row.out_channels
            assert block.residual == (row.stride == 1 and cin == cout), (name, row)
            cin = cout
    # m1 block 5 and release-m3 blocks 3, 5, 8, 10 are the residual ones the spec lists
    assert [b.residual for b in build_model("m1").blocks].count(True) == 1
    assert [i + 1 for i, b in enumerate(build_model("release-m3").blocks) if b.residual] == [3, 5, 8, 10]


def test_residual_adds_the_input():
    block = build_model("m1").blocks[4].eval()
    x = torch.randn(1, 32, 14, 14)
    torch.testing.assert_close(block(x), block.layers(x) + x)


@pytest.mark.parametrize("size", [224, 192, 128, 96, 32])
def test_output_shape_for_several_input_sizes(size):
    model = build_model("m0", num_classes=10, input_size=size).eval()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 10)


@pytest.mark.parametrize("size", [0, 100, 225, -32])
def test_bad_input_size_is_a_clear_error(size):
    with pytest.raises(MicronetError, match="multiple of 32"):
        build_model("m0", input_size=size)


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(MicronetError, match="unknown variant 'm7'.*m0, m1"):
        build_model("m7")


def test_aliases_resolve_to_the_paper_names():
    assert resolve_variant("release-m1").name == "m0"
    assert resolve_variant("RELEASE-M2").name == "m1"


def test_eval_is_deterministic():
    model = build_model("m0").eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_initialisation_follows_the_released_code():
    model = build_model("m3")
    conv = model.blocks[3].layers[0][0]  # a grouped 1x1
    expected_std = (2.0 / (1 * 1 * conv.out_channels)) ** 0.5
    assert abs(conv.weight.std().item() - expected_std) / expected_std < 0.1
    linear = model.head.fc1[0]
    assert abs(linear.weight.std().item() - 0.01) < 0.001 and torch.count_nonzero(linear.bias) == 0
    bn = model.stem.conv[0][1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ALL)
def test_every_variant_traces_and_exports(variant):
    model = build_model(variant, input_size=96).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        reference = model(x)
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), reference)
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), reference)
