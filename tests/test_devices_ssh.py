"""SSH devices against a real OpenSSH server on a loopback port (``fixtures/sshd.py``).

The "board" is this machine reached through sshd: real ``ssh`` client, real authentication, real
remote shell, the runner pushed and run under the Python named in the inventory. Every failure mode
is checked for a one-line error and for the remote working folder being gone afterwards.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures.models import M0_SIZE, exported_m0_int8, tiny_int8_tflite
from fixtures.sshd import free_port, write_inventory
from micronet.bench import report as rep
from micronet.bench.harness import run_benchmark
from micronet.bench.runtimes import get_runtime
from micronet.devices.api import check_devices, device_report, run_on_device
from micronet.devices.base import AuthError, RunnerFailed, UnreachableError
from micronet.devices.target import load_inventory
from micronet.errors import MicronetError

_CRASH_SITE = '''import os, signal, sys, threading
def _fire():
    # Only the benchmark child (runner.py REQUEST), not the supervisor or the probe/mkdtemp calls.
    if sys.argv and sys.argv[0].endswith("runner.py") and "--supervise" not in sys.argv and "--probe" not in sys.argv:
        os.kill(os.getpid(), signal.SIGSEGV)
_t = threading.Timer(0.5, _fire)
_t.daemon = True
_t.start()
'''


@pytest.fixture(scope="module")
def remote_tmp(tmp_path_factory) -> Path:
    """The base of the runner's working folders on the "board", so a test can see what is left there."""
    return tmp_path_factory.mktemp("board-tmp")


@pytest.fixture(scope="module")
def inventory(sshd, remote_tmp, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inventory")
    site = folder / "crashsite"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_CRASH_SITE)
    crashing = folder / "crashing-python"  # a Python that segfaults 0.5 s into the benchmark
    crashing.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{sys.executable}" "$@"\n')
    crashing.chmod(0o755)
    hostile = remote_tmp / "it's a $(touch pwned) `id` dir"
    return write_inventory(folder / "devices.toml", sshd, sys.executable, devices={
        "board": {"target": sshd.target, "workdir": str(remote_tmp)},
        "hostile": {"target": sshd.target, "workdir": str(hostile)},
        "crashy": {"target": sshd.target, "workdir": str(remote_tmp), "python": str(crashing)},
        "badkey": {"target": sshd.target, "workdir": str(remote_tmp),
                   "ssh_config": str(sshd.client_config(sshd.rejected_key, "rejected_config"))},
        "nohostkey": {"target": sshd.target, "ssh_options": ["UserKnownHostsFile=/dev/null"]},
        "nopython": {"target": sshd.target, "python": "/nonexistent/python3"},
        "wrongport": {"target": f"ssh://{sshd.user}@127.0.0.1:{free_port()}"},
    })


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    # A hostile local file name: it must never reach a remote command line (files get fixed names there).
    return tiny_int8_tflite(tmp_path_factory.mktemp("tiny") / "tiny; $(touch pwned) 'q'.tflite")


def _left(remote_tmp: Path) -> list[str]:
    return sorted(str(p.relative_to(remote_tmp)) for p in remote_tmp.rglob("micronet-run.*"))


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


# ------------------------------------------------------------------------------------------ it works


def test_check_says_reachable_with_runtimes(sshd, inventory):
    (check,) = check_devices(["board"], inventory=inventory)
    assert check.reachable and check.problem is None
    assert "litert" in check.runtimes and "onnxruntime" in check.runtimes
    assert check.line().startswith(f"board ({sshd.target}): reachable · runtimes: litert ")


@pytest.mark.slow
def test_tiny_model_end_to_end_leaves_nothing_behind(sshd, inventory, tiny, remote_tmp):
    rows = run_on_device("board", [tiny], inventory=inventory, threads=[1, 2], xnnpack=[True, False], warmup=2, runs=5)
    assert [(r["threads"], r["xnnpack"]) for r in rows] == [(1, True), (2, True), (1, False), (2, False)]
    assert all(r["device"] == "board" and not r["invalid"] and r["latency"]["count"] == 5 for r in rows)
    assert rows[0]["settings"]["device"] == {"name": "board", "kind": "ssh", "target": sshd.target}
    assert _left(remote_tmp) == []


