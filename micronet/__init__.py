"""MicroNet for the edge: the reference PyTorch models and everything that measures and ships them.

The repository keeps ``export/``, ``bench/``, ``devices/`` and ``cli.py`` beside this folder (the
user's layout) and the wheel installs them as ``micronet.export``, ``micronet.bench``, ... . When this
package is imported straight from a source checkout, the same names are made to resolve there too, so
``python -c "import micronet.export"`` works in the checkout exactly as it does once installed.
"""

from __future__ import annotations

import os as _os

_here = _os.path.dirname(_os.path.abspath(__file__))
_checkout = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "export")) and _os.path.isfile(_os.path.join(_checkout, "cli.py")):
    __path__.append(_checkout)  # type: ignore[name-defined]  # noqa: F821

__version__ = "0.1.0"

# The public API, imported lazily so that `micronet --help` and `import micronet.errors` stay fast
# (torch takes seconds to import).
_LAZY = {
    "build_model": "micronet.model",
    "MicroNet": "micronet.model",
    "build_pose_model": "micronet.pose_model",
    "PoseMicroNet": "micronet.pose_model",
    "build_seg_model": "micronet.seg_model",
    "SegMicroNet": "micronet.seg_model",
    "load_weights": "micronet.weights",
    "count_variant": "micronet.counting",
    "count_model": "micronet.counting",
    "VARIANTS": "micronet.registry",
    "RELEASED_WEIGHTS": "micronet.registry",
    "resolve_variant": "micronet.registry",
    "MicronetError": "micronet.errors",
    "TrainConfig": "micronet.train",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'micronet' has no attribute {name!r}")


__all__ = sorted(_LAZY)
