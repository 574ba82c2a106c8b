"""MR-ASPP (paper §6.2): MobileNetV3's Lite R-ASPP with Micro-Factorized pointwise convolutions.

Lite R-ASPP (MobileNetV3 paper §6.3; torchvision ``LRASPPHead``), on the stride-16 features ``high``
and the stride-8 features ``low``::

    branch    = ReLU(BN(1x1 conv high -> 128))
    attention = sigmoid(1x1 conv(global average pool(high)))      # one weight per channel
    out       = class projection(bilinear x2(branch * attention)) + class projection(low)

MR-ASPP replaces the two 1x1 convs on ``high`` by ``MicroPointwise`` (grouped 1x1, shuffle, grouped
1x1). The class projections stay plain 1x1 convs: 19 classes is prime, so no group count divides it.
Widths and groups come from ``micronet.seg_config``; the choices are written there.
"""

from __future__ import annotations

from torch import Tensor, nn

from .layers import ChannelShuffle, ConvBN


class MicroPointwise(nn.Sequential):
    """A 1x1 convolution cin -> cout factorised as the Micro-Blocks factorise theirs (paper §3.1).

    Grouped 1x1 cin -> cout (``g1`` groups), shuffle, grouped 1x1 cout -> cout (``g2`` groups): with
    g1 * g2 <= cout every output sees every input, at (cin/g1 + cout/g2) / cin of a plain 1x1's cost.
    ``norm`` puts a BatchNorm after each conv (the feature branch); the attention branch runs on a 1x1
    pooled map, where batch statistics would be a handful of values, so it has none (as LR-ASPP's).
    """

    def __init__(self, cin: int, cout: int, groups: tuple[int, int], norm: bool = True) -> None:
        g1, g2 = groups
        if norm:
            first, second = ConvBN(cin, cout, (1, 1), (1, 1), g1), ConvBN(cout, cout, (1, 1), (1, 1), g2)
        else:
            first = nn.Conv2d(cin, cout, 1, groups=g1, bias=False)
            second = nn.Conv2d(cout, cout, 1, groups=g2, bias=False)
        super().__init__(first, ChannelShuffle(g1), second)


class PooledAttention(nn.Module):
    """LR-ASPP's attention: global average pool -> ``MicroPointwise`` -> sigmoid, times the branch.

    Counted (``micronet.counting``) as its convs plus 1 MAdd per element of the product, like the keypoint
    models' spatial attention; the pool and the sigmoid are free under the rule.
    """

    def __init__(self, cin: int, cout: int, groups: tuple[int, int]) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = MicroPointwise(cin, cout, groups, norm=False)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """``y`` (the branch computed from ``x``) scaled per channel by the attention computed from ``x``."""
        return y * self.gate(self.conv(self.pool(x)))


class MRASPP(nn.Module):
    """The head: (stride-16 ``high``, stride-8 ``low``) -> class logits at stride 8."""

    def __init__(self, high_channels: int, low_channels: int, inner: int, groups: tuple[int, int],
                 classes: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(MicroPointwise(high_channels, inner, groups), nn.ReLU())
        self.attention = PooledAttention(high_channels, inner, groups)
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.high_classifier = nn.Conv2d(inner, classes, 1)
        self.low_classifier = nn.Conv2d(low_channels, classes, 1)

    def forward(self, high: Tensor, low: Tensor) -> Tensor:
        x = self.upsample(self.attention(high, self.branch(high)))
        return self.high_classifier(x) + self.low_classifier(low)
