"""Ctrl-C (SIGINT) and SIGTERM end a command the same way: one line ``interrupted`` and exit 128 + signal.

Why a module of its own: an interrupt surfaces in many shapes. Typer turns ``KeyboardInterrupt`` into a silent
exit 130; library code wraps ``Exception`` into ``MicronetError`` (a ``KeyboardInterrupt`` raised inside a lazy
import of the ONNX exporter comes back as an ``AttributeError``); TensorFlow's converter runs C++ for seconds and
may swallow the exception raised in its Python callback. So the handler *records* which signal arrived before it
raises, the export pipeline checks the record between stages and before it moves anything into place, and
``cli.main`` decides by the record, whatever exception surfaced afterwards.

SIGTERM is what ``timeout``, CI cancellation and ``docker stop`` send; without a handler Python dies at once
and leaves its staging folder behind. Exit codes follow the shell convention 128 + signal number: 130 for
SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)

_received: int | None = None  # the first signal that arrived, if any
_deferring = 0  # depth of ``deferred()`` blocks: a signal there is recorded and raised when the block ends


def _handler(signum: int, frame) -> None:
    """Record the signal, then interrupt the Python code that runs (unless a ``deferred`` block is running)."""
    global _received
    if _received is None:
        _received = signum
    if not _deferring:
        raise KeyboardInterrupt


def install() -> None:
    """Handle SIGINT and SIGTERM in this process (call from the main thread, as the CLI's entry point does)."""
    for signum in HANDLED:
        signal.signal(signum, _handler)


def received() -> int | None:
    """The signal number of the first interrupt that arrived, or None."""
    return _received


def exit_code() -> int:
    """128 + the signal number (SIGINT 130, SIGTERM 143); 130 when Python saw a KeyboardInterrupt without our
    handler."""
    return 128 + (_received or signal.SIGINT)


def check() -> None:
    """Raise ``KeyboardInterrupt`` if an interrupt arrived: work between stages must not go on after one, even
    when a stage swallowed the exception the handler raised."""
    if _received is not None:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Run a short critical block (moving finished files into place, removing a staging folder, restoring file
    descriptors) to its end: a signal arriving inside is recorded and raised once the block is over."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring:
        check()


def reset() -> None:
    """Forget a recorded interrupt (tests; a process that carries on after handling one)."""
    global _received
    _received = None
