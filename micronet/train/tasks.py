"""What differs between training a classifier, a keypoint and a segmentation model, and nothing else.

The loop (``loop.py``) owns everything the two share: processes, the step schedule's position, AMP,
checkpoints, resume, logging. A ``TrainTask`` supplies the parts that depend on what is learned: which
folder layout the data has, the model, the optimiser and lr curve, the loss of a batch, the evaluation,
the figure that picks ``best.pt``, the metric-file columns and what ``best.pt`` records about its outputs
(class names or keypoint names). ``task_for(config)`` picks one by the variant's task in the registry.
The segmentation task is in its own module, ``seg_task``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from micronet.errors import MicronetError

from . import distributed
from .distributed import DistContext
from .metrics_log import COLUMNS, PARTNER_COLUMNS, classification_val_text
from .recipe import POSE_EPOCHS, POSE_LR_DROPS, POSE_LR_FACTOR, TrainConfig
from .schedule import lr_at

#: Columns of a pose run's ``metrics.csv``: OKS AP/AR on val2017 in 0-1 (COCOeval's scale), seconds.
POSE_COLUMNS = ("epoch", "train_loss", "ap", "ap50", "ap75", "ar", "lr", "images_per_s", "epoch_s", "wall_s")


@dataclass
class TaskData:
    """A task's data, checked: the training and validation sets' sources, the output names (classes or
    keypoints) that a resume must find again, and one-line warnings for the log."""

    train: Any
    val: Any  # None or empty: no validation
    names: list[str]
    train_count: int
    val_count: int
    describe: str  # "24 images in 3 classes" / "58 people (48 images)"
    warnings: list[str] = field(default_factory=list)


class TrainTask:
    """The interface; ``ClassificationTask``, ``PoseTask`` and ``seg_task.SegmentationTask`` implement it."""

    name: str
    #: Key of the row that picks best.pt (higher is better) and the name of its record (``best_<key>``).
    best_key: str
    columns: tuple[str, ...]

    def load_data(self, config: TrainConfig) -> TaskData: ...
    def resolve(self, config: TrainConfig, data: TaskData) -> TrainConfig: return config.resolved()
    def build_model(self, config: TrainConfig) -> nn.Module: ...
    def load_pretrained(self, model: nn.Module, path: str, log: Callable[[str], None]) -> None: ...

    def load_backbone(self, model: nn.Module, path: str, log: Callable[[str], None]) -> None:
        """``--backbone-weights``: only segmentation has it (``TrainConfig`` refuses it for the others)."""
        raise MicronetError(f"--backbone-weights is for segmentation variants, not {self.name}")
    def optimizer(self, params, config: TrainConfig) -> torch.optim.Optimizer: ...

    def lr(self, step: int, total_steps: int, warmup_steps: int, config: TrainConfig) -> float: ...
    def datasets(self, config: TrainConfig, data: TaskData) -> tuple[Any, Any]: ...
    def objective(self, config: TrainConfig) -> Callable: ...
    def evaluate(self, net: nn.Module, model: nn.Module, val: Any, ctx: DistContext, use_amp: bool,
                 config: TrainConfig) -> dict[str, float]: ...
    def row(self, val: dict[str, float]) -> dict[str, Any]: ...
    def val_text(self, row: dict[str, Any]) -> str: ...
    def best_record(self, model: nn.Module, data: TaskData, epoch: int, best: float | None) -> dict[str, Any]: ...
    def recipe_text(self, config: TrainConfig) -> str: ...

    def outputs_text(self, config: TrainConfig, data: TaskData) -> str:
        """What the model outputs, for the run's summary line ("10 outputs", "17 keypoint heatmaps")."""
        return f"{config.num_classes} outputs"

    def best_text(self, best: float) -> str:
        """The best figure as the final line names it."""
        return f"{self.best_key.upper()} {best:.3f}"


def task_for(config: TrainConfig) -> TrainTask:
    if config.task == "segmentation":
        from .seg_task import SegmentationTask

        return SegmentationTask()
    return PoseTask() if config.task == "pose" else ClassificationTask(config.mutual)


# ---------------------------------------------------------------------------------------------- classification


