"""Micro-Blocks A, B/C and the final pointwise row, built from one ``BlockRow``.

Each block is a flat ``nn.Sequential`` of the ops that are really there (no empty placeholders);
the mapping to the released checkpoints' fixed-slot keys lives in ``released_slots`` beside it and
is applied at the edge by ``micronet.weights``.
"""

from __future__ import annotations

from torch import Tensor, nn

from .config import BASE_REDUCTION, BlockRow, VariantConfig
from .layers import ChannelShuffle, DynamicShiftMax, MicroFactorizedDepthwise, pointwise

#: Offsets of every K=1 third-slot Shift-Max (released INIT_A_BLOCK3): starts as the identity.
_SLOT3_INIT_A = (1.0, 0.0)
_SLOT3_INIT_B = (0.0, 0.0)


def _activation(selector: int, channels: int, groups: int, reduction: int, variant: VariantConfig) -> nn.Module:
    """Slot 1/2 activation: ReLU6 for selector 0, Dynamic Shift-Max with K=selector otherwise."""
    if selector == 0:
        return nn.ReLU6()
    return DynamicShiftMax(channels, groups, reduction, branches=selector, init_a=variant.init_a, init_b=variant.init_b)


def _slot3(channels: int, groups: int, reduction: int) -> DynamicShiftMax:
    return DynamicShiftMax(channels, groups, reduction, branches=1, init_a=_SLOT3_INIT_A, init_b=_SLOT3_INIT_B)


class MicroBlock(nn.Module):
    """One row of the variant table. ``layers`` runs in order; ``released_slots`` maps our layer
    index to the released code's fixed slot index (for checkpoint loading)."""

    def __init__(self, layers: list[tuple[int | None, nn.Module]], residual: bool, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.layers = nn.Sequential(*(m for _, m in layers))
        self.released_slots = [slot for slot, _ in layers]
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(x)
        return out + x if self.residual else out


def build_block(row: BlockRow, cin: int, variant: VariantConfig) -> tuple[MicroBlock, int]:
    """Turn a row into a block; returns the block and its output channel count."""
    hidden = cin * row.c1 * row.c2
    reduction = BASE_REDUCTION * row.r
    layers: list[tuple[int | None, nn.Module]]

    if row.kind == "final":
        layers = [(0, pointwise(cin, hidden, row.g1))]
        if row.y3:
            layers.append((1, _slot3(hidden, row.g2, reduction)))
        return MicroBlock(layers, residual=False, kind="final"), hidden

    cout = row.out_channels
    if row.kind == "A":
        layers = [
            (0, MicroFactorizedDepthwise(cin, row.kernel, row.stride, row.c1, row.c2)),
            (1, _activation(row.y2, hidden, row.g2, reduction, variant)),
            (2, ChannelShuffle(row.g2)),
        ]
        if row.y2:
            layers.append((3, ChannelShuffle(hidden // 2)))
        layers.append((4, pointwise(hidden, cout, row.g3)))
        if row.y3:
            layers.append((5, _slot3(cout, row.g4, reduction // 2)))
        layers.append((6, ChannelShuffle(row.g4)))
        if row.y3 and cout % 2 == 0:
            layers.append((7, ChannelShuffle(cout // 2)))
    else:  # B/C
        layers = [
            (0, pointwise(cin, hidden, row.g1)),
            (1, _activation(row.y1, hidden, row.g2, reduction, variant)),
            (2, ChannelShuffle(row.g2)),
            (3, MicroFactorizedDepthwise(hidden, row.kernel, row.stride)),
            # Slot 2 of B/C shifts inside groups of g2 channels (the released "expansion" grouping).
            (5, _activation(row.y2, hidden, hidden // row.g2 if row.g2 != 1 else 1, reduction, variant)),
        ]
        if row.y1 and row.y2:
            layers.append((6, ChannelShuffle(hidden // 4)))
        elif row.y1 or row.y2:
            layers.append((6, ChannelShuffle(hidden // 2)))
        layers.append((7, pointwise(hidden, cout, row.g3)))
        if row.y3:
            layers.append((8, _slot3(cout, row.g4, reduction // 2 if cout < hidden else reduction)))
        layers.append((9, ChannelShuffle(row.g4)))
        if row.y3:
            layers.append((10, ChannelShuffle(cout // 2)))

    residual = row.stride == 1 and cin == cout
    return MicroBlock(layers, residual=residual, kind=row.kind), cout
