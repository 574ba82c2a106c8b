"""Device targets and the devices.toml inventory: what parses, what is refused before any process starts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from micronet.devices.target import (
    EMPTY_INVENTORY,
    DeviceOptions,
    check_cpu_mask,
    load_inventory,
    parse_target,
)
from micronet.errors import MicronetError


@pytest.mark.parametrize(
    ("text", "kind", "fields"),
    [
        ("local", "local", {}),
        ("ssh://pi@raspberrypi.local", "ssh", {"user": "pi", "host": "raspberrypi.local", "port": None}),
        ("ssh://pi@192.168.1.20:2222", "ssh", {"user": "pi", "host": "192.168.1.20", "port": 2222}),
        ("ssh://jetson", "ssh", {"user": None, "host": "jetson"}),  # user and port from ~/.ssh/config
        ("ssh://me@[::1]:22", "ssh", {"host": "[::1]", "port": 22}),
        ("adb", "adb", {"serial": None}),
        ("adb:28031FDH2000KL", "adb", {"serial": "28031FDH2000KL"}),
        ("adb:192.168.1.5:5555", "adb", {"serial": "192.168.1.5:5555"}),  # adb over Wi-Fi
        ("adb:emulator-5554", "adb", {"serial": "emulator-5554"}),
    ],
)
def test_targets_parse(text, kind, fields):
    target = parse_target(text)
    assert target.kind == kind and target.name == target.text
    for key, value in fields.items():
        assert getattr(target, key) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ssh://-oProxyCommand=touch_pwned", "bad host name"),  # would be an ssh option
        ("ssh://-l@host", "bad user name"),
        ("ssh://pi@host;rm", "bad host name"),
        ("ssh://pi@host:0", "bad port"),
        ("ssh://pi@host:99999", "bad port"),
        ("ssh://pi@host/path", "expected ssh://user@host"),
        ("ssh://pi@ho st", "bad host name"),
        ("adb:-s", "bad adb serial"),
        ("adb:a b", "bad adb serial"),
        ("telnet://pi", "unknown device target"),
        ("", "empty device target"),
    ],
)
def test_hostile_or_malformed_targets_are_refused(text, message):
    with pytest.raises(MicronetError, match=message):
        parse_target(text)


def test_cpu_masks():
    assert check_cpu_mask("f0") == "f0" and check_cpu_mask("0xF0") == "F0"
    for bad in ("0", "g", "f0; reboot", "", 15):
        with pytest.raises(MicronetError, match="cpu_mask"):
            check_cpu_mask(bad)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devices.toml"
    path.write_text(text)
    return path


def test_inventory_names_defaults_and_relative_paths(tmp_path):
    inv = load_inventory(_write(tmp_path, """
[defaults]
connect_timeout_s = 7
python = "/usr/bin/python3"

[devices.pi4]
target = "ssh://pi@raspberrypi.local"
python = "/home/pi/venv/bin/python3"
runtime = "litert"
threads = [1, 4]
cpu_mask = "0xf"
identity = "keys/pi"
ssh_options = ["ProxyJump=bastion"]
max_temp_c = 80
retry_throttled = 2

[devices.pixel]
target = "adb:28031FDH2000KL"
benchmark_binary = "bin/benchmark_model"
"""))
    pi = inv.resolve("pi4")
    assert pi.kind == "ssh" and pi.name == "pi4" and pi.host == "raspberrypi.local"
    o = pi.options
    assert o.python == "/home/pi/venv/bin/python3" and o.threads == (1, 4) and o.cpu_mask == "f"
    assert o.identity == tmp_path / "keys" / "pi" and o.ssh_options == ("ProxyJump=bastion",)
    assert o.connect_timeout_s == 7 and o.max_temp_c == 80.0 and o.retry_throttled == 2
    phone = inv.resolve("pixel")
    assert phone.serial == "28031FDH2000KL" and phone.options.benchmark_binary == tmp_path / "bin" / "benchmark_model"
    raw = inv.resolve("ssh://me@10.0.0.2")  # a raw target inherits [defaults]
    assert raw.name == "ssh://me@10.0.0.2" and raw.options.python == "/usr/bin/python3"
    assert raw.options.connect_timeout_s == 7


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[devices.pi]\ntarget = "ssh://pi@h"\npyhton = "x"\n', "unknown option(s) pyhton"),
        ('[devices.pi]\npython = "x"\n', "needs target ="),
        ('[devices.pi]\ntarget = "ssh://pi@h"\nthreads = 0\n', "threads must be"),
        ('[devices.pi]\ntarget = "ssh://pi@h"\nruntime = "tensorrt"\n', "runtime must be"),
        ('[devices.pi]\ntarget = "ssh://pi@h"\ncpu_mask = "zz"\n', "cpu_mask"),
        ('[devices.pi]\ntarget = "ssh://pi@h"\nbenchmark_binary = "b"\n',
         "benchmark_binary does not apply to an ssh device"),
        ('[devices.ph]\ntarget = "adb"\npython = "p"\n', "python does not apply to an adb device"),
        ('[devices.pi]\ntarget = "ssh://-oProxyCommand=x"\n', "[devices.pi]: bad host name"),
        ('[devices.pi]\ntarget = "ssh://pi@h"\nssh_options = ["not an option"]\n', "ssh_options"),
        ('[devics.pi]\ntarget = "local"\n', "unknown section"),
        ('[devices.pi]\ntarget = "local"\nidentity = "k"\ncpu_mask = "f"\nadb = "a"\n',
         "[devices.pi]: adb, identity do not apply to a local device"),
        ('defaults = 5\n', "defaults must be a [defaults] table"),
        ('[devices.pi\ntarget = "local"\n', "not valid TOML"),
    ],
)
def test_inventory_mistakes_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(MicronetError, match=re.escape(message)) as info:
        load_inventory(_write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_inventory_lookup_order_and_unknown_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MICRONET_DEVICES", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert load_inventory() is EMPTY_INVENTORY  # no file anywhere: raw targets still work
    assert load_inventory().resolve("local").kind == "local"
    _write(tmp_path, '[devices.here]\ntarget = "local"\n')
    assert "here" in load_inventory().devices  # ./devices.toml
    other = tmp_path / "elsewhere.toml"
    other.write_text('[devices.there]\ntarget = "adb"\n')
    monkeypatch.setenv("MICRONET_DEVICES", str(other))
    inv = load_inventory()
    assert list(inv.devices) == ["there"]
    with pytest.raises(MicronetError, match="unknown device 'pi5'.*devices: there"):
        inv.resolve("pi5")
    monkeypatch.setenv("MICRONET_DEVICES", str(tmp_path / "missing.toml"))
    with pytest.raises(MicronetError, match="does not exist"):
        load_inventory()
    with pytest.raises(MicronetError, match="device inventory not found"):
        load_inventory(tmp_path / "nope.toml")


def test_options_have_working_defaults():
    o = DeviceOptions()
    assert o.python == "python3" and o.adb == "adb" and o.connect_timeout_s == 10 and o.retry_throttled == 0
