"""Mutual learning (paper §5.1): MicroNet trains beside a full-rank twin and each learns from the other.

The partner has the same widths, strides, activations and shuffles, but none of the Micro-Factorized
savings: every grouped 1x1 becomes a full 1x1 and every k x 1 + 1 x k depthwise pair one k x k
depthwise conv (channel multipliers kept through ``groups = input channels``). It exists only to teach;
it is saved as ``partner.pt`` and never exported.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from micronet.layers import ConvBN, MicroFactorizedDepthwise
from micronet.model import MicroNet, build_model


def _full_rank(module: nn.Module) -> nn.Module | None:
    """The full-rank replacement of one factorized op, or None when ``module`` is not one."""
    if isinstance(module, MicroFactorizedDepthwise):
        first, second = module[0][0], module[1][0]
        k, stride = first.kernel_size[0], first.stride[0]
        return ConvBN(first.in_channels, second.out_channels, (k, k), (stride, stride), groups=first.in_channels)
    if isinstance(module, ConvBN) and module[0].kernel_size == (1, 1) and module[0].groups > 1:
        conv = module[0]
        return ConvBN(conv.in_channels, conv.out_channels, (1, 1), (1, 1), groups=1)
    return None


def _replace_in(parent: nn.Module) -> None:
    for name, child in parent.named_children():
        replacement = _full_rank(child)
        if replacement is None:
            _replace_in(child)
        else:
            setattr(parent, name, replacement)


def full_rank_partner(variant: str, num_classes: int, input_size: int, dropout: float | None = None) -> MicroNet:
    """The variant's full-rank twin. The stem's 3x1 + grouped 1x3 pair becomes one 3x3 conv (stride 2)
    to the same channels, the full-rank form of that factorization."""
    partner = build_model(variant, num_classes=num_classes, input_size=input_size, dropout=dropout)
    _replace_in(partner.blocks)
    first, second = partner.stem.conv[0][0], partner.stem.conv[1][0]
    partner.stem.conv = ConvBN(first.in_channels, second.out_channels, (3, 3), (2, 2), groups=1)
    partner.reset_parameters()  # the released initialisation for the new convs too
    return partner


class MutualPair(nn.Module):
    """Both networks as one module, so one DistributedDataParallel wrapper syncs both."""

    def __init__(self, student: MicroNet, partner: MicroNet) -> None:
        super().__init__()
        self.student = student
        self.partner = partner

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.student(x), self.partner(x)


def mutual_kl(logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """KL(teacher || student) at temperature 1, batch mean; the teacher side carries no gradient."""
    return F.kl_div(F.log_softmax(logits.float(), dim=1), F.log_softmax(teacher_logits.detach().float(), dim=1),
                    reduction="batchmean", log_target=True)


def mutual_loss(student_logits: Tensor, partner_logits: Tensor, task_loss) -> Tensor:
    """Each network: its task loss (cross-entropy, mixed targets under mixup) plus the KL towards the
    other's prediction, in both directions; summed so one backward trains both."""
    return (task_loss(student_logits) + mutual_kl(student_logits, partner_logits)
            + task_loss(partner_logits) + mutual_kl(partner_logits, student_logits))


__all__ = ["MutualPair", "full_rank_partner", "mutual_kl", "mutual_loss"]
