"""TensorFlow's start-up chatter kept off the terminal unless asked for (``micronet --verbose``).

Importing TensorFlow prints ~15 lines on stderr (oneDNN and CPU-feature notes, CUDA factory registrations, "failed
call to cuInit" on a machine without a GPU) that concern nobody using micronet and bury its own output. Two
sources, two remedies:

* TensorFlow's own logging obeys ``TF_CPP_MIN_LOG_LEVEL``, read once when TensorFlow loads: it is set to 3 here
  unless the user set it (their value is kept) or asked for ``--verbose``;
* absl lines written by C++ before ``absl::InitializeLog()`` (``E0000 ... cuda_dnn.cc``, "computation placer
  already registered") obey nothing, so file descriptor 2 is sent to a temporary file while TensorFlow is
  imported; if the import fails, what was written there is replayed, so no error is lost. The LiteRT
  interpreter's "Created TensorFlow Lite XNNPACK delegate" line is caught the same way.

Every place that imports TensorFlow goes through ``import_tensorflow()`` so this holds whichever runs first.
``--verbose`` is passed on through the environment (``MICRONET_VERBOSE=1``) to child processes too.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from types import ModuleType
from typing import Iterator

VERBOSE_ENV = "MICRONET_VERBOSE"
TF_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
QUIET_LEVEL = "3"  # INFO, WARNING and ERROR filtered: what is left is fatal


def set_verbose(verbose: bool) -> None:
    """Record ``--verbose`` for this process and its children (called by the CLI before anything is imported)."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_tensorflow_environment() -> None:
    """Set ``TF_CPP_MIN_LOG_LEVEL`` before TensorFlow is first imported, unless verbose or set by the user."""
    if not verbose():
        os.environ.setdefault(TF_LEVEL_ENV, QUIET_LEVEL)


def _quiet() -> bool:
    """Silence native output only when TensorFlow's own level asks for silence: a user who set a lower level
    (or ``--verbose``) sees everything."""
    return not verbose() and os.environ.get(TF_LEVEL_ENV) == QUIET_LEVEL


@contextlib.contextmanager
def native_stderr() -> Iterator[None]:
    """While the block runs, send file descriptor 2 to a temporary file (when quiet); if the block raises,
    write what was captured back to stderr before the exception goes on."""
    if not _quiet():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            _restore(saved)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        else:
            _restore(saved)


def _restore(saved: int) -> None:
    from micronet import interrupts

    with interrupts.deferred():  # an interrupt here must not leave stderr pointing at a deleted file
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow() -> ModuleType:
    """``import tensorflow``, without its start-up chatter unless verbose (see the module's docstring)."""
    quiet_tensorflow_environment()
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with native_stderr():
        import tensorflow

    return tensorflow
