"""The CPU cores this process may run on: the one count training, benchmarks and tuning size their threads by.

Why not ``os.cpu_count()``: a container's cpuset, ``taskset`` or a CI runner's cgroup give the process fewer
cores than the machine has, and more threads than usable cores only compete for them. (``devices/runner.py``,
which runs alone on a board without this package, counts them the same way on its own.)
"""

from __future__ import annotations

import os

__all__ = ["available_cpus"]


def available_cpus() -> int:
    """Cores in this process's affinity mask (its cpuset), or the machine's count where there is no mask
    (macOS, Windows); at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
