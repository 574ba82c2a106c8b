"""The training loop: one function, ``train(config)``, the same under one process or ``torchrun``.

Per epoch: train with the per-iteration cosine schedule, validate with the evaluation transform,
sum the statistics over all processes, then (rank 0 only) write ``best.pt``/``partner.pt``, the
resumable ``last.pt`` and the metric files, in that order, so a kill at any moment leaves a
consistent run folder.
"""

from __future__ import annotations

import os
import random
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from micronet.atomic import remove_leftovers
from micronet.errors import MicronetError
from micronet.model import MicroNet, build_model
from micronet.preprocess import Preprocessing

from . import distributed
from .checkpoint import (BEST_NAME, FORMAT_VERSION, LAST_NAME, PARTNER_NAME, check_resumable, epochs_change,
                         library_versions, load_pretrained, module_state, read_training_state, rng_state,
                         save_atomic, save_best, saved_config, set_rng_state)
from .data import DataSplits, ImageDataset, RandomResizedCropFlip, eval_loader, load_splits, train_loader
from .distributed import DistContext
from .metrics_log import CSV_NAME, JSONL_NAME, Reporter
from .mutual import MutualPair, full_rank_partner, mutual_loss
from .recipe import REFERENCE_BATCH, REFERENCE_LR, TrainConfig, available_cpus, default_workers
from .schedule import lr_at

#: Every file a run replaces atomically (and so may leave a temporary copy of when killed).
RUN_FILES = [LAST_NAME, BEST_NAME, PARTNER_NAME, CSV_NAME, JSONL_NAME]


@dataclass
class RunState:
    """What changes as training goes: everything ``last.pt`` must hold besides the module weights."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimiser steps (the schedule's position)
    best_top1: float | None = None
    wall_s: float = 0.0  # training time of all previous sessions of this run, in seconds
    history: list[dict] | None = None
    #: Every resume that changed the planned epochs: {"at_epoch", "from_epochs", "to_epochs"}.
    epoch_changes: list[dict] = field(default_factory=list)


def train(config: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or fine-tune, or resume) and return the last epoch's metrics plus ``best_top1`` and the
    output paths. Every process returns the same figures (they are summed over processes)."""
    ctx = distributed.setup(config.device)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    finished = False
    try:
        with warnings.catch_warnings():
            # PyTorch's several-line DataLoader warning about more workers than cores (once per loader)
            # is replaced by one line in the run's log (_workers_warning)
            warnings.filterwarnings("ignore", message=r"This DataLoader will create \d+ worker processes",
                                    category=UserWarning)
            result = _run(config, ctx, progress)
        finished = True
        return result
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        distributed.teardown(ctx, together=finished)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _set_determinism(config: TrainConfig, ctx: DistContext) -> None:
    if ctx.device.type == "cuda":
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be reproducible
        torch.backends.cudnn.deterministic = config.deterministic
        torch.backends.cudnn.benchmark = not config.deterministic
    if config.deterministic:
        torch.use_deterministic_algorithms(True)


def _output_folder(config: TrainConfig) -> Path:
    if config.out:
        return Path(config.out).expanduser()
    if config.resume:
        return Path(config.resume).expanduser().parent
    return Path("runs") / f"train-{config.variant}"


def _plan(config: TrainConfig, ctx: DistContext) -> tuple[TrainConfig, DataSplits, dict | None, Path]:
    """Every check that needs no network: data, class count, batch split, resume compatibility, output
    folder. Returns the fully resolved config, the data, the resumed state (or None) and the folder."""
    saved = read_training_state(config.resume) if config.resume else None
    splits = load_splits(config.data, config.val)
    if saved is not None and config.warmup_epochs is None:
        # The recipe's warm-up depends on the epoch count; a resume that changes the epochs keeps the
        # warm-up the run was started with instead of resolving a different one.
        config = replace(config, warmup_epochs=saved_config(saved).warmup_epochs)
    num_classes = config.num_classes or len(splits.classes)
    if num_classes < len(splits.classes):
        raise MicronetError(f"--num-classes {num_classes} is fewer than the {len(splits.classes)} class folders "
                            f"under {splits.train_root}")
    config = replace(config.resolved(), num_classes=num_classes)
    if config.batch_size % ctx.world_size:
        raise MicronetError(f"batch size {config.batch_size} does not split evenly over {ctx.world_size} processes")
    if saved is not None:
        check_resumable(saved, config, splits.classes, config.resume)
    out = _output_folder(config)
    if saved is None and (out / LAST_NAME).exists():
        raise MicronetError(f"{out} already holds a training run ({LAST_NAME}); continue it with --resume "
                            f"{out / LAST_NAME} or choose another --out")
    return config, splits, saved, out


