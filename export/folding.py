"""BatchNorm folding, written once for every deploy graph (``deploy.py``'s reference form, ``fast/``'s fast form).

In eval mode ``bn(conv(x)) = conv'(x)`` with ``w' = w · γ/√(σ² + ε)`` and ``b' = (b − μ) · γ/√(σ² + ε) + β``;
the same for a Linear followed by BatchNorm1d. Computed in float64 and rounded once when a graph stores it,
so the folded graph is as close to the training form as float32 allows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _scale(bn: nn.modules.batchnorm._BatchNorm) -> Tensor:
    return bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)


def folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(weight, bias) of the one convolution computing eval-mode ``bn(conv(x))``, float64."""
    scale = _scale(bn)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    return conv.weight.double() * scale.view(-1, 1, 1, 1), (bias - bn.running_mean.double()) * scale + bn.bias.double()


def folded_linear(linear: nn.Linear, bn: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """(weight, bias) of the one Linear computing eval-mode ``bn(linear(x))``, float64."""
    scale = _scale(bn)
    bias = linear.bias.double() if linear.bias is not None else torch.zeros_like(scale)
    return linear.weight.double() * scale[:, None], (bias - bn.running_mean.double()) * scale + bn.bias.double()
