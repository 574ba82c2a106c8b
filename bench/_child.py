"""Child process of ``micronet.bench.memory``: load one model in one runtime, run it, report RSS.

Run as ``python -m micronet.bench._child '<json spec>'``; prints one ``MICRONET_MEMORY {...}`` line.
It imports nothing heavy before taking the baseline, which is the point of running it fresh.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from micronet.errors import MicronetError

from .memory import MIB, RESULT_PREFIX
from .runtimes import get_runtime

# numpy is already loaded by .runtimes; it is part of every runtime's baseline anyway.


def current_rss_mib() -> float:
    """Resident set size now, from /proc on Linux (no psutil import to skew the baseline), else psutil."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB
    except (OSError, ValueError, IndexError):
        import psutil

        return psutil.Process().memory_info().rss / MIB


def peak_rss_mib() -> float:
    """Peak RSS of this process image.

    Linux: ``VmHWM`` from /proc, not ``ru_maxrss``: ru_maxrss survives fork+exec, so a child started
    from a parent holding 800 MiB would report the parent's peak (seen here: every runtime "peaked" at
    the parent's 865 MiB). macOS: ``ru_maxrss`` (bytes). Windows: psutil's ``peak_wset``.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        import psutil

        return psutil.Process().memory_info().peak_wset / MIB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    baseline = current_rss_mib()
    runtime = get_runtime(spec["runtime"], threads=spec["threads"], xnnpack=spec.get("xnnpack"))
    runtime.import_library()
    after_import = current_rss_mib()
    source = spec["source"]
    if "path" in source:
        model: Any = source["path"]
    elif "variant" in source:
        model = source["variant"]
    else:
        import torch

        model = torch.load(source["pickle"], weights_only=False)
    runtime.load(model, input_size=spec.get("input_size"))
    after_load = current_rss_mib()
    import numpy as np

    c, h, w = (d or 1 for d in runtime.input_spec.chw)
    batch = np.random.default_rng(0).standard_normal((runtime.input_spec.fixed_batch or 1, c, h, w)).astype(np.float32)
    native = runtime.prepare(batch)
    for _ in range(spec["inferences"]):
        runtime.run(native)
    return {
        "baseline_rss_mib": baseline,
        "after_import_rss_mib": after_import,
        "after_load_rss_mib": after_load,
        "peak_rss_mib": peak_rss_mib(),
        "inferences": spec["inferences"],
    }


def main(argv: list[str]) -> int:
    try:
        result = measure(json.loads(argv[1]))
    except MicronetError as exc:
        print(RESULT_PREFIX + json.dumps({"error": str(exc)}), flush=True)
        return 2
    except Exception as exc:  # the parent turns this into a one-line MicronetError
        print(RESULT_PREFIX + json.dumps({"error": f"memory child failed: {type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
