"""``micronet devices list|check`` and ``micronet bench --device`` as a user runs them: real subprocesses,
a real sshd, the stand-in adb."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.models import M0_SIZE, exported_m0_int8
from fixtures.phone import make_phone
from fixtures.sshd import free_port, write_inventory

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "micronet"
    cmd = [str(exe), *args] if exe.is_file() else [sys.executable, "-m", "micronet.cli", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def inventory(sshd, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli-inventory")
    phone = make_phone(folder)
    return write_inventory(folder / "devices.toml", sshd, sys.executable, devices={
        "pi": {"target": sshd.target, "threads": [1, 2], "max_temp_c": 80},
        "phone": {"target": "adb", "adb": str(phone.adb), "benchmark_binary": str(phone.binary), "cpu_mask": "f0"},
        "gone": {"target": f"ssh://{sshd.user}@127.0.0.1:{free_port()}"},
    })


def test_devices_list(inventory, sshd):
    result = run_cli("devices", "list", "--inventory", str(inventory))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"inventory: {inventory}"
    assert [line.split()[0] for line in lines[1:]] == ["local", "pi", "phone", "gone"]
    pi = lines[2]
    assert sshd.target in pi and "threads=1,2" in pi and "max_temp_c=80.0" in pi and f"python={sys.executable}" in pi
    assert "cpu_mask=f0" in lines[3] and "benchmark_binary=" in lines[3] and "python=" not in lines[3]
    data = json.loads(run_cli("devices", "list", "--inventory", str(inventory), "--json").stdout)
    assert [d["name"] for d in data["devices"]] == ["local", "pi", "phone", "gone"]
    assert data["devices"][1]["options"]["threads"] == "1,2"


@pytest.mark.slow
def test_devices_check_one_line_each_and_exit_1_when_one_is_down(inventory, sshd):
    result = run_cli("devices", "check", "--inventory", str(inventory))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4, result.stdout
    local, pi, phone, gone = lines
    assert local.startswith("local: reachable · runtimes: ") and "litert" in local
    assert pi.startswith(f"pi ({sshd.target}): reachable · runtimes: litert ")
    assert phone.startswith("phone (adb): reachable · runtimes: benchmark_model script sha256:")
    assert " · StandIn Phone 1" in phone
    assert gone.startswith("gone (ssh://") and gone.endswith("unreachable: connection refused (no SSH server on that port?)")
    ok = run_cli("devices", "check", "pi", "local", "--inventory", str(inventory))
    assert ok.returncode == 0 and len(ok.stdout.splitlines()) == 2


@pytest.mark.slow
def test_devices_mistakes_are_one_line(inventory, tmp_path):
    error = one_line_error(run_cli("devices", "check", "pi5", "--inventory", str(inventory)))
    assert "unknown device 'pi5'" in error and "devices: pi, phone, gone" in error
    bad = tmp_path / "devices.toml"
    bad.write_text('[devices.pi]\ntarget = "ssh://pi@host"\nthread = 4\n')
    assert "unknown option(s) thread" in one_line_error(run_cli("devices", "list", "--inventory", str(bad)))
    assert "device inventory not found" in one_line_error(run_cli("devices", "list", "--inventory",
                                                                  str(tmp_path / "nope.toml")))


def _bench_has_device_option() -> bool:
    result = run_cli("bench", "--help")
    return "--device" in result.stdout


@pytest.mark.slow
def test_bench_on_the_ssh_device_merges_with_a_local_run(sshd, inventory, tmp_path, tmp_path_factory):
    """The issue's 'done when': ``micronet bench --device ssh://USER@127.0.0.1:PORT --variant m0 --format tflite``
    against the test sshd, then ``micronet report`` merging it with a local run."""
    if not _bench_has_device_option():
        pytest.skip("micronet bench has no --device option yet")
    env = {"MICRONET_DEVICES": str(inventory)}  # [defaults]: the test keys, known_hosts and Python
    remote = run_cli("bench", "--device", sshd.target, "--variant", "m0", "--format", "tflite", "--input-size",
                     str(M0_SIZE), "--warmup", "2", "--runs", "10", "--out", str(tmp_path / "board"), env=env)
    assert remote.returncode == 0, remote.stdout[-3000:] + remote.stderr[-3000:]
    model = exported_m0_int8(tmp_path_factory.getbasetemp())
    local = run_cli("bench", str(model), "--runtime", "litert", "--warmup", "2", "--runs", "10", "--no-memory",
                    "--out", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr[-3000:]
    reports = sorted((tmp_path / "board").glob("*.json")) + sorted((tmp_path / "local").glob("*.json"))
    merged = run_cli("report", *map(str, reports), "--out", str(tmp_path / "merged"), "--no-plots")
    assert merged.returncode == 0, merged.stderr[-3000:]
    csv = next((tmp_path / "merged").glob("*.csv")).read_text().splitlines()
    device = csv[0].split(",").index("device")
    assert sorted(line.split(",")[device] for line in csv[1:]) == ["local", sshd.target]
