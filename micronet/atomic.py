"""Write a file so that readers (and a run killed at any moment) see its previous version or the complete
new one, never half of one.

It lives in the lowest layer so every stage shares it: export artifacts and manifests, benchmark
reports, training checkpoints and metric logs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same file system, so the rename is atomic); when the block
    completes, flush it to disk and rename it onto ``path``. On any failure the temporary file is removed
    and ``path`` keeps what it held. Flushing matters for checkpoints: after a power cut the rename can
    otherwise survive while the data does not."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_leftovers(folder: str | os.PathLike, names: list[str]) -> list[Path]:
    """Delete the temporary files that ``replacing`` left beside ``names`` in ``folder``.

    A process killed outright (SIGKILL, OOM killer, power cut) cannot run the cleanup above, so a
    half-written ``.NAME.XXXX.tmp`` can outlive it. The targets themselves are intact; only the debris
    needs removing, which the next run that owns the folder does (for example a resumed training run).
    Returns what was removed."""
    removed = []
    for name in names:
        for leftover in Path(folder).glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


@contextlib.contextmanager
def replacing_dir(path: str | os.PathLike) -> Iterator[Path]:
    """``replacing`` for a folder (a SavedModel): yield an empty temporary folder beside ``path``; when the
    block completes, the old folder is removed and the new one renamed into place. On failure the
    temporary folder is removed and ``path`` is left as it was."""
    import shutil

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield tmp
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
