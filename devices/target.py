"""Where a benchmark runs: target strings (``local``, ``ssh://user@host:port``, ``adb:SERIAL``) and the
``devices.toml`` inventory that names them and carries their per-device options.

Why a URL-like string: one ``--device`` argument has to say both *how* to reach a machine and *which*
machine, and it has to be safe to hand to ``ssh``/``adb``. Everything a user types here ends up as an
argument of another program, so parsing is strict: a host or serial that starts with ``-`` (which
``ssh``/``adb`` would read as an option, e.g. ``-oProxyCommand=...``) or contains whitespace, quotes
or shell metacharacters is rejected here, before any process is started.

Inventory (TOML)::

    [defaults]                  # optional: applies to every device, also to raw targets
    connect_timeout_s = 10

    [devices.pi4]
    target = "ssh://pi@raspberrypi.local"
    python = "/home/pi/venv/bin/python3"   # the interpreter on the device
    runtime = "litert"                      # litert | tflite-runtime | tf-lite | onnxruntime
    threads = [1, 4]
    cpu_mask = "f"                          # hex affinity mask (taskset convention)
    identity = "~/.ssh/id_ed25519"          # ssh -i
    ssh_options = ["ProxyJump=bastion"]     # extra ssh -o KEY=VALUE
    max_temp_c = 80                          # a run ending hotter than this is invalid

    [devices.pixel7]
    target = "adb:28031FDH2000KL"
    benchmark_binary = "~/android/benchmark_model_arm64"
    cpu_mask = "f0"

Where the inventory is looked up (first found): an explicit path, ``$MICRONET_DEVICES``,
``./devices.toml``, ``$XDG_CONFIG_HOME/micronet/devices.toml`` (``~/.config/...``). No inventory is
fine: raw targets work without one.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from micronet.errors import MicronetError

KINDS = ("local", "ssh", "adb", "emulated")
TFLITE_RUNTIMES = ("litert", "tflite-runtime", "tf-lite")
DEVICE_RUNTIMES = TFLITE_RUNTIMES + ("onnxruntime",)
ENV_INVENTORY = "MICRONET_DEVICES"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_IPV6 = re.compile(r"^\[[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?\]$")
_SERIAL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")
_MASK = re.compile(r"^(0[xX])?[0-9A-Fa-f]+$")
_SSH_OPTION = re.compile(r"^[A-Za-z][A-Za-z0-9]*=[^\n\r]*$")


@dataclass(frozen=True)
class DeviceOptions:
    """Per-device settings from the inventory; every field has a working default.

    Times are in seconds (``_s``), temperatures in °C (``_c``).
    """

    python: str = "python3"  # interpreter on an SSH device (a path or a name on its PATH)
    runtime: str | None = None  # None: the best runtime the device has for each model
    threads: tuple[int, ...] | None = None  # None: whatever the caller asks (default 1)
    cpu_mask: str | None = None  # hex affinity mask, e.g. "f0" = CPUs 4-7 (big cores on many phones)
    benchmark_binary: Path | None = None  # Android: LiteRT benchmark_model for the phone's ABI
    identity: Path | None = None  # ssh -i
    ssh_config: Path | None = None  # ssh -F (replaces ~/.ssh/config for this device)
    ssh_options: tuple[str, ...] = ()  # extra ssh -o KEY=VALUE
    adb: str = "adb"  # the adb executable
    workdir: str | None = None  # remote base folder: $TMPDIR or /tmp (SSH), /data/local/tmp (adb)
    connect_timeout_s: int = 10
    timeout_s: float = 3600.0  # the whole on-device run
    cooldown_s: float = 0.0  # pause between models, so heat from one does not slow the next
    max_temp_c: float | None = None  # a run that ends hotter than this is invalid
    cool_to_c: float | None = None  # --retry-throttled waits until the SoC is at most this warm
    cool_timeout_s: float = 600.0  # ... but no longer than this
    retry_throttled: int = 0  # re-runs of a throttled measurement after cooling down
    description: str | None = None

    def merged(self, overrides: dict[str, Any]) -> "DeviceOptions":
        return replace(self, **overrides)


OPTION_NAMES = tuple(f.name for f in fields(DeviceOptions))


@dataclass(frozen=True)
class DeviceSpec:
    """A parsed device target: ``kind`` plus what that kind needs to connect, and its inventory options.

    (Named apart from the other "targets" of the project: a benchmark model is a ``BenchModel``, an
    export's format/quantisation pair an export target.)"""

    kind: str  # "local" | "ssh" | "adb" | "emulated"
    text: str  # the target string as written (normalised)
    name: str  # what the report's ``device`` column shows: the inventory name or the target string
    user: str | None = None
    host: str | None = None
    port: int | None = None
    serial: str | None = None
    board: str | None = None  # emulated: the board whose cores qemu emulates (devices.emulation.PI_CPUS)
    options: DeviceOptions = field(default_factory=DeviceOptions)

    @property
    def ssh_destination(self) -> str:
        """``user@host`` (or ``host``) as ``ssh`` takes it; the port goes in ``-p``."""
        return f"{self.user}@{self.host}" if self.user else str(self.host)


# ------------------------------------------------------------------------------------------ parsing


def parse_target(text: str, *, name: str | None = None, options: DeviceOptions | None = None) -> DeviceSpec:
    """``local`` | ``ssh://[user@]host[:port]`` | ``adb`` | ``adb:SERIAL`` → ``DeviceSpec``; anything else is an error."""
    if not isinstance(text, str) or not text.strip():
        raise MicronetError("empty device target: use local, ssh://user@host[:port] or adb[:SERIAL]")
    raw = text.strip()
    opts = options or DeviceOptions()
    if raw == "local":
        return DeviceSpec("local", "local", name or "local", options=opts)
    if raw == "adb" or raw.startswith("adb:"):
        serial = raw[4:] or None
        if serial is not None and not _SERIAL.match(serial):
            raise MicronetError(f"bad adb serial {serial!r} in target {raw!r}: letters, digits and . _ : - only")
        return DeviceSpec("adb", raw, name or raw, serial=serial, options=opts)
    if raw.startswith("ssh://"):
        return _parse_ssh(raw, name, opts)
    if raw == "emulated" or raw.startswith("emulated:"):
        from .emulation import DEFAULT_PI, qemu_cpu

        board = raw.partition(":")[2] or DEFAULT_PI
        qemu_cpu(board)  # an unknown board is an error here, before anything runs
        return DeviceSpec("emulated", raw, name or raw, board=board, options=opts)
    raise MicronetError(f"unknown device target {raw!r}: use local, ssh://user@host[:port], adb[:SERIAL], "
                        "emulated[:pi4|pi5] or a name from devices.toml")


def _parse_ssh(raw: str, name: str | None, opts: DeviceOptions) -> DeviceSpec:
    rest = raw[len("ssh://"):].rstrip("/")
    if not rest or "/" in rest or "?" in rest or "#" in rest:
        raise MicronetError(f"bad ssh target {raw!r}: expected ssh://user@host[:port]")
    user = None
    if "@" in rest:
        user, _, rest = rest.rpartition("@")
        if not _USER.match(user):
            raise MicronetError(f"bad user name {user!r} in {raw!r}")
    port: int | None = None
    if rest.startswith("["):  # [IPv6]:port
        close = rest.find("]")
        host, tail = rest[: close + 1], rest[close + 1:]
        if tail:
            if not tail.startswith(":"):
                raise MicronetError(f"bad ssh target {raw!r}: expected [address]:port")
            port = _port(tail[1:], raw)
        if not _IPV6.match(host):
            raise MicronetError(f"bad IPv6 address {host!r} in {raw!r}")
    else:
        host, sep, port_text = rest.partition(":")
        if sep:
            port = _port(port_text, raw)
        if not _HOST.match(host):
            raise MicronetError(f"bad host name {host!r} in {raw!r}: letters, digits and . _ - only")
    text = "ssh://" + (f"{user}@" if user else "") + host + (f":{port}" if port else "")
    return DeviceSpec("ssh", text, name or text, user=user, host=host, port=port, options=opts)


def _port(text: str, raw: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise MicronetError(f"bad port {text!r} in {raw!r}: expected 1-65535")
    return int(text)


# ------------------------------------------------------------------------------------------ inventory


@dataclass(frozen=True)
class InventoryEntry:
    name: str
    target: DeviceSpec


@dataclass(frozen=True)
class Inventory:
    """Named devices from a ``devices.toml`` plus the ``[defaults]`` every target inherits."""

    path: Path | None
    defaults: DeviceOptions
    devices: dict[str, InventoryEntry]

    def resolve(self, text: str) -> DeviceSpec:
        """An inventory name, or a raw target string with the defaults applied."""
        if text in self.devices:
            return self.devices[text].target
        try:
            return parse_target(text, options=self.defaults)
        except MicronetError:
            if _NAME.match(text.strip() or "-") and text.strip() not in ("local", "adb"):
                where = f"{self.path}" if self.path else "no devices.toml found"
                known = ", ".join(self.devices) or "none"
                raise MicronetError(f"unknown device {text!r}: not in the inventory ({where}; devices: {known}) "
                                    "and not a target (local, ssh://user@host[:port], adb[:SERIAL])") from None
            raise


EMPTY_INVENTORY = Inventory(None, DeviceOptions(), {})


def inventory_candidates() -> list[Path]:
    """Where ``load_inventory(None)`` looks, in order."""
    out = []
    if os.environ.get(ENV_INVENTORY):
        out.append(Path(os.environ[ENV_INVENTORY]).expanduser())
    out.append(Path("devices.toml"))
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    out.append(config / "micronet" / "devices.toml")
    return out


def load_inventory(path: str | os.PathLike | Inventory | None = None) -> Inventory:
    """Read ``devices.toml``: the given path (must exist), else the first of ``inventory_candidates()``.

    Without any file the result is an empty inventory, so raw targets still work.
    """
    if isinstance(path, Inventory):
        return path
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise MicronetError(f"device inventory not found: {file}")
        return _read_inventory(file)
    env = os.environ.get(ENV_INVENTORY)
    if env and not Path(env).expanduser().is_file():
        raise MicronetError(f"${ENV_INVENTORY} names {env}, which does not exist")
    for candidate in inventory_candidates():
        if candidate.is_file():
            return _read_inventory(candidate)
    return EMPTY_INVENTORY


def _read_inventory(file: Path) -> Inventory:
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise MicronetError(f"cannot read device inventory {file}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise MicronetError(f"device inventory {file} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"defaults", "devices"})
    if unknown:
        raise MicronetError(f"{file}: unknown section(s) {', '.join(unknown)}; expected [defaults] and [devices.NAME]")
    base = file.parent
    if not isinstance(data.get("defaults", {}), dict):
        raise MicronetError(f"{file}: defaults must be a [defaults] table of options")
    defaults = DeviceOptions().merged(_options(data.get("defaults") or {}, f"{file} [defaults]", base))
    devices: dict[str, InventoryEntry] = {}
    table = data.get("devices") or {}
    if not isinstance(table, dict):
        raise MicronetError(f"{file}: [devices] must be a table of [devices.NAME] sections")
    for name, entry in table.items():
        where = f"{file} [devices.{name}]"
        if not _NAME.match(name) or name in ("local", "adb"):
            raise MicronetError(f"{where}: device names are letters, digits and . _ - (and not 'local' or 'adb')")
        if not isinstance(entry, dict) or not isinstance(entry.get("target"), str):
            raise MicronetError(f"{where}: needs target = \"local\" | \"ssh://user@host[:port]\" | \"adb[:SERIAL]\"")
        options = defaults.merged(_options({k: v for k, v in entry.items() if k != "target"}, where, base))
        try:
            target = parse_target(entry["target"], name=name, options=options)
        except MicronetError as exc:
            raise MicronetError(f"{where}: {exc}") from None
        _check_kind_options(target, {k for k in entry if k != "target"}, where)
        devices[name] = InventoryEntry(name, target)
    return Inventory(file, defaults, devices)


# Options that mean something for one kind of device only.
_SSH_ONLY = frozenset({"python", "identity", "ssh_config", "ssh_options"})
_ADB_ONLY = frozenset({"benchmark_binary", "adb"})


def _check_kind_options(target: DeviceSpec, keys: set[str], where: str) -> None:
    """An option that cannot apply to this kind of device is almost always a typo'd target."""
    wrong = (keys & _ADB_ONLY) if target.kind != "adb" else (keys & _SSH_ONLY)
    if target.kind == "local":
        wrong = keys & (_ADB_ONLY | _SSH_ONLY)
    if wrong:
        names = sorted(wrong)
        raise MicronetError(f"{where}: {', '.join(names)} {'does' if len(names) == 1 else 'do'} not apply to "
                            f"{'a' if target.kind == 'local' else 'an'} {target.kind} device")


def _options(raw: dict[str, Any], where: str, base: Path) -> dict[str, Any]:
    """Validate one table of options; relative file paths are relative to the inventory's folder."""
    unknown = sorted(set(raw) - set(OPTION_NAMES))
    if unknown:
        raise MicronetError(f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTION_NAMES)}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        out[key] = _option_value(key, value, where, base)
    return out


