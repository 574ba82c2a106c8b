"""What a training run is: the options a user gives and the paper recipe that fills the rest.

A run's task (classification or pose) is its variant's, from the registry; each task has its recipe.
Classification: the defaults reproduce the authors' released training scripts (architecture spec §4.6): SGD with
momentum 0.9, lr 0.2 for a batch of 512 scaled linearly with the batch, per-iteration cosine decay,
600 epochs, no label smoothing, no mixup, only random-resized-crop + flip. Values that depend on the
variant are ``None`` here and resolved by :meth:`TrainConfig.resolved`, so a checkpoint records both
what the user asked for and what was used.

Pose (paper §6.1, SimpleBaseline's schedule): Adam, lr 1e-3 dropped x0.1 at epochs 210 and 240 of 250,
no weight decay (SimpleBaseline passes none to Adam), input 256x192 (H x W), batch 32. A shorter or longer
run keeps the drops at the same fractions of its length (84% and 96%), so ``--epochs 50`` is the
paper's curve compressed rather than a constant lr.

Segmentation (paper §6.2): 240 epochs, lr 0.2 cosine-decayed to 1e-4, weight decay 4e-5, DeepLab
augmentation. The paper names no optimiser; SGD with momentum 0.9 is the one of the DeepLab code base that
Lite R-ASPP (MobileNetV3 §6.3) was trained in, and the only one for which lr 0.2 is a usable step (Adam's
steps are ~1e-3). Batch 16 and a 512x1024 input are our choices (the paper gives neither): DeepLab's usual
Cityscapes batch, and half of a Cityscapes frame, which validation also runs at.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from micronet.cpus import available_cpus
from micronet.errors import MicronetError
from micronet.registry import resolve_variant

#: The released scripts' learning rate and the global batch it was tuned for.
REFERENCE_LR = 0.2
REFERENCE_BATCH = 512

#: Weight decay per variant. The released scripts use 3e-5 for their M0/M1/M2 (our release-m0, m0,
#: m1) and 4e-5 for their M3; our m2/m3 have no released script and follow the larger model's recipe.
WEIGHT_DECAY = {"m0": 3e-5, "m1": 3e-5, "m2": 4e-5, "m3": 4e-5, "release-m0": 3e-5, "release-m3": 4e-5}
#: Only the released M3 script warms up (5 epochs, linear from 0); m2/m3 follow it as above.
WARMUP_EPOCHS = {"m0": 0.0, "m1": 0.0, "m2": 5.0, "m3": 5.0, "release-m0": 0.0, "release-m3": 5.0}

#: Pose recipe (§6.1): Adam's lr, the epochs at which it drops x0.1 (of ``POSE_EPOCHS``), batch and input.
POSE_LR = 1e-3
POSE_EPOCHS = 250
POSE_LR_DROPS = (210, 240)
POSE_LR_FACTOR = 0.1
POSE_BATCH = 32
POSE_INPUT_SIZE = (256, 192)
#: Segmentation recipe (§6.2): SGD's lr and the floor its cosine ends at, weight decay, epochs, batch, input.
SEG_LR = 0.2
SEG_MIN_LR = 1e-4
SEG_WEIGHT_DECAY = 4e-5
SEG_EPOCHS = 240
SEG_BATCH = 16
SEG_INPUT_SIZE = (512, 1024)
#: The tasks ``train`` handles, with their recipe's epochs, global batch and input size when not given.
TASK_DEFAULTS: dict[str, tuple[int, int, int | tuple[int, int]]] = {
    "classification": (600, REFERENCE_BATCH, 224),
    "pose": (POSE_EPOCHS, POSE_BATCH, POSE_INPUT_SIZE),
    "segmentation": (SEG_EPOCHS, SEG_BATCH, SEG_INPUT_SIZE),
}

#: Fields that shape the optimisation trajectory: a resumed run must use the same values, or it
#: would silently become a different experiment than the one its checkpoint and logs describe.
#: ``epochs`` is not among them: a resume may change the planned length (to extend a finished run),
#: never below the epochs already trained; the cosine schedule then follows the new total and the
#: checkpoint records the change (``checkpoint.check_resumable``, ``loop``).
TRAJECTORY_FIELDS = ("batch_size", "lr", "weight_decay", "momentum", "warmup_epochs",
                     "label_smoothing", "mixup", "input_size", "dropout", "mutual", "seed",
                     "crop_scale", "hflip")
#: Data-loading worker processes when ``workers`` is not given: this many, or fewer on a machine
#: with fewer cores (more workers than cores only compete with the training process for them).
MAX_DEFAULT_WORKERS = 4


def default_workers() -> int:
    """min(4, available cores): the DataLoader warns, and stalls, with more workers than cores."""
    return min(MAX_DEFAULT_WORKERS, available_cpus())


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Sizes in pixels, ``batch_size`` is the global batch (all processes together).

    ``data`` is an ImageFolder (``<class>/<image>``); when ``val`` is not given and ``data`` holds
    ``train/`` and ``val/`` folders, those are used (the layout ``micronet datasets`` writes).
    ``lr``/``weight_decay``/``warmup_epochs``/``num_classes``/``out`` left as ``None`` are filled from
    the recipe, the data and the variant. For a pose variant ``data`` is a COCO keypoints folder
    (``annotations/``, ``train2017/``, ``val2017/``) and ``val`` another one holding ``val2017``; for a
    segmentation variant a Cityscapes folder (``leftImg8bit/``, ``gtFine/``, each with ``train/`` and
    ``val/``) and ``val`` another one holding the ``val`` split.
    """

    variant: str
    data: str
    val: str | None = None
    out: str | None = None
    #: ``None``: the task's recipe (600 classification, 250 pose).
    epochs: int | None = None
    #: ``None``: the task's recipe (512 classification, 32 pose).
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float = 0.9
    warmup_epochs: float | None = None
    label_smoothing: float = 0.0
    mixup: float = 0.0
    num_classes: int | None = None
    #: Pixels: one side for classification (224), (H, W) for pose ((256, 192)); ``None``: the recipe's.
    input_size: int | tuple[int, int] | None = None
    dropout: float | None = None
    weights: str | None = None
    #: Segmentation only: a classifier checkpoint of the variant's backbone (ImageNet pretraining) for the
    #: stem and rows; MR-ASPP starts from its initialisation. The paper trains from random initialisation.
    backbone_weights: str | None = None
    resume: str | None = None
    mutual: bool = False
    seed: int = 0
    #: Data-loading processes per training process; ``None`` = ``default_workers()`` (min(4, cores)).
    workers: int | None = None
    #: CPU: ``torch.use_deterministic_algorithms``; CUDA: also cuDNN deterministic and no autotuning.
    deterministic: bool = False
    #: Mixed precision (float16 autocast + GradScaler); only ever used on CUDA.
    amp: bool = True
    #: ``None`` = CUDA when present (``cuda:LOCAL_RANK`` under torchrun), else CPU.
    device: str | None = None
    #: RandomResizedCrop area range; the paper's (0.08, 1). Very small images may want a larger minimum.
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: bool = True

    def __post_init__(self) -> None:
        info = resolve_variant(self.variant, task=None)
        if info.task not in TASK_DEFAULTS:
            raise MicronetError(f"{info.name} is a {info.task} model; train handles "
                                f"{', '.join(TASK_DEFAULTS)} variants")
        object.__setattr__(self, "variant", info.name)
        object.__setattr__(self, "crop_scale", tuple(float(s) for s in self.crop_scale))
        epochs, batch, size = TASK_DEFAULTS[info.task]
        for name, default in (("epochs", epochs), ("batch_size", batch), ("input_size", size)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        object.__setattr__(self, "input_size", _input_size(self.input_size, info.task))
        if info.task != "classification":
            _refuse_classification_options(self, info.task)
        if self.backbone_weights and info.task != "segmentation":
            raise MicronetError(f"--backbone-weights is for segmentation variants; {info.name} starts from "
                                f"--weights")
        if self.backbone_weights and self.weights:
            raise MicronetError("give --weights (a whole segmentation model) or --backbone-weights (a classifier's "
                                "stem and rows), not both")
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 2, f"batch size must be at least 2 (BatchNorm needs 2 samples), got {self.batch_size}"),
            (self.lr is None or self.lr > 0, f"learning rate must be positive, got {self.lr}"),
            (self.weight_decay is None or self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_epochs is None or 0 <= self.warmup_epochs < self.epochs,
             f"warm-up epochs must be in [0, epochs={self.epochs}), got {self.warmup_epochs}"),
            (0.0 <= self.label_smoothing < 1.0, f"label smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.mixup >= 0.0, f"mixup alpha must be >= 0, got {self.mixup}"),
            (self.num_classes is None or self.num_classes >= 1, f"num_classes must be >= 1, got {self.num_classes}"),
            (self.workers is None or self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (len(self.crop_scale) == 2 and 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0,
             f"crop scale must be 0 < min <= max <= 1, got {self.crop_scale}"),
        ]
        for ok, message in checks:
            if not ok:
                raise MicronetError(message)

    @property
    def task(self) -> str:
        """``"classification"``, ``"pose"`` or ``"segmentation"``: the variant's task in the registry."""
        return resolve_variant(self.variant, task=None).task

    def resolved(self) -> TrainConfig:
        """The recipe values for this variant and batch: lr = 0.2 x batch / 512, per-variant decay and
        warm-up (pose: lr 1e-3, no decay, no warm-up); data-loading workers for this machine. Values the
        user set are kept."""
        if self.task == "segmentation":
            return replace(
                self, lr=self.lr if self.lr is not None else SEG_LR,
                weight_decay=self.weight_decay if self.weight_decay is not None else SEG_WEIGHT_DECAY,
                warmup_epochs=self.warmup_epochs if self.warmup_epochs is not None else 0.0,
                workers=self.workers if self.workers is not None else default_workers())
        if self.task == "pose":
            return replace(
                self, lr=self.lr if self.lr is not None else POSE_LR,
                weight_decay=self.weight_decay if self.weight_decay is not None else 0.0,
                warmup_epochs=self.warmup_epochs if self.warmup_epochs is not None else 0.0,
                workers=self.workers if self.workers is not None else default_workers())
        return replace(
            self,
            lr=self.lr if self.lr is not None else REFERENCE_LR * self.batch_size / REFERENCE_BATCH,
            weight_decay=self.weight_decay if self.weight_decay is not None else WEIGHT_DECAY[self.variant],
            warmup_epochs=self.warmup_epochs if self.warmup_epochs is not None
            else min(WARMUP_EPOCHS[self.variant], self.epochs - 1),
            workers=self.workers if self.workers is not None else default_workers(),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known})


