"""The building blocks of MicroNet: activations, channel permutations, factorized convolutions.

Every module here is the *training form*: it keeps the released code's arithmetic exactly (including
the ``x[:, index]`` gather of Dynamic Shift-Max) so released checkpoints reproduce their accuracy.
The export package rewrites these into a deploy form; its tests compare against these modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ACT_MAX


def make_divisible(value: float, divisor: int = 4, min_value: int | None = None) -> int:
    """MobileNet rounding (to the nearest multiple, never below 90% of the value).

    The released code sizes the Shift-Max hyper-function with it; param counts only match with it.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def hard_sigmoid(x: Tensor) -> Tensor:
    """ReLU6(x + 3) / 6 -- slope 1/6, not ONNX HardSigmoid's default 0.2."""
    return F.relu6(x + 3.0) / 6.0


def hard_swish(x: Tensor) -> Tensor:
    return x * hard_sigmoid(x)


class HardSigmoid(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return hard_sigmoid(x)


class HardSwish(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return hard_swish(x)


def shuffle_permutation(channels: int, groups: int) -> list[int]:
    """Source channel of each output channel of a channel shuffle with ``groups`` groups.

    View channels as (groups, channels/groups), transpose, flatten: output j*groups + i takes
    input i*(channels/groups) + j.
    """
    per_group = channels // groups
    return [i * per_group + j for j in range(per_group) for i in range(groups)]


def shift_permutation(channels: int, groups: int) -> list[int]:
    """Source channel of each output channel of the Shift-Max partner x~ (the released index).

    Output (group i, position j) takes input (group (i+1) mod G, position (j+1) mod gc): a circular
    shift by one group *and* by one channel inside the group. For C=8, G=2: 5,6,7,4,1,2,3,0.
    """
    per_group = channels // groups
    return [((i + 1) % groups) * per_group + (j + 1) % per_group for i in range(groups) for j in range(per_group)]


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class SpatialAttention(nn.Module):
    """DY-ReLU-C's spatial attention (Chen et al., Dynamic ReLU, 2020): one weight per position.

    ``pi = min(gamma * softmax(conv1x1(x) / tau), 1)`` over the H*W positions, with ``gamma = H*W / 3``
    and ``tau = 10`` as in that paper. DY-ReLU scales every coefficient of the activation by ``pi``;
    since ``pi >= 0`` scales both branches of the max alike, ``max_k pi*(a_k x + b_k x~)`` equals
    ``pi * max_k(a_k x + b_k x~)``, so the module multiplies the activation's output once (1 product
    per element, the cheaper exact form). MicroNet's keypoint models use it "per layer" (paper §6.1).
    """

    #: Softmax temperature and the H*W/GAMMA_DIVISOR scale of DY-ReLU-C.
    TEMPERATURE = 10.0
    GAMMA_DIVISOR = 3.0

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Start uniform (every ``pi`` = 1/GAMMA_DIVISOR), as Dynamic Shift-Max starts as the identity.

        He-normal over this conv's single output (std sqrt(2)) makes the logits' spread grow with the
        channels: in a training-mode pose-m0 it set 7-28% of each layer's positions below 0.01, a
        different scatter of holes per layer and per image, and the heatmaps did not learn (a batch
        of 32 crops was not fitted in 300 Adam steps; with this start, in about 50). Zero weights
        still receive gradients: the softmax's derivative is not zero at a uniform input.
        """
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def weights(self, x: Tensor) -> Tensor:
        """pi, shape (B, 1, H, W), each in [0, 1]."""
        b, _, h, w = x.shape
        logits = self.conv(x).view(b, 1, h * w) / self.TEMPERATURE
        pi = torch.softmax(logits, dim=-1) * (h * w / self.GAMMA_DIVISOR)
        return pi.clamp(max=1.0).view(b, 1, h, w)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """``y`` (the activation of ``x``) scaled per position by the attention computed from ``x``."""
        return y * self.weights(x)


class DynamicShiftMax(nn.Module):
    """Dynamic Shift-Max (J=2): y = max_k (a_k * x + b_k * x~), K branches, per-sample coefficients.

    The coefficients come from a hyper-function of the globally pooled input (Linear-ReLU-Linear-
    h_sigmoid), are rescaled to [-ACT_MAX, ACT_MAX] and offset by ``init_a``/``init_b`` so that an
    untrained layer starts as ``alpha1 * x`` (identity for K=1 slots).
    """

    def __init__(
        self,
        channels: int,
        groups: int,
        reduction: int,
        branches: int,
        init_a: tuple[float, float] = (1.0, 1.0),
        init_b: tuple[float, float] = (0.0, 0.0),
        spatial_attention: bool = False,
    ) -> None:
        super().__init__()
        if branches not in (1, 2):
            raise ValueError(f"Dynamic Shift-Max has K=1 or K=2 branches, not {branches}")
        self.channels = channels
        self.groups = groups
        self.branches = branches
        self.init_a = tuple(float(a) for a in init_a)
        self.init_b = tuple(float(b) for b in init_b)
        squeeze = max(make_divisible(channels // reduction, 4), 4)
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, 2 * branches * channels)
        # Not a buffer, as in the released code: it is not in the state_dict.
        self.register_buffer("shift_index", torch.tensor(shift_permutation(channels, groups)), persistent=False)
        # Only the keypoint variants have it; classification modules keep exactly the released parameters.
        self.attention = SpatialAttention(channels) if spatial_attention else None

    @property
    def squeeze(self) -> int:
        return self.fc1.out_features

    @property
    def offsets(self) -> tuple[float, ...]:
        """What each coefficient is centred on, in fc2's output order: a1, b1 (, a2, b2). The deploy forms
        fold them into their own weights, so they read them here rather than restating the order."""
        return (self.init_a[0], self.init_b[0], self.init_a[1], self.init_b[1])[: 2 * self.branches]

    def coefficients(self, x: Tensor) -> list[Tensor]:
        """[a1, b1] or [a1, b1, a2, b2], each (B, C, 1, 1), offsets included."""
        b = x.shape[0]
        pooled = x.mean(dim=(2, 3))
        theta = hard_sigmoid(self.fc2(F.relu(self.fc1(pooled))))
        theta = (theta - 0.5) * (2.0 * ACT_MAX)
        parts = torch.split(theta.view(b, -1, 1, 1), self.channels, dim=1)
        return [p + o for p, o in zip(parts, self.offsets, strict=True)]

    def forward(self, x: Tensor) -> Tensor:
        shifted = x[:, self.shift_index]
        coef = self.coefficients(x)
        out = x * coef[0] + shifted * coef[1]
        if self.branches == 2:
            out = torch.max(out, x * coef[2] + shifted * coef[3])
        if self.attention is not None:
            out = self.attention(x, out)
        return out

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, groups={self.groups}, K={self.branches}, squeeze={self.squeeze}"
                + (", spatial attention" if self.attention is not None else ""))


class ConvBN(nn.Sequential):
    """A bias-free convolution and its BatchNorm (folded into one conv at export).

    ``dilation`` (per axis, default 1) widens the kernel's reach without striding, so a segmentation
    backbone keeps stride 16 where the classifier goes to 32; the padding grows with it, so the output
    size is the same as at dilation 1 and stride 1.
    """

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], stride: tuple[int, int], groups: int,
                 dilation: tuple[int, int] = (1, 1)) -> None:
        padding = (dilation[0] * (kernel[0] // 2), dilation[1] * (kernel[1] // 2))
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        )


class MicroFactorizedDepthwise(nn.Sequential):
    """k x 1 then 1 x k depthwise convolutions (each + BN), no nonlinearity between.

    The stride is split too: (s, 1) on the first, (1, s) on the second, and so is the dilation:
    (d, 1), (1, d). ``c1``/``c2`` are channel multipliers of the two convs (Micro-Block A expands here;
    B/C use 1, 1).
    """

    def __init__(self, cin: int, kernel: int, stride: int, c1: int = 1, c2: int = 1, dilation: int = 1) -> None:
        mid, out = cin * c1, cin * c1 * c2
        super().__init__(
            ConvBN(cin, mid, (kernel, 1), (stride, 1), groups=cin, dilation=(dilation, 1)),
            ConvBN(mid, out, (1, kernel), (1, stride), groups=mid, dilation=(1, dilation)),
        )


def pointwise(cin: int, cout: int, groups: int) -> ConvBN:
    """Group-adaptive 1x1 convolution (the Micro-Factorized pointwise, without its shuffle)."""
    return ConvBN(cin, cout, (1, 1), (1, 1), groups=groups)


class Stem(nn.Module):
    """3x1 conv (stride 2,1) -> 1x3 grouped conv (stride 1,2) -> shuffle -> ReLU6: 224 -> 112."""

    def __init__(self, groups: tuple[int, int]) -> None:
        super().__init__()
        g1, g2 = groups
        self.conv = nn.Sequential(
            ConvBN(3, g1, (3, 1), (2, 1), groups=1),
            ConvBN(g1, g1 * g2, (1, 3), (1, 2), groups=g1),
        )
        self.shuffle = ChannelShuffle(g1)
        self.act = nn.ReLU6()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.shuffle(self.conv(x)))
