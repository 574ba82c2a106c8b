"""The deploy form of a MicroNet: what gets traced, never trained.

The training form keeps the released arithmetic so checkpoints reproduce their accuracy; the
deploy form computes the same function (up to float rounding) with fewer, converter-friendly ops:

* every BatchNorm is folded into the convolution or Linear before it (exact in eval mode);
* Dynamic Shift-Max uses a channel-rotation instead of the released ``x[:, index]`` gather (GATHER
  is not taken by XNNPACK and copies element by element); ``SHIFT_IMPLEMENTATIONS`` lists the
  forms tried, all exact;
* h_sigmoid is written ``clamp(x/6 + 1/2, 0, 1)`` -- the slope is 1/6, not ONNX HardSigmoid's
  default 0.2;
* each Shift-Max coefficient (a1, b1, a2, b2) leaves its own Linear already rescaled and offset, so that
  full-integer int8 gives it its own scale (``DeployShiftMax``);
* shapes are static: the batch is fixed at trace time unless a dynamic batch is asked for.

``to_deploy`` returns a new module and leaves the model it was given untouched.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from micronet.config import ACT_MAX
from micronet.layers import ChannelShuffle, ConvBN, DynamicShiftMax, shuffle_permutation
from micronet.model import MicroNet, SwishLinear

from .folding import folded_conv, folded_linear

ShiftImpl = Literal["roll", "slices", "gather"]
SHIFT_IMPLEMENTATIONS: tuple[str, ...] = ("roll", "slices", "gather")
DEFAULT_SHIFT: ShiftImpl = "roll"
#: How a channel shuffle is written: "view" keeps the training form's view-transpose-view (5-D); "gather"
#: is one gather with a constant index on the channel axis.
ShuffleImpl = Literal["view", "gather"]
SHUFFLE_IMPLEMENTATIONS: tuple[str, ...] = ("view", "gather")


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One convolution computing conv followed by eval-mode BatchNorm."""
    weight, bias = folded_conv(conv, bn)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True)
    with torch.no_grad():
        fused.weight.copy_(weight.float())
        fused.bias.copy_(bias.float())
    return fused