@pytest.mark.slow
def test_hostile_remote_folder_is_quoted_not_executed(sshd, inventory, tiny, remote_tmp, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a `touch pwned` run by a remote shell in our cwd would land
    rows = run_on_device("hostile", [tiny], inventory=inventory, warmup=1, runs=2)
    assert not rows[0]["invalid"]
    hostile = remote_tmp / "it's a $(touch pwned) `id` dir"
    assert hostile.is_dir() and list(hostile.iterdir()) == []  # created literally, emptied afterwards
    assert not list(remote_tmp.rglob("pwned")) and not (tmp_path / "pwned").exists()
    assert not Path(os.path.expanduser("~/pwned")).exists()


@pytest.mark.slow
def test_m0_int8_export_with_accuracy_on_pushed_inputs(sshd, inventory, remote_tmp, tmp_path_factory):
    """The headline: a real ``micronet export`` benchmarked on the "board" with accuracy from .npy inputs."""
    model = exported_m0_int8(tmp_path_factory.getbasetemp())
    manifest = json.loads(Path(f"{model}.json").read_text())
    desktop = get_runtime("litert")
    desktop.load(model)
    x = np.random.default_rng(5).standard_normal((8, 3, M0_SIZE, M0_SIZE)).astype(np.float32)
    predicted = np.concatenate([desktop.to_logits(desktop.run(desktop.prepare(x[i:i + 1]))) for i in range(8)]).argmax(1)
    labels = np.where(np.arange(8) < 6, predicted, (predicted + 1) % 1000)  # 6 of 8 right by construction
    eval_file = tmp_path_factory.mktemp("eval") / "inputs.npz"
    np.savez(eval_file, x=x, y=labels)
    report = device_report("board", [model], inventory=inventory, eval_inputs=eval_file, warmup=3, runs=20)
    (row,) = report["results"]
    assert not row["invalid"], row["invalid_reason"]
    assert row["device"] == "board" and row["runtime"] == "litert" and row["format"] == "tflite"
    assert row["variant"] == "m0" and row["quantize"] == "int8" and row["madds"] == manifest["madds"]
    assert row["input"]["dtype"] == "int8" and row["input"]["layout"] == "NHWC"
    assert row["accuracy"]["top1"] == pytest.approx(75.0) and row["accuracy"]["count"] == 8
    assert row["latency"]["count"] == 20 and row["init_ms"] > 0
    assert report["environment"]["device"]["kind"] == "ssh" and report["environment"]["board"] is not None
    assert _left(remote_tmp) == []


@pytest.mark.slow
def test_device_report_merges_with_a_local_run(sshd, inventory, tmp_path_factory, tmp_path):
    model = exported_m0_int8(tmp_path_factory.getbasetemp())
    remote = device_report("board", [model], inventory=inventory, warmup=2, runs=10)
    local = run_benchmark([model], runtimes=["litert"], warmup=2, runs=10, memory=False)
    rep.write_json(remote, tmp_path / "board.json")
    rep.write_json(local, tmp_path / "local.json")
    rows = rep.merge_reports([tmp_path / "local.json", tmp_path / "board.json"])
    assert [r["device"] for r in rows] == ["local", "board"]
    assert {r["name"] for r in rows} == {model.name}
    csv = rep.csv_text(rows).splitlines()
    device_col = csv[0].split(",").index("device")
    assert [line.split(",")[device_col] for line in csv[1:]] == ["local", "board"]


# ------------------------------------------------------------------------------------------ failures


def test_wrong_port_is_unreachable(inventory, tiny):
    with pytest.raises(UnreachableError) as info:
        run_on_device("wrongport", [tiny], inventory=inventory)
    assert _one_line(info.value).endswith("unreachable: connection refused (no SSH server on that port?)")
    (check,) = check_devices(["wrongport"], inventory=inventory)
    assert not check.reachable and check.line().startswith("wrongport (ssh://")
    assert check.line().endswith(": unreachable: connection refused (no SSH server on that port?)")


def test_rejected_key_is_an_authentication_failure(sshd, inventory, tiny, remote_tmp):
    with pytest.raises(AuthError) as info:
        run_on_device("badkey", [tiny], inventory=inventory)
    text = _one_line(info.value)
    assert f"{sshd.target}: authentication failed (" in text and "Permission denied (publickey)" in text
    assert _left(remote_tmp) == []


def test_unknown_host_key_is_never_accepted_silently(inventory, tiny):
    with pytest.raises(AuthError, match="host key is unknown or has changed; connect once by hand"):
        run_on_device("nohostkey", [tiny], inventory=inventory)


def test_no_python_on_the_device(inventory, tiny):
    with pytest.raises(MicronetError, match=r"no Python at '/nonexistent/python3' on the device .*set python ="):
        run_on_device("nopython", [tiny], inventory=inventory)


@pytest.mark.slow
def test_runner_crash_is_one_line_and_the_folder_is_removed(inventory, remote_tmp, tmp_path_factory):
    # The crash fires 0.5 s into the benchmark child. The tiny model's 100,000 runs (the runner's cap) took
    # less than that on a fast CPU, so the run ended cleanly before it; m0's take seconds on any machine.
    model = exported_m0_int8(tmp_path_factory.getbasetemp())
    with pytest.raises(RunnerFailed) as info:
        run_on_device("crashy", [model], inventory=inventory, warmup=10, runs=100_000)
    assert _one_line(info.value) == "the benchmark runner crashed on crashy (SIGSEGV): Fatal Python error: Segmentation fault"
    assert _left(remote_tmp) == []


def test_runner_error_is_one_line_and_the_folder_is_removed(inventory, tiny, remote_tmp):
    with pytest.raises(RunnerFailed) as info:
        run_on_device("board", [tiny], inventory=inventory, runtime="tflite-runtime")
    assert _one_line(info.value) == ("board: runtime tflite-runtime is not installed on this device: "
                                     "pip install tflite-runtime")
    assert _left(remote_tmp) == []


@pytest.mark.slow
def test_raw_target_uses_inventory_defaults(sshd, inventory, tiny):
    rows = run_on_device(sshd.target, [tiny], inventory=inventory, warmup=1, runs=2)
    assert rows[0]["device"] == sshd.target
    assert load_inventory(inventory).resolve(sshd.target).options.python == sys.executable
