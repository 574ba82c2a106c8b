"""The segmentation MicroNet (paper §6.2): a dilated MicroNet backbone and the MR-ASPP head.

Built from a ``SegConfig`` (``micronet.seg_config``) with the classifiers' own ``Stem`` and
``build_block`` (the stride-32 rows with ``dilation=2``), as torchvision builds LR-ASPP on its
classification backbone with ``dilated=True`` rather than on a copy. The only new modules are the
head's (``micronet.seg_head``).
"""

from __future__ import annotations

from torch import Tensor, nn

from .blocks import build_block
from .errors import MicronetError
from .layers import Stem
from .model import MicroNet, check_hw_input_size
from .seg_config import CITYSCAPES_CLASSES, DILATION, SEG_INPUT_SIZE, SegConfig
from .seg_head import MRASPP


class SegMicroNet(nn.Module):
    """stem -> ``blocks`` (stride 16, the last ones dilated) -> ``mr_aspp`` -> bilinear to the input size.

    ``forward`` returns (B, classes, H, W) logits (``align_corners=False``). Fully convolutional: any H, W
    that are multiples of 32 work; ``input_size`` (H, W) is recorded for counting and examples.
    """

    task = "segmentation"  # what the counting tables and the weights loader key on

    def __init__(self, config: SegConfig, classes: int = CITYSCAPES_CLASSES,
                 input_size: tuple[int, int] = SEG_INPUT_SIZE) -> None:
        super().__init__()
        self.seg_config = config
        self.config = config.variant  # what the counting and the shared helpers read (name, stem, rows)
        self.num_classes = classes
        self.input_size = tuple(input_size)
        self.stem = Stem(config.variant.stem_groups)
        channels = config.variant.stem_channels
        blocks = []
        for index, row in enumerate(config.variant.rows):
            block, channels = build_block(row, channels, config.variant,
                                          dilation=DILATION if index in config.dilated_rows else 1)
            blocks.append(block)
        self.blocks = nn.Sequential(*blocks)
        self.mr_aspp = MRASPP(channels, config.low_channels, config.inner, config.groups, classes)
        # Stride 8 -> 1 exactly, since H and W are multiples of 32.
        self.upsample = nn.Upsample(scale_factor=8, mode="bilinear", align_corners=False)
        MicroNet.reset_parameters(self)  # the released initialisation, shared with the classifiers

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(stride-16 features, stride-8 features): the last row's output and ``low_row``'s."""
        x = self.stem(x)
        low = None
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index == self.seg_config.low_row:
                low = x
        return x, low

    def forward(self, x: Tensor) -> Tensor:
        return self.upsample(self.mr_aspp(*self.forward_features(x)))


def check_seg_input_size(input_size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) as ints, or one line saying why the size cannot work."""
    return check_hw_input_size(input_size, "segmentation MicroNets", "1024x2048, 512x1024")


def build_seg_model(variant: str, classes: int = CITYSCAPES_CLASSES,
                    input_size: tuple[int, int] = SEG_INPUT_SIZE) -> SegMicroNet:
    """Build a segmentation variant by name (``seg-m0``..``seg-m3``); no released weights exist."""
    from .registry import resolve_variant

    info = resolve_variant(variant, task="segmentation")
    size = check_seg_input_size(input_size)
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise MicronetError(f"classes must be a positive integer, got {classes!r}")
    return SegMicroNet(info.seg_config, classes=classes, input_size=size)
