"""Desktop benchmark harness: latency, memory, size and accuracy of MicroNet models on local runtimes.

One module per job, lowest first: ``runtimes`` (load a model in PyTorch, ONNX Runtime or a TFLite
interpreter behind one interface), ``latency`` (time ``run`` only), ``memory`` (peak RSS in a fresh
child process), ``environment`` (what machine produced the numbers), ``accuracy`` (top-1/top-5 on
labelled images), ``report`` (the JSON/CSV/Markdown format) and ``plots``. ``harness.run_benchmark``
composes them and is what the CLI calls; ``options.MeasureOptions`` holds the measurement settings
that the CLI, the harness and the device API share.

Importing this package is deliberately cheap (no torch, TensorFlow or ONNX Runtime): the memory child
imports it too, and its baseline RSS should be the interpreter's, not a runtime's.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BenchModel", "MeasureOptions", "run_benchmark"]


def __getattr__(name: str) -> Any:
    # Lazy so that `import micronet.bench.latency` stays light; `from micronet.bench import run_benchmark` works.
    if name in __all__:
        from . import harness

        return getattr(harness, name)
    raise AttributeError(name)
