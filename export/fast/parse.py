"""The training form parsed once into a flat list of units, BatchNorms folded.

A *unit* is one producer of a block (a (k,1)+(1,k) depthwise pair or a 1×1 conv) with what follows it: its
activation (ReLU6, Dynamic Shift-Max or none) and the channel shuffles after it; it knows its block, whether
it opens or closes a residual block, and the map size at its input. Nothing here depends on the runtime. The
planner (``planner.py``) decides layouts over this list and the emitters (``emit.py``) read the folded weights
from it; a backbone with another head (pose, segmentation) parses into the same units plus its own head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from micronet.layers import ChannelShuffle, DynamicShiftMax, MicroFactorizedDepthwise
from micronet.model import MicroNet

from ..folding import folded_conv, folded_linear

__all__ = ["Unit", "Stem", "Head", "ParsedNet", "parse", "fold"]


def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode conv+BN as (weight, bias), float64."""
    return folded_conv(conv, bn)


def _fold_linear(unit) -> tuple[Tensor, Tensor]:
    return folded_linear(unit[0], unit[1])


@dataclass
class Unit:
    """One producer with its activation and shuffles (see the module docstring).

    ``kind`` "dw": ``weights`` = (w1, b1, w2, b2) of the (k,1) and (1,k) convs, ``cin`` inputs, ``mult``
    outputs per input, ``c1`` of them made by the first conv, ``kernel``, ``stride``, ``groups`` = ``cin``.
    ``kind`` "pw": ``weights`` = (w, b) of the 1×1 conv, ``cin``, ``cout``, ``groups``."""

    kind: str
    block: int
    weights: tuple[Tensor, ...]
    cin: int
    cout: int
    groups: int
    hw: tuple[int, int]  # map size at the unit's input
    relu6: bool = False
    shift_max: DynamicShiftMax | None = None
    shuffles: list[int] = field(default_factory=list)
    first: bool = False  # opens its block
    last: bool = False  # closes its block
    residual: bool = False  # its block adds its input to its output
    kernel: int = 1
    stride: int = 1
    mult: int = 1
    c1: int = 1

    @property
    def hw_out(self) -> tuple[int, int]:
        p = self.kernel // 2
        return tuple((n + 2 * p - self.kernel) // self.stride + 1 for n in self.hw)


@dataclass
class Stem:
    """The stem's 3×1 (stride 2,1) and 1×3 grouped (stride 1,2) convs, folded, and its shuffle groups."""

    weights: tuple[Tensor, Tensor, Tensor, Tensor]
    groups: int  # g1: the first conv's outputs, the shuffle's groups
    cout: int
    hw: tuple[int, int]


@dataclass
class Head:
    """The classifier's two Linear+BatchNorm1d units, folded."""

    weights: tuple[Tensor, Tensor, Tensor, Tensor]


@dataclass
class ParsedNet:
    stem: Stem
    units: list[Unit]
    head: Head
    input_size: int
    num_classes: int


def _block_units(block, bi: int) -> list[Unit]:
    units: list[Unit] = []
    for layer in block.layers:
        if isinstance(layer, ChannelShuffle):
            units[-1].shuffles.append(layer.groups)
        elif isinstance(layer, (nn.ReLU6, DynamicShiftMax)):
            if units[-1].relu6 or units[-1].shift_max is not None or units[-1].shuffles:
                raise NotImplementedError("an activation without a producer")
            if isinstance(layer, nn.ReLU6):
                units[-1].relu6 = True
            else:
                units[-1].shift_max = layer
        elif isinstance(layer, MicroFactorizedDepthwise):
            first, second = layer[0][0], layer[1][0]
            cin = first.in_channels
            units.append(Unit("dw", bi, fold(layer[0][0], layer[0][1]) + fold(layer[1][0], layer[1][1]),
                              cin, second.out_channels, cin, (0, 0), kernel=first.kernel_size[0],
                              stride=first.stride[0], mult=second.out_channels // cin,
                              c1=first.out_channels // cin))
        elif isinstance(layer, nn.Sequential) and isinstance(layer[0], nn.Conv2d):
            conv = layer[0]
            units.append(Unit("pw", bi, fold(conv, layer[1]), conv.in_channels, conv.out_channels, conv.groups,
                              (0, 0)))
        else:
            raise NotImplementedError(f"unexpected layer {type(layer).__name__}")
    units[0].first, units[-1].last = True, True
    for unit in units:
        unit.residual = bool(block.residual)
    return units


def parse(model: MicroNet) -> ParsedNet:
    """The training form (eval mode) as stem, units and head, BatchNorms folded in float64."""
    size = model.input_size
    (conv_a, bn_a), (conv_b, bn_b) = model.stem.conv[0], model.stem.conv[1]
    stem = Stem(fold(conv_a, bn_a) + fold(conv_b, bn_b), conv_a.out_channels, conv_b.out_channels, (size, size))
    units = [u for bi, block in enumerate(model.blocks) for u in _block_units(block, bi)]
    hw = ((size + 2 - 3) // 2 + 1,) * 2
    for unit in units:
        unit.hw = hw
        hw = unit.hw_out
    head = Head(_fold_linear(model.head.fc1) + _fold_linear(model.head.fc2))
    return ParsedNet(stem, units, head, size, model.num_classes)