class ClassificationTask(TrainTask):
    """The released ImageNet recipe, unchanged: ImageFolder data, SGD + cosine, cross-entropy (label
    smoothing, mixup, mutual learning), top-1/top-5."""

    name = "classification"
    best_key = "top1"

    def __init__(self, mutual: bool = False) -> None:
        self.columns = COLUMNS + (PARTNER_COLUMNS if mutual else ())

    def load_data(self, config: TrainConfig) -> TaskData:
        from .data import load_splits

        splits = load_splits(config.data, config.val)
        return TaskData(splits, splits.val, splits.classes, len(splits.train), len(splits.val),
                        f"{len(splits.train)} images in {len(splits.classes)} classes", splits.warnings)

    def resolve(self, config: TrainConfig, data: TaskData) -> TrainConfig:
        from dataclasses import replace

        num_classes = config.num_classes or len(data.names)
        if num_classes < len(data.names):
            raise MicronetError(f"--num-classes {num_classes} is fewer than the {len(data.names)} class folders "
                                f"under {data.train.train_root}")
        return replace(config.resolved(), num_classes=num_classes)

    def build_model(self, config: TrainConfig) -> nn.Module:
        from micronet.model import build_model

        return build_model(config.variant, num_classes=config.num_classes, input_size=config.input_size,
                           dropout=config.dropout)

    def load_pretrained(self, model: nn.Module, path: str, log: Callable[[str], None]) -> None:
        from .checkpoint import load_pretrained

        load_pretrained(model, path, log)

    def optimizer(self, params, config: TrainConfig) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)

    def lr(self, step: int, total_steps: int, warmup_steps: int, config: TrainConfig) -> float:
        return lr_at(step, total_steps, config.lr, warmup_steps)

    def datasets(self, config: TrainConfig, data: TaskData) -> tuple[Any, Any]:
        from micronet.preprocess import Preprocessing

        from .data import ImageDataset, RandomResizedCropFlip

        preprocessing = Preprocessing(input_size=config.input_size)
        augment = RandomResizedCropFlip(config.input_size, scale=config.crop_scale, hflip=config.hflip)
        train_set = ImageDataset(data.train.train, preprocessing, augment, seed=config.seed)
        return train_set, (ImageDataset(data.val, preprocessing) if data.val else None)

    def objective(self, config: TrainConfig) -> Callable:
        return ClassificationObjective(config)

    def evaluate(self, net: nn.Module, model: nn.Module, val: Any, ctx: DistContext, use_amp: bool,
                 config: TrainConfig) -> dict[str, float]:
        return evaluate_classifier(net, val, ctx, use_amp, config.mutual)

    def row(self, val: dict[str, float]) -> dict[str, Any]:
        return {"val_loss": val.get("loss"), "top1": val.get("top1"), "top5": val.get("top5"),
                "partner_top1": val.get("partner_top1")}

    def val_text(self, row: dict[str, Any]) -> str:
        return classification_val_text(row)

    def best_text(self, best: float) -> str:
        return f"top-1 {best:.2f}%"

    def best_record(self, model: nn.Module, data: TaskData, epoch: int, best: float | None) -> dict[str, Any]:
        return {"state_dict": model.state_dict(), "variant": model.config.name, "num_classes": model.num_classes,
                "input_size": model.input_size, "classes": list(data.names), "epoch": epoch, "top1": best}

    def recipe_text(self, config: TrainConfig) -> str:
        from .recipe import REFERENCE_BATCH, REFERENCE_LR

        scaled = config.lr == REFERENCE_LR * config.batch_size / REFERENCE_BATCH
        lr_note = f" ({REFERENCE_LR} x {config.batch_size}/{REFERENCE_BATCH})" if scaled else ""
        return (f"lr {config.lr:g}{lr_note}, momentum {config.momentum}, weight decay {config.weight_decay:g}, "
                f"warm-up {config.warmup_epochs:g} epochs, label smoothing {config.label_smoothing:g}, "
                f"mixup {config.mixup:g}{', mutual learning' if config.mutual else ''}")


