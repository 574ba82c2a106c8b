"""export/tf_graph.py: the NCHW → NHWC lowering, op by op against PyTorch, and the fast graph it exists for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from micronet.errors import MicronetError
from micronet.export import tf_graph, tflite as tflite_stage
from micronet.export.deploy import recalibrate_batchnorm
from micronet.export.fast import ChannelRoll, ChannelTranspose, PixelPairs, to_fast_deploy
from micronet.export.inspect import run_tflite, tflite_op_inventory, xnnpack_coverage
from micronet.model import build_model


def _to_tflite(module: nn.Module, shape, tmp_path, quantize="float32", calibration=None, **kw):
    module = module.eval()
    tf_graph.export_saved_model(module, torch.zeros(shape), tmp_path / "sm", **kw)
    out = tmp_path / f"m.{quantize}.tflite"
    tflite_stage.saved_model_to_tflite(tmp_path / "sm", out, quantize, calibration)
    return out


def _assert_same(module: nn.Module, shape, tmp_path, tol=1e-5, **kw):
    x = torch.randn(2, *shape[1:], generator=torch.Generator().manual_seed(1))
    path = _to_tflite(module, shape, tmp_path, **kw)
    with torch.no_grad():
        ref = module(x).numpy()
    out = run_tflite(path, x.numpy())
    if out.ndim == 4:  # a feature map comes out channels-last
        out = out.transpose(0, 3, 1, 2)
    assert out.shape == ref.shape
    assert float(np.abs(out - ref).max()) <= tol * max(1.0, float(np.abs(ref).max()))
    return path


class _Convs(nn.Module):
    """Every conv form the deploy graphs use: dense stride 2 (explicit padding), depthwise with a
    multiplier, grouped with two inputs per group, grouped 1×1, and a constant (1, C, 1, W) border term."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, 2, 1)
        self.dw = nn.Conv2d(6, 24, 3, 2, 1, groups=6)
        self.grouped = nn.Conv2d(24, 48, 5, 1, 2, groups=12)
        self.pw = nn.Conv2d(48, 32, 1, groups=4)
        self.register_buffer("border", torch.randn(1, 6, 1, 16))

    def forward(self, x):
        y = F.relu6(self.stem(x) + self.border)
        return self.pw(self.grouped(self.dw(y)))


class _Elementwise(nn.Module):
    """Slices, a six-way split and a six-input concat (both beyond XNNPACK's limit of four), mean,
    maximum, the clamps and h_swish, a 1×1 conv on the pooled map and the flatten to logits."""

    def forward(self, x):
        parts = torch.split(x, 2, dim=1)
        rotated = torch.cat([x[:, 3:], x[:, :3]], dim=1)
        y = torch.maximum(x * rotated, torch.cat(list(reversed(parts)), dim=1)) + F.relu(x - 0.5)
        pooled = F.hardswish(y.mean(dim=(2, 3), keepdim=True))
        return F.relu6(pooled * 3.0).flatten(1)


def test_convs_match_pytorch(tmp_path):
    path = _assert_same(_Convs(), (1, 3, 32, 32), tmp_path)
    ops = tflite_op_inventory(path)
    assert ops.get("DEPTHWISE_CONV_2D") == 1 and "TRANSPOSE" not in ops


def test_elementwise_and_structural_ops_match_pytorch(tmp_path):
    path = _assert_same(_Elementwise(), (1, 12, 8, 8), tmp_path)
    ops = tflite_op_inventory(path)
    assert "SPLIT_V" not in ops and ops.get("SPLIT", 0) >= 2  # a tree of equal splits
    assert ops.get("CONCATENATION", 0) >= 3  # six inputs: a tree of concats of at most four
    assert xnnpack_coverage(path)["not_delegated"] == {}


def test_max_via_relu_is_the_same_function(tmp_path):
    path = _assert_same(_Elementwise(), (1, 12, 8, 8), tmp_path, max_via_relu=True)
    ops = tflite_op_inventory(path)
    assert "MAXIMUM" not in ops and ops.get("SUB", 0) >= 1


def test_int8_maximum_is_not_delegated_but_its_relu_form_is(tmp_path):
    """Why the int8 graph writes max(a, b) as b + relu(a - b): XNNPACK leaves int8 MAXIMUM to TFLite."""
    module = _Elementwise()
    calib = np.random.default_rng(0).standard_normal((8, 8, 8, 12)).astype(np.float32)
    plain = _to_tflite(module, (1, 12, 8, 8), tmp_path / "plain", "int8", calib)
    relu = _to_tflite(module, (1, 12, 8, 8), tmp_path / "relu", "int8", calib, max_via_relu=True)
    assert xnnpack_coverage(plain)["not_delegated"].get("MAXIMUM") == 1
    assert "MAXIMUM" not in xnnpack_coverage(relu)["not_delegated"]


def test_unsupported_op_is_one_clear_error(tmp_path):
    class Sorts(nn.Module):
        def forward(self, x):
            return torch.sort(x, dim=1).values

    with pytest.raises(MicronetError, match=r"no rule for aten\.sort") as err:
        tf_graph.export_saved_model(Sorts(), torch.zeros(1, 4, 8, 8), tmp_path / "sm")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "sm").exists()


