"""Tests never write into the user's home: every cache resolves into the session's cache folder
(tests/conftest.py), and a command run with an empty HOME under the test environment leaves it empty."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from micronet.bench.cache import cache_root, exports_cache
from micronet.devices.emulation import default_rootfs

from test_cli import REPO


def _inside(path: Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_caches_resolve_into_the_session_folder_not_home(session_cache_root):
    home = Path.home()
    for path in (cache_root(), exports_cache(), default_rootfs(), *(Path(os.environ[name]) for name in
                 ("MICRONET_CACHE", "XDG_CACHE_HOME", "MPLCONFIGDIR", "KERAS_HOME", "TORCH_HOME", "PIP_CACHE_DIR"))):
        assert _inside(path, session_cache_root), path
        if not os.environ.get("MICRONET_TEST_CACHE"):  # the opt-in may name a folder in the home
            assert not _inside(path, home), path


def test_the_cache_folder_is_read_when_used_not_at_import(tmp_path, monkeypatch):
    monkeypatch.setenv("MICRONET_CACHE", str(tmp_path / "c"))
    assert exports_cache() == tmp_path / "c" / "exports"
    assert default_rootfs() == tmp_path / "c" / "arm64-rootfs"
    monkeypatch.delenv("MICRONET_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert exports_cache() == tmp_path / "xdg" / "micronet" / "exports"
    monkeypatch.setenv("MICRONET_ARM64_ROOTFS", str(tmp_path / "rootfs"))
    assert default_rootfs() == tmp_path / "rootfs"


def _with_empty_home(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    home = tmp_path / "home"
    home.mkdir()
    return home, {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO), "COLUMNS": "200"}


def test_matplotlib_in_a_test_subprocess_leaves_home_empty(tmp_path):
    home, env = _with_empty_home(tmp_path)
    code = ("import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt; "
            "plt.figure(); plt.text(0, 0, 'x'); plt.savefig(%r)" % str(tmp_path / "x.png"))
    subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True, timeout=120, capture_output=True)
    assert _files_under(home) == []


@pytest.mark.slow
def test_bench_of_a_variant_and_keras_leave_home_empty(tmp_path, session_cache_root):
    """``bench --variant`` exports into the cache; importing Keras writes keras.json: both into the
    session folder, nothing into HOME."""
    home, env = _with_empty_home(tmp_path)
    bench = subprocess.run([sys.executable, "-m", "micronet.cli", "bench", "--variant", "m0", "--format", "onnx",
                            "--input-size", "32", "--runs", "2", "--warmup", "1", "--no-memory",
                            "--out", str(tmp_path / "reports")],
                           env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bench.returncode == 0, bench.stderr
    subprocess.run([sys.executable, "-c", "import keras"], env=env, cwd=REPO, check=True, timeout=300,
                   capture_output=True)
    assert _files_under(home) == []
    assert list((session_cache_root / "micronet" / "exports").glob("m0-32-*/micronet-m0-32.onnx"))
    assert (session_cache_root / "keras" / "keras.json").is_file()
