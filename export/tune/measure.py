"""Candidates timed on the device, and the rule that decides between two of them.

Each comparison runs ``rounds`` rounds through ``devices.api.benchmark_on_device`` (this machine's harness,
or the runner pushed to an SSH board): every round times every candidate (warm-up, then ``runs`` timed
inferences: p50), and the order alternates from round to round, so drift and background load hit all alike.
A challenger beats the incumbent only when it is faster *in every round*: a paired comparison, since each
round times both files back to back, so a slowdown of the device that lasts longer than a round (another
tenant of a VM, a clock change, heat) slows both and cancels. An earlier rule asked for every round of the
challenger to be faster than every round of the incumbent; on a shared 2-core VM whose p50s drifted by
0.5-2 ms between rounds of a 1-2 ms model that let nothing win, gains of 5-10 % included. By chance a
challenger as fast as the incumbent wins all of ``rounds`` rounds one time in 2**rounds (1/32 at the
default 5), and whatever won the search must then win the final check against the default the same way.
The spread of each file's p50 over the rounds is still recorded as the noise.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from micronet.errors import MicronetError


@dataclass
class Timing:
    p50_ms: list[float]  # one per round
    statistic: str = "p50"  # "mean" where the device's tool printed no median (most benchmark_model builds)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.p50_ms)

    @property
    def spread_ms(self) -> float:
        return max(self.p50_ms) - min(self.p50_ms)


def time_on_device(target, paths: list[Path], *, threads: int, runtime: str, rounds: int, runs: int, warmup: int,
                   inventory=None, say: Callable[[str], None] = lambda _m: None) -> tuple[list[Timing], dict[str, Any]]:
    """p50 of each file in each round; and the device's environment (from the last round)."""
    from micronet.devices.api import benchmark_on_device

    from .candidates import PHONE_RUNTIME

    samples: list[list[float]] = [[] for _ in paths]
    statistics_used: list[set[str]] = [set() for _ in paths]
    environment: dict[str, Any] = {}
    for r in range(rounds):
        order = list(range(len(paths))) if r % 2 == 0 else list(reversed(range(len(paths))))
        run = benchmark_on_device(target, [paths[i] for i in order], threads=[threads], warmup=warmup, runs=runs,
                                  memory=False, runtime=None if runtime == PHONE_RUNTIME else runtime,
                                  inventory=inventory)
        if len(run.rows) != len(order):
            raise MicronetError(f"the device answered {len(run.rows)} rows for {len(order)} candidates")
        for i, row in zip(order, run.rows):
            value, statistic = _typical_ms(row)
            samples[i].append(value)
            statistics_used[i].add(statistic)
        environment = run.environment
    return [Timing(s, "/".join(sorted(used))) for s, used in zip(samples, statistics_used)], environment


def _typical_ms(row: dict[str, Any]) -> tuple[float, str]:
    """A row's p50, or its mean where the device's tool reports no percentiles (``benchmark_model`` builds
    whose statistics print no ``median=``): both files of a comparison are timed by the same tool, so the
    comparison stays like with like."""
    latency = row.get("latency") or {}
    if row.get("invalid"):
        raise MicronetError(f"a candidate could not be timed on the device: {row.get('invalid_reason')}")
    if latency.get("p50_ms") is not None:
        return float(latency["p50_ms"]), "p50"
    if latency.get("mean_ms") is not None:
        return float(latency["mean_ms"]), "mean"
    why = row.get("error") or row.get("status") or "no latency in its row"
    raise MicronetError(f"a candidate could not be timed on the device: {why}")


def beats(challenger: Timing, incumbent: Timing) -> bool:
    """``challenger`` faster than ``incumbent`` in every round, round by round (timed in the same rounds)."""
    if len(challenger.p50_ms) != len(incumbent.p50_ms) or not challenger.p50_ms:
        raise ValueError("beats compares two files timed in the same rounds")
    return all(c < i for c, i in zip(challenger.p50_ms, incumbent.p50_ms))
