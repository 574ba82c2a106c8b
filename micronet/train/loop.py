"""The training loop: one function, ``train(config)``, the same under one process or ``torchrun``, and the
same for every task (``tasks.py``: classification, pose; ``seg_task.py``: segmentation), which supplies
data, model, loss and metric.

Per epoch: train with the task's per-iteration lr schedule, validate with the task's evaluation,
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
from torch import nn

from micronet.atomic import remove_leftovers
from micronet.cpus import available_cpus
from micronet.errors import MicronetError
from micronet.model import MicroNet

from . import distributed
from .checkpoint import (BEST_NAME, FORMAT_VERSION, LAST_NAME, PARTNER_NAME, check_resumable, epochs_change,
                         library_versions, module_state, read_training_state, rng_state, save_atomic,
                         saved_config, set_rng_state)
from .data import eval_loader, train_loader
from .distributed import DistContext
from .metrics_log import CSV_NAME, JSONL_NAME, Reporter
from .mutual import MutualPair, full_rank_partner
from .recipe import TrainConfig, default_workers
from .tasks import TaskData, TrainTask, task_for

#: Every file a run replaces atomically (and so may leave a temporary copy of when killed).
RUN_FILES = [LAST_NAME, BEST_NAME, PARTNER_NAME, CSV_NAME, JSONL_NAME]


@dataclass
class RunState:
    """What changes as training goes: everything ``last.pt`` must hold besides the module weights."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimiser steps (the schedule's position)
    best: float | None = None  # the task's best-model figure (top-1 %, or OKS AP) so far
    wall_s: float = 0.0  # training time of all previous sessions of this run, in seconds
    history: list[dict] | None = None
    #: Every resume that changed the planned epochs: {"at_epoch", "from_epochs", "to_epochs"}.
    epoch_changes: list[dict] = field(default_factory=list)


