"""Atomic replacement: a reader sees the old file or the whole new one, and killed writers' debris goes."""

from __future__ import annotations

import os
import stat

import pytest

from micronet.atomic import remove_leftovers, replacing, replacing_dir


def test_completed_block_replaces_target_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with replacing(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # not visible until the block completes
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_failed_block_keeps_previous_version_and_removes_temporary(tmp_path):
    target = tmp_path / "model.tflite"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with replacing(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("converter died")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]


def test_remove_leftovers_takes_only_debris_of_the_named_files(tmp_path):
    for name in (".last.pt.a1b2.tmp", ".metrics.csv.zz.tmp", ".other.bin.q.tmp", "last.pt", "metrics.csv"):
        (tmp_path / name).write_text("x")
    removed = remove_leftovers(tmp_path, ["last.pt", "metrics.csv"])
    assert sorted(p.name for p in removed) == [".last.pt.a1b2.tmp", ".metrics.csv.zz.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.bin.q.tmp", "last.pt", "metrics.csv"]


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_finished_files_and_folders_get_the_users_umask(tmp_path, umask, file_mode, dir_mode):
    """tempfile makes 0600 files and 0700 folders; the artifact the rename produces must be what a plain
    open()/mkdir() would give under the user's umask (readable by others with the usual 022)."""
    old = os.umask(umask)
    try:
        with replacing(tmp_path / "model.tflite") as tmp:
            tmp.write_bytes(b"x")
        with replacing_dir(tmp_path / "saved_model") as folder:
            (folder / "saved_model.pb").write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "model.tflite").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "saved_model").stat().st_mode) == dir_mode


@pytest.mark.slow
def test_exported_artifacts_and_manifests_follow_the_umask(exported_m0_small):
    """The export writes through staging and renames; what lands in the output folder has the user's mode."""
    mask = os.umask(0o022)
    os.umask(mask)
    for path in exported_m0_small.values():
        for written in (path, path.with_name(path.name + ".json")):
            assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~mask, written
