"""Training the segmentation MicroNets (paper §6.2) through the shared loop: the ``TrainTask`` for them.

Data: a Cityscapes folder (``leftImg8bit/{train,val}``, ``gtFine/{train,val}``; ``segmentation.cityscapes``).
Model: ``seg_model.build_seg_model`` (19 Cityscapes train IDs). Optimiser: SGD with momentum 0.9 (the paper
names none; see ``recipe``), lr 0.2 cosine-decayed to 1e-4, weight decay 4e-5. Loss: per-pixel
cross-entropy, ignore label 255. Validation: mIoU with ``segmentation.evaluate.evaluate_segmentation`` (the
same code bench scores with), which picks ``best.pt``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from micronet.errors import MicronetError

from . import distributed
from .distributed import DistContext
from .recipe import SEG_MIN_LR, TrainConfig
from .schedule import lr_at
from .tasks import TaskData, TrainTask

#: Columns of a segmentation run's ``metrics.csv``: mIoU and pixel accuracy on val in 0-1, seconds.
SEG_COLUMNS = ("epoch", "train_loss", "miou", "pixel_accuracy", "lr", "images_per_s", "epoch_s", "wall_s")


def seg_lr_at(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0) -> float:
    """The classification cosine (``schedule.lr_at``) lifted to end at 1e-4 instead of 0, as §6.2 states
    (a base lr below 1e-4 is its own floor)."""
    floor = min(SEG_MIN_LR, base_lr)
    return floor + lr_at(step, total_steps, base_lr - floor, warmup_steps)


def check_labels(samples) -> None:
    """Read every annotation once before anything is written: a label PNG with values that are no
    Cityscapes ID is refused in one line here, not from inside a data-loading worker mid-epoch."""
    for sample in samples:
        sample.load_label()


class SegmentationTask(TrainTask):
    """Paper §6.2: Cityscapes train/val, DeepLab augmentation, SGD + cosine, cross-entropy, val mIoU."""

    name = "segmentation"
    best_key = "miou"
    columns = SEG_COLUMNS

    def load_data(self, config: TrainConfig) -> TaskData:
        from micronet.segmentation import CLASS_NAMES, scan_cityscapes

        train = scan_cityscapes(config.data, "train")
        check_labels(train)
        val_root = config.val or config.data
        warnings = []
        try:
            val = scan_cityscapes(val_root, "val")
        except MicronetError as exc:
            if config.val:  # asked for explicitly: its problem is the user's to fix
                raise
            val = None
            warnings.append(f"no validation: {exc}")
        if val is not None:
            check_labels(val)
        return TaskData(train, val, list(CLASS_NAMES), len(train), len(val or []),
                        f"{len(train)} images", warnings)

    def resolve(self, config: TrainConfig, data: TaskData) -> TrainConfig:
        """The recipe's values; and ``--weights``/``--backbone-weights`` tried on a model now, so a wrong
        checkpoint (a classifier's as --weights, a pose model's, another variant's) is refused before the
        run folder is created."""
        resolved = config.resolved()
        if config.weights and not config.resume:
            from micronet.weights import load_weights

            load_weights(self.build_model(resolved), config.weights)
        if config.backbone_weights and not config.resume:
            from micronet.weights import load_backbone

            load_backbone(self.build_model(resolved), config.backbone_weights)
        return resolved

    def build_model(self, config: TrainConfig) -> nn.Module:
        from micronet.seg_model import build_seg_model

        return build_seg_model(config.variant, input_size=config.input_size)

    def load_pretrained(self, model: nn.Module, path: str, log: Callable[[str], None]) -> None:
        from micronet.weights import load_weights

        load_weights(model, path)
        log(f"loaded weights {path}")

    def load_backbone(self, model: nn.Module, path: str, log: Callable[[str], None]) -> None:
        from micronet.weights import load_backbone

        record = load_backbone(model, path)
        log(f"loaded the {model.seg_config.backbone} backbone (stem and rows, {record['tensors']} tensors) from "
            f"{path}; MR-ASPP starts from its initialisation")

    def optimizer(self, params, config: TrainConfig) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)

    def lr(self, step: int, total_steps: int, warmup_steps: int, config: TrainConfig) -> float:
        return seg_lr_at(step, total_steps, config.lr, warmup_steps)

    def datasets(self, config: TrainConfig, data: TaskData) -> tuple[Any, Any]:
        from micronet.segmentation.training_data import DeepLabAugmentation, SegmentationCrops

        augmentation = DeepLabAugmentation() if config.hflip else DeepLabAugmentation(flip=0.0)
        return SegmentationCrops(data.train, config.input_size, augmentation, seed=config.seed), data.val

    def objective(self, config: TrainConfig) -> Callable:
        return SegmentationObjective()

    def evaluate(self, net: nn.Module, model: nn.Module, val: Any, ctx: DistContext, use_amp: bool,
                 config: TrainConfig) -> dict[str, float]:
        """mIoU and pixel accuracy on the val split at the training size, computed by rank 0 alone with
        the benchmark's evaluation and sent to the others, so every rank logs and returns the same figures."""
        figures = torch.zeros(2, dtype=torch.float64, device=ctx.device)
        if ctx.is_main:
            report = _seg_report(model, val, ctx.device, use_amp, config.input_size)
            figures += torch.tensor([report["miou"], report["pixel_accuracy"]], dtype=torch.float64,
                                    device=ctx.device)
        miou, accuracy = distributed.all_reduce_sum(figures, ctx).tolist()
        return {"miou": miou, "pixel_accuracy": accuracy}

    def row(self, val: dict[str, float]) -> dict[str, Any]:
        return {key: val.get(key) for key in ("miou", "pixel_accuracy")}

    def val_text(self, row: dict[str, Any]) -> str:
        if row.get("miou") is None:
            return "no validation data"
        return f"val mIoU {100 * row['miou']:.2f}  pixel accuracy {100 * row['pixel_accuracy']:.2f}%"

    def best_text(self, best: float) -> str:
        return f"mIoU {100 * best:.2f}"

    def outputs_text(self, config: TrainConfig, data: TaskData) -> str:
        return f"{len(data.names)} Cityscapes classes"

    def best_record(self, model: nn.Module, data: TaskData, epoch: int, best: float | None) -> dict[str, Any]:
        return {"state_dict": model.state_dict(), "variant": model.seg_config.name, "task": "segmentation",
                "classes": list(data.names), "input_size": list(model.input_size), "epoch": epoch, "miou": best}

    def recipe_text(self, config: TrainConfig) -> str:
        floor = min(SEG_MIN_LR, config.lr)
        return (f"SGD lr {config.lr:g} cosine to {floor:g}, momentum {config.momentum}, weight decay "
                f"{config.weight_decay:g}, warm-up {config.warmup_epochs:g} epochs, DeepLab augmentation "
                f"(scale 0.5-2.0, crop, {'flip' if config.hflip else 'no flip'}), cross-entropy (ignore 255)")


class SegmentationObjective:
    """Per-pixel cross-entropy over the labelled pixels (``training_data.segmentation_loss``)."""

    def mix(self, images: Tensor, targets: tuple[Tensor, ...]) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        from micronet.segmentation.training_data import segmentation_loss

        (labels,) = targets
        return images, lambda logits: segmentation_loss(logits, labels)

    def __call__(self, outputs, task_loss: Callable[[Tensor], Tensor]) -> Tensor:
        return task_loss(outputs)


@torch.no_grad()
def _seg_report(model: nn.Module, val: Any, device: torch.device, use_amp: bool,
                input_size: tuple[int, int]) -> dict:
    """``evaluate_segmentation``'s report of ``model`` on the ``val`` samples."""
    from micronet.segmentation.evaluate import evaluate_segmentation

    was_training = model.training
    model.eval()

    def run(batch):
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            return model(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    try:
        return evaluate_segmentation(run, val, tuple(input_size))
    finally:
        model.train(was_training)