def train(config: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or fine-tune, or resume) and return the last epoch's metrics plus ``best_top1`` (pose:
    ``best_ap``) and the output paths. Every process returns the same figures (they are summed over processes)."""
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


def _plan(config: TrainConfig, ctx: DistContext, task: TrainTask) -> tuple[TrainConfig, TaskData, dict | None, Path]:
    """Every check that needs no network: data, class count, batch split, resume compatibility, output
    folder. Returns the fully resolved config, the data, the resumed state (or None) and the folder."""
    saved = read_training_state(config.resume) if config.resume else None
    data = task.load_data(config)
    if saved is not None and config.warmup_epochs is None:
        # The recipe's warm-up depends on the epoch count; a resume that changes the epochs keeps the
        # warm-up the run was started with instead of resolving a different one.
        config = replace(config, warmup_epochs=saved_config(saved).warmup_epochs)
    config = task.resolve(config, data)
    if config.batch_size % ctx.world_size:
        raise MicronetError(f"batch size {config.batch_size} does not split evenly over {ctx.world_size} processes")
    if saved is not None:
        check_resumable(saved, config, data.names, config.resume)
    out = _output_folder(config)
    if saved is None and (out / LAST_NAME).exists():
        raise MicronetError(f"{out} already holds a training run ({LAST_NAME}); continue it with --resume "
                            f"{out / LAST_NAME} or choose another --out")
    return config, data, saved, out


def _run(config: TrainConfig, ctx: DistContext, progress: bool) -> dict[str, Any]:
    task = task_for(config)
    config, data, saved, out = _plan(config, ctx, task)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out, RUN_FILES)  # debris of a run killed mid-write; the files themselves are whole
    use_amp = config.amp and ctx.device.type == "cuda"
    reporter = Reporter(out, enabled=ctx.is_main, progress=progress, columns=task.columns, val_text=task.val_text)
    _set_determinism(config, ctx)
    _seed_everything(config.seed + ctx.rank)  # DDP copies rank 0's initial weights to every rank

    model = task.build_model(config)
    partner = (full_rank_partner(config.variant, config.num_classes, config.input_size, config.dropout)
               if config.mutual else None)
    if config.weights and saved is None:
        task.load_pretrained(model, config.weights, reporter.log)
    elif config.weights:
        reporter.log(f"note: --weights {config.weights} ignored: the weights come from {config.resume}")
    if config.backbone_weights and saved is None:
        task.load_backbone(model, config.backbone_weights, reporter.log)
    elif config.backbone_weights:
        reporter.log(f"note: --backbone-weights {config.backbone_weights} ignored: the weights come from "
                     f"{config.resume}")
    net: nn.Module = MutualPair(model, partner) if partner is not None else model
    net.to(ctx.device)
    optimizer = task.optimizer(net.parameters(), config)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    run = RunState(history=[])
    replanned = False
    if saved is not None:
        run = _restore(saved, model, partner, optimizer, scaler, ctx, reporter, config, task.best_key)
        replanned = _record_epochs_change(saved, config, run, reporter)
    ddp_net = distributed.wrap(net, ctx)

    per_rank_batch = config.batch_size // ctx.world_size
    train_set, val_set = task.datasets(config, data)
    loader, sampler = train_loader(train_set, per_rank_batch, config.workers, config.seed, ctx)
    # classification validates from a sharded loader; pose and segmentation hand their split to rank 0 whole
    val_loader = (eval_loader(val_set, per_rank_batch, config.workers, ctx)
                  if val_set and task.name == "classification" else val_set)
    steps_per_epoch = len(loader)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))

    for line in [*data.warnings, *_workers_warning(config.workers)]:
        reporter.log(f"warning: {line}")
    reporter.log(_summary(config, task, data, ctx, out, use_amp, steps_per_epoch, run))
    objective = task.objective(config)
    row: dict[str, Any] = run.history[-1] if run.history else {}
    if replanned and run.epoch >= config.epochs:
        # ended at the epochs already trained: no epoch will save, so last.pt takes the new plan now
        _save(out, run, config, task, data, model, partner, optimizer, scaler, ctx, improved=False)
    for epoch in range(run.epoch, config.epochs):
        started = time.perf_counter()
        sampler.set_epoch(epoch)
        train_set.epoch = epoch
        train_loss, seen, lr, run.step = _train_epoch(
            ddp_net, loader, optimizer, scaler, objective, run.step,
            lambda step: task.lr(step, total_steps, warmup_steps, config), ctx, use_amp, reporter,
            f"epoch {epoch + 1}/{config.epochs}")
        train_s = time.perf_counter() - started
        distributed.broadcast_buffers(net, ctx)
        val = _evaluate(net, val_loader, ctx, use_amp, task, model, config) if val_loader else {}
        epoch_s, train_s = _mean_over_ranks([time.perf_counter() - started, train_s], ctx)
        run.wall_s += epoch_s
        row = {"epoch": epoch + 1, "train_loss": train_loss, **task.row(val), "lr": lr,
               "images_per_s": seen / train_s, "epoch_s": epoch_s, "wall_s": run.wall_s}
        run.history.append(row)
        run.epoch = epoch + 1
        figure = row[task.best_key]
        improved = val_loader is None or run.best is None or figure > run.best
        if improved:
            run.best = figure
        _save(out, run, config, task, data, model, partner, optimizer, scaler, ctx, improved)
        reporter.write_history(run.history)
        reporter.epoch_line(row, config.epochs)

    best = "n/a (no validation data)" if run.best is None else task.best_text(run.best)
    reporter.log(f"done: best {best}; weights {out / BEST_NAME}, resumable state {out / LAST_NAME}")
    return {**row, f"best_{task.best_key}": run.best, "epochs": config.epochs, "out": str(out),
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


def _summary(config: TrainConfig, task: TrainTask, data: TaskData, ctx: DistContext, out: Path, use_amp: bool,
             steps: int, run: RunState) -> str:
    val = f"{data.val_count} val {'people' if task.name == 'pose' else 'images'}" if data.val else "no validation data"
    start = f", resuming after epoch {run.epoch}" if run.epoch else ""
    outputs = f" ({task.outputs_text(config, data)})"
    size = config.input_size if isinstance(config.input_size, int) else "x".join(map(str, config.input_size))
    return (f"training {config.variant} on {data.describe}{outputs}, {val}; input {size} px; batch "
            f"{config.batch_size} ({config.batch_size // ctx.world_size}/process x {ctx.world_size}), {steps} "
            f"steps/epoch; {task.recipe_text(config)}; {config.epochs} epochs on "
            f"{ctx.device}{' with AMP' if use_amp else ''}{start}; output {out}")


def _train_epoch(net: nn.Module, loader, optimizer, scaler, objective, step: int,
                 schedule: Callable[[int], float], ctx: DistContext, use_amp: bool, reporter: Reporter,
                 description: str) -> tuple[float, int, float, int]:
    """One pass over the training data. Returns (mean loss, images seen by all ranks, last lr, step)."""
    net.train()
    totals = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # loss x images, images
    lr = schedule(step)
    with reporter.progress(description, len(loader)) as advance:
        for images, *targets in loader:  # classification: labels; pose: heatmaps and keypoint weights
            lr = schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = images.to(ctx.device, non_blocking=True)
            targets = tuple(t.to(ctx.device, non_blocking=True) for t in targets)
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


def _evaluate(net: nn.Module, val, ctx: DistContext, use_amp: bool, task: TrainTask, model: nn.Module,
              config: TrainConfig) -> dict[str, float]:
    """The task's validation figures, the same on every rank (one seam, which tests also wrap)."""
    return task.evaluate(net, model, val, ctx, use_amp, config)


