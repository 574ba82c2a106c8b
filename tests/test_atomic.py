"""Atomic replacement: a reader sees the old file or the whole new one, and killed writers' debris goes."""

from __future__ import annotations

import pytest

from micronet.atomic import remove_leftovers, replacing


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