def fold_linear_bn(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    """One Linear computing Linear followed by eval-mode BatchNorm1d."""
    weight, bias = folded_linear(linear, bn)
    fused = nn.Linear(linear.in_features, linear.out_features, bias=True)
    with torch.no_grad():
        fused.weight.copy_(weight.float())
        fused.bias.copy_(bias.float())
    return fused


def _hard_sigmoid(x: Tensor) -> Tensor:
    return torch.clamp(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)


class DeployHardSwish(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * _hard_sigmoid(x)


def shift_channels(x: Tensor, groups: int, impl: ShiftImpl) -> Tensor:
    """The Shift-Max partner x~: output (group i, pos j) = input (group i+1, pos j+1), circularly."""
    b, c, h, w = x.shape
    per_group = c // groups
    if impl == "roll":
        return torch.roll(x.view(b, groups, per_group, h, w), shifts=(-1, -1), dims=(1, 2)).view(b, c, h, w)
    if impl == "slices":
        # Rotate inside each group (a 4-D view keeps it to two slices), then rotate the groups.
        grid = x.view(b, groups, per_group, h * w)
        grid = torch.cat([grid[:, :, 1:], grid[:, :, :1]], dim=2) if per_group > 1 else grid
        grid = torch.cat([grid[:, 1:], grid[:, :1]], dim=1) if groups > 1 else grid
        return grid.reshape(b, c, h, w)
    if impl == "gather":
        from micronet.layers import shift_permutation

        # index_select, not x[:, index]: the exporter writes it as one Gather on axis 1, where indexing
        # becomes Transpose → GatherND → Transpose.
        return torch.index_select(x, 1, torch.tensor(shift_permutation(c, groups), device=x.device))
    raise ValueError(f"unknown shift implementation {impl!r}; choose from {SHIFT_IMPLEMENTATIONS}")


class GatherChannelShuffle(nn.Module):
    """A channel shuffle as one gather on the channel axis (the same permutation, exact).

    Why: onnx2tf guesses which axis of the 5-D view is the channel axis from sizes, and a map dimension
    equal to a group count (12 groups on a 16x12 map: pose-m0 at 256x192) makes it lose the layout; a gather
    on axis 1 of a 4-D tensor has one reading. GATHER costs a copy the view form avoids, so only the
    graphs that need it (the dense tasks', export/dense.py) use it."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        index = torch.tensor(shuffle_permutation(x.shape[1], self.groups), device=x.device)
        return torch.index_select(x, 1, index)


class DeployShiftMax(nn.Module):
    """Dynamic Shift-Max with the offsets and the (h - 1/2)·2·ACT_MAX rescale folded into constants, each
    coefficient computed by its own Linear."""

    def __init__(self, source: DynamicShiftMax, shift: ShiftImpl) -> None:
        super().__init__()
        self.channels, self.groups, self.branches, self.shift = source.channels, source.groups, source.branches, shift
        self.fc1 = copy.deepcopy(source.fc1)
        # theta_k = 2A·clamp(z_k/6 + 1/2, 0, 1) + (offset_k - A) = clamp(z_k·A/3 + offset_k, offset_k - A,
        # offset_k + A) for A = ACT_MAX: the rescale and the offset fold into fc2, one Linear per coefficient k
        # (a1, b1[, a2, b2]). Why, for full-integer int8 (one scale per tensor): stacked, the a's (about 1)
        # set the scale the b's (about 0) are stored at; and an offset added after the rescale cancels
        # 2A·h ≈ A against -A, so the b's kept only their tensor's LSB. On trained pose-m2 the stacked b
        # slices agreed with float32 at cosine 0.16-0.57. Folded and split, each coefficient is one FC output
        # with its own scale; the arithmetic is unchanged.
        offsets = source.offsets
        c, scale = source.channels, ACT_MAX / 3.0
        self.fc2 = nn.ModuleList()
        with torch.no_grad():
            for k, offset in enumerate(offsets):
                part = nn.Linear(source.fc2.in_features, c)
                part.weight.copy_(source.fc2.weight[k * c:(k + 1) * c] * scale)
                part.bias.copy_(source.fc2.bias[k * c:(k + 1) * c] * scale + offset)
                self.fc2.append(part)
        self.theta_bounds = [(float(o - ACT_MAX), float(o + ACT_MAX)) for o in offsets]
        # The keypoint models' DY-ReLU-C spatial attention (micronet/layers.py): one 1x1 conv, a softmax over
        # the positions and a product.
        self.attention = DeploySpatialAttention(source.attention) if source.attention is not None else None

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[0], self.channels
        hidden = F.relu(self.fc1(x.mean(dim=(2, 3))))
        theta = [torch.clamp(fc(hidden), low, high).view(b, c, 1, 1)
                 for fc, (low, high) in zip(self.fc2, self.theta_bounds)]
        shifted = shift_channels(x, self.groups, self.shift)
        out = x * theta[0] + shifted * theta[1]
        if self.branches == 2:
            out = torch.maximum(out, x * theta[2] + shifted * theta[3])
        if self.attention is not None:
            out = self.attention(x, out)
        return out


class DeploySpatialAttention(nn.Module):
    """DY-ReLU-C's spatial attention with the softmax over positions written on the 4-D map (max, exp and
    sum over H and W, keeping dims) instead of the training form's reshape to (B, 1, H*W) and back: onnx2tf
    mis-infers the layout of that reshape pair at every size tried ("Dimensions must be equal, but are 12
    and 128" on pose-m0 at 256x192). The same function up to float rounding; 1/TEMPERATURE is folded into
    the conv."""

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        self.conv = copy.deepcopy(source.conv)
        with torch.no_grad():
            self.conv.weight.mul_(1.0 / source.TEMPERATURE)
            self.conv.bias.mul_(1.0 / source.TEMPERATURE)
        self.gamma_divisor = source.GAMMA_DIVISOR

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h, w = x.shape[2], x.shape[3]
        logits = self.conv(x)
        e = torch.exp(logits - torch.amax(logits, dim=(2, 3), keepdim=True))
        pi = e * ((h * w / self.gamma_divisor) / torch.sum(e, dim=(2, 3), keepdim=True))
        return y * torch.clamp(pi, max=1.0)


def _replace_children(module: nn.Module, shift: ShiftImpl, shuffle: ShuffleImpl) -> None:
    for name, child in module.named_children():
        if isinstance(child, ChannelShuffle) and shuffle == "gather":
            setattr(module, name, GatherChannelShuffle(child.groups))
        elif isinstance(child, ConvBN):
            setattr(module, name, fold_conv_bn(child[0], child[1]))
        elif isinstance(child, SwishLinear):
            setattr(module, name, nn.Sequential(fold_linear_bn(child[0], child[1]), DeployHardSwish()))
        elif isinstance(child, DynamicShiftMax):
            setattr(module, name, DeployShiftMax(child, shift))
        elif type(child).__name__ == "HardSwish":
            setattr(module, name, DeployHardSwish())
        else:
            _replace_children(child, shift, shuffle)


def to_deploy(model: MicroNet, shift: ShiftImpl = DEFAULT_SHIFT, shuffle: ShuffleImpl = "view") -> MicroNet:
    """A folded, eval-mode copy of ``model`` computing the same logits."""
    if shift not in SHIFT_IMPLEMENTATIONS:
        raise ValueError(f"unknown shift implementation {shift!r}; choose from {SHIFT_IMPLEMENTATIONS}")
    if shuffle not in SHUFFLE_IMPLEMENTATIONS:
        raise ValueError(f"unknown shuffle implementation {shuffle!r}; choose from {SHUFFLE_IMPLEMENTATIONS}")
    deployed = copy.deepcopy(model).eval()
    _replace_children(deployed, shift, shuffle)
    for p in deployed.parameters():
        p.requires_grad_(False)
    return deployed.eval()


@torch.no_grad()
def recalibrate_batchnorm(model: MicroNet, batches: list[Tensor]) -> int:
    """Re-estimate every BatchNorm's running statistics from real images (cumulative average).

    An untrained MicroNet with fresh statistics (mean 0, var 1) shrinks activations block after
    block until the logits are ~1e-22: int8 calibration and parity
    on such a model mean nothing. Trained weights never need this. Returns the images seen.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in norms]
    was_training = model.training
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all batches
        m.train()
    seen = 0
    try:
        for batch in batches:
            model(batch)
            seen += batch.shape[0]
    finally:
        for m, (momentum, training) in zip(norms, saved):
            m.momentum = momentum
            m.train(training)
        model.train(was_training)
    return seen
