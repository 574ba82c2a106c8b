"""Running the benchmark on devices: this machine, Linux boards over SSH, Android phones over adb.

One interface (``base.Device``: ``check()``, ``benchmark(job)``) with three implementations chosen by
a target string: ``local``, ``ssh://user@host[:port]``, ``adb[:SERIAL]``, or a name from a
``devices.toml`` inventory (``target``). Every device answers with rows in the desktop report's
schema (``micronet.bench.report``, v1), so local, Pi and phone runs merge into one table.

Modules, lowest first: ``target`` (targets + inventory), ``runner`` (the self-contained script that
runs *on* a Linux board: stdlib + numpy + a runtime, never micronet), ``fingerprint`` (phone
properties, summaries), ``benchmark_model`` (LiteRT's Android tool: command line and output
parser), ``base`` (the interface), ``remote`` (push/run/pull/clean up through a transport),
``local``, ``ssh``, ``adb``, ``evalset`` (pre-processed accuracy inputs), ``emulation`` (an arm64
Debian root file system under qemu, to check the Pi software path without a Pi), ``api``.

This package is the top layer: it may import micronet, micronet.bench and micronet.export; nothing
but the CLI imports it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_on_device", "device_report", "benchmark_on_device", "check_devices", "make_device", "resolve",
           "load_inventory", "parse_target"]

_LAZY = {"load_inventory": "target", "parse_target": "target"}


def __getattr__(name: str) -> Any:
    # Lazy: `import micronet.devices.runner` (the host reads the runner's path) must stay light.
    if name in __all__:
        import importlib

        module = importlib.import_module(f"{__name__}.{_LAZY.get(name, 'api')}")
        return getattr(module, name)
    raise AttributeError(name)