def _mean_over_ranks(values: list[float], ctx: DistContext) -> list[float]:
    """Timings differ a little per process; their mean makes every rank report the same row."""
    summed = distributed.all_reduce_sum(torch.tensor(values, dtype=torch.float64), ctx)
    return (summed / ctx.world_size).tolist()


def _save(out: Path, run: RunState, config: TrainConfig, task: TrainTask, data: TaskData, model: nn.Module,
          partner: MicroNet | None, optimizer, scaler, ctx: DistContext, improved: bool) -> None:
    """Collective (every rank's RNG state is gathered), then rank 0 writes. best.pt and partner.pt go
    first: if the run dies before last.pt is replaced, the resumed epoch rewrites them identically."""
    rng = distributed.gather_objects(rng_state(), ctx)
    if not ctx.is_main:
        return
    if improved:
        save_atomic(task.best_record(model, data, run.epoch, run.best), out / BEST_NAME)
    if partner is not None:
        save_atomic({"state_dict": module_state(partner), "variant": config.variant, "full_rank_partner": True},
                    out / PARTNER_NAME)
    save_atomic({
        "format": FORMAT_VERSION, "config": config.to_dict(), "classes": list(data.names),
        "model": module_state(model), "partner": module_state(partner) if partner is not None else None,
        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
        "epoch": run.epoch, "sampler_epoch": run.epoch, "step": run.step, f"best_{task.best_key}": run.best,
        "wall_s": run.wall_s, "history": run.history, "epoch_changes": run.epoch_changes, "rng": rng,
        "world_size": ctx.world_size,
        "versions": library_versions(),
    }, out / LAST_NAME)


def _restore(saved: dict, model: nn.Module, partner: MicroNet | None, optimizer, scaler, ctx: DistContext,
             reporter: Reporter, config: TrainConfig, best_key: str) -> RunState:
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
    return RunState(epoch=saved["epoch"], step=saved["step"], best=saved[f"best_{best_key}"],
                    wall_s=saved["wall_s"], history=list(saved["history"]),
                    epoch_changes=list(saved.get("epoch_changes", [])))