def _option_value(key: str, value: Any, where: str, base: Path) -> Any:
    def bad(expected: str) -> MicronetError:
        return MicronetError(f"{where}: {key} must be {expected}, got {value!r}")

    if key in ("python", "adb", "workdir", "description"):
        if not isinstance(value, str) or not value or "\n" in value or "\0" in value:
            raise bad("a non-empty one-line string")
        return value
    if key == "runtime":
        if value not in DEVICE_RUNTIMES:
            raise bad(" | ".join(DEVICE_RUNTIMES))
        return value
    if key == "threads":
        values = [value] if isinstance(value, int) else value
        if (not isinstance(values, list) or not values
                or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values)):
            raise bad("a positive integer or a list of them")
        return tuple(values)
    if key == "cpu_mask":
        return check_cpu_mask(value, where)
    if key in ("benchmark_binary", "identity", "ssh_config"):
        if not isinstance(value, str) or not value:
            raise bad("a file path")
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path
    if key == "ssh_options":
        if not isinstance(value, list) or any(not isinstance(v, str) or not _SSH_OPTION.match(v) for v in value):
            raise bad('a list of "Key=value" strings')
        return tuple(value)
    if key == "connect_timeout_s":
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 600:
            raise bad("whole seconds, 1-600")
        return value
    if key == "retry_throttled":
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 20:
            raise bad("a number of retries, 0-20")
        return value
    if key in ("timeout_s", "cooldown_s", "cool_timeout_s", "max_temp_c", "cool_to_c"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise bad("a number >= 0")
        return float(value)
    raise AssertionError(key)  # every option name is handled above


def check_cpu_mask(value: Any, where: str = "cpu_mask") -> str:
    """A hex affinity mask as ``taskset`` takes it (``f0`` or ``0xf0``); returned without the 0x."""
    if not isinstance(value, str) or not _MASK.match(value) or int(value, 16) == 0:
        raise MicronetError(f"{where}: cpu_mask must be a non-zero hex mask like \"f0\" (CPUs 4-7), got {value!r}")
    return value[2:] if value.lower().startswith("0x") else value
