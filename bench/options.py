"""The measurement settings, written once: what ``micronet bench``, ``run_benchmark`` and the device API share.

Why an object: the same nine settings (thread counts, the latency schedule, the XNNPACK switch, the
accuracy data and its cap, memory, the input seed) used to be spelled out as keyword lists in the CLI,
the harness and three device functions, and a new setting had to be threaded through all of them.
Callers still pass them as keywords where that reads better (``run_benchmark(models, runs=5)``);
``MeasureOptions.build`` turns those into the object, and an unknown keyword is a ``TypeError``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class MeasureOptions:
    """How to measure a model, wherever it runs (the desktop harness or a device)."""

    threads: Sequence[int] | None = None  # thread counts, one row each; None = 1 here, the inventory's on a device
    warmup: int = 10  # untimed runs after the first inference
    runs: int | None = 100  # timed runs (with min_seconds: whichever ends later)
    min_seconds: float | None = None  # measure at least this long
    xnnpack: bool | Sequence[bool] = (True,)  # TFLite XNNPACK delegate: on, off, or both as a sequence
    data: Any = None  # labelled image folder (or LabelledImages) for top-1/top-5
    limit: int | None = None  # score at most this many images
    memory: bool = True  # fresh-process peak RSS per row
    seed: int = 0  # the synthetic latency input's seed

    @classmethod
    def build(cls, options: MeasureOptions | None = None, **changes: Any) -> MeasureOptions:
        """``options`` (default: the defaults) with ``changes`` applied."""
        return dataclasses.replace(options or cls(), **changes)

    @classmethod
    def split(cls, keywords: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the keywords that are measurement settings, the rest)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return ({k: v for k, v in keywords.items() if k in names}, {k: v for k, v in keywords.items() if k not in names})

    def xnnpack_list(self) -> list[bool]:
        """The XNNPACK settings to try, deduplicated, in order (an empty choice means the default, on)."""
        values = [self.xnnpack] if isinstance(self.xnnpack, bool) else self.xnnpack
        return list(dict.fromkeys(bool(x) for x in values)) or [True]

    def check(self, batch: int = 1) -> None:
        """Reject a bad schedule, image cap or thread count before anything is loaded."""
        from .accuracy import validate_options
        from .harness import check_thread_counts
        from .latency import validate_schedule

        validate_schedule(self.warmup, self.runs, self.min_seconds)
        validate_options(self.limit, batch)
        if self.threads is not None:
            check_thread_counts(self.threads)
