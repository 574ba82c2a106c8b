"""The emulated arm64 check names its CPU (a Pi 4's or a Pi 5's cores), never qemu's default ``-cpu max``.
Fast: nothing is emulated, only the command line is built."""

from __future__ import annotations

import pytest

from micronet.devices import emulation
from micronet.errors import MicronetError


@pytest.fixture
def qemu_found(monkeypatch):
    monkeypatch.setattr(emulation.shutil, "which", lambda name: f"/usr/bin/{name}")


def test_the_pi4_cores_by_default_and_the_pi5_cores_on_request(qemu_found, tmp_path):
    argv, _ = emulation.emulated_python(tmp_path)
    assert argv[:3] == ["/usr/bin/qemu-aarch64-static", "-cpu", "cortex-a72"] and emulation.DEFAULT_PI == "pi4"
    argv, _ = emulation.emulated_python(tmp_path, "pi5")
    assert argv[1:3] == ["-cpu", "cortex-a76"] and "max" not in argv


def test_an_unknown_board_is_one_clear_error(qemu_found, tmp_path):
    with pytest.raises(MicronetError, match="unknown board 'pi3'.*pi4, pi5"):
        emulation.emulated_python(tmp_path, "pi3")


def test_the_emulated_device_remembers_its_board(qemu_found, tmp_path):
    device = emulation.EmulatedDevice(tmp_path, "pi5")
    assert device.pi == "pi5" and "cortex-a76" in device.transport.interpreter


def test_the_emulated_target_names_its_board():
    from micronet.devices.target import parse_target

    assert parse_target("emulated").board == "pi4" and parse_target("emulated:pi5").board == "pi5"
    assert parse_target("emulated:pi5").kind == "emulated"
    with pytest.raises(MicronetError, match="unknown board 'max'"):
        parse_target("emulated:max")
