"""The parity ladder of one export: every rung judged so far, the wall time of every stage, and the progress
lines a user sees.

Stages call ``ladder.judge`` with a candidate's logits and its reference's; the ladder applies the rung's
limit (``parity.THRESHOLDS``, the looser ``parity.UNTRAINED_LIMITS`` for an export without trained weights),
records the rung, prints "✓ rung: pass (...)" and raises ``ParityFailure`` carrying the whole ladder when a
rung breaks, so the report shows what passed before it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from micronet import interrupts
from micronet.errors import MicronetError

from . import parity

Progress = Callable[[str], None]


class ParityFailure(MicronetError):
    """A rung of the parity ladder broke; ``rungs`` holds the whole ladder for the report."""

    def __init__(self, message: str, rungs: list[dict]) -> None:
        super().__init__(message)
        self.rungs = rungs


class Ladder:
    """The rungs judged in one export, in order, and the seconds each timed stage took."""

    def __init__(self, *, untrained: bool = False, task: str = "classification",
                 progress: Progress | None = None) -> None:
        self.untrained = untrained  # judge quantized rungs by parity.UNTRAINED_LIMITS (of the task)
        self.task = task
        self.rungs: list[dict] = []
        self.timings: dict[str, float] = {}
        self._progress = progress

    def judge(self, name: str, reference: str, reference_logits: np.ndarray, candidate: np.ndarray, *,
              announce: bool = True) -> dict:
        """Judge ``candidate`` against ``reference_logits`` (those of the artifact named ``reference``) as rung
        ``name``; returns the rung's record, or raises ``ParityFailure``. ``announce`` prints the verdict line
        (the deploy-form rungs are judged quietly: the user sees them in the ladder table)."""
        interrupts.check()  # a stage that swallowed the interrupt must not be judged, let alone shipped
        rung = parity.check_rung(name, parity.compare(reference_logits, candidate), untrained=self.untrained,
                                 task=self.task)
        record = {"rung": rung.name, "reference": reference, "passed": rung.passed, "metric": rung.metric,
                  "value": rung.value, "limit": rung.limit, **rung.metrics}
        self.rungs.append(record)
        if announce and self._progress:
            self._progress(("[green]✓[/green] " if rung.passed else "[red]✗[/red] ") + rung.summary())
        if not rung.passed:
            raise ParityFailure(f"parity rung '{name}' broke: {rung.summary()}", self.rungs)
        return record

    def records(self, names: Iterable[str]) -> list[dict]:
        """The recorded rungs among ``names`` (one artifact's lineage), in the order they were judged."""
        wanted = set(names)
        return [r for r in self.rungs if r["rung"] in wanted]

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to ``timings[name + "_s"]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            key = f"{name}_s"
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - start

    def rounded_timings(self) -> dict[str, float]:
        """The timings as a manifest records them (milliseconds)."""
        return {k: round(v, 3) for k, v in self.timings.items()}