def test_view_that_mixes_channels_and_space_is_refused(tmp_path):
    class Mixes(nn.Module):
        def forward(self, x):
            return x.view(1, 4, 64, 1) * 2

    with pytest.raises(MicronetError, match="mixes the channel and spatial axes"):
        tf_graph.export_saved_model(Mixes(), torch.zeros(1, 4, 8, 8), tmp_path / "sm")


def _recalibrated(variant: str, size: int):
    torch.manual_seed(0)
    model = build_model(variant, input_size=size).eval()
    gen = torch.Generator().manual_seed(1)
    recalibrate_batchnorm(model, [torch.randn(8, 3, size, size, generator=gen) for _ in range(2)])
    return model


@pytest.mark.slow
@pytest.mark.parametrize("size", [32, 64, 128])
def test_fast_m0_converts_exactly_at_sizes_onnx2tf_failed(size, tmp_path):
    """onnx2tf mis-tracked the reference graph's layout at 32/64/128 px; the lowering has no layout guess."""
    model = _recalibrated("m0", size)
    fast = to_fast_deploy(model)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    path = _to_tflite(fast, (1, 3, size, size), tmp_path)
    with torch.no_grad():
        ref = model(x).numpy()
    out = run_tflite(path, x.numpy())
    assert float(np.abs(out - ref).max() / np.abs(ref).max()) <= 1e-4
    ops = tflite_op_inventory(path)
    assert not {"GATHER", "GATHER_ND"} & set(ops)
    # TRANSPOSE only for the fast graph's own channel transposes, never a layout transpose.
    assert ops.get("TRANSPOSE", 0) == sum(isinstance(m, ChannelTranspose) for m in fast.modules())
    coverage = xnnpack_coverage(path)
    assert coverage["partitions"] == 1 and coverage["not_delegated"] == {} and coverage["xnnpack_ops"] == coverage["ops"]


class _ChannelViews(nn.Module):
    """A roll of the channels viewed as (4, 6) and a transpose of them viewed as (2, 3, 4): the
    channel-split views the fast graph uses, held as (B·H·W, c1..ck) in TensorFlow."""

    def forward(self, x):
        y = ChannelRoll(4, 6, 1, 2)(x) * 2.0
        return ChannelTranspose((2, 3, 4), (1, 0, 2))(y) + ChannelTranspose((4, 6), (1, 0))(x)


def test_channel_split_views_match_pytorch(tmp_path):
    path = _assert_same(_ChannelViews(), (1, 24, 5, 7), tmp_path)
    ops = tflite_op_inventory(path)
    assert ops.get("TRANSPOSE") == 2
    coverage = xnnpack_coverage(path)
    assert coverage["partitions"] == 1 and coverage["not_delegated"] == {} and coverage["xnnpack_ops"] == coverage["ops"]


def test_a_permute_that_moves_spatial_axes_is_one_line(tmp_path):
    class _Spatial(nn.Module):
        def forward(self, x):
            return x.view(1, 2, 3, 4, 5).permute(0, 1, 2, 4, 3).reshape(1, 6, 5, 4)

    with pytest.raises(MicronetError, match="permute"):
        tf_graph.export_saved_model(_Spatial(), torch.zeros(1, 6, 4, 5), tmp_path / "sm")
    assert not (tmp_path / "sm").exists()


def test_a_large_float_depthwise_is_lowered_in_channel_parts(tmp_path):
    """384 channels × 25 taps exceed F32_DEPTHWISE_MAX_WEIGHTS: the float lowering splits it in two
    (same function), the int8 lowering (max_via_relu) keeps it whole."""
    dw = nn.Conv2d(384, 384, 5, 1, 2, groups=384).eval()
    path = _assert_same(dw, (1, 384, 9, 9), tmp_path / "f32")
    ops = tflite_op_inventory(path)
    assert ops.get("DEPTHWISE_CONV_2D") == 2 and ops.get("SPLIT") == 1 and ops.get("CONCATENATION") == 1
    record = tf_graph.export_saved_model(dw, torch.zeros(1, 384, 9, 9), tmp_path / "i8", max_via_relu=True)
    assert record["split_depthwise"] is False
    small = _to_tflite(nn.Conv2d(256, 256, 5, 1, 2, groups=256), (1, 256, 9, 9), tmp_path / "small")
    assert tflite_op_inventory(small).get("DEPTHWISE_CONV_2D") == 1


def test_pixel_pairs_are_one_reshape(tmp_path):
    """PixelPairs' view/permute/reshape (channels r·C + c holding pixel 2j + r) is the NHWC memory layout
    already: the lowering emits one RESHAPE, no TRANSPOSE; a permute of that form used otherwise is one
    line."""
    module = nn.Sequential(nn.Conv2d(3, 12, (3, 5), (2, 4), 1), PixelPairs(), nn.Conv2d(6, 4, 3, 1, 1)).eval()
    path = _assert_same(module, (1, 3, 32, 32), tmp_path / "ok")
    assert "TRANSPOSE" not in tflite_op_inventory(path)

    class _Misused(nn.Module):
        def forward(self, x):
            return x.view(1, 2, 3, 4, 5).permute(0, 2, 3, 4, 1) * 2.0

    with pytest.raises(MicronetError, match="behind W"):
        tf_graph.export_saved_model(_Misused(), torch.zeros(1, 6, 4, 5), tmp_path / "bad")
