"""Latency of one loaded runtime: what ``run`` costs, and nothing else.

Schedule (the LiteRT ``benchmark_model`` / ORT ``perf_test`` convention):

1. the **first inference** is timed on its own (``first_ms``): lazy allocation, kernel selection and
   cold caches make it slower than steady state, and a user starting an app pays it once;
2. ``warmup`` more runs, not timed;
3. the **measured phase**: runs are timed one by one with ``time.perf_counter_ns`` around ``run``
   only (no preprocessing, no dequantization, no Python bookkeeping). It ends when *every* given
   bound is met: ``runs`` samples collected **and** ``min_seconds`` of measuring elapsed. With both
   given it is whichever ends later, so a fast model still gets enough wall time to average over
   the VM's noise and a slow one still gets enough samples for a p99. ``max_runs`` is a hard cap that
   keeps ``min_seconds`` on a microsecond-fast model from filling memory; ``stopped_by`` says which
   bound ended the phase.

The garbage collector is paused during timed phases so a collection does not land in one sample.

``end_to_end`` (optional): a callable returning a float32 NCHW batch (e.g. decode + resize +
normalise one image). When given, a second phase with the same bounds times
``preprocess → prepare → run → to_logits``: what an application sees per image.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from micronet import inference as core
from micronet.errors import MicronetError

DEFAULT_MAX_RUNS = core.DEFAULT_MAX_RUNS
_now_ns = time.perf_counter_ns  # module-level so tests can drive the schedule with a fake clock


@dataclass(frozen=True)
class LatencyStats:
    """Summary of timed samples, all in milliseconds. ``std_ms`` is the sample standard deviation."""

    count: int
    min_ms: float
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def from_samples(cls, samples_ms: list[float] | np.ndarray) -> "LatencyStats":
        if len(samples_ms) == 0:
            raise MicronetError("no latency samples to summarise")
        return cls(**core.latency_stats(samples_ms))  # the same statistics as the on-device runner


@dataclass(frozen=True)
class PhaseResult:
    """One timed phase: its stats, the raw samples (ms), its wall time (s) and why it stopped."""

    stats: LatencyStats
    samples_ms: list[float]
    measured_s: float
    stopped_by: str  # "runs", "min_seconds" or "max_runs"


@dataclass(frozen=True)
class LatencyResult:
    first_ms: float
    warmup: int
    runs: int | None  # as requested
    min_seconds: float | None  # as requested
    measured: PhaseResult
    end_to_end: PhaseResult | None = None

    @property
    def stats(self) -> LatencyStats:
        return self.measured.stats

    @property
    def samples_ms(self) -> list[float]:
        return self.measured.samples_ms

    def to_dict(self) -> dict[str, Any]:
        """The report's ``latency`` object (see ``micronet.bench.report``); ``first_ms`` is a row field."""
        out: dict[str, Any] = {
            "warmup": self.warmup,
            "runs_requested": self.runs,
            "min_seconds": self.min_seconds,
            **_phase_dict(self.measured),
        }
        out["end_to_end"] = _phase_dict(self.end_to_end) if self.end_to_end else None
        return out


def _phase_dict(phase: PhaseResult) -> dict[str, Any]:
    return {**asdict(phase.stats), "measured_s": phase.measured_s, "stopped_by": phase.stopped_by,
            "samples_ms": list(phase.samples_ms)}


def validate_schedule(warmup: Any, runs: Any, min_seconds: Any, max_runs: Any = DEFAULT_MAX_RUNS) -> None:
    """Reject a schedule before anything is loaded, so a typo fails in milliseconds, not after a model load."""
    if not _is_int(warmup) or warmup < 0:
        raise MicronetError(f"warmup must be a whole number of runs >= 0, got {warmup!r}")
    if runs is None and min_seconds is None:
        raise MicronetError("give a number of runs, a minimum time in seconds, or both")
    if runs is not None and (not _is_int(runs) or runs < 1):
        raise MicronetError(f"runs must be a whole number >= 1, got {runs!r}")
    if min_seconds is not None and (
        isinstance(min_seconds, bool) or not isinstance(min_seconds, (int, float))
        or not math.isfinite(min_seconds) or min_seconds <= 0
    ):
        raise MicronetError(f"min_seconds must be a positive number of seconds, got {min_seconds!r}")
    if not _is_int(max_runs) or max_runs < 1:
        raise MicronetError(f"max_runs must be a whole number >= 1, got {max_runs!r}")
    if runs is not None and runs > max_runs:
        raise MicronetError(f"runs={runs} is above the cap of {max_runs} samples")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _timed_phase(step: Callable[[], Any], runs: int | None, min_seconds: float | None, max_runs: int) -> PhaseResult:
    samples_ms, measured_s, stopped_by = core.timed_runs(step, runs, min_seconds, max_runs, clock=_now_ns)
    return PhaseResult(LatencyStats.from_samples(samples_ms), samples_ms, measured_s, stopped_by)


def measure_latency(
    runtime: Any,
    native_input: Any,
    *,
    warmup: int,
    runs: int | None,
    min_seconds: float | None,
    end_to_end: Callable[[], np.ndarray] | None = None,
    max_runs: int = DEFAULT_MAX_RUNS,
) -> LatencyResult:
    """Time ``runtime.run(native_input)``; see the module docstring for the schedule.

    ``runtime`` needs ``run`` (and ``prepare``/``to_logits`` when ``end_to_end`` is given): any object
    with those methods works, which is how the tests drive it with a fake of known duration.
    """
    validate_schedule(warmup, runs, min_seconds, max_runs)
    first_ms = core.first_and_warmup(lambda: runtime.run(native_input), warmup, clock=_now_ns)
    measured = _timed_phase(lambda: runtime.run(native_input), runs, min_seconds, max_runs)
    e2e = None
    if end_to_end is not None:
        e2e = _timed_phase(lambda: runtime.to_logits(runtime.run(runtime.prepare(end_to_end()))), runs, min_seconds, max_runs)
    return LatencyResult(first_ms, int(warmup), runs, min_seconds, measured, e2e)
