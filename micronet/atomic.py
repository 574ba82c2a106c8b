"""Write a file so that readers (and a run killed at any moment) see its previous version or the complete
new one, never half of one.

It lives in the lowest layer so every stage shares it: export artifacts and manifests, benchmark
reports, training checkpoints and metric logs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    """The process's file-creation mask (reading it means setting it; set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_if_created(path: Path, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have given it under the user's umask.

    ``tempfile`` creates files 0600 and folders 0700 (right for a temporary name, wrong for the finished
    artifact the rename turns it into): without this an exported model or report could not be read by
    another user, a web server or a container running as another uid."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


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
        _as_if_created(tmp)
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
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield tmp
        _as_if_created(tmp, directory=True)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the finished folder ``source`` to ``target`` (same file system), replacing an old folder there:
    the old one is renamed aside first and removed after, so ``target`` is missing for one rename at most and
    never holds a mix of old and new files."""
    source, target = Path(source), Path(target)
    aside = None
    if target.exists() or target.is_symlink():
        aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
        os.replace(target, aside / target.name)
    _as_if_created(source, directory=True)
    os.replace(source, target)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


OWNER_FILE = ".owner"
#: A staging folder without an owner file is younger than this while its export is still starting (the owner
#: file is written right after the folder is made); older ones were left by an export killed in between, or
#: by a micronet that did not record owners.
OWNERLESS_GRACE_S = 600.0


@dataclass
class StaleFolder:
    """A staging folder removed because the process that made it is gone."""

    path: Path
    size_bytes: int
    pid: int | None  # the owner's process id, when it recorded one

    def describe(self) -> str:
        who = f"process {self.pid}" if self.pid else "an earlier run"
        return (f"removed stale staging folder {self.path} ({self.size_bytes / 1e6:.1f} MB) left by an "
                f"interrupted export ({who} is gone)")


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _hold_owner_lock(folder: Path) -> int:
    """Write ``folder/.owner`` (this pid) under an exclusive flock held until the returned descriptor is closed.

    The lock is taken on a temporary name and the file renamed afterwards, so nobody ever sees an unlocked owner
    file of a live process; the kernel drops the lock when the process dies however it dies (SIGKILL, OOM,
    power cut), which makes "lock free" the owner test that survives pid reuse."""
    tmp = folder / f"{OWNER_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with contextlib.suppress(OSError):  # no locks on this file system: then nobody can judge it abandoned
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps({"pid": os.getpid(), "started": time.time()}).encode())
        os.replace(tmp, folder / OWNER_FILE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _owner_pid(fd: int) -> int | None:
    try:
        return int(json.loads(os.pread(fd, 4096, 0) or b"{}").get("pid"))
    except (ValueError, TypeError, OSError):
        return None


def _claim_if_abandoned(folder: Path) -> tuple[int | None, int | None] | None:
    """``(lock descriptor, owner pid)`` when ``folder``'s owner is gone (the caller then holds its lock), else
    None: its owner is alive, or it is too young to judge."""
    try:
        fd = os.open(folder / OWNER_FILE, os.O_RDONLY)
    except FileNotFoundError:
        try:
            age = time.time() - folder.stat().st_mtime
        except FileNotFoundError:
            return None  # removed meanwhile by its owner
        return (None, None) if age > OWNERLESS_GRACE_S else None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: the owner is alive
        os.close(fd)
        return None
    return fd, _owner_pid(fd)


def remove_abandoned_staging(parent: str | os.PathLike, prefix: str) -> list[StaleFolder]:
    """Remove the folders ``parent/prefix*`` made by ``staging_dir`` whose owning process is gone.

    A process killed outright cannot remove its own staging folder (tens of MB for an export); the next run
    into the same folder does, and never touches a folder whose owner still runs (concurrent exports into one
    folder keep working). Returns what was removed, for the caller to report."""
    from micronet import interrupts

    removed = []
    for folder in sorted(Path(parent).glob(f"{prefix}*")):
        if not folder.is_dir() or folder.is_symlink():
            continue
        claim = _claim_if_abandoned(folder)
        if claim is None:
            continue
        fd, pid = claim
        try:
            with interrupts.deferred():  # half a folder without its owner file would wait out the grace period
                size = _folder_size(folder)
                shutil.rmtree(folder, ignore_errors=True)
        finally:
            if fd is not None:
                os.close(fd)
        if not folder.exists():
            removed.append(StaleFolder(folder, size, pid))
    return removed


@contextlib.contextmanager
def staging_dir(parent: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A new folder ``parent/prefix<random>`` owned by this process (see ``remove_abandoned_staging``), removed
    with everything in it when the block ends, however it ends."""
    from micronet import interrupts

    folder = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    try:
        fd = _hold_owner_lock(folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    try:
        yield folder
    finally:
        with interrupts.deferred():  # a second Ctrl-C must not leave half a folder behind
            shutil.rmtree(folder, ignore_errors=True)
            os.close(fd)
