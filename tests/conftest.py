"""Shared fixtures. Tests import the package the way a user does (``micronet.*``).

Caches: tests never write into the user's home folders. Before collection (``pytest_configure``, so
that modules imported while collecting are covered too), every cache that micronet or a library it
uses would put under ``~`` is pointed at one folder for the whole session; subprocesses inherit it
through the environment:

* ``MICRONET_CACHE``  - micronet's exports (``bench --variant``) and the arm64 root file system
* ``XDG_CACHE_HOME``  - pip (the emulation's aarch64 wheels), torch hub and anything else XDG-aware
* ``MPLCONFIGDIR``    - matplotlib's config and font cache
* ``KERAS_HOME``      - keras.json, written when Keras (TensorFlow, onnx2tf) is imported
* ``TORCH_HOME``, ``PIP_CACHE_DIR`` - set explicitly as well
* ``MICRONET_ARM64_ROOTFS`` is removed, so the root file system follows ``MICRONET_CACHE``

That folder is a fresh temporary one, deleted at the end of the session. The one opt-in:
``MICRONET_TEST_CACHE=/some/folder`` uses (and keeps) that folder instead, so exports and the arm64
root file system (minutes to build) are reused from one test session to the next.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

#: The opt-in: a folder that keeps the test caches between sessions.
TEST_CACHE_ENV = "MICRONET_TEST_CACHE"
_CACHE_ROOT = pytest.StashKey[Path]()
_SAVED_ENV = pytest.StashKey[dict]()


def cache_environment(root: Path) -> dict[str, str]:
    """The environment variables that send every cache written during tests into ``root``."""
    return {"MICRONET_CACHE": str(root / "micronet"), "XDG_CACHE_HOME": str(root / "xdg-cache"),
            "MPLCONFIGDIR": str(root / "matplotlib"), "KERAS_HOME": str(root / "keras"),
            "TORCH_HOME": str(root / "torch"), "PIP_CACHE_DIR": str(root / "pip")}


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    shared = os.environ.get(TEST_CACHE_ENV)
    root = Path(shared).expanduser() if shared else Path(tempfile.mkdtemp(prefix="micronet-test-caches-"))
    root.mkdir(parents=True, exist_ok=True)
    redirect = cache_environment(root.resolve())
    config.stash[_SAVED_ENV] = {name: os.environ.get(name) for name in [*redirect, "MICRONET_ARM64_ROOTFS"]}
    config.stash[_CACHE_ROOT] = root.resolve()
    os.environ.pop("MICRONET_ARM64_ROOTFS", None)
    os.environ.update(redirect)


def pytest_unconfigure(config: pytest.Config) -> None:
    for name, value in config.stash.get(_SAVED_ENV, {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    root = config.stash.get(_CACHE_ROOT, None)
    if root is not None and not os.environ.get(TEST_CACHE_ENV):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def session_cache_root(pytestconfig) -> Path:
    """The folder that holds every cache of this test session (see the module docstring)."""
    return pytestconfig.stash[_CACHE_ROOT]


#: Fixtures that build something for tens of seconds (a whole export): a test that uses one is in the slow lane
#: whatever its own duration, since in the fast lane it would be the one paying for the fixture.
SLOW_FIXTURES = ("exported_m0_small",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fast lane (``pytest -m "not slow"``, about two minutes) leaves out every test marked slow and every
    test that needs a slow fixture; plain ``pytest`` (CI) runs everything."""
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in SLOW_FIXTURES):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def exported_m0_small(tmp_path_factory):
    """m0 at 64x64 as ONNX, TFLite float32 and int8 (one converter run for the whole session)."""
    from micronet.export.pipeline import ExportRequest, export

    out = tmp_path_factory.mktemp("exported_m0_small")
    result = export(ExportRequest(variant="m0", kinds=[("onnx", "float32"), ("tflite", "float32"), ("tflite", "int8")],
                                  input_size=64, calib_count=32, holdout=8, output_dir=out))
    return {p.name.split(".", 1)[1].removesuffix(".tflite"): p for p in result.artifacts}


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real OpenSSH server on a loopback port with throw-away keys, one per test module."""
    from fixtures.sshd import start_sshd

    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()