def _run(config: TrainConfig, ctx: DistContext, progress: bool) -> dict[str, Any]:
    config, splits, saved, out = _plan(config, ctx)
    num_classes = config.num_classes
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out, RUN_FILES)  # debris of a run killed mid-write; the files themselves are whole
    use_amp = config.amp and ctx.device.type == "cuda"
    reporter = Reporter(out, enabled=ctx.is_main, progress=progress, mutual=config.mutual)
    _set_determinism(config, ctx)
    _seed_everything(config.seed + ctx.rank)  # DDP copies rank 0's initial weights to every rank

    model = build_model(config.variant, num_classes=num_classes, input_size=config.input_size, dropout=config.dropout)
    partner = (full_rank_partner(config.variant, num_classes, config.input_size, config.dropout)
               if config.mutual else None)
    if config.weights and saved is None:
        load_pretrained(model, config.weights, reporter.log)
    elif config.weights:
        reporter.log(f"note: --weights {config.weights} ignored: the weights come from {config.resume}")
    net: nn.Module = MutualPair(model, partner) if partner is not None else model
    net.to(ctx.device)
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    run = RunState(history=[])
    replanned = False
    if saved is not None:
        run = _restore(saved, model, partner, optimizer, scaler, ctx, reporter, config)
        replanned = _record_epochs_change(saved, config, run, reporter)
    ddp_net = distributed.wrap(net, ctx)

    per_rank_batch = config.batch_size // ctx.world_size
    preprocessing = Preprocessing(input_size=config.input_size)
    augment = RandomResizedCropFlip(config.input_size, scale=config.crop_scale, hflip=config.hflip)
    train_set = ImageDataset(splits.train, preprocessing, augment, seed=config.seed)
    loader, sampler = train_loader(train_set, per_rank_batch, config.workers, config.seed, ctx)
    val_loader = (eval_loader(ImageDataset(splits.val, preprocessing), per_rank_batch, config.workers, ctx)
                  if splits.val else None)
    steps_per_epoch = len(loader)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))

    for line in [*splits.warnings, *_workers_warning(config.workers)]:
        reporter.log(f"warning: {line}")
    reporter.log(_summary(config, splits, ctx, out, use_amp, steps_per_epoch, run))
    objective = _Objective(config)
    row: dict[str, Any] = run.history[-1] if run.history else {}
    if replanned and run.epoch >= config.epochs:
        # ended at the epochs already trained: no epoch will save, so last.pt takes the new plan now
        _save(out, run, config, splits.classes, model, partner, optimizer, scaler, ctx, improved=False)
    for epoch in range(run.epoch, config.epochs):
        started = time.perf_counter()
        sampler.set_epoch(epoch)
        train_set.epoch = epoch
        train_loss, seen, lr, run.step = _train_epoch(
            ddp_net, loader, optimizer, scaler, objective, run.step,
            lambda step: lr_at(step, total_steps, config.lr, warmup_steps), ctx, use_amp, reporter,
            f"epoch {epoch + 1}/{config.epochs}")
        train_s = time.perf_counter() - started
        distributed.broadcast_buffers(net, ctx)
        val = _evaluate(net, val_loader, ctx, use_amp, config.mutual) if val_loader else {}
        epoch_s, train_s = _mean_over_ranks([time.perf_counter() - started, train_s], ctx)
        run.wall_s += epoch_s
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val.get("loss"), "top1": val.get("top1"),
               "top5": val.get("top5"), "partner_top1": val.get("partner_top1"), "lr": lr,
               "images_per_s": seen / train_s, "epoch_s": epoch_s, "wall_s": run.wall_s}
        run.history.append(row)
        run.epoch = epoch + 1
        improved = val_loader is None or run.best_top1 is None or row["top1"] > run.best_top1
        if improved:
            run.best_top1 = row["top1"]
        _save(out, run, config, splits.classes, model, partner, optimizer, scaler, ctx, improved)
        reporter.write_history(run.history)
        reporter.epoch_line(row, config.epochs)

    best = f"{run.best_top1:.2f}%" if run.best_top1 is not None else "n/a (no validation data)"
    reporter.log(f"done: best top-1 {best}; weights {out / BEST_NAME}, resumable state {out / LAST_NAME}")
    return {**row, "best_top1": run.best_top1, "epochs": config.epochs, "out": str(out),
            "best": str(out / BEST_NAME), "last": str(out / LAST_NAME),
            "partner": str(out / PARTNER_NAME) if config.mutual else None, "epoch_changes": run.epoch_changes}


