"""Android over adb, against a clearly named STAND-IN adb and benchmark_model (``fixtures/phone.py``).

No phone exists here. The stand-in adb maps the phone's /data/local/tmp onto a local folder and runs
``adb shell`` lines with /bin/sh; the stand-in benchmark_model really runs the model with LiteRT and
prints the real tool's documented output format. What this proves: the commands we build, the
quoting, the parsing, the fingerprint, the thermal rules, the errors and the clean-up. What it cannot
prove: behaviour of a real phone's adbd, shell or benchmark_model build.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from fixtures.models import tiny_int8_tflite, tiny_onnx
from fixtures.phone import SERIAL, make_phone
from fixtures.sshd import toml_value
from micronet.devices.adb import binary_abi, parse_devices
from micronet.devices.api import check_devices, device_report, run_on_device
from micronet.devices.base import AuthError, UnreachableError
from micronet.errors import MicronetError


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("adb-models")
    return {"tflite": tiny_int8_tflite(folder / "tiny.tflite"), "onnx": tiny_onnx(folder / "tiny.onnx")}


@pytest.fixture
def phone(tmp_path):
    return make_phone(tmp_path)


def _inventory(tmp_path: Path, phone, **options) -> Path:
    lines = ["[devices.phone]", 'target = "adb"', f'adb = "{phone.adb}"', f'benchmark_binary = "{phone.binary}"']
    lines += [f"{key} = {toml_value(value)}" for key, value in options.items()]
    path = tmp_path / "devices.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fake_elf(path: Path, machine: int) -> Path:
    """Just an ELF header with the given e_machine: enough for the ABI check."""
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack("<HH", 2, machine)
    path.write_bytes(header + bytes(64))
    return path


def _shell_lines(phone) -> list[str]:
    return [call[-1] for call in phone.calls() if "shell" in call]


# ------------------------------------------------------------------------------------------ it works


@pytest.mark.slow
def test_benchmark_end_to_end_rows_fingerprint_and_cleanup(tmp_path, phone, models):
    inv = _inventory(tmp_path, phone, cpu_mask="1")
    report = device_report("phone", [models["tflite"]], inventory=inv, threads=[1, 2], xnnpack=[True, False],
                           warmup=2, runs=10)
    rows = report["results"]
    assert [(r["threads"], r["xnnpack"]) for r in rows] == [(1, True), (2, True), (1, False), (2, False)]
    for row in rows:
        assert row["device"] == "phone" and row["runtime"] == "benchmark_model" and not row["invalid"]
        assert row["latency"]["count"] == 10 and row["latency"]["mean_ms"] > 0 and row["init_ms"] > 0
        assert row["first_ms"] > 0 and row["memory"]["peak_rss_mib"] > 0
        assert row["settings"]["command"][:2] == ["taskset", "1"]
        assert row["settings"]["thermal"]["before"]["status"] == 0
    assert [r["xnnpack_applied"] for r in rows] == [True, True, False, False]
    env = report["environment"]
    assert env["os"]["system"] == "Android" and env["os"]["release"] == "14" and env["cpu"]["model"] == "StandIn SI-8000"
    assert env["board"]["abi"] == "x86_64" and env["board"]["thermal"]["cpu_temperature_c"] == 35.0
    assert phone.leftovers() == [] and list(phone.tmp.iterdir()) == []
    run_lines = [line for line in _shell_lines(phone) if "benchmark_model --graph" in line]
    assert run_lines[0].startswith("taskset 1 /data/local/tmp/micronet-run.") and "--use_xnnpack=true" in run_lines[0]
    assert "--report_peak_memory_footprint=true" in run_lines[0] and "--num_threads=1" in run_lines[0]


def test_check_line(tmp_path, phone):
    (check,) = check_devices(["phone"], inventory=_inventory(tmp_path, phone))
    import hashlib

    digest = hashlib.sha256(phone.binary.read_bytes()).hexdigest()[:16]
    # benchmark_model prints no version: its ABI (a script: none) and the binary's digest name it
    assert check.reachable and check.runtimes == {"benchmark_model": f"script sha256:{digest}"}
    cores = check.summary.split("×")[1].split(" ")[0]  # from the host's /sys, through the stand-in shell
    assert check.line() == (f"phone (adb): reachable · runtimes: benchmark_model script sha256:{digest} · StandIn "
                            f"Phone 1 (not a real phone) · StandIn SI-8000 ×{cores} · Android 14 (SDK 34) x86_64 · "
                            "35.0 °C")


def test_hostile_remote_folder_is_quoted(tmp_path, phone, models, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hostile = "/data/local/tmp/it's a $(touch pwned) `id` dir"
    rows = run_on_device("phone", [models["tflite"]], inventory=_inventory(tmp_path, phone, workdir=hostile),
                         warmup=1, runs=2)
    assert not rows[0]["invalid"]
    folder = phone.tmp / "it's a $(touch pwned) `id` dir"
    assert folder.is_dir() and list(folder.iterdir()) == []
    assert not list(tmp_path.rglob("pwned"))


@pytest.mark.slow
def test_throttled_run_is_invalid_and_retry_measures_again(tmp_path, phone, models, monkeypatch):
    from micronet.devices import adb

    monkeypatch.setattr(adb.AdbDevice, "_sleep", staticmethod(lambda s: None))
    inv = _inventory(tmp_path, phone)
    phone.set_state(thermal=[0, 0, 2, 0])  # environment, before, after (moderate!), then cool
    (row,) = run_on_device("phone", [models["tflite"]], inventory=inv, warmup=1, runs=3)
    assert row["invalid"] and row["invalid_reason"] == "phone throttled during the run (thermal status moderate, 0 -> 2)"
    assert row["latency"]["count"] == 3  # kept, but flagged
    phone.set_state(thermal=[0, 0, 2, 1, 0])  # ... then light while cooling, none, and a clean second attempt
    (row,) = run_on_device("phone", [models["tflite"]], inventory=inv, warmup=1, runs=3, retry_throttled=True)
    assert not row["invalid"] and len(row["settings"]["thermal_attempts"]) == 2
    assert row["notes"] == ["measured 2 times: earlier attempts throttled"]
    assert phone.leftovers() == []


def test_accuracy_is_not_faked_on_android(tmp_path, phone, models):
    import numpy as np

    eval_file = tmp_path / "eval.npz"
    np.savez(eval_file, x=np.zeros((2, 3, 16, 16), np.float32), y=np.zeros(2, np.int64))
    (row,) = run_on_device("phone", [models["tflite"]], inventory=_inventory(tmp_path, phone), eval_inputs=eval_file,
                           warmup=1, runs=2)
    assert row["accuracy"] is None
    assert "accuracy not measured on Android: benchmark_model feeds random inputs" in row["notes"]


def test_a_failing_benchmark_model_is_an_invalid_row_and_cleans_up(tmp_path, phone, models):
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"\0\0\0\0TFL3" + bytes(64))
    rows = run_on_device("phone", [broken, models["tflite"]], inventory=_inventory(tmp_path, phone), warmup=1, runs=2)
    assert rows[0]["invalid"] and rows[0]["invalid_reason"].startswith("benchmark_model did not finish: ERROR: Could "
                                                                       "not open")
    assert not rows[1]["invalid"] and phone.leftovers() == []


# ------------------------------------------------------------------------------------------ failures


def test_missing_adb(tmp_path, phone, models):
    inv = _inventory(tmp_path, phone)
    inv.write_text(inv.read_text().replace(f'adb = "{phone.adb}"', 'adb = "/nonexistent/adb"'))
    with pytest.raises(MicronetError) as info:
        run_on_device("phone", [models["tflite"]], inventory=inv)
    assert str(info.value) == ("adb not found ('/nonexistent/adb'): install Android platform-tools (Debian/Ubuntu: "
                               "apt-get install adb) or set adb = \"/path/to/adb\" in devices.toml")


@pytest.mark.parametrize(
    ("devices", "target", "error", "message"),
    [
        ([], "phone", UnreachableError, "phone: unreachable: no Android device connected (adb devices lists none)"),
        ([[SERIAL, "unauthorized"]], "phone", AuthError, f"phone: device {SERIAL} is unauthorized: unlock the phone "
                                                         "and accept the 'Allow USB debugging?' prompt"),
        ([[SERIAL, "offline"]], "phone", UnreachableError, f"phone: unreachable: device {SERIAL} is offline"),
        ([[SERIAL, "device"], ["OTHER", "device"]], "phone", MicronetError,
         f"phone: several Android devices connected ({SERIAL}, OTHER): choose one with adb:SERIAL"),
        ([["OTHER", "device"]], "adb:MISSING1", UnreachableError,
         "adb:MISSING1: unreachable: Android device MISSING1 is not connected (adb devices lists: OTHER)"),
    ],
)
def test_device_state_errors(tmp_path, phone, models, devices, target, error, message):
    phone.set_state(devices=devices)
    inv = _inventory(tmp_path, phone)
    inv.write_text(inv.read_text() + f'\n[defaults]\nadb = "{phone.adb}"\n')
    with pytest.raises(error) as info:
        run_on_device(target, [models["tflite"]], inventory=inv, benchmark_binary=phone.binary)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert phone.leftovers() == []


def test_binary_missing_not_given_or_for_another_abi(tmp_path, phone, models):
    inv = _inventory(tmp_path, phone)
    with pytest.raises(MicronetError, match=r"benchmark_model binary not found: /nope/benchmark_model \(see the README"):
        run_on_device("phone", [models["tflite"]], inventory=inv, benchmark_binary="/nope/benchmark_model")
    inv.write_text(inv.read_text().replace(f'benchmark_binary = "{phone.binary}"', ""))
    with pytest.raises(MicronetError, match="no benchmark_model binary: give --benchmark-binary or set benchmark_binary"):
        run_on_device("phone", [models["tflite"]], inventory=inv)
    arm64 = _fake_elf(tmp_path / "benchmark_model_arm64", 183)
    with pytest.raises(MicronetError, match=r"is built for arm64-v8a but phone runs x86_64, x86: use the benchmark_model "
                                            r"for x86_64"):
        run_on_device("phone", [models["tflite"]], inventory=inv, benchmark_binary=arm64)
    junk = tmp_path / "junk"
    junk.write_bytes(b"MZ not an elf at all....")
    with pytest.raises(MicronetError, match="is not an executable \\(no ELF header\\)"):
        run_on_device("phone", [models["tflite"]], inventory=inv, benchmark_binary=junk)
    assert phone.leftovers() == [] and not any("push" in call for call in phone.calls())


def test_onnx_is_refused_before_anything_is_pushed(tmp_path, phone, models):
    with pytest.raises(MicronetError, match="Android runs .tflite models \\(benchmark_model\\); tiny.onnx is onnx"):
        run_on_device("phone", [models["onnx"]], inventory=_inventory(tmp_path, phone))
    assert phone.calls() == []


def test_helpers():
    assert parse_devices("List of devices attached\nA1\tdevice\nB2\tunauthorized\n"
                         "C3\tno permissions (user in plugdev group); see [http://developer.android.com/tools/device.html]\n"
                         "emulator-5554          device product:sdk model:sdk usb:1-1\n\n") == [
        ("A1", "device"), ("B2", "unauthorized"), ("C3", "no permissions"), ("emulator-5554", "device")]


def test_elf_abi(tmp_path):
    assert binary_abi(_fake_elf(tmp_path / "a", 183)) == "arm64-v8a"
    assert binary_abi(_fake_elf(tmp_path / "b", 40)) == "armeabi-v7a"
    script = tmp_path / "s"
    script.write_text("#!/bin/sh\n")
    assert binary_abi(script) is None


def test_how_to_get_points_to_a_readme_heading_that_exists():
    from micronet.devices.adb import HOW_TO_GET, README_SECTION

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    headings = {line.lstrip("#").strip() for line in readme.splitlines() if line.startswith("#")}
    section = re.search(r"section '([^']+)'", HOW_TO_GET)[1]
    assert section == README_SECTION and section in headings