class ClassificationObjective:
    """The training loss for one batch: cross-entropy (label smoothing, mixup), plus the mutual KL."""

    def __init__(self, config: TrainConfig) -> None:
        self.mixup = config.mixup
        self.mutual = config.mutual
        self.smoothing = config.label_smoothing

    def mix(self, images: Tensor, targets: tuple[Tensor, ...]) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """Mixed images and the task loss on them; draws from the global torch RNG, which checkpoints
        save, so a resumed run mixes the same pairs."""
        (labels,) = targets

        def ce(logits: Tensor, y: Tensor) -> Tensor:
            return F.cross_entropy(logits.float(), y, label_smoothing=self.smoothing)

        if self.mixup <= 0:
            return images, lambda logits: ce(logits, labels)
        lam = float(torch.distributions.Beta(self.mixup, self.mixup).sample())
        order = torch.randperm(images.shape[0]).to(images.device)
        mixed = lam * images + (1.0 - lam) * images[order]
        return mixed, lambda logits: lam * ce(logits, labels) + (1.0 - lam) * ce(logits, labels[order])

    def __call__(self, outputs, task_loss: Callable[[Tensor], Tensor]) -> Tensor:
        from .mutual import mutual_loss

        return mutual_loss(*outputs, task_loss) if self.mutual else task_loss(outputs)


@torch.no_grad()
def evaluate_classifier(net: nn.Module, loader, ctx: DistContext, use_amp: bool, mutual: bool) -> dict[str, float]:
    """Validation loss (plain cross-entropy), top-1 and top-5 in %, summed over all ranks' shards.
    With fewer than 5 classes, top-5 counts every class (100%)."""
    net.eval()
    totals = torch.zeros(5, dtype=torch.float64, device=ctx.device)  # loss, top-1, top-5, images, partner top-1
    for images, targets in loader:
        images, targets = images.to(ctx.device, non_blocking=True), targets.to(ctx.device, non_blocking=True)
        with torch.autocast(device_type=ctx.device.type, dtype=torch.float16, enabled=use_amp):
            outputs = net(images)
        logits, partner_logits = outputs if mutual else (outputs, None)
        top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == targets[:, None]
        partner_hits = (partner_logits.argmax(1) == targets).sum() if mutual else torch.zeros((), device=ctx.device)
        totals += torch.stack([F.cross_entropy(logits.float(), targets, reduction="sum").double(),
                               hits[:, 0].sum().double(), hits.any(1).sum().double(),
                               torch.tensor(float(targets.numel()), dtype=torch.float64, device=ctx.device),
                               partner_hits.double()])
    loss, top1, top5, count, partner_top1 = distributed.all_reduce_sum(totals, ctx).tolist()
    result = {"loss": loss / count, "top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count}
    if mutual:
        result["partner_top1"] = 100.0 * partner_top1 / count
    return result


# ------------------------------------------------------------------------------------------------------- pose


class PoseTask(TrainTask):
    """Paper §6.1: COCO person keypoints, top-down crops with heatmap targets, Adam with two x0.1 drops,
    OKS AP on val2017 with the flip test."""

    name = "pose"
    best_key = "ap"
    columns = POSE_COLUMNS

    def load_data(self, config: TrainConfig) -> TaskData:
        from micronet.keypoints import KEYPOINT_NAMES, load_coco_keypoints

        train = load_coco_keypoints(config.data, "train2017")
        val_root = config.val or config.data
        warnings = []
        try:
            val = load_coco_keypoints(val_root, "val2017")
        except MicronetError as exc:
            if config.val:  # asked for explicitly: its problem is the user's to fix
                raise
            val = None
            warnings.append(f"no validation: {exc}")
        people = len(train.person_boxes())
        if people == 0:
            raise MicronetError(f"{train.annotation_file}: no person with a labelled keypoint to train on")
        val_people = len(val.person_boxes()) if val is not None else 0
        if val is not None and val_people == 0:
            warnings.append(f"no validation: {val.annotation_file} has no person with a labelled keypoint")
            val = None
        return TaskData(train, val, list(KEYPOINT_NAMES), people, val_people,
                        f"{people} people in {len(train.data['images'])} images", warnings)

    def build_model(self, config: TrainConfig) -> nn.Module:
        from micronet.pose_model import build_pose_model

        return build_pose_model(config.variant, input_size=config.input_size)

    def load_pretrained(self, model: nn.Module, path: str, log: Callable[[str], None]) -> None:
        from micronet.weights import load_weights

        load_weights(model, path)  # refuses a classification checkpoint in one line
        log(f"loaded weights {path}")

    def optimizer(self, params, config: TrainConfig) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)

    def lr(self, step: int, total_steps: int, warmup_steps: int, config: TrainConfig) -> float:
        return pose_lr_at(step, total_steps, config.lr, warmup_steps)

    def datasets(self, config: TrainConfig, data: TaskData) -> tuple[Any, Any]:
        from micronet.keypoints.training_data import Augmentation, KeypointCrops

        augmentation = Augmentation() if config.hflip else Augmentation(flip=0.0)
        return KeypointCrops(data.train, config.input_size, augmentation, seed=config.seed), data.val

    def objective(self, config: TrainConfig) -> Callable:
        return PoseObjective()

    def evaluate(self, net: nn.Module, model: nn.Module, val: Any, ctx: DistContext, use_amp: bool,
                 config: TrainConfig) -> dict[str, float]:
        """OKS AP on the ground-truth boxes of val2017 with the flip test, computed by rank 0 alone
        (COCOeval needs every prediction in one place; the split is small next to training) and sent to
        the others, so every rank logs and returns the same figures."""
        figures = torch.zeros(4, dtype=torch.float64, device=ctx.device)
        if ctx.is_main:
            figures += torch.tensor(_pose_ap(model, val, ctx.device, use_amp, config.input_size),
                                    dtype=torch.float64, device=ctx.device)
        ap, ap50, ap75, ar = distributed.all_reduce_sum(figures, ctx).tolist()
        return {"ap": ap, "ap50": ap50, "ap75": ap75, "ar": ar}

    def row(self, val: dict[str, float]) -> dict[str, Any]:
        return {key: val.get(key) for key in ("ap", "ap50", "ap75", "ar")}

    def val_text(self, row: dict[str, Any]) -> str:
        if row.get("ap") is None:
            return "no validation data"
        return f"val AP {row['ap']:.3f}  AP50 {row['ap50']:.3f}  AP75 {row['ap75']:.3f}  AR {row['ar']:.3f}"

    def outputs_text(self, config: TrainConfig, data: TaskData) -> str:
        return f"{len(data.names)} keypoint heatmaps"

    def best_record(self, model: nn.Module, data: TaskData, epoch: int, best: float | None) -> dict[str, Any]:
        return {"state_dict": model.state_dict(), "variant": model.config.name, "task": "pose",
                "keypoints": list(data.names), "input_size": list(model.input_size), "epoch": epoch, "ap": best}

    def recipe_text(self, config: TrainConfig) -> str:
        drops = ", ".join(str(e) for e in pose_lr_drops(config.epochs))
        return (f"Adam lr {config.lr:g} x{POSE_LR_FACTOR:g} at epochs {drops}, weight decay "
                f"{config.weight_decay:g}, warm-up {config.warmup_epochs:g} epochs, heatmap MSE")


