"""This machine as a device: the desktop harness (``micronet.bench.run_benchmark``), unchanged.

Why not the runner: the desktop harness is the reference every other device is compared with, and it
measures more (fresh-process memory, end-to-end time). A local row and a Pi row share the method
that matters (synthetic input from the same seed, the same schedule); see ``runner.py``.
"""

from __future__ import annotations

import os
import platform
from contextlib import contextmanager
from typing import Iterator

from micronet.errors import MicronetError

from .base import BenchJob, Device, DeviceCheck, DeviceRun, Progress
from .runner import parse_mask


@contextmanager
def _affinity(mask: str | None) -> Iterator[None]:
    """Pin this process (and the memory children it starts) to ``mask`` for the run, then restore."""
    if not mask:
        yield
        return
    if not hasattr(os, "sched_setaffinity"):
        raise MicronetError("cpu_mask needs Linux (os.sched_setaffinity)")
    previous = os.sched_getaffinity(0)
    cpus = parse_mask(mask)
    try:
        os.sched_setaffinity(0, cpus)
    except OSError:
        raise MicronetError(f"cpu_mask {mask} selects CPUs {cpus}; this machine has {sorted(previous)}") from None
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


class LocalDevice(Device):
    kind = "local"

    def check(self) -> DeviceCheck:
        from micronet.bench.environment import cpu_model
        from micronet.bench.runtimes import RUNTIMES, available_runtimes

        runtimes = {name: RUNTIMES[name].version() or "unknown" for name in available_runtimes() if name != "torch"}
        summary = f"{cpu_model() or 'unknown CPU'} ×{os.cpu_count()} · {platform.system()} {platform.machine()} · " \
                  f"Python {platform.python_version()}"
        return DeviceCheck(self.name, self.target.text, True, runtimes, summary)

    def benchmark(self, job: BenchJob, progress: Progress | None = None) -> DeviceRun:
        from micronet.bench.harness import BenchModel, run_benchmark

        if job.eval_meta is not None and job.data is None:
            raise MicronetError("the local device scores accuracy on an image folder: give data, not eval_inputs")
        targets = [BenchModel(path=m.path, manifest=m.manifest) for m in job.models]
        with _affinity(job.cpu_mask):
            report = run_benchmark(targets, [job.runtime] if job.runtime else None, job.measure_options(), progress)
        rows = report["results"]
        for row in rows:
            row["device"] = self.name
        env = dict(report["environment"])
        env["device"] = {"name": self.name, "kind": self.kind, "target": self.target.text}
        return DeviceRun(self.name, rows, env)