def _input_size(size: Any, task: str) -> int | tuple[int, int]:
    """Classification: one side in pixels, as before. Pose: (H, W), a single number meaning a square; the
    model checks the multiples of 32 when it is built. Segmentation: (H, W), checked here, so a bad size is
    refused before a run folder exists."""
    if task == "segmentation":
        from micronet.seg_model import check_seg_input_size

        pair = (size, size) if isinstance(size, (int, float)) and not isinstance(size, bool) else size
        return check_seg_input_size(pair)
    if task == "pose":
        if isinstance(size, (int, float)) and not isinstance(size, bool):
            return (int(size), int(size))
        if isinstance(size, (tuple, list)) and len(size) == 2:
            return (int(size[0]), int(size[1]))
        raise MicronetError(f"input size {size!r} is not a size: pose models take H x W, e.g. 256x192")
    if isinstance(size, (tuple, list)):
        if len(size) == 2 and int(size[0]) == int(size[1]):
            return int(size[0])
        raise MicronetError(f"input size {'x'.join(map(str, size))} is not square: classification models "
                            f"take one side in pixels, e.g. 224")
    return size


#: How a refusal names each dense task's recipe.
RECIPE_NAMES = {"pose": "the pose recipe (Adam, heatmap loss)",
                "segmentation": "the segmentation recipe (SGD, per-pixel cross-entropy, DeepLab augmentation)"}


def _refuse_classification_options(config: TrainConfig, task: str) -> None:
    """The classification recipe's options that mean nothing for heatmap regression or per-pixel labels,
    refused by name rather than silently ignored (a user who asked for mixup must not believe it was used)."""
    outputs = "one heatmap per COCO keypoint" if task == "pose" else "one output per Cityscapes train ID"
    crops = ("pose crops come from the person boxes, scaled 0.65-1.35" if task == "pose"
             else "segmentation crops are scaled 0.5-2.0 and padded")
    refused = [
        (config.mutual, "--mutual (mutual learning with a full-rank classifier partner)"),
        (config.mixup != 0.0, "--mixup"),
        (config.label_smoothing != 0.0, "--label-smoothing"),
        (config.num_classes is not None, f"--num-classes (a {task} model has {outputs})"),
        (tuple(config.crop_scale) != (0.08, 1.0), f"--crop-min ({crops})"),
    ]
    for bad, option in refused:
        if bad:
            raise MicronetError(f"{option} is a classification option; {config.variant} trains with "
                                f"{RECIPE_NAMES[task]}, which has no such setting")
