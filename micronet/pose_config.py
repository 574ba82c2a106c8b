"""The keypoint MicroNets (paper §6.1, appendix Table 10) as data, and the one mapping to block rows.

Table 10 is written here as the paper prints it (*paper view*: each block is depthwise -> squeeze
-> expand, columns ``output kind k C C/R g1 g2``), one whitespace table per variant, so it can be
checked line by line against the paper (shared/spec/pose.md). ``pose_variant`` turns such a table
into the same ``VariantConfig``/``BlockRow`` rows the classification variants use (*code view*: the
chain cut at the narrow point, expand -> depthwise -> squeeze), by the mapping of
shared/spec/architecture.md §1. Nothing is written per variant: a new variant is a new table.

What Table 10 does not say is decided once, here, with the reason (README, "Pose models"):

- **Micro-Block B's depthwise expansion**: Table 10 gives its expand width ``C``, not the width its
  depthwise conv expands to. The released classification code expands by 4 (``c1 = c2 = 2``) in
  the row that is the paper's Micro-Block B (paper M0: 16 -> 64, while its ``C`` is 96); we do the same.
- **Activations**: as the paper's M0-M2 (released ``y1 y2 y3 = 2 2 1``): Dynamic Shift-Max K=2
  after the expanding 1x1 and after the depthwise, K=1 after the squeeze; the first block's
  depthwise activation is ReLU6 (as in every released model's first row).
- **Hyper-function reduction** ``r``: 1 (reduction 8) in backbone rows down to stride 8, 2
  (reduction 16) at stride 16 and in the head, like the released rows (``r`` rises where the
  channel count does).
- **Spatial attention** (DY-ReLU-C, ``micronet.layers.SpatialAttention``) on every Shift-Max:
  the paper says "per layer".
- **Upsampling**: bilinear x2 (``align_corners=False``) right where a head block's resolution
  rises, i.e. before its depthwise (the start of the paper's block), so the previous block's expanding
  1x1 still runs at the lower resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import BlockRow, VariantConfig

#: The input size Table 10 (and Table 8's figures) are stated at, H x W.
POSE_INPUT_SIZE: tuple[int, int] = (256, 192)
#: COCO's 17 keypoints: one heatmap each.
COCO_KEYPOINTS = 17
#: The heatmaps' stride (64 x 48 at 256 x 192).
HEATMAP_STRIDE = 4

#: Paper-view columns of Table 10, in order.
PAPER_COLUMNS = ("output", "kind", "k", "C", "C/R", "g1", "g2")
#: Block kinds in Table 10: stem, Micro-Block A (lite), B, C, and A-dagger (A without depthwise expansion).
PAPER_KINDS = ("stem", "A", "B", "C", "A+")

# Choices for what Table 10 leaves open (module docstring).
B_DEPTHWISE_EXPANSION = (2, 2)
ACTIVATIONS = (2, 2, 1)  # y1 y2 y3
FIRST_DEPTHWISE_ACT = 0  # ReLU6
REDUCTION_FACTOR_BY_STRIDE = {2: 1, 4: 1, 8: 1, 16: 2}
HEAD_REDUCTION_FACTOR = 2


@dataclass(frozen=True)
class PaperBlock:
    """One line of Table 10 in the paper's own terms.

    ``output``: (H, W) of the block's output at 256x192 input; ``kind``: stem / A / B / C / A+
    (A+ is the paper's A-dagger); ``kernel``, ``width`` (C), ``narrow`` (C/R), ``groups`` (g1, g2;
    g2 is 0 where the paper prints "-"). ``head`` marks the blocks after the backbone.
    """

    output: tuple[int, int]
    kind: str
    kernel: int
    width: int
    narrow: int
    groups: tuple[int, int]
    head: bool = False

    def stride(self, input_size: tuple[int, int] = POSE_INPUT_SIZE) -> int:
        """Output stride relative to the input at ``POSE_INPUT_SIZE`` (2, 4, 8 or 16)."""
        return input_size[0] // self.output[0]


def blocks_from_table(table: str) -> tuple[PaperBlock, ...]:
    """Parse a Table 10 column: one block per line (``PAPER_COLUMNS``), a line ``head`` before the head."""
    blocks: list[PaperBlock] = []
    head = False
    for line in table.strip().splitlines():
        cells = line.split("#")[0].split()  # "# ..." notes a departure from the printed table
        if not cells:
            continue
        if cells == ["head"]:
            head = True
            continue
        if len(cells) != len(PAPER_COLUMNS):
            raise ValueError(f"a Table 10 line needs {len(PAPER_COLUMNS)} columns ({' '.join(PAPER_COLUMNS)}), "
                             f"got {line.strip()!r}")
        output, kind, *numbers = cells
        if kind not in PAPER_KINDS:
            raise ValueError(f"unknown block kind {kind!r} in {line.strip()!r}; known: {', '.join(PAPER_KINDS)}")
        h, w = (int(v) for v in output.split("x"))
        k, c, cr, g1, g2 = (0 if v == "-" else int(v) for v in numbers)
        blocks.append(PaperBlock((h, w), kind, k, c, cr, (g1, g2), head))
    return tuple(blocks)


def _split_expansion(ratio: int) -> tuple[int, int]:
    """A Micro-Block A's depthwise multiplier as the two factorised convs' (c1, c2): 4 -> (2, 2)."""
    return (2, ratio // 2) if ratio % 2 == 0 and ratio > 1 else (1, ratio)


def _check_groups(cin: int, cout: int, groups: int, what: str) -> None:
    """A grouped 1x1 needs ``groups`` to divide both widths; say which conv of which line does not."""
    for width in (cin, cout):
        _whole(width, groups, f"{what} {cin} -> {cout} with {groups} groups")


def _whole(numerator: int, denominator: int, what: str) -> int:
    if denominator <= 0 or numerator % denominator:
        raise ValueError(f"{what}: {numerator} is not a multiple of {denominator}")
    return numerator // denominator


def to_rows(blocks: tuple[PaperBlock, ...]) -> tuple[tuple[int, int], tuple[BlockRow, ...], tuple[int, ...], int]:
    """Paper view -> code view (architecture.md §1): stem groups, rows, upsampling rows, first head row.

    A (and A+) is one code row of kind A (depthwise expanding to C, squeeze to C/R with g1 groups) --
    except that an A+ after a B/C block is that block's code row, since the expand in front of it
    comes from the previous block. B is a kind-A code row (its depthwise and squeeze) whose expand
    (C/R -> C, g2 groups) opens the next code row; C is a code row of kind B/C made of the previous
    block's expand, its own depthwise on that width and its squeeze.
    """
    stem, *rest = blocks
    if stem.kind != "stem" or stem.groups[0] != 1 or stem.groups[1] != stem.narrow:
        raise ValueError(f"the first line must be the stem 'k, C, C/R, (1, C/R)', got {stem}")
    stem_groups = (stem.narrow, _whole(stem.width, stem.narrow, "stem C / (C/R)"))
    rows: list[BlockRow] = []
    upsample_rows: list[int] = []
    head_start = len(rest)
    cin, resolution = stem.width, stem.output
    pending: tuple[int, int] | None = None  # (C, g2) of a B/C block whose expand opens the next row
    for block in rest:
        if block.head and head_start == len(rest):
            head_start = len(rows)
        upsample = block.output[0] > resolution[0]
        stride = 2 if block.output[0] < resolution[0] else 1
        reduction = HEAD_REDUCTION_FACTOR if block.head else REDUCTION_FACTOR_BY_STRIDE[block.stride()]
        y1, y2, y3 = ACTIVATIONS
        if not rows:
            y2 = FIRST_DEPTHWISE_ACT
        g1 = block.groups[0]
        if pending is None:  # the block starts with its own depthwise: a kind-A code row
            if block.kind not in ("A", "B", "A+"):
                raise ValueError(f"a {block.kind} block needs a B or C block before it (its expand), got {block}")
            if upsample:
                raise ValueError(f"a {block.kind} block cannot upsample (only a head C block does), got {block}")
            if block.kind == "B":
                c1, c2 = B_DEPTHWISE_EXPANSION
            else:
                c1, c2 = _split_expansion(_whole(block.width, cin, f"{block} depthwise expansion"))
                if block.kind == "A+" and c1 * c2 != 1:
                    raise ValueError(f"A+ does not expand its depthwise, but C != input width in {block}")
            _check_groups(cin * c1 * c2, block.narrow, g1, f"{block}: squeeze")
            rows.append(BlockRow(stride, block.narrow, block.kernel, c1, c2, 0, cin, g1, g1, y1, y2, y3, reduction))
        else:
            if block.kind not in ("C", "A+"):
                raise ValueError(f"a {block.kind} block cannot follow a B/C block, got {block}")
            expanded, expand_groups = pending
            if block.kind == "A+" and block.width != expanded:
                raise ValueError(f"A+ does not expand its depthwise: C must equal the previous C {expanded}, got {block}")
            ratio = _whole(expanded, cin, f"{block} expand ratio")
            _check_groups(cin, expanded, expand_groups, f"{block}: the previous block's expand")
            _check_groups(expanded, block.narrow, g1, f"{block}: squeeze")
            if upsample:
                upsample_rows.append(len(rows))
            rows.append(BlockRow(stride, block.narrow, block.kernel, 1, ratio, expand_groups, expand_groups, g1, g1,
                                 y1, y2, y3, reduction))
        pending = (block.width, block.groups[1]) if block.kind in ("B", "C") else None
        cin, resolution = block.narrow, block.output
    if pending is not None:
        raise ValueError("the table must end with a block that has no expand (A or A+): its output feeds the heatmaps")
    return stem_groups, tuple(rows), tuple(upsample_rows), head_start


@dataclass(frozen=True)
class PoseConfig:
    """A keypoint MicroNet: the paper's Table 10 column and the block rows it maps to."""

    name: str
    paper: tuple[PaperBlock, ...]
    variant: VariantConfig  # stem + rows (backbone then head), spatial attention on, upsampling rows
    head_start: int  # index of the first head row in ``variant.rows``
    keypoints: int = COCO_KEYPOINTS

    @property
    def backbone_rows(self) -> tuple[BlockRow, ...]:
        return self.variant.rows[: self.head_start]

    @property
    def head_rows(self) -> tuple[BlockRow, ...]:
        return self.variant.rows[self.head_start:]