def _workers_warning(workers: int) -> list[str]:
    """Only an explicit --workers can exceed the cores: the default is min(4, cores)."""
    cpus = available_cpus()
    if workers <= cpus:
        return []
    return [f"--workers {workers} is more than the {cpus} CPU core(s) this process may use: data loading "
            f"may slow down or stall; use --workers {default_workers()} or fewer"]


def _record_epochs_change(saved: dict, config: TrainConfig, run: RunState, reporter: Reporter) -> bool:
    """A resume with another --epochs: say so, and keep it in the run's record (``last.pt``). True if so."""
    change = epochs_change(saved, config)
    if change is None:
        return False
    run.epoch_changes.append(change)
    verb = "extended" if change["to_epochs"] > change["from_epochs"] else "shortened"
    reporter.log(f"run {verb} from {change['from_epochs']} to {change['to_epochs']} epochs at epoch "
                 f"{change['at_epoch']}: the learning-rate schedule is recomputed for {change['to_epochs']} epochs")
    return True


def _summary(config: TrainConfig, splits: DataSplits, ctx: DistContext, out: Path, use_amp: bool, steps: int,
             run: RunState) -> str:
    scaled = config.lr == REFERENCE_LR * config.batch_size / REFERENCE_BATCH
    lr_note = f" ({REFERENCE_LR} x {config.batch_size}/{REFERENCE_BATCH})" if scaled else ""
    val = f"{len(splits.val)} val images" if splits.val else "no validation data"
    start = f", resuming after epoch {run.epoch}" if run.epoch else ""
    return (f"training {config.variant} on {len(splits.train)} images in {len(splits.classes)} classes "
            f"({config.num_classes} outputs), {val}; input {config.input_size} px; batch {config.batch_size} "
            f"({config.batch_size // ctx.world_size}/process x {ctx.world_size}), {steps} steps/epoch; "
            f"lr {config.lr:g}{lr_note}, momentum {config.momentum}, weight decay {config.weight_decay:g}, "
            f"warm-up {config.warmup_epochs:g} epochs, label smoothing {config.label_smoothing:g}, "
            f"mixup {config.mixup:g}{', mutual learning' if config.mutual else ''}; {config.epochs} epochs on "
            f"{ctx.device}{' with AMP' if use_amp else ''}{start}; output {out}")


