"""What ``--tune`` asks for: the device, the thread count, the time budget, a record to reuse."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from micronet.errors import MicronetError

_BUDGET = re.compile(r"^\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>s|m|h)?\s*$")
_UNITS = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_budget(text: str | float | int) -> float:
    """``"5m"`` → 300.0 seconds (``s``, ``m``, ``h``; a bare number is seconds)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _BUDGET.match(str(text))
        if not match:
            raise MicronetError(f"--tune-budget must be a time such as 90s, 5m or 1h, got {text!r}")
        seconds = float(match["value"]) * _UNITS[match["unit"]]
    if seconds <= 0:
        raise MicronetError(f"--tune-budget must be positive, got {text!r}")
    return seconds


@dataclass(frozen=True)
class TuneRequest:
    """``device``: ``local``, ``ssh://...`` or a ``devices.toml`` name. ``budget_s``: seconds of search (the
    final check against the default runs after it). ``rounds``: timed rounds per comparison, their order
    alternating; ``runs``/``warmup``: inferences per model per round. ``record``: a tuning record (or a
    tuned export's manifest) to reuse instead of measuring. ``cache``: reuse and write the record cache.
    ``per_block``: after the whole-graph switches, search each block's own (``RuntimeProfile.blocks``).
    ``benchmark_binary``: an Android phone's LiteRT ``benchmark_model`` (else its ``devices.toml`` entry's)."""

    device: str = "local"
    threads: int = 1
    budget_s: float = 300.0
    rounds: int = 5
    runs: int = 30
    warmup: int = 5
    record: Path | None = None
    inventory: Path | None = None
    cache: bool = True
    per_block: bool = True
    benchmark_binary: Path | None = None

    def check(self) -> None:
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 1:
            raise MicronetError(f"--threads must be a positive whole number, got {self.threads!r}")
        if self.rounds < 2:
            raise MicronetError(f"tuning needs at least 2 timed rounds to measure the noise, got {self.rounds}")
        if self.runs < 1 or self.warmup < 0:
            raise MicronetError("tuning runs must be >= 1 and warm-up runs >= 0")
        parse_budget(self.budget_s)
