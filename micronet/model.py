"""The MicroNet network and its one builder."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .blocks import MicroBlock, build_block
from .config import VariantConfig
from .errors import MicronetError
from .layers import HardSwish, Stem

#: The network downsamples by 32 (stem 2, then strides); other sizes would silently mis-pool.
INPUT_STRIDE = 32


class SwishLinear(nn.Sequential):
    """Linear -> BatchNorm1d -> h_swish, the released classifier unit (its 1000-way output too)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Linear(cin, cout), nn.BatchNorm1d(cout), HardSwish())


class Head(nn.Module):
    """ReLU6 -> global average pool -> h_swish -> SwishLinear -> Dropout -> SwishLinear."""

    def __init__(self, cin: int, hidden: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.pre_pool = nn.ReLU6()
        self.post_pool = HardSwish()
        self.fc1 = SwishLinear(cin, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = SwishLinear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.post_pool(self.pre_pool(x).mean(dim=(2, 3)))
        return self.fc2(self.dropout(self.fc1(x)))


class MicroNet(nn.Module):
    def __init__(self, config: VariantConfig, num_classes: int = 1000, input_size: int = 224) -> None:
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.input_size = input_size
        self.stem = Stem(config.stem_groups)
        blocks: list[MicroBlock] = []
        channels = config.stem_channels
        for row in config.rows:
            block, channels = build_block(row, channels, config)
            blocks.append(block)
        self.blocks = nn.Sequential(*blocks)
        self.head = Head(channels, config.head_hidden, num_classes, config.dropout)
        self.reset_parameters()

    @property
    def feature_channels(self) -> int:
        return self.head.fc1[0].in_features

    def reset_parameters(self) -> None:
        """The released initialisation: He-normal over kh*kw*out (not /groups), Linear N(0, 0.01)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.blocks(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def check_input_size(input_size: int) -> None:
    if not isinstance(input_size, int) or input_size < INPUT_STRIDE or input_size % INPUT_STRIDE:
        raise MicronetError(
            f"input size {input_size!r} is not supported: MicroNet needs a multiple of {INPUT_STRIDE} "
            f"(at least {INPUT_STRIDE}), e.g. 224, 192, 160, 128, 96"
        )


def check_hw_input_size(input_size: tuple[int, int], family: str, examples: str) -> tuple[int, int]:
    """(H, W) as ints for the dense-prediction variants (keypoints, segmentation), or one line saying why
    the size cannot work: both sides multiples of the stride, so every downsampling and ×2 upsampling is
    exact. ``family`` and ``examples`` name the models and sizes in the message."""
    try:
        h, w = (int(v) for v in input_size)
        ok = len(tuple(input_size)) == 2 and all(v >= INPUT_STRIDE and v % INPUT_STRIDE == 0 for v in (h, w))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        shown = "x".join(map(str, input_size)) if isinstance(input_size, (tuple, list)) else repr(input_size)
        raise MicronetError(f"input size {shown} is not supported: {family} need H x W, both "
                            f"multiples of {INPUT_STRIDE}, e.g. {examples}")
    return h, w


def build_model(
    variant: str,
    num_classes: int = 1000,
    input_size: int = 224,
    weights: str | None = None,
    dropout: float | None = None,
) -> MicroNet:
    """Build a variant by name (``micronet.registry`` lists them), optionally loading weights.

    ``input_size`` is recorded on the model (export and counting use it); the network itself is
    fully convolutional up to the global pool, so any multiple of 32 works.
    """
    from .registry import resolve_variant  # registry imports counting, which builds models

    config = resolve_variant(variant).config
    check_input_size(input_size)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise MicronetError(f"num_classes must be a positive integer, got {num_classes!r}")
    if dropout is not None:
        from dataclasses import replace

        config = replace(config, dropout=dropout)
    model = MicroNet(config, num_classes=num_classes, input_size=input_size)
    if weights:
        from .weights import load_weights

        load_weights(model, weights)
    return model


def example_input(model: MicroNet, batch: int = 1) -> Tensor:
    return torch.zeros(batch, 3, model.input_size, model.input_size)