class PoseObjective:
    """SimpleBaseline's loss: the mean squared error of the labelled keypoints' heatmaps."""

    def mix(self, images: Tensor, targets: tuple[Tensor, ...]) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        from micronet.keypoints.training_data import heatmap_loss

        heatmaps, weights = targets
        return images, lambda predicted: heatmap_loss(predicted.float(), heatmaps, weights)

    def __call__(self, outputs, task_loss: Callable[[Tensor], Tensor]) -> Tensor:
        return task_loss(outputs)


def pose_lr_drops(epochs: int) -> tuple[int, ...]:
    """The epochs after which the lr drops: 210 and 240 of the paper's 250, at the same fractions of any
    other length (at least epoch 1, so a very short run still has each drop's epoch named)."""
    return tuple(max(1, round(epochs * drop / POSE_EPOCHS)) for drop in POSE_LR_DROPS)


def pose_lr_at(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0) -> float:
    """Step schedule per optimiser step: linear warm-up (if any), then ``base_lr`` x0.1 after each drop."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    epochs_done = step / total_steps * POSE_EPOCHS  # position on the paper's 250-epoch axis
    drops = sum(epochs_done >= drop for drop in POSE_LR_DROPS)
    return base_lr * POSE_LR_FACTOR ** drops


@torch.no_grad()
def _pose_ap(model: nn.Module, val: Any, device: torch.device, use_amp: bool,
             input_size: tuple[int, int]) -> list[float]:
    """[AP, AP50, AP75, AR] of ``model`` on ``val`` (a CocoKeypoints split), each 0-1."""
    from micronet.keypoints import oks_average_precision
    from micronet.keypoints.predict import predict_keypoints

    was_training = model.training
    model.eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            return model(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    try:
        results = predict_keypoints(run, val.person_boxes(), tuple(input_size), flip=True)
    finally:
        model.train(was_training)
    stats = oks_average_precision(val.annotation_file, results)
    return [float(stats[name] or 0.0) for name in ("AP", "AP50", "AP75", "AR")]
