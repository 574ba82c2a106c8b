"""The Raspberry Pi's software path without a Pi: the runner in an arm64 Debian root file system under
qemu user-mode emulation, on the int8 m0 export, against the same runner on this x86 machine.

The root file system is cached (``arm64-rootfs`` in the session's ``MICRONET_CACHE``, a temporary folder
unless ``MICRONET_TEST_CACHE`` names one to keep: see tests/conftest.py) and built from scratch when absent,
as on a fresh CI machine (debootstrap + aarch64 wheels from PyPI: about a minute on 2 cores). Timings
under emulation mean nothing, so the emulated rows carry none; what is checked is that the aarch64
builds of numpy and LiteRT give the x86 outputs within int8 rounding (one output quantization step).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from fixtures.models import exported_m0_int8
from fixtures.sshd import missing_tool
from micronet.devices.api import model_jobs
from micronet.devices.base import BenchJob, ModelJob
from micronet.devices.emulation import (
    DEVICE_NAME,
    EMULATION_NOTE,
    EmulatedDevice,
    HostRunnerDevice,
    default_rootfs,
    ensure_rootfs,
    missing_tools,
)
from micronet.devices.evalset import build_eval_sets
from micronet.images import LabelledImages
from micronet.sample_images import bundled_photographs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rootfs():
    missing = missing_tools()
    if missing:
        missing_tool(f"arm64 emulation needs {', '.join(missing)}")
    if os.geteuid() != 0 and not default_rootfs().exists():
        missing_tool("building the arm64 root file system needs root (debootstrap)")
    start = time.perf_counter()
    root, stamp, built = ensure_rootfs(progress=print)
    print(f"arm64 rootfs {'built' if built else 'cached'} at {root} in {time.perf_counter() - start:.1f} s: {stamp}")
    return root


def test_arm64_runner_gives_the_x86_outputs(rootfs, tmp_path_factory, tmp_path, record_property):
    start = time.perf_counter()
    model = exported_m0_int8(tmp_path_factory.getbasetemp())
    photos = bundled_photographs()
    images = LabelledImages(samples=[(p, i) for i, p in enumerate(photos)], classes=[str(i) for i in range(1000)])
    (job,) = model_jobs([model])
    (eval_file,), meta = build_eval_sets([(job.path, job.manifest)], images, None, tmp_path)
    bench = BenchJob(models=[ModelJob(job.path, job.manifest, job.row, eval_file)], warmup=1, runs=3,
                     eval_meta=meta, keep_outputs=True)

    x86 = HostRunnerDevice().benchmark(bench)
    emulated_start = time.perf_counter()
    arm = EmulatedDevice(rootfs).benchmark(bench)
    emulated_s = time.perf_counter() - emulated_start

    assert arm.environment["os"]["machine"] == "aarch64" and x86.environment["os"]["machine"] == "x86_64"
    assert arm.environment["python"]["version"].startswith("3.11")
    assert arm.environment["emulated"]["cpu"] == "cortex-a72" and arm.environment["emulated"]["board"] == "pi4"
    a, b = x86.outputs[0], arm.outputs[0]
    assert a.dtype == b.dtype == np.int8 and a.shape == b.shape == (len(photos), 1000)
    steps = int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())
    scale = job.manifest["output"]["quantization"]["scale"]
    wall_s = time.perf_counter() - start
    record_property("arm64_max_diff_quant_steps", steps)
    record_property("arm64_max_diff_logits", steps * scale)
    record_property("arm64_emulated_run_s", round(emulated_s, 1))
    print(f"arm64 vs x86 on {len(photos)} photographs: max |diff| = {steps} int8 step(s) = {steps * scale:.4g} "
          f"in logits; emulated run {emulated_s:.1f} s; test wall time {wall_s:.1f} s")
    assert steps <= 1, f"arm64 outputs differ from x86 by {steps} quantization steps"
    (x86_row,), (arm_row,) = x86.rows, arm.rows
    if steps == 0:
        assert arm_row["accuracy"] == x86_row["accuracy"]
    assert not arm_row["invalid"] and arm_row["xnnpack_applied"] is True
    # Latency under emulation is meaningless: no timing survives into the row.
    assert arm_row["latency"] is None and arm_row["init_ms"] is None and arm_row["first_ms"] is None
    assert arm_row["notes"][0] == EMULATION_NOTE and arm_row["device"] == DEVICE_NAME
    assert x86_row["latency"]["count"] == 3


def test_the_cached_rootfs_is_reused(rootfs):
    start = time.perf_counter()
    root, stamp, built = ensure_rootfs(rootfs)
    assert not built and root == rootfs and stamp["arch"] == "arm64" and time.perf_counter() - start < 1.0
