"""The deploy form computes what the training form computes, with foldable, convertible ops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from micronet.layers import DynamicShiftMax, shift_permutation
from micronet.model import build_model
from micronet.export.deploy import (
    SHIFT_IMPLEMENTATIONS,
    fold_conv_bn,
    fold_linear_bn,
    recalibrate_batchnorm,
    shift_channels,
    to_deploy,
)


def _trained_looking(variant: str, size: int = 96):
    model = build_model(variant, input_size=size)
    recalibrate_batchnorm(model, [torch.randn(8, 3, size, size) for _ in range(2)])
    with torch.no_grad():  # hyper-functions away from their flat initial point
        for m in model.modules():
            if isinstance(m, DynamicShiftMax):
                m.fc2.weight.normal_(0, 0.3)
                m.fc2.bias.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("impl", SHIFT_IMPLEMENTATIONS)
@pytest.mark.parametrize("channels,groups", [(8, 2), (96, 24), (384, 8), (12, 12), (6, 1)])
def test_every_shift_form_equals_the_released_gather(impl, channels, groups):
    x = torch.randn(2, channels, 3, 5)
    expected = x[:, torch.tensor(shift_permutation(channels, groups))]
    assert torch.equal(shift_channels(x, groups, impl), expected)


def test_fold_conv_bn_is_exact_in_eval():
    conv = nn.Conv2d(8, 16, (1, 3), (1, 2), (0, 1), groups=4, bias=False)
    bn = nn.BatchNorm2d(16)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.normal_()
        bn.bias.normal_()
    bn.eval()
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(fold_conv_bn(conv, bn)(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_fold_linear_bn_is_exact_in_eval():
    linear, bn = nn.Linear(12, 7), nn.BatchNorm1d(7)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    bn.eval()
    x = torch.randn(3, 12)
    torch.testing.assert_close(fold_linear_bn(linear, bn)(x), bn(linear(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["m0", "m1", "m2", "m3", "release-m0", "release-m3"])
def test_deploy_form_matches_training_form(variant):
    model = _trained_looking(variant)
    deployed = to_deploy(model)
    x = torch.randn(4, 3, 96, 96)
    with torch.no_grad():
        ref, out = model(x), deployed(x)
    assert ref.std() > 0.1  # activations are realistic, not collapsed
    assert (out - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())
    assert torch.equal(out.argmax(1), ref.argmax(1))


def test_deploy_form_has_no_batchnorm_and_leaves_the_source_alone():
    model = _trained_looking("m0")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deployed = to_deploy(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in deployed.modules())
    assert not any(isinstance(m, DynamicShiftMax) for m in deployed.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_recalibration_fixes_the_collapse_of_untrained_models():
    model = build_model("m0", input_size=96).eval()
    x = torch.randn(4, 3, 96, 96)
    with torch.no_grad():
        collapsed = model.forward_features(x).abs().mean().item()
        recalibrate_batchnorm(model, [torch.randn(8, 3, 96, 96) for _ in range(2)])
        healthy = model.forward_features(x).abs().mean().item()
    assert collapsed < 1e-3 < 0.05 < healthy
    assert not model.training and all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("branches,spatial_attention", [(1, False), (2, False), (2, True)])
def test_deploy_shift_max_folds_rescale_and_offsets_exactly_with_the_clamps_active(branches, spatial_attention):
    from micronet.export.deploy import DeployShiftMax

    source = DynamicShiftMax(24, 4, 4, branches, init_a=(1.0, 0.5), init_b=(0.0, 0.25),
                             spatial_attention=spatial_attention).eval()
    with torch.no_grad():  # wide enough that h_sigmoid saturates at both ends for some channels
        source.fc2.weight.normal_(0, 3.0)
        source.fc2.bias.normal_(0, 3.0)
    x = torch.randn(3, 24, 5, 7)
    with torch.no_grad():
        coefficients = torch.cat(source.coefficients(x), 1)
        expected, out = source(x), DeployShiftMax(source, "roll")(x)
    assert (coefficients == coefficients.amax()).any() and (coefficients == coefficients.amin()).any()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_every_shift_max_coefficient_is_its_own_tensor_in_the_onnx_graph(tmp_path):
    """Full-integer int8 stores each tensor at one scale: a coefficient must leave its own Gemm already
    rescaled and offset (Gemm → Clip → Reshape → product with the map), never sliced out of a stacked
    tensor or offset after the rescale, where the b's (about 0) lose their precision to the a's (about 1)."""
    import onnx

    from micronet.export.onnx import export_onnx

    model = _trained_looking("m0", size=32)
    export_onnx(to_deploy(model), torch.randn(1, 3, 32, 32), tmp_path / "m0.onnx")
    graph = onnx.load(tmp_path / "m0.onnx").graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producers = {out: node for node in graph.node for out in node.output}
    constants = {init.name for init in graph.initializer}
    expected = sum(2 * m.branches for m in model.modules() if isinstance(m, DynamicShiftMax))
    coefficient_clips = [n for n in graph.node if n.op_type == "Clip" and n.input[0] in producers
                         and producers[n.input[0]].op_type == "Gemm"]
    assert len(coefficient_clips) == expected
    for clip in coefficient_clips:
        (reshape,) = consumers[clip.output[0]]
        assert reshape.op_type == "Reshape"
        for product in consumers[reshape.output[0]]:
            assert product.op_type == "Mul"
            other = next(name for name in product.input if name != reshape.output[0])
            assert other not in constants  # multiplies the feature map, not a rescale constant
