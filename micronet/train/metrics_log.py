"""What a run tells its user: one line per event on the console, a progress bar in a terminal, and
per-epoch metrics as JSON lines and CSV in the output folder.

Only rank 0 reports (the others are silent), so a multi-process run writes each file once. The
metric files are rewritten from the checkpoint's history on resume: an epoch that a killed run
logged but never checkpointed does not appear twice.
"""

from __future__ import annotations

import csv
import io
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from micronet.atomic import replacing

#: Columns of a classification run's ``metrics.csv`` (and keys of ``metrics.jsonl``), units in the names: %
#: and seconds (a pose run's are ``tasks.POSE_COLUMNS``).
COLUMNS = ("epoch", "train_loss", "val_loss", "top1", "top5", "lr", "images_per_s", "epoch_s", "wall_s")
PARTNER_COLUMNS = ("partner_top1",)
JSONL_NAME, CSV_NAME, LOG_NAME = "metrics.jsonl", "metrics.csv", "train.log"


class Reporter:
    """Console lines + ``train.log`` + metric files; a no-op on ranks other than 0."""

    def __init__(self, out: Path, enabled: bool, progress: bool, mutual: bool = False,
                 columns: tuple[str, ...] | None = None, val_text: Callable[[dict], str] | None = None) -> None:
        """``columns`` and ``val_text`` (the validation part of an epoch line) come from the run's task;
        without them, a classification run's."""
        from rich.console import Console

        self.out = out
        self.enabled = enabled
        self.columns = columns or COLUMNS + (PARTNER_COLUMNS if mutual else ())
        self.val_text = val_text or classification_val_text
        self.console = Console(stderr=True, highlight=False)
        self.show_progress = enabled and progress and self.console.is_terminal

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        self.console.print(message, soft_wrap=True, markup=False)
        with open(self.out / LOG_NAME, "a", encoding="utf-8") as handle:
            handle.write(message + "\n")

    def write_history(self, history: list[dict]) -> None:
        """Rewrite both metric files from the full history (cheap: one line per epoch)."""
        if not self.enabled:
            return
        lines = "".join(json.dumps({k: row.get(k) for k in self.columns}) + "\n" for row in history)
        _write_text(self.out / JSONL_NAME, lines)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if row.get(k) is None else row[k] for k in self.columns} for row in history)
        _write_text(self.out / CSV_NAME, buffer.getvalue())

    def epoch_line(self, row: dict, epochs: int) -> None:
        self.log(f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f}  {self.val_text(row)}  "
                 f"lr {row['lr']:.5g}  {rate_text(row['images_per_s'])} images/s  {row['epoch_s']:.1f} s")

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator:
        """A per-epoch bar in a terminal; elsewhere (CI logs, other ranks) a do-nothing ``advance``."""
        if not self.show_progress:
            yield lambda **fields: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                      console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total, status="")
            yield lambda **fields: bar.update(task, advance=1, **fields)


def rate_text(per_s: float) -> str:
    """A throughput with three significant figures but no exponent: a CPU pose run's 0.32 images/s must not
    print as 0, nor a GPU's 1234 as 1.23e+03."""
    return f"{per_s:.0f}" if per_s >= 100 else f"{per_s:.3g}"


def classification_val_text(row: dict) -> str:
    if row.get("top1") is None:
        return "no validation data"
    partner = f"  partner top-1 {row['partner_top1']:.2f}%" if row.get("partner_top1") is not None else ""
    return f"val loss {row['val_loss']:.4f}  top-1 {row['top1']:.2f}%  top-5 {row['top5']:.2f}%{partner}"


def _write_text(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