def pose_variant(name: str, table: str) -> PoseConfig:
    """Build a keypoint variant from its Table 10 column (``blocks_from_table`` format)."""
    paper = blocks_from_table(table)
    stem_groups, rows, upsample_rows, head_start = to_rows(paper)
    variant = VariantConfig(name=name, stem_groups=stem_groups, rows=rows, head_hidden=0, dropout=0.0,
                            spatial_attention=True, upsample_rows=upsample_rows)
    return PoseConfig(name, paper, variant, head_start)


# Table 10, transcribed in shared/spec/pose.md. Columns: output kind k C C/R g1 g2 ("-" = none).
POSE_M0 = pose_variant("pose-m0", """
    128x96 stem 3  12   4  1  4
    128x96 A    3  12  12  3  -
    64x48  A    3  48  16  4  -
    64x48  A    5  64  24  4  -
    32x24  B    5 192  32  4  8
    32x24  C    7 288  48  6  8
    16x12  C    5 384  64  8  8
    16x12  C    7 576  96  8 12
    head
    32x24  C    5 480 120 12 10
    64x48  C    5 320  80  8 10
    64x48  A+   5 320  48  8  -
""")

POSE_M1 = pose_variant("pose-m1", """
    128x96 stem 3  12   4  1  4
    128x96 A    3  12  12  3  -
    64x48  A    3  48  16  4  -
    64x48  A    5  64  24  4  -
    32x24  B    5 192  32  4  8
    32x24  C    7 288  48  6  8
    32x24  C    5 384  64  8  8
    16x12  C    5 576  96  8 12
    16x12  C    7 768 128  8 16
    16x12  C    5 768 128  8 16
    head
    32x24  C    5 640 160 16 10
    64x48  C    7 384  96  8 12
    64x48  A+   5 384  64  8  -
""")

