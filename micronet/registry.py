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
from typing import Any, Literal

from .config import CONFIGS, VariantConfig
from .errors import MicronetError
from .preprocess import Preprocessing

#: Where the authors host their checkpoints (not downloaded by this package; see README).
RELEASE_URL = "http://www.svcl.ucsd.edu/projects/micronet/assets/"

#: The input size and class count every figure below is stated at.
FIGURES_INPUT_SIZE = 224
FIGURES_CLASSES = 1000

Task = Literal["classification", "pose", "segmentation"]
#: The input size (H, W) each task's figures are stated at: ImageNet 224x224, COCO pose crops 256x192,
#: full Cityscapes frames 1024x2048.
TASK_INPUT_SIZE: dict[str, tuple[int, int]] = {"classification": (224, 224), "pose": (256, 192),
                                               "segmentation": (1024, 2048)}
#: What each task's outputs are, for tables: 1000 classes, 17 heatmaps, 19 Cityscapes classes.
TASK_OUTPUTS: dict[str, tuple[int, str]] = {"classification": (1000, "classes"), "pose": (17, "heatmaps"),
                                            "segmentation": (19, "classes")}

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
    task: Task = "classification"
    paper_ap: float | None = None  # COCO val2017 AP the paper reports (pose variants, Table 8)
    paper_miou: float | None = None  # Cityscapes val mIoU the paper reports (segmentation variants, Table 9)

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) that ``params``/``madds`` are stated at."""
        return TASK_INPUT_SIZE[self.task]

    @property
    def outputs(self) -> int:
        """Classes (classification) or heatmaps (pose) that ``params``/``madds`` are stated with."""
        return TASK_OUTPUTS[self.task][0]

    @property
    def pose_config(self):
        """The keypoint variant's ``PoseConfig`` (Table 10 and its rows); pose variants only."""
        from .pose_config import POSE_CONFIGS

        return POSE_CONFIGS[self.name]

    @property
    def seg_config(self):
        """The segmentation variant's ``SegConfig`` (backbone, dilated rows, MR-ASPP widths); seg variants only."""
        from .seg_config import SEG_CONFIGS

        return SEG_CONFIGS[self.name]

    def __post_init__(self) -> None:
        for w in self.weights:
            if w.variant != self.name:  # a data-entry slip, caught at import
                raise ValueError(f"{w.file_name} is listed under {self.name} but names {w.variant}")

    @property
    def config(self) -> VariantConfig:
        if self.task == "pose":
            return self.pose_config.variant
        if self.task == "segmentation":
            return self.seg_config.variant
        return CONFIGS[self.name]

    def to_row(self) -> dict[str, Any]:
        """The ``micronet variants --json`` record (``release_*`` name the first released checkpoint)."""
        first = self.weights[0] if self.weights else None
        return {"name": self.name, "aliases": list(self.aliases), "task": self.task,
                "input_size": list(self.input_size), "params": self.params, "madds": self.madds,
                "paper_madds": self.paper_madds, "paper_params": self.paper_params,
                "release_checkpoint": first.file_name if first else None,
                "release_top1": first.top1 if first else None,
                "paper_ap": self.paper_ap, "paper_miou": self.paper_miou,
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

#: The keypoint MicroNets (paper §6.1, Table 10; figures at 256x192, 17 heatmaps; paper figures from Table 8).
#: Kept apart from ``VARIANTS`` (the classifiers, which export/bench/train and the weights loader walk).
POSE_VARIANTS: dict[str, VariantInfo] = {
    v.name: v
    for v in (
        VariantInfo("pose-m0", "keypoint M0 (Table 10)", 757_886, 123_977_744, "77.7M", "1.0M", task="pose", paper_ap=50.3),
        VariantInfo("pose-m1", "keypoint M1 (Table 10)", 1_786_464, 188_334_800, "116.8M", "1.8M", task="pose",
                    paper_ap=54.9),
        VariantInfo("pose-m2", "keypoint M2 (Table 10, 2 group pairs swapped)", 4_454_899, 322_302_144, "163.2M",
                    "2.2M", task="pose", paper_ap=58.7),
        VariantInfo("pose-m3", "keypoint M3 (Table 10)", 4_093_343, 375_487_872, "263.2M", "4.0M", task="pose",
                    paper_ap=62.8),
    )
}

#: The segmentation MicroNets (paper §6.2; figures at 1024x2048, 19 classes; paper figures from Table 9, where
#: LR-ASPP on MobileNetV3-Small is 2.90B MAdds, 68.4 mIoU). Kept apart from ``VARIANTS`` like the pose ones.
SEG_VARIANTS: dict[str, VariantInfo] = {
    v.name: v
    for v in (
        VariantInfo("seg-m0", "m0 at stride 16 + MR-ASPP (Table 9)", 284_561, 508_007_136, "0.81B", "0.43M",
                    task="segmentation", paper_miou=56.9),
        VariantInfo("seg-m1", "m1 at stride 16 + MR-ASPP (Table 9)", 609_482, 891_413_392, "1.20B", "0.99M",
                    task="segmentation", paper_miou=63.5),
        VariantInfo("seg-m2", "m2 at stride 16 + MR-ASPP (Table 9)", 1_266_962, 1_352_599_104, "1.75B", "1.85M",
                    task="segmentation", paper_miou=66.1),
        VariantInfo("seg-m3", "m3 at stride 16 + MR-ASPP (Table 9)", 1_482_570, 1_884_535_248, "2.52B", "1.87M",
                    task="segmentation", paper_miou=69.1),
    )
}

#: Every variant of every task, by name.
ALL_VARIANTS: dict[str, VariantInfo] = {**VARIANTS, **POSE_VARIANTS, **SEG_VARIANTS}

ALIASES: dict[str, str] = {alias: v.name for v in ALL_VARIANTS.values() for alias in v.aliases}

#: Every released checkpoint by the file name the authors publish it under.
RELEASED_WEIGHTS: dict[str, ReleasedWeights] = {w.file_name: w for v in VARIANTS.values() for w in v.weights}


#: Suffixes of the published figures ("0.81B", "77.7M", "1.8M").
_SUFFIXES = {"K": 1e3, "M": 1e6, "B": 1e9}


def published_number(text: str) -> int:
    """A published figure as printed ("0.81B", "1.87M") -> the number it stands for (810_000_000, 1_870_000)."""
    value, suffix = text.strip()[:-1], text.strip()[-1:].upper()
    if suffix not in _SUFFIXES:
        raise ValueError(f"a published figure ends with K, M or B, got {text!r}")
    return round(float(value) * _SUFFIXES[suffix])


def paper_comparison(info: VariantInfo, params: int, madds: int) -> dict[str, Any]:
    """Our exact figures over the published ones (at the variant's own input size): what the tables explain."""
    paper_madds, paper_params = published_number(info.paper_madds), published_number(info.paper_params)
    return {"paper_madds": paper_madds, "paper_params": paper_params,
            "madds_ratio": round(madds / paper_madds, 3), "params_ratio": round(params / paper_params, 3)}


def variant_names(include_aliases: bool = False, task: Task | None = "classification") -> list[str]:
    """Names of ``task``'s variants (every task's for ``task=None``), aliases after them if asked."""
    names = [n for n, v in ALL_VARIANTS.items() if task is None or v.task == task]
    return names + ([a for a, n in ALIASES.items() if n in names] if include_aliases else [])


def resolve_variant(name: str, task: Task | None = "classification") -> VariantInfo:
    """Look a variant up by name or alias, case-insensitively, with a one-line error otherwise.

    ``task`` is what the caller can handle: export, bench, train and the weights loader handle
    classification only, so a pose variant reaching them is refused here, in one line, once for all
    of them. ``task=None`` (``micronet variants``, ``flops``, ``budget``) accepts every task.
    """
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in ALL_VARIANTS:
        raise MicronetError(f"unknown variant {name!r}; choose one of: {', '.join(variant_names(True, task))}")
    info = ALL_VARIANTS[key]
    if task is not None and info.task != task:
        raise MicronetError(f"{info.name} is a {info.task} model and this command handles {task} variants only "
                            f"({', '.join(variant_names(False, task))}); for {info.name} use "
                            "`micronet flops` or `micronet variants`")
    return info


def variant_rows() -> list[dict[str, Any]]:
    """Every variant's ``to_row()``, all tasks: what ``micronet variants`` prints, from the metadata alone."""
    return [info.to_row() for info in ALL_VARIANTS.values()]
