"""The variants a user can ask for, and the checkpoints the authors released for them, as data.

In the spirit of torchvision's weights enums: one ``VariantInfo`` per variant with its exact
figures, and one ``ReleasedWeights`` per published checkpoint (file name, ImageNet top-1, the
evaluation preprocessing, where it is hosted, the variant it loads into). ``micronet variants``,
the budget check and the loader read these entries; tests recompute every figure with
``micronet.counting`` so the data cannot drift from the model.

Names follow the paper (``m0``..``m3``, Table 1 of arXiv 2011.12289 v1). The authors' released code
renamed the models (its M1/M2 are the paper's M0/M1), so ``release-m1``/``release-m2`` are aliases,
and the two released models without a paper twin are offered as ``release-m0``/``release-m3`` for
their checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import CONFIGS, VariantConfig
from .errors import MicronetError
from .preprocess import Preprocessing

#: Where the authors host their checkpoints (not downloaded by this package; see README).
RELEASE_URL = "http://www.svcl.ucsd.edu/projects/micronet/assets/"

#: The input size and class count every figure below is stated at.
FIGURES_INPUT_SIZE = 224
FIGURES_CLASSES = 1000

#: How the authors evaluate: shorter side to 256 (bilinear), centre crop 224, ImageNet mean/std.
IMAGENET_EVAL = Preprocessing(input_size=224, crop_ratio=0.875, interpolation="bilinear")


@dataclass(frozen=True)
class ReleasedWeights:
    """One checkpoint as the authors publish it, and what it takes to reproduce its accuracy."""

    file_name: str  # as the authors name it (their M1 is our m0, so the names differ from ours)
    variant: str  # the registered variant it loads into
    top1: float  # ImageNet top-1 (%) the release README gives for it
    preprocessing: Preprocessing = IMAGENET_EVAL
    url_base: str = RELEASE_URL
    num_classes: int = FIGURES_CLASSES

    @property
    def url(self) -> str:
        return self.url_base + self.file_name

    @property
    def params(self) -> int:
        """Exact parameter count of the model it loads into (one figure per variant, kept there)."""
        return VARIANTS[self.variant].params

    @property
    def madds(self) -> int:
        """Exact MAdds at ``preprocessing.input_size`` (224) of the model it loads into."""
        return VARIANTS[self.variant].madds

    def to_dict(self) -> dict[str, Any]:
        return {"file_name": self.file_name, "url": self.url, "variant": self.variant, "top1": self.top1,
                "params": self.params, "madds": self.madds, "num_classes": self.num_classes,
                "preprocessing": self.preprocessing.to_dict()}


@dataclass(frozen=True)
class VariantInfo:
    """One variant: what it is, its exact figures, the published ones, and its released weights."""

    name: str
    description: str
    params: int  # exact, at FIGURES_INPUT_SIZE / FIGURES_CLASSES, by micronet.counting's rule
    madds: int
    paper_madds: str  # the figure the paper (or the release README) prints, as printed
    paper_params: str
    weights: tuple[ReleasedWeights, ...] = ()
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for w in self.weights:
            if w.variant != self.name:  # a data-entry slip, caught at import
                raise ValueError(f"{w.file_name} is listed under {self.name} but names {w.variant}")

    @property
    def config(self) -> VariantConfig:
        return CONFIGS[self.name]

    def to_row(self) -> dict[str, Any]:
        """The ``micronet variants --json`` record (``release_*`` name the first released checkpoint)."""
        first = self.weights[0] if self.weights else None
        return {"name": self.name, "aliases": list(self.aliases), "params": self.params, "madds": self.madds,
                "paper_madds": self.paper_madds, "paper_params": self.paper_params,
                "release_checkpoint": first.file_name if first else None,
                "release_top1": first.top1 if first else None,
                "description": self.description, "weights": [w.to_dict() for w in self.weights]}


def _released(file_name: str, variant: str, top1: float) -> tuple[ReleasedWeights, ...]:
    return (ReleasedWeights(file_name, variant, top1),)


VARIANTS: dict[str, VariantInfo] = {
    v.name: v
    for v in (
        VariantInfo("m0", "paper M0; identical to the released M1", 1_777_587, 6_120_032, "6M", "1.8M",
                    _released("micronet-m1.pth", "m0", 51.4), ("release-m1",)),
        VariantInfo("m1", "paper M1; identical to the released M2", 2_393_876, 12_743_440, "12M", "2.4M",
                    _released("micronet-m2.pth", "m1", 59.4), ("release-m2",)),
        VariantInfo("m2", "paper M2, derived from Table 1", 3_146_588, 18_715_232,
                    "21M", "3.3M"),
        VariantInfo("m3", "paper M3, derived from Table 1", 3_266_508, 28_954_576,
                    "44M", "4.5M"),
        VariantInfo("release-m0", "released M0 (ICCV version; no paper twin)", 1_019_590, 4_054_128, "4M", "1.0M",
                    _released("micronet-m0.pth", "release-m0", 46.6)),
        VariantInfo("release-m3", "released M3 (ICCV version; no paper twin)", 2_622_960, 20_807_520, "21M", "2.6M",
                    _released("micronet-m3.pth", "release-m3", 62.5)),
    )
}

ALIASES: dict[str, str] = {alias: v.name for v in VARIANTS.values() for alias in v.aliases}

#: Every released checkpoint by the file name the authors publish it under.
RELEASED_WEIGHTS: dict[str, ReleasedWeights] = {w.file_name: w for v in VARIANTS.values() for w in v.weights}


def variant_names(include_aliases: bool = False) -> list[str]:
    return list(VARIANTS) + (list(ALIASES) if include_aliases else [])


def resolve_variant(name: str) -> VariantInfo:
    """Look a variant up by name or alias, case-insensitively, with a one-line error otherwise."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in VARIANTS:
        raise MicronetError(f"unknown variant {name!r}; choose one of: {', '.join(variant_names(True))}")
    return VARIANTS[key]


def variant_rows() -> list[dict[str, Any]]:
    """Every variant's ``to_row()``: what ``micronet variants`` prints, from the metadata alone."""
    return [info.to_row() for info in VARIANTS.values()]
