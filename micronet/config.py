"""Declarative description of every MicroNet variant.

Each variant is data: a stem, a list of block rows and a head. The rows are written as compact
whitespace tables in the released code's column order (``s c ks c1 c2 g1 g2 g3 g4 y1 y2 y3 r``; its
unused ``n`` and ``c3`` are dropped) so that they can be checked line by line against the released
``microconfig.py``; each column becomes a descriptively named field of ``BlockRow``
(``RELEASED_COLUMNS`` says which). The block *kind* is derived from the row, as the released code
does: no expanding 1x1 (``g1 == 0``) is a Micro-Block A, no output shift groups (``g4 == 0``) the
final pointwise row, anything else a Micro-Block B/C.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

BlockKind = Literal["A", "BC", "final"]

#: DY-Shift-Max coefficients are rescaled to [-ACT_MAX, ACT_MAX]; all released models use 2.0.
ACT_MAX = 2.0
#: Base reduction of the Shift-Max hyper-function (multiplied by a row's ``reduction_factor``).
BASE_REDUCTION = 8


@dataclass(frozen=True)
class BlockRow:
    """One Micro-Block: a row of the released ``microconfig.py`` (minus ``n`` and ``c3``), named.

    Field (released column): meaning.

    - ``stride`` (``s``), ``out_channels`` (``c``), ``kernel`` (``ks``): of the depthwise stage.
    - ``expansion1`` (``c1``), ``expansion2`` (``c2``): the hidden width is ``in * c1 * c2``. In a
      type A block they are the channel multipliers of the two factorised depthwise convs (kx1, 1xk);
      in B/C ``c1`` is 1 and ``c2`` is the expansion of the expanding 1x1.
    - ``expand_groups`` (``g1``): groups of the expanding 1x1; 0 = type A (no expanding 1x1).
    - ``shift_groups`` (``g2``): shift/shuffle groups of the first two activations.
    - ``squeeze_groups`` (``g3``): groups of the squeezing 1x1.
    - ``out_shift_groups`` (``g4``): shift/shuffle groups of the output activation; 0 = final row.
    - ``expand_act`` (``y1``), ``depthwise_act`` (``y2``): the activation after the expanding 1x1
      and after the depthwise stage: 0 = ReLU6, 1 = Dynamic Shift-Max K=1, 2 = Dynamic Shift-Max K=2.
    - ``squeeze_act`` (``y3``): 0 = none after the squeezing 1x1, else a Dynamic Shift-Max K=1.
    - ``reduction_factor`` (``r``): the Shift-Max hyper-function reduces by ``BASE_REDUCTION * r``.
    """

    stride: int
    out_channels: int
    kernel: int
    expansion1: int
    expansion2: int
    expand_groups: int
    shift_groups: int
    squeeze_groups: int
    out_shift_groups: int
    expand_act: int
    depthwise_act: int
    squeeze_act: int
    reduction_factor: int

    @property
    def kind(self) -> BlockKind:
        if self.expand_groups == 0:
            return "A"
        if self.out_shift_groups == 0:
            return "final"
        return "BC"

    @property
    def activations(self) -> tuple[int, int, int]:
        """The three activation selectors (``y1 y2 y3``) in block order."""
        return self.expand_act, self.depthwise_act, self.squeeze_act


#: The released ``microconfig.py`` column each ``BlockRow`` field holds, in table order.
RELEASED_COLUMNS: dict[str, str] = dict(zip("s c ks c1 c2 g1 g2 g3 g4 y1 y2 y3 r".split(),
                                            (f.name for f in fields(BlockRow)), strict=True))


@dataclass(frozen=True)
class VariantConfig:
    """Everything that distinguishes one MicroNet from another."""

    name: str
    stem_groups: tuple[int, int]  # (G1, G2): stem is 3 -> G1 -> G1*G2 channels
    rows: tuple[BlockRow, ...]
    head_hidden: int  # width of the first classifier Linear
    dropout: float
    init_a: tuple[float, float] = (1.0, 1.0)  # Shift-Max offsets alpha1, alpha2 (K=2 slots)
    init_b: tuple[float, float] = (0.0, 0.0)  # Shift-Max offsets beta1, beta2 (K=2 slots)
    #: DY-ReLU spatial attention on every Shift-Max (the keypoint variants, paper §6.1); off for classification.
    spatial_attention: bool = False
    #: Indices of rows whose depthwise runs after a bilinear x2 upsampling (the keypoint head).
    upsample_rows: tuple[int, ...] = ()

    @property
    def stem_channels(self) -> int:
        return self.stem_groups[0] * self.stem_groups[1]


def rows_from_table(table: str) -> tuple[BlockRow, ...]:
    """Parse a whitespace table in the released column order (``RELEASED_COLUMNS``) into rows."""
    rows = []
    for line in table.strip().splitlines():
        values = [int(v) for v in line.split()]
        if len(values) != len(RELEASED_COLUMNS):
            raise ValueError(f"a block row needs {len(RELEASED_COLUMNS)} columns "
                             f"({' '.join(RELEASED_COLUMNS)}), got {line.strip()!r}")
        rows.append(BlockRow(**dict(zip(RELEASED_COLUMNS.values(), values))))
    return tuple(rows)


# Paper M0 (= released M1, `msnx_dy6_exp6_6M_221`).
M0 = VariantConfig(
    name="m0",
    stem_groups=(3, 2),
    head_hidden=960,
    dropout=0.05,
    rows=rows_from_table(
        """
        2   8 3 2 2  0  6 2 2 2 0 1 1
        2  16 3 2 2  0  8 4 4 2 2 1 1
        2  16 5 2 2  0 16 4 4 2 2 1 1
        1  32 5 1 6  4  4 4 4 2 2 1 1
        2  64 5 1 6  8  8 8 8 2 2 1 1
        1  96 3 1 6  8  8 8 8 2 2 1 2
        1 576 3 1 6 12 12 0 0 2 2 1 2
        """
    ),
)

# Paper M1 (= released M2, `msnx_dy9_exp6_12M_221`).
M1 = VariantConfig(
    name="m1",
    stem_groups=(4, 2),
    head_hidden=1024,
    dropout=0.1,
    rows=rows_from_table(
        """
        2  12 3 2 2  0  8 4 4 2 0 1 1
        2  16 3 2 2  0 12 4 4 2 2 1 1
        1  24 3 2 2  0 16 4 4 2 2 1 1
        2  32 5 1 6  6  6 4 4 2 2 1 1
        1  32 5 1 6  8  8 4 4 2 2 1 2
        1  64 5 1 6  8  8 8 8 2 2 1 2
        2  96 5 1 6  8  8 8 8 2 2 1 2
        1 128 3 1 6 12 12 8 8 2 2 1 2
        1 768 3 1 6 16 16 0 0 2 2 1 2
        """
    ),
)

# Paper M2, derived from Table 1 (no released twin).
M2 = VariantConfig(
    name="m2",
    stem_groups=(4, 3),
    head_hidden=1024,
    dropout=0.1,
    rows=rows_from_table(
        """
        2  16 3 2 2  0 12  4  4 2 0 1 1
        2  24 3 2 2  0 16  4  4 2 2 1 1
        1  24 3 2 2  0 24  4  4 2 2 1 1
        2  32 3 1 6  6  6  4  4 2 2 1 1
        1  32 5 1 6  8  8  4  4 2 2 1 2
        1  48 5 1 6  8  8  6  6 2 2 1 2
        1  80 5 1 6  8  8  8  8 2 2 1 2
        2 120 5 1 6 10 10 10 10 2 2 1 2
        1 120 3 1 6 12 12 10 10 2 2 1 2
        1 144 3 1 6 12 12 12 12 2 2 1 2
        1 864 3 1 6 12 12  0  0 2 2 1 2
        """
    ),
)

# Paper M3, derived from Table 1 (no released twin).
M3 = VariantConfig(
    name="m3",
    stem_groups=(4, 4),
    head_hidden=1024,
    dropout=0.1,
    rows=rows_from_table(
        """
        2  36 3 2 2  0 16  4  4 2 0 1 1
        2  48 3 2 2  0 36  6  6 2 2 1 1
        1  48 3 1 4  8  8  6  6 2 2 1 1
        2  64 5 1 4  8  8  8  8 2 2 1 1
        1  64 5 1 4  8  8  8  8 2 2 1 2
        1  96 5 1 4  8  8  8  8 2 2 1 2
        1  96 5 1 4 12 12  8  8 2 2 1 2
        2 192 5 1 4 12 12 12 12 2 2 1 2
        1 192 5 1 4 16 16 12 12 2 2 1 2
        1 192 5 1 4 16 16 12 12 2 2 1 2
        1 768 5 1 4 16 16  0  0 2 2 1 2
        """
    ),
)

# Released M0 (`msnx_dy6_exp4_4M_221`): no paper twin, offered for its checkpoint.
RELEASE_M0 = VariantConfig(
    name="release-m0",
    stem_groups=(2, 2),
    head_hidden=640,
    dropout=0.05,
    rows=rows_from_table(
        """
        2   8 3 2 2  0  4 2 2 2 0 1 1
        2  12 3 2 2  0  8 4 4 2 2 1 1
        2  16 5 2 2  0 12 4 4 2 2 1 1
        1  32 5 1 4  4  4 4 4 2 2 1 1
        2  64 5 1 4  8  8 8 8 2 2 1 1
        1  96 3 1 4  8  8 8 8 2 2 1 2
        1 384 3 1 4 12 12 0 0 2 2 1 2
        """
    ),
)

# Released M3 (`msnx_dy12_exp6_20M_020`): ReLU6 after the expanding 1x1, no third activation.
RELEASE_M3 = VariantConfig(
    name="release-m3",
    stem_groups=(4, 3),
    head_hidden=1024,
    dropout=0.1,
    init_a=(1.0, 0.5),
    init_b=(0.0, 0.5),
    rows=rows_from_table(
        """
        2  16 3 2 2  0 12  4  4 0 2 0 1
        2  24 3 2 2  0 16  4  4 0 2 0 1
        1  24 3 2 2  0 24  4  4 0 2 0 1
        2  32 5 1 6  6  6  4  4 0 2 0 1
        1  32 5 1 6  8  8  4  4 0 2 0 2
        1  64 5 1 6  8  8  8  8 0 2 0 2
        1  80 5 1 6  8  8  8  8 0 2 0 2
        1  80 5 1 6 10 10  8  8 0 2 0 2
        2 120 5 1 6 10 10 10 10 0 2 0 2
        1 120 5 1 6 12 12 10 10 0 2 0 2
        1 144 3 1 6 12 12 12 12 0 2 0 2
        1 864 3 1 6 12 12  0  0 0 2 0 2
        """
    ),
)

CONFIGS: dict[str, VariantConfig] = {c.name: c for c in (M0, M1, M2, M3, RELEASE_M0, RELEASE_M3)}
