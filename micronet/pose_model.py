"""The keypoint MicroNet (paper §6.1): MicroNet's stem and blocks, then 17 heatmaps at stride 4.

Built from a ``PoseConfig`` (``micronet.pose_config``) with the same ``Stem`` and ``build_block``
as the classifiers; the only new module is the 1x1 conv that turns the last block into heatmaps.
"""

from __future__ import annotations

from torch import Tensor, nn

from .blocks import MicroBlock, build_block
from .errors import MicronetError
from .model import MicroNet, check_hw_input_size
from .pose_config import COCO_KEYPOINTS, POSE_INPUT_SIZE, PoseConfig
from .layers import SpatialAttention, Stem


#: Standard deviation of the heatmap conv's initial weights (SimpleBaseline's final layer).
HEATMAP_INIT_STD = 0.001


class PoseMicroNet(nn.Module):
    """stem -> ``blocks`` (backbone, down to stride 16) -> ``head_blocks`` (back to stride 4) -> ``heatmaps``.

    ``forward`` returns (B, keypoints, H/4, W/4) heatmaps. Fully convolutional: any H, W that are
    multiples of 32 work; ``input_size`` (H, W) is recorded for counting and examples.
    """

    task = "pose"  # what the counting tables and the weights loader key on

    def __init__(self, config: PoseConfig, keypoints: int = COCO_KEYPOINTS,
                 input_size: tuple[int, int] = POSE_INPUT_SIZE) -> None:
        super().__init__()
        self.pose_config = config
        self.config = config.variant  # what the counting and the shared helpers read (name, stem, rows)
        self.num_classes = keypoints  # one heatmap per keypoint; the counting tables call it "classes"
        self.input_size = tuple(input_size)
        self.stem = Stem(config.variant.stem_groups)
        channels = config.variant.stem_channels
        stages: list[list[MicroBlock]] = [[], []]
        for index, row in enumerate(config.variant.rows):
            block, channels = build_block(row, channels, config.variant,
                                          upsample=index in config.variant.upsample_rows)
            stages[index >= config.head_start].append(block)
        self.blocks = nn.Sequential(*stages[0])
        self.head_blocks = nn.Sequential(*stages[1])
        self.heatmaps = nn.Conv2d(channels, keypoints, 1, bias=True)
        MicroNet.reset_parameters(self)  # the released initialisation, shared with the classifiers
        # SimpleBaseline's final layer: N(0, 0.001). He-normal over its 17 outputs would start the heatmaps at
        # a standard deviation of ~1.6 against targets in [0, 1], and the first epochs would only undo that.
        nn.init.normal_(self.heatmaps.weight, 0.0, HEATMAP_INIT_STD)
        nn.init.zeros_(self.heatmaps.bias)
        for module in self.modules():  # the released initialisation above knows no spatial attention
            if isinstance(module, SpatialAttention):
                module.reset_parameters()

    @property
    def keypoints(self) -> int:
        return self.heatmaps.out_channels

    def forward_features(self, x: Tensor) -> Tensor:
        """The backbone's stride-16 features."""
        return self.blocks(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.heatmaps(self.head_blocks(self.forward_features(x)))


def check_pose_input_size(input_size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) as ints, or one line saying why the size cannot work (stride 16 + two exact x2 upsamplings)."""
    return check_hw_input_size(input_size, "keypoint MicroNets", "256x192, 384x288")


def build_pose_model(variant: str, keypoints: int = COCO_KEYPOINTS,
                     input_size: tuple[int, int] = POSE_INPUT_SIZE) -> PoseMicroNet:
    """Build a keypoint variant by name (``pose-m0``..``pose-m3``); no released weights exist."""
    from .registry import resolve_variant

    info = resolve_variant(variant, task="pose")
    size = check_pose_input_size(input_size)
    if not isinstance(keypoints, int) or isinstance(keypoints, bool) or keypoints < 1:
        raise MicronetError(f"keypoints must be a positive integer, got {keypoints!r}")
    return PoseMicroNet(info.pose_config, keypoints=keypoints, input_size=size)
