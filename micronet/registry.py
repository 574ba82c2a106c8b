"""The variants a user can ask for, with the figures they will be compared against.

Names follow the paper (``m0``..``m3``, Table 1 of arXiv 2011.12289 v1). The authors' released code
renamed the models (its M1/M2 are the paper's M0/M1), so ``release-m1``/``release-m2`` are aliases,
and the two released models without a paper twin are offered as ``release-m0``/``release-m3`` for
their checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import CONFIGS, VariantConfig
from .errors import MicronetError

#: Where the authors host their checkpoints (not downloaded by this package; see README).
RELEASE_URL = "http://www.svcl.ucsd.edu/projects/micronet/assets/"


@dataclass(frozen=True)
class VariantInfo:
    name: str
    description: str
    paper_madds: str  # the figure the paper (or the release README) prints, as printed
    paper_params: str
    checkpoint: str | None = None  # released file that loads into this variant
    release_top1: float | None = None  # ImageNet top-1 (%) the release README gives for it
    aliases: tuple[str, ...] = ()

    @property
    def config(self) -> VariantConfig:
        return CONFIGS[self.name]


VARIANTS: dict[str, VariantInfo] = {
    v.name: v
    for v in (
        VariantInfo("m0", "paper M0; identical to the released M1 (loads micronet-m1.pth)", "6M", "1.8M",
                    "micronet-m1.pth", 51.4, ("release-m1",)),
        VariantInfo("m1", "paper M1; identical to the released M2 (loads micronet-m2.pth)", "12M", "2.4M",
                    "micronet-m2.pth", 59.4, ("release-m2",)),
        VariantInfo("m2", "paper M2, derived from Table 1 (no released weights)", "21M", "3.3M"),
        VariantInfo("m3", "paper M3, derived from Table 1 (no released weights)", "44M", "4.5M"),
        VariantInfo("release-m0", "released M0 (ICCV version; no paper twin)", "4M", "1.0M",
                    "micronet-m0.pth", 46.6),
        VariantInfo("release-m3", "released M3 (ICCV version; no paper twin)", "21M", "2.6M",
                    "micronet-m3.pth", 62.5),
    )
}

ALIASES: dict[str, str] = {alias: v.name for v in VARIANTS.values() for alias in v.aliases}


def variant_names(include_aliases: bool = False) -> list[str]:
    return list(VARIANTS) + (list(ALIASES) if include_aliases else [])


def resolve_variant(name: str) -> VariantInfo:
    """Look a variant up by name or alias, case-insensitively, with a one-line error otherwise."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in VARIANTS:
        raise MicronetError(f"unknown variant {name!r}; choose one of: {', '.join(variant_names(True))}")
    return VARIANTS[key]