class _Objective:
    """The training loss for one batch: cross-entropy (label smoothing, mixup), plus the mutual KL."""

    def __init__(self, config: TrainConfig) -> None:
        self.mixup = config.mixup
        self.mutual = config.mutual
        self.smoothing = config.label_smoothing

    def mix(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """Mixed images and the task loss on them; draws from the global torch RNG, which checkpoints
        save, so a resumed run mixes the same pairs."""
        def ce(logits: Tensor, y: Tensor) -> Tensor:
            return F.cross_entropy(logits.float(), y, label_smoothing=self.smoothing)

        if self.mixup <= 0:
            return images, lambda logits: ce(logits, targets)
        lam = float(torch.distributions.Beta(self.mixup, self.mixup).sample())
        order = torch.randperm(images.shape[0]).to(images.device)
        mixed = lam * images + (1.0 - lam) * images[order]
        return mixed, lambda logits: lam * ce(logits, targets) + (1.0 - lam) * ce(logits, targets[order])

    def __call__(self, outputs, task_loss: Callable[[Tensor], Tensor]) -> Tensor:
        return mutual_loss(*outputs, task_loss) if self.mutual else task_loss(outputs)


def _train_epoch(net: nn.Module, loader, optimizer, scaler, objective: _Objective, step: int,
                 schedule: Callable[[int], float], ctx: DistContext, use_amp: bool, reporter: Reporter,
                 description: str) -> tuple[float, int, float, int]:
    """One pass over the training data. Returns (mean loss, images seen by all ranks, last lr, step)."""
    net.train()
    totals = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # loss x images, images
    lr = schedule(step)
    with reporter.progress(description, len(loader)) as advance:
        for images, targets in loader:
            lr = schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = images.to(ctx.device, non_blocking=True)
            targets = targets.to(ctx.device, non_blocking=True)
            images, task_loss = objective.mix(images, targets)
            with torch.autocast(device_type=ctx.device.type, dtype=torch.float16, enabled=use_amp):
                outputs = net(images)
            loss = objective(outputs, task_loss)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            totals += torch.stack([loss.detach().double() * images.shape[0],
                                   torch.tensor(float(images.shape[0]), dtype=torch.float64, device=ctx.device)])
            step += 1
            advance(status=f"lr {lr:.4g}")
    loss_sum, seen = distributed.all_reduce_sum(totals, ctx).tolist()
    return loss_sum / seen, int(seen), lr, step


@torch.no_grad()
def _evaluate(net: nn.Module, loader, ctx: DistContext, use_amp: bool, mutual: bool) -> dict[str, float]:
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


def _mean_over_ranks(values: list[float], ctx: DistContext) -> list[float]:
    """Timings differ a little per process; their mean makes every rank report the same row."""
    summed = distributed.all_reduce_sum(torch.tensor(values, dtype=torch.float64), ctx)
    return (summed / ctx.world_size).tolist()


def _save(out: Path, run: RunState, config: TrainConfig, classes: list[str], model: MicroNet,
          partner: MicroNet | None, optimizer, scaler, ctx: DistContext, improved: bool) -> None:
    """Collective (every rank's RNG state is gathered), then rank 0 writes. best.pt and partner.pt go
    first: if the run dies before last.pt is replaced, the resumed epoch rewrites them identically."""
    rng = distributed.gather_objects(rng_state(), ctx)
    if not ctx.is_main:
        return
    if improved:
        save_best(model, out / BEST_NAME, classes, run.epoch, run.best_top1)
    if partner is not None:
        save_atomic({"state_dict": module_state(partner), "variant": config.variant, "full_rank_partner": True},
                    out / PARTNER_NAME)
    save_atomic({
        "format": FORMAT_VERSION, "config": config.to_dict(), "classes": list(classes),
        "model": module_state(model), "partner": module_state(partner) if partner is not None else None,
        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
        "epoch": run.epoch, "sampler_epoch": run.epoch, "step": run.step, "best_top1": run.best_top1,
        "wall_s": run.wall_s, "history": run.history, "epoch_changes": run.epoch_changes, "rng": rng,
        "world_size": ctx.world_size,
        "versions": library_versions(),
    }, out / LAST_NAME)


def _restore(saved: dict, model: MicroNet, partner: MicroNet | None, optimizer, scaler, ctx: DistContext,
             reporter: Reporter, config: TrainConfig) -> RunState:
    model.load_state_dict(saved["model"])
    if partner is not None:
        partner.load_state_dict(saved["partner"])
    optimizer.load_state_dict(saved["optimizer"])
    scaler.load_state_dict(saved["scaler"])
    if saved["world_size"] == ctx.world_size:
        set_rng_state(saved["rng"][ctx.rank])
    else:  # per-rank streams cannot be mapped onto a different number of ranks
        reporter.log(f"warning: checkpoint was written by {saved['world_size']} processes, this run has "
                     f"{ctx.world_size}: random streams reseeded, the run will not match an uninterrupted one")
        _seed_everything(config.seed + ctx.rank + 7919 * saved["epoch"])
    return RunState(epoch=saved["epoch"], step=saved["step"], best_top1=saved["best_top1"],
                    wall_s=saved["wall_s"], history=list(saved["history"]),
                    epoch_changes=list(saved.get("epoch_changes", [])))

