"""Device fingerprints: what a phone says about itself (``getprop``, ``dumpsys thermalservice``) turned
into the report's ``environment`` shape, and the one-line summary ``micronet devices check`` prints.

Why it matters: a latency figure from a board is only comparable with another from the same board,
SoC, OS and thermal state, and merged reports need those facts in the same fields whether they came
from a desktop, a Pi (``runner.environment``) or a phone. Linux boards fingerprint themselves inside
``runner.py`` (it runs there); the Raspberry Pi throttle decoding lives there too and is re-exported.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from .runner import THROTTLE_BITS, thermal_problems, throttle_flags  # noqa: F401  (re-exported)

_PROP = re.compile(r"^\[(?P<key>[^\]]+)\]: \[(?P<value>.*)\]$")
# android.os.PowerManager THERMAL_STATUS_*: 1 (light) is where the platform starts throttling.
THERMAL_STATUS = {0: "none", 1: "light", 2: "moderate", 3: "severe", 4: "critical", 5: "emergency", 6: "shutdown"}
THROTTLING_FROM = 1
_TEMPERATURE = re.compile(r"Temperature\{mValue=(?P<value>-?[\d.]+), mType=(?P<type>-?\d+), mName=(?P<name>[^,]*)")
_TYPE_CPU, _TYPE_SKIN = 0, 3


def parse_getprop(text: str) -> dict[str, str]:
    """``adb shell getprop`` output (``[key]: [value]`` per line) → dict; other lines are ignored."""
    props = {}
    for line in text.splitlines():
        match = _PROP.match(line.strip())
        if match:
            props[match["key"]] = match["value"]
    return props


def parse_thermal(text: str) -> dict[str, Any]:
    """``dumpsys thermalservice`` → status (0-6) and the hottest CPU / skin temperatures in °C.

    Only the "Current temperatures from HAL" block is read when present: the cached block above it
    can be minutes old.
    """
    status = None
    match = re.search(r"Thermal Status:\s*(\d+)", text)
    if match:
        status = int(match.group(1))
    current = text.split("Current temperatures from HAL:", 1)[-1]
    current = current.split("Current cooling devices from HAL:", 1)[0]
    cpu, skin = [], []
    for m in _TEMPERATURE.finditer(current):
        value, kind = float(m["value"]), int(m["type"])
        if kind == _TYPE_CPU:
            cpu.append(value)
        elif kind == _TYPE_SKIN:
            skin.append(value)
    return {"status": status, "status_name": THERMAL_STATUS.get(status) if status is not None else None,
            "cpu_temperature_c": max(cpu) if cpu else None, "skin_temperature_c": max(skin) if skin else None}


def android_problems(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """A run is invalid when the platform reported throttling (status >= light) at either end."""
    worst = max((s for s in (before.get("status"), after.get("status")) if s is not None), default=None)
    if worst is not None and worst >= THROTTLING_FROM:
        return [f"phone throttled during the run (thermal status {THERMAL_STATUS.get(worst, worst)}, "
                f"{before.get('status')} -> {after.get('status')})"]
    return []


def android_environment(props: dict[str, str], *, serial: str | None, cores: int | None,
                        thermal: dict[str, Any] | None, binary: dict[str, Any] | None) -> dict[str, Any]:
    """The report's ``environment`` object for a phone, from its properties."""
    soc = " ".join(p for p in (props.get("ro.soc.manufacturer"), props.get("ro.soc.model")) if p) or \
        props.get("ro.board.platform") or props.get("ro.hardware")
    release, sdk = props.get("ro.build.version.release"), props.get("ro.build.version.sdk")
    abi = props.get("ro.product.cpu.abi")
    model = " ".join(p for p in (props.get("ro.product.manufacturer"), props.get("ro.product.model")) if p) or None
    return {
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": props.get("ro.product.device") or serial,
        "os": {"system": "Android", "release": release, "version": props.get("ro.build.fingerprint"),
               "machine": abi, "platform": f"Android {release} (SDK {sdk})" if release else None},
        "python": None,
        "cpu": {"model": soc, "arch": abi, "logical_cores": cores, "physical_cores": None, "governor": None,
                "cur_mhz": None, "min_mhz": None, "max_mhz": None, "load_avg_1m": None, "load_avg_5m": None,
                "load_avg_15m": None},
        "memory_total_mib": None,
        "libraries": {"benchmark_model": (binary or {}).get("name")},
        "micronet_git": None,
        "threads": None,
        "board": {"model": model, "serial": serial, "soc": soc, "android_version": release, "sdk": sdk,
                  "abi": abi, "abilist": props.get("ro.product.cpu.abilist"), "thermal": thermal,
                  "benchmark_model": binary},
    }


def summary_line(env: dict[str, Any]) -> str:
    """"Raspberry Pi 4 Model B Rev 1.4 · Cortex-A72 ×4 · Linux aarch64 · Python 3.11.2 · 48.2 °C"."""
    board = env.get("board") or {}
    cpu = env.get("cpu") or {}
    system = env.get("os") or {}
    parts = []
    if board.get("model"):
        parts.append(str(board["model"]))
    if cpu.get("model"):
        parts.append(f"{cpu['model']}" + (f" ×{cpu['logical_cores']}" if cpu.get("logical_cores") else ""))
    if system.get("platform") and system.get("system") == "Android":
        parts.append(f"{system['platform']} {system.get('machine') or ''}".strip())
    elif system.get("system"):
        parts.append(f"{system['system']} {system.get('machine') or ''}".strip())
    if (env.get("python") or {}).get("version"):
        parts.append(f"Python {env['python']['version']}")
    temperature = board.get("temperature_c")
    if temperature is None:
        temperature = (board.get("thermal") or {}).get("cpu_temperature_c")
    if temperature is not None:
        parts.append(f"{temperature:.1f} °C")
    if board.get("throttle_flags"):
        parts.append("throttle flags: " + ", ".join(board["throttle_flags"]))
    return " · ".join(parts)
