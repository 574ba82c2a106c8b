"""Micro-Blocks A, B/C and the final pointwise row, built from one ``BlockRow``.

Each block is a flat ``nn.Sequential`` of the ops that are really there (no empty placeholders), so
our checkpoints' keys are ``blocks.N.layers.K...``. The released checkpoints keep their layers at
fixed slot positions with empty placeholders; that layout belongs to the loader
(``micronet.weights``), which derives each layer's released slot from its role and the block kind.
"""

from __future__ import annotations

from torch import Tensor, nn

from .config import BASE_REDUCTION, BlockKind, BlockRow, VariantConfig
from .layers import ChannelShuffle, DynamicShiftMax, MicroFactorizedDepthwise, pointwise

#: Offsets of every K=1 output Shift-Max (released INIT_A_BLOCK3): starts as the identity.
_SQUEEZE_INIT_A = (1.0, 0.0)
_SQUEEZE_INIT_B = (0.0, 0.0)


def _activation(selector: int, channels: int, groups: int, reduction: int, variant: VariantConfig) -> nn.Module:
    """The activation after the expanding 1x1 or the depthwise stage: ReLU6 for selector 0,
    Dynamic Shift-Max with K=selector otherwise."""
    if selector == 0:
        return nn.ReLU6()
    return DynamicShiftMax(channels, groups, reduction, branches=selector, init_a=variant.init_a, init_b=variant.init_b,
                           spatial_attention=variant.spatial_attention)


def _squeeze_activation(channels: int, groups: int, reduction: int, variant: VariantConfig) -> DynamicShiftMax:
    """The Shift-Max after the squeezing 1x1 (``squeeze_act``): always K=1, starting as the identity."""
    return DynamicShiftMax(channels, groups, reduction, branches=1, init_a=_SQUEEZE_INIT_A, init_b=_SQUEEZE_INIT_B,
                           spatial_attention=variant.spatial_attention)


class MicroBlock(nn.Module):
    """One row of the variant table: ``layers`` runs in order, plus the residual when it fits."""

    def __init__(self, layers: list[nn.Module], residual: bool, kind: BlockKind) -> None:
        super().__init__()
        self.kind = kind
        self.layers = nn.Sequential(*layers)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(x)
        return out + x if self.residual else out


def _final_layers(row: BlockRow, cin: int, hidden: int, reduction: int, variant: VariantConfig) -> list[nn.Module]:
    """The last row: a grouped 1x1 widening to the head, then an optional Shift-Max."""
    layers: list[nn.Module] = [pointwise(cin, hidden, row.expand_groups)]
    if row.squeeze_act:
        layers.append(_squeeze_activation(hidden, row.shift_groups, reduction, variant))
    return layers


def _a_layers(row: BlockRow, cin: int, hidden: int, cout: int, reduction: int,
              variant: VariantConfig, stride: int, dilation: int) -> list[nn.Module]:
    """Micro-Block A: factorised depthwise (expanding), activation, shuffles, squeezing 1x1."""
    layers = [
        MicroFactorizedDepthwise(cin, row.kernel, stride, row.expansion1, row.expansion2, dilation),
        _activation(row.depthwise_act, hidden, row.shift_groups, reduction, variant),
        ChannelShuffle(row.shift_groups),
    ]
    if row.depthwise_act:
        layers.append(ChannelShuffle(hidden // 2))
    layers.append(pointwise(hidden, cout, row.squeeze_groups))
    if row.squeeze_act:
        layers.append(_squeeze_activation(cout, row.out_shift_groups, reduction // 2, variant))
    layers.append(ChannelShuffle(row.out_shift_groups))
    if row.squeeze_act and cout % 2 == 0:
        layers.append(ChannelShuffle(cout // 2))
    return layers


def _bc_layers(row: BlockRow, cin: int, hidden: int, cout: int, reduction: int,
               variant: VariantConfig, stride: int, dilation: int, upsample: bool = False) -> list[nn.Module]:
    """Micro-Block B/C: expanding 1x1, activation, shuffle, depthwise, activation, shuffle,
    squeezing 1x1, optional Shift-Max and shuffles.

    ``upsample`` puts a bilinear x2 upsampling right before the depthwise: that is where the paper's
    block (depthwise -> squeeze -> expand) begins, so the previous block's expanding 1x1 still runs at
    the lower resolution (the keypoint head, paper §6.1).
    """
    layers = [
        pointwise(cin, hidden, row.expand_groups),
        _activation(row.expand_act, hidden, row.shift_groups, reduction, variant),
        ChannelShuffle(row.shift_groups),
    ]
    if upsample:
        layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
    layers += [
        MicroFactorizedDepthwise(hidden, row.kernel, stride, dilation=dilation),
        # The depthwise activation of B/C shifts inside groups of g2 channels (the released "expansion" grouping).
        _activation(row.depthwise_act, hidden, hidden // row.shift_groups if row.shift_groups != 1 else 1,
                    reduction, variant),
    ]
    if row.expand_act and row.depthwise_act:
        layers.append(ChannelShuffle(hidden // 4))
    elif row.expand_act or row.depthwise_act:
        layers.append(ChannelShuffle(hidden // 2))
    layers.append(pointwise(hidden, cout, row.squeeze_groups))
    if row.squeeze_act:
        layers.append(_squeeze_activation(cout, row.out_shift_groups, reduction // 2 if cout < hidden else reduction,
                                          variant))
    layers.append(ChannelShuffle(row.out_shift_groups))
    if row.squeeze_act:
        layers.append(ChannelShuffle(cout // 2))
    return layers


def build_block(row: BlockRow, cin: int, variant: VariantConfig, upsample: bool = False,
                dilation: int = 1) -> tuple[MicroBlock, int]:
    """Turn a row into a block; returns the block and its output channel count.

    ``upsample`` (B/C rows only) doubles the resolution before the depthwise; such a block has no
    residual, since its input is at half its output's resolution.

    ``dilation`` > 1 dilates the depthwise convs and runs them at stride 1, whatever the row's stride,
    as torchvision's MobileNetV3 ``dilated=True`` does for its segmentation backbones: the network
    stops downsampling but keeps the receptive field growing. The residual is still decided by the
    row's own stride (as torchvision's), so a dilated row has exactly the classifier's layers.
    """
    hidden = cin * row.expansion1 * row.expansion2
    reduction = BASE_REDUCTION * row.reduction_factor
    if upsample and (row.kind != "BC" or row.stride != 1):
        raise ValueError(f"only a stride-1 Micro-Block B/C row can upsample, not a {row.kind} row of stride {row.stride}")
    if not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be a positive integer, got {dilation!r}")
    stride = 1 if dilation > 1 else row.stride
    if row.kind == "final":
        return MicroBlock(_final_layers(row, cin, hidden, reduction, variant), residual=False, kind="final"), hidden
    cout = row.out_channels
    if row.kind == "A":
        layers = _a_layers(row, cin, hidden, cout, reduction, variant, stride, dilation)
    else:
        layers = _bc_layers(row, cin, hidden, cout, reduction, variant, stride, dilation, upsample)
    residual = row.stride == 1 and cin == cout and not upsample
    return MicroBlock(layers, residual=residual, kind=row.kind), cout