POSE_M2 = pose_variant("pose-m2", """
    128x96 stem 3   16   4  1  4
    128x96 A    3   16  16  4  -
    64x48  A    3   64  24  4  -
    64x48  B    5  192  32  4  8
    64x48  C    3  192  48  8  6
    32x24  C    5  288  48  6  8
    32x24  C    7  384  64  8  8
    32x24  C    5  480  80  8 10
    32x24  C    5  384  96  8 12
    32x24  C    5  384  96  8 12
    16x12  C    5  720 120 12 10  # printed (10, 12): its squeeze 384 -> 120 cannot have 10 groups
    16x12  C    7  720 120 10 12
    16x12  C    5  720 120 10 12
    16x12  C    7  864 144 12 12
    16x12  C    5  768 192 12 16
    16x12  C    5 1024 256 16 16
    head
    32x24  C    5  768 192 16 12  # printed (12, 16): its squeeze 1024 -> 192 cannot have 12 groups
    64x48  C    7  448 112  8 14
    64x48  A+   5  448  80  8  -
""")

POSE_M3 = pose_variant("pose-m3", """
    128x96 stem 3   16   4  1  4
    128x96 A    3   16  16  4  -
    64x48  A    3   64  24  4  -
    64x48  B    5  128  32  4  8
    64x48  C    3  192  48  8  6
    32x24  C    5  256  64  8  8
    32x24  C    7  256  64  8  8
    32x24  C    7  256  64  8  8
    32x24  C    5  384  96  8 12
    32x24  C    5  384  96  8 12
    16x12  C    5  576 144 12 12
    16x12  C    5  576 144 12 12
    16x12  C    5  576 144 12 12
    16x12  C    7  768 192 12 16
    16x12  C    5  768 192 12 16
    16x12  C    5 1024 256 16 16
    head
    32x24  C    5 1024 256 16 16
    64x48  C    7  640 160 16 10
    64x48  A+   7  640  96  8  -
""")

POSE_CONFIGS: dict[str, PoseConfig] = {c.name: c for c in (POSE_M0, POSE_M1, POSE_M2, POSE_M3)}
