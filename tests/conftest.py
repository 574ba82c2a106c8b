"""Shared fixtures. Tests import the package the way a user does (``micronet.*``)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def exported_m0_small(tmp_path_factory):
    """m0 at 64x64 as ONNX, TFLite float32 and int8 (one converter run for the whole session)."""
    from micronet.export.pipeline import ExportRequest, export

    out = tmp_path_factory.mktemp("exported_m0_small")
    result = export(ExportRequest(variant="m0", targets=[("onnx", "float32"), ("tflite", "float32"), ("tflite", "int8")],
                                  input_size=64, calib_count=32, holdout=8, output_dir=out))
    return {p.name.split(".", 1)[1].removesuffix(".tflite"): p for p in result.artifacts}


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real OpenSSH server on a loopback port with throw-away keys, one per test module."""
    from fixtures.sshd import start_sshd

    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()
