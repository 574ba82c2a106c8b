"""The fast graph's building blocks: folded convs, channel moves and the network containers.

Channel moves (``ChannelTranspose``, ``ChannelGather``, ``ChannelRoll``, ``PixelPairs``) are what
``export.tf_graph`` lowers specially; everything else is a plain conv or elementwise op.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Conv", "PixelPairs", "ChannelTranspose", "ChannelGather", "ChannelRoll", "FastBlock", "FastHead",
           "FastMicroNet", "make_conv", "row_conv", "rotate", "pool"]


def make_conv(w: Tensor, b: Tensor | None, stride=1, padding=0, groups=1) -> nn.Conv2d:
    """A frozen float32 ``nn.Conv2d`` with weight ``w`` (out, in per group, kh, kw) and bias ``b``."""
    cout, cin_g, kh, kw = w.shape
    conv = nn.Conv2d(cin_g * groups, cout, (kh, kw), stride, padding, groups=groups, bias=b is not None)
    with torch.no_grad():
        conv.weight.copy_(w.float())
        if b is not None:
            conv.bias.copy_(b.float())
    conv.requires_grad_(False)
    return conv


def row_conv(w: Tensor, b: Tensor, rows: np.ndarray) -> nn.Conv2d:
    """A 1×1 conv computing the (out, in) matrix ``w`` and bias ``b``'s ``rows``, in that order."""
    index = torch.as_tensor(rows)
    return make_conv(w[index][:, :, None, None], b[index])


def rotate(x: Tensor, d: int) -> Tensor:
    """Stored channel c takes channel (c + d) mod C: one concat of two channel slices."""
    return torch.cat([x[:, d:], x[:, :d]], dim=1)


def pool(x: Tensor) -> Tensor:
    """Global average pool, keeping the 4-D (B, C, 1, 1) shape (a MEAN over H, W in TFLite)."""
    return x.mean(dim=(2, 3), keepdim=True)


class Conv(nn.Module):
    """A folded conv (any kernel, stride, groups) with an optional constant border term and ReLU6."""

    def __init__(self, conv: nn.Conv2d, border: Tensor | None = None, relu6: bool = False) -> None:
        super().__init__()
        self.conv, self.relu6 = conv, relu6
        if border is not None:
            self.register_buffer("border", border.float())
        else:
            self.border = None

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self.border is not None:
            y = y + self.border
        return F.relu6(y) if self.relu6 else y


class PixelPairs(nn.Module):
    """(B, 2C, H, W) holding pixels (2j, 2j+1) of each row as channels (r·C + c) → (B, C, H, 2W). In NHWC
    memory the two layouts are the same bytes, so TFLite gets one free RESHAPE (export.tf_graph)."""

    def forward(self, x: Tensor) -> Tensor:
        b, c2, h, w = x.shape
        return x.view(b, 2, c2 // 2, h, w).permute(0, 2, 3, 4, 1).reshape(b, c2 // 2, h, 2 * w)


class ChannelTranspose(nn.Module):
    """A channel permutation that is one transpose of the channels viewed as ``dims`` (TFLite: RESHAPE,
    TRANSPOSE, RESHAPE, all delegated; the innermost axis usually stays, so it copies runs)."""

    def __init__(self, dims: tuple[int, ...], perm: tuple[int, ...]) -> None:
        super().__init__()
        self.dims, self.perm = tuple(dims), tuple(perm)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        k = len(self.dims)
        v = x.view(b, *self.dims, h, w).permute(0, *(p + 1 for p in self.perm), k + 1, k + 2)
        return v.reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, perm={self.perm}"


class ChannelGather(nn.Module):
    """Any channel permutation as one GATHER (``RuntimeProfile.gather_shifts``: ONNX Runtime copies an H·W
    run per channel); stored channel ``p`` of the output is stored channel ``index[p]`` of the input."""

    def __init__(self, index: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("index", torch.as_tensor(np.asarray(index), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(1, self.index)


class ChannelRoll(nn.Module):
    """Stored channel (o, i) of the channels viewed as (outer, inner) takes (o + so, i + si): channel slices
    and concats on a 5-D view (XNNPACK copies each slice once; rewrite 10)."""

    def __init__(self, outer: int, inner: int, so: int, si: int) -> None:
        super().__init__()
        self.outer, self.inner, self.so, self.si = outer, inner, so, si

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        v = x.view(b, self.outer, self.inner, h, w)
        if self.si:
            v = torch.cat([v[:, :, self.si:], v[:, :, :self.si]], dim=2)
        if self.so:
            v = torch.cat([v[:, self.so:], v[:, :self.so]], dim=1)
        return v.reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"outer={self.outer}, inner={self.inner}, so={self.so}, si={self.si}"


class FastBlock(nn.Module):
    """One block of the training form: its emitted steps, plus the residual add."""

    def __init__(self, steps: list[nn.Module], residual: bool) -> None:
        super().__init__()
        self.steps = nn.Sequential(*steps)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.steps(x)
        return y + x if self.residual else y


class FastHead(nn.Module):
    """ReLU6 → pool → h_swish → 1×1 conv → h_swish → 1×1 conv → h_swish (rewrite 8)."""

    def __init__(self, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, hard_swish_op: bool = True) -> None:
        super().__init__()
        self.fc1 = make_conv(w1[:, :, None, None], b1)
        self.fc2 = make_conv(w2[:, :, None, None], b2)
        self.hard_swish = F.hardswish if hard_swish_op else _explicit_hard_swish

    def forward(self, x: Tensor) -> Tensor:
        x = self.hard_swish(pool(F.relu6(x)))
        return self.hard_swish(self.fc2(self.hard_swish(self.fc1(x)))).flatten(1)


def _explicit_hard_swish(x: Tensor) -> Tensor:
    """h_swish written as the elementwise ops it stands for (Add, Clip, Mul, Mul in ONNX)."""
    return x * F.relu6(x + 3.0) * (1.0 / 6.0)


class FastMicroNet(nn.Module):
    """The fast deploy form: stem, blocks, head; same input and logits as the training form."""

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], head: nn.Module, input_size: int,
                 num_classes: int) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.head = head
        self.input_size, self.num_classes = input_size, num_classes

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))
