"""Dynamic Shift-Max in the fast graph: its coefficients, its partner x~ (one small module chosen per
Shift-Max), and the combine ``max_k(a_k·x + b_k·x~)`` as separate products (rewrite 3)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from micronet.config import ACT_MAX
from micronet.layers import DynamicShiftMax

from .modules import make_conv, pool, rotate

__all__ = ["Coefficients", "LinearCoefficients", "ShiftMax", "PartnerConv", "Rotations", "Moved",
           "coefficients_for"]


class Coefficients(nn.Module):
    """Pooled features (B, C, 1, 1) → stacked Shift-Max coefficients (B, n·C, 1, 1), offsets included.

    theta = (A/3)·relu6(fc2(relu(fc1(pooled))) + 3) + (offset - A) is the released h_sigmoid, rescale and
    offset: the ``+3`` sits in fc2's bias so the clamp is fc2's fused RELU6, and the affine step is a 1×1
    depthwise conv (XNNPACK takes it in float and int8; MINIMUM/MAXIMUM clamps are not delegated in int8).
    A masked coefficient has scale and shift 0, so it is exactly 0 (rewrite 4).
    """

    def __init__(self, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, scale: Tensor, shift: Tensor) -> None:
        super().__init__()
        self.fc1 = make_conv(w1[:, :, None, None], b1)
        self.fc2 = make_conv(w2[:, :, None, None], b2)
        self.affine = make_conv(scale.view(-1, 1, 1, 1), shift, groups=len(scale))

    def forward(self, pooled: Tensor) -> Tensor:
        return self.affine(F.relu6(self.fc2(F.relu(self.fc1(pooled)))))

    def from_map(self, x: Tensor, flat: bool = False) -> Tensor:
        theta = self(pool(x))
        return theta.reshape(-1) if flat else theta

    def linear_form(self) -> "LinearCoefficients | None":
        """The same coefficients from Linears on the flat pooled vector (rewrite 18); None when a coefficient
        is masked (its scale 0: the clamp bounds would differ per channel)."""
        scale = self.affine.weight.detach().double().flatten()
        if not bool((scale > 0).all()) or not bool((scale == scale[0]).all()):
            return None
        return LinearCoefficients(self.fc1.weight.detach().double().flatten(1), self.fc1.bias.detach().double(),
                                  self.fc2.weight.detach().double().flatten(1), self.fc2.bias.detach().double(),
                                  float(scale[0]), self.affine.bias.detach().double())


class LinearCoefficients(nn.Module):
    """``Coefficients`` as Gemms on the flat (B, C) pooled vector, the rescale folded into fc2:
    s·relu6(z) + t = clamp(s·z, 0, 6s) + t for s > 0. ONNX Runtime runs the 4-D form's 1×1 convs as NCHWc
    convs with a reorder on each side."""

    def __init__(self, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, scale: float, shift: Tensor) -> None:
        super().__init__()
        self.fc1 = nn.Linear(w1.shape[1], w1.shape[0])
        self.fc2 = nn.Linear(w2.shape[1], w2.shape[0])
        with torch.no_grad():
            self.fc1.weight.copy_(w1.float())
            self.fc1.bias.copy_(b1.float())
            self.fc2.weight.copy_((w2 * scale).float())
            self.fc2.bias.copy_((b2 * scale).float())
        self.register_buffer("shift", shift.float())
        self.upper = 6.0 * scale
        self.requires_grad_(False)

    def forward(self, pooled: Tensor) -> Tensor:
        """(B, C) pooled → (B, n·C)."""
        z = self.fc2(F.relu(self.fc1(pooled)))
        return torch.clamp(z, 0.0, self.upper) + self.shift

    def from_map(self, x: Tensor, flat: bool = False) -> Tensor:
        """(B, C, H, W) → (B, n·C, 1, 1), or with ``flat`` (batch of one) (n·C,)."""
        theta = self(x.mean(dim=(2, 3)))
        return theta.reshape(-1) if flat else theta.view(x.shape[0], -1, 1, 1)


# ------------------------------------------------------------------------------------- the partner x~
class PartnerConv(nn.Module):
    """x~ as a second conv on the block input whose rows are the shifted rows (after a dense 1×1 conv), then
    optionally one rotation by ``rotation`` channels (after a grouped one: rows rotated inside each group by
    the conv, the rotation by a group here)."""

    def __init__(self, conv: nn.Conv2d, rotation: int = 0) -> None:
        super().__init__()
        self.conv, self.rotation = conv, rotation

    def forward(self, u: Tensor, x: Tensor) -> list[Tensor]:
        source = self.conv(u)
        return [rotate(source, self.rotation) if self.rotation else source]


class Rotations(nn.Module):
    """x~ as one flat rotation of x (cycle-interleaved or diagonal orders), or two masked rotations whose
    masks are folded into the coefficients: one operand per rotation."""

    def __init__(self, shifts: tuple[int, ...]) -> None:
        super().__init__()
        self.shifts = tuple(shifts)

    def forward(self, u: Tensor, x: Tensor) -> list[Tensor]:
        return [rotate(x, d) for d in self.shifts]

    def extra_repr(self) -> str:
        return f"shifts={self.shifts}"


class Moved(nn.Module):
    """x~ as one channel move of x: a ``ChannelRoll`` (rewrite 10), a ``ChannelGather`` (rewrite 16) or, when
    nothing cheaper exists, a 1×1 permutation conv."""

    def __init__(self, move: nn.Module) -> None:
        super().__init__()
        self.move = move

    def forward(self, u: Tensor, x: Tensor) -> list[Tensor]:
        return [self.move(x)]


# ------------------------------------------------------------------------------------------ the combine
def scaled(x: Tensor, coef: Tensor, batch_one: bool) -> Tensor:
    """x (B, C, H, W) times per-channel coefficients (B, C, 1, 1). With ``batch_one`` (rewrite 20) it is a
    BatchNormalization with the coefficients as scale (mean 0, variance 1, epsilon 0: exactly x·coef): ONNX
    Runtime scales a channel in one vectorised loop there, where its broadcast MUL pays per channel span."""
    if not batch_one:
        return x * coef
    c = x.shape[1]
    zeros, ones = torch.zeros(c, dtype=x.dtype), torch.ones(c, dtype=x.dtype)
    return F.batch_norm(x, zeros, ones, coef if coef.dim() == 1 else coef.reshape(c), None, False, 0.0, 0.0)


def combine(operands: list[Tensor], theta: Tensor, channels: int, branches: int, relu_max: bool = False,
            batch_one: bool = False) -> Tensor:
    """max over branches k of sum_i theta[k, i]·operands[i]; each operand and coefficient block C wide.

    ``relu_max`` (two branches, rewrite 14): q + relu(p - q), with p - q = sum_i (theta[0, i] -
    theta[1, i])·operands[i] formed on the coefficients: one full-size op fewer than writing max(p, q) as
    q + relu(p - q) on the maps (for int8, where XNNPACK does not delegate MAXIMUM)."""
    parts = torch.split(theta, channels, dim=1 if theta.dim() > 1 else 0)
    per_branch = len(operands)
    if relu_max and branches == 2:
        q = scaled(operands[0], parts[per_branch], batch_one)
        d = scaled(operands[0], parts[0] - parts[per_branch], batch_one)
        for i in range(1, per_branch):
            q = q + scaled(operands[i], parts[per_branch + i], batch_one)
            d = d + scaled(operands[i], parts[i] - parts[per_branch + i], batch_one)
        return q + F.relu(d)
    out = None
    for k in range(branches):
        s = scaled(operands[0], parts[k * per_branch], batch_one)
        for i in range(1, per_branch):
            s = s + scaled(operands[i], parts[k * per_branch + i], batch_one)
        out = s if out is None else torch.maximum(out, s)
    return out


class ShiftMax(nn.Module):
    """A producer (or none: the input itself is x) followed by Dynamic Shift-Max.

    ``xtilde`` makes the partner operand(s) from the block input u and x (``PartnerConv``, ``Rotations`` or
    ``Moved``); None only when x~ is x itself. ``pool_input`` pools the producer's input instead of its
    output. ``pending`` (K=1 only, rewrite 5): the producer emits ``[x, x~]`` pairs and the output is their
    product with the coefficient pairs, summed later by the consumer's weights. ``width`` > 1: the
    coefficients are widened along W to (B, C, 1, width) by a MUL with ones (rewrite 12, exact). The flags
    ``relu_max`` and ``batch_one`` are set by the post-form passes (``export.fast.forms``)."""

    def __init__(self, coef: nn.Module, channels: int, branches: int, producer: nn.Module | None = None,
                 xtilde: nn.Module | None = None, pool_input: bool = False, pending: bool = False,
                 width: int = 1) -> None:
        super().__init__()
        self.coef, self.channels, self.branches = coef, channels, branches
        self.producer, self.xtilde = producer, xtilde
        self.pool_input, self.pending = pool_input, pending
        self.relu_max = False
        self.batch_one = False
        if width > 1:
            self.register_buffer("widen", torch.ones(1, 1, 1, width))
        else:
            self.widen = None

    def forward(self, u: Tensor) -> Tensor:
        x = self.producer(u) if self.producer is not None else u
        # A batch of one takes its coefficients flat, (n·C,), as BatchNormalization scales (``scaled``).
        theta = self.coef.from_map(u if self.pool_input else x, flat=self.batch_one)
        if self.widen is not None:
            theta = theta * self.widen
        if self.batch_one and x.shape[0] != 1:
            raise ValueError(f"a batch_one_form graph runs one image at a time, got a batch of {x.shape[0]}")
        if self.pending:
            return scaled(x, theta, self.batch_one)
        partners = self.xtilde(u, x) if self.xtilde is not None else [x]
        return combine([x] + partners, theta, self.channels, self.branches, self.relu_max, self.batch_one)


def coefficients_for(sm: DynamicShiftMax, blocks: list[list[tuple]], pool_w: Tensor, pool_b: Tensor,
                     flat: bool = False) -> Coefficients:
    """The coefficients of ``sm`` in stored layout. ``blocks[k]`` lists branch k's operand blocks as
    (coefficient index e in a1, b1, a2, b2 = 0..3, stored order, mask or None); with ``flat`` a block gives e
    per position. ``pool_w/pool_b`` map the pooled tensor to the logical x (C)."""
    c = sm.channels
    w1 = sm.fc1.weight.double() @ pool_w
    b1 = sm.fc1.weight.double() @ pool_b + sm.fc1.bias.double()
    offsets = np.array(sm.offsets)
    rows, biases, scales, shifts = [], [], [], []
    for branch in blocks:
        for e, order, mask in branch:
            e_pos = np.asarray(e) if flat else np.full(len(order), e)
            idx = torch.as_tensor(e_pos * c + order)
            rows.append(sm.fc2.weight.double()[idx])
            biases.append(sm.fc2.bias.double()[idx] + 3.0)
            scale = torch.full((len(order),), ACT_MAX / 3.0, dtype=torch.float64)
            shift = torch.as_tensor(offsets[e_pos] - ACT_MAX, dtype=torch.float64)
            if mask is not None:  # masked coefficient: exactly 0
                m = torch.as_tensor(mask)
                scale[~m] = 0.0
                shift[~m] = 0.0
            scales.append(scale)
            shifts.append(shift)
    return Coefficients(w1, b1, torch.cat(rows), torch.cat(biases), torch.cat(scales), torch.cat(shifts))
