"""The segmentation MicroNets (paper §6.2, Table 9) as data: backbone, dilated rows, MR-ASPP widths.

A segmentation variant is a classification variant's rows (``micronet.config``) with two changes, as
MobileNetV3's segmentation models make them (torchvision ``mobilenet_v3_*(dilated=True)`` +
``lraspp``): the rows the classifier runs at stride 32 run at stride 16 with dilation 2 in their
depthwise convs, and the classifier head is dropped for the MR-ASPP head (``micronet.seg_head``).
``SEG_TABLE`` below is the whole description, one line per variant; ``seg_variant`` checks each
line against the backbone it names (the dilated rows must be exactly the stride-32 ones, the tap
exactly the last stride-8 row) so a slip in the table is an import error, not a silent model.

What the paper leaves open is decided once, here, with the reason (README, "Segmentation models"):

- **Inner width 128** for every variant: Lite R-ASPP's (MobileNetV3 paper §6.3, F=128, used for both
  its Large and Small models), not scaled per variant: the paper gives no MR-ASPP width, and tuning
  it to Table 9's figures is what we do not do.
- **Micro-Factorized pointwise, groups (8, 8)**: each 1x1 of Lite R-ASPP (backbone width -> 128)
  becomes a grouped 1x1 to 128 (g1 groups) + shuffle + a grouped 1x1 128 -> 128 (g2 groups), the
  squeeze/shuffle/expand pair of the Micro-Blocks. 8 x 8 = 64 <= 128 keeps every output connected
  to every input (the paper's condition for the factorisation, §3.1), and 8 divides every backbone
  width (576, 768, 864, 768) and 128.
- **Class projections stay plain 1x1 convs** (with bias): 19 classes is prime, so no group count
  other than 1 divides it.
- **Attention pool: global** average pooling (what torchvision's LR-ASPP and most ports do), not the
  MobileNetV3 paper's 49x49 kernel with stride (16, 20), which only fits 1024x2048; global pooling
  works at every H x W.
- **Stride-8 tap: the last row at stride 8** (its most processed stride-8 features); torchvision taps
  the first block of its stride-8 stage instead. For m0 the two are the same row.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .config import CONFIGS, VariantConfig

#: The input size (H, W) Table 9's figures are stated at: full Cityscapes frames.
SEG_INPUT_SIZE: tuple[int, int] = (1024, 2048)
#: Cityscapes' 19 evaluated classes (train IDs).
CITYSCAPES_CLASSES = 19
#: The stride the backbone stops at, and the one its second (low-level) feature map is tapped at.
OUTPUT_STRIDE = 16
LOW_STRIDE = 8
#: Dilation of the rows that run at stride 16 instead of 32.
DILATION = 2
#: The stem's stride: row strides multiply on top of it.
STEM_STRIDE = 2

#: Columns of ``SEG_TABLE``, in order.
SEG_COLUMNS = ("variant", "backbone", "dilated_rows", "low_row", "inner", "g1", "g2")

# One line per variant (columns SEG_COLUMNS). dilated_rows: first-last row index run at stride 16 with
# dilation 2 (the classifier's stride-32 rows); low_row: the row whose output is the stride-8 tap.
SEG_TABLE = """
    seg-m0  m0  4-6   1  128  8  8
    seg-m1  m1  6-8   2  128  8  8
    seg-m2  m2  7-10  2  128  8  8
    seg-m3  m3  7-10  2  128  8  8
"""


def row_strides(config: VariantConfig) -> list[int]:
    """Each row's output stride in the classifier (the stem's 2 times the row strides so far)."""
    strides, stride = [], STEM_STRIDE
    for row in config.rows:
        stride *= row.stride
        strides.append(stride)
    return strides


@dataclass(frozen=True)
class SegConfig:
    """A segmentation MicroNet: one ``SEG_TABLE`` line and the backbone rows it applies to.

    ``variant`` is the backbone's ``VariantConfig`` renamed (what counting and the shared helpers read);
    its classifier fields (``head_hidden``, ``dropout``) are unused. ``dilated_rows`` run at stride 1
    with dilation ``DILATION``; ``low_row``'s output feeds the stride-8 class projection; ``inner`` and
    ``groups`` size MR-ASPP's two Micro-Factorized pointwise convs.
    """

    name: str
    backbone: str
    variant: VariantConfig
    dilated_rows: tuple[int, ...]
    low_row: int
    inner: int
    groups: tuple[int, int]
    classes: int = CITYSCAPES_CLASSES

    @property
    def high_channels(self) -> int:
        """Width of the stride-16 features (the last row's output, the classifier's head input)."""
        channels = self.variant.stem_channels
        for row in self.variant.rows:  # as build_block: a final row widens to in * c1 * c2
            channels = channels * row.expansion1 * row.expansion2 if row.kind == "final" else row.out_channels
        return channels

    @property
    def low_channels(self) -> int:
        return self.variant.rows[self.low_row].out_channels


def _index_range(text: str) -> tuple[int, ...]:
    first, _, last = text.partition("-")
    return tuple(range(int(first), int(last or first) + 1))


def _check(config: SegConfig) -> None:
    """The line must say what the backbone implies: a wrong index or group count is named, in one line."""
    strides = row_strides(config.variant)
    stride32 = tuple(i for i, s in enumerate(strides) if s > OUTPUT_STRIDE)
    if config.dilated_rows != stride32:
        raise ValueError(f"{config.name}: dilated rows {config.dilated_rows} are not {config.backbone}'s stride-32 "
                         f"rows {stride32}")
    last8 = max(i for i, s in enumerate(strides) if s == LOW_STRIDE)
    if config.low_row != last8:
        raise ValueError(f"{config.name}: the stride-8 tap must be {config.backbone}'s last stride-8 row {last8}, "
                         f"not {config.low_row}")
    g1, g2 = config.groups
    for width, groups, what in ((config.high_channels, g1, "backbone width"), (config.inner, g1, "inner width"),
                                (config.inner, g2, "inner width")):
        if groups < 1 or width % groups:
            raise ValueError(f"{config.name}: {what} {width} is not a multiple of {groups} groups")


def seg_variant(line: str) -> SegConfig:
    """One ``SEG_TABLE`` line -> a checked ``SegConfig``."""
    cells = line.split()
    if len(cells) != len(SEG_COLUMNS):
        raise ValueError(f"a segmentation line needs {len(SEG_COLUMNS)} columns ({' '.join(SEG_COLUMNS)}), "
                         f"got {line.strip()!r}")
    name, backbone, dilated, low, inner, g1, g2 = cells
    if backbone not in CONFIGS:
        raise ValueError(f"{name}: unknown backbone {backbone!r}; known: {', '.join(CONFIGS)}")
    variant = replace(CONFIGS[backbone], name=name, head_hidden=0, dropout=0.0)
    config = SegConfig(name, backbone, variant, _index_range(dilated), int(low), int(inner), (int(g1), int(g2)))
    _check(config)
    return config


def configs_from_table(table: str) -> dict[str, SegConfig]:
    return {c.name: c for c in (seg_variant(line) for line in table.strip().splitlines() if line.strip())}


SEG_CONFIGS: dict[str, SegConfig] = configs_from_table(SEG_TABLE)
