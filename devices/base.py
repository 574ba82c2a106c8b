"""The one device interface: ``check()`` says whether a device answers and what it can run,
``benchmark(job)`` measures and returns report-schema rows. Local, SSH and adb implement it.

Why one job object for every kind of device: ``micronet bench --device`` must not care whether the
numbers come from this process, a Python runner on a Pi or ``benchmark_model`` on a phone; each
device takes what applies to it from the same ``BenchJob`` and answers with rows that merge into one
report (``micronet.bench.report``, schema v1) where only the ``device`` column differs.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from micronet.errors import MicronetError

from .target import DeviceSpec

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ThermalPolicy:
    """How hot runs are handled: seconds (``_s``) and °C (``_c``); see ``DeviceOptions``."""

    retry_throttled: int = 0
    cooldown_s: float = 0.0
    max_temp_c: float | None = None
    cool_to_c: float | None = None
    cool_timeout_s: float = 600.0

    def to_dict(self) -> dict[str, Any]:
        return {"retry_throttled": self.retry_throttled, "cooldown_s": self.cooldown_s,
                "max_temp_c": self.max_temp_c, "cool_to_c": self.cool_to_c, "cool_timeout_s": self.cool_timeout_s}


@dataclass(frozen=True)
class ModelJob:
    """One model file to measure, with the row fields the host knows about it (size, MAdds, variant...)."""

    path: Path
    manifest: dict | None
    row: dict[str, Any]  # model, name, variant, format, quantize, madds, params, size_bytes, size_mib
    eval_file: Path | None = None  # .npz with x (float32 NCHW, preprocessed) and y (labels)

    @property
    def format(self) -> str:
        return str(self.row["format"])

    @property
    def manifest_path(self) -> Path | None:
        candidate = self.path.with_name(self.path.name + ".json")
        return candidate if self.manifest is not None and candidate.is_file() else None


@dataclass
class BenchJob:
    """Everything one benchmark asks of a device. ``runs``/``warmup`` are inference counts, ``min_seconds`` s."""

    models: list[ModelJob]
    threads: list[int] = field(default_factory=lambda: [1])
    runtime: str | None = None
    xnnpack: list[bool] = field(default_factory=lambda: [True])
    warmup: int = 10
    runs: int | None = 100
    min_seconds: float | None = None
    seed: int = 0
    cpu_mask: str | None = None
    thermal: ThermalPolicy = field(default_factory=ThermalPolicy)
    eval_meta: dict[str, Any] | None = None  # classes, skipped, skipped_examples, limit of the eval inputs
    keep_outputs: bool = False  # pull the raw outputs on the eval inputs back (parity across devices)
    data: Any = None  # local device only: an image folder / LabelledImages, scored by the desktop harness
    limit: int | None = None
    memory: bool = True  # local device only: fresh-process peak RSS
    benchmark_binary: Path | None = None  # adb only

    def measure_options(self) -> Any:
        """The job's measurement settings as the desktop harness takes them (``MeasureOptions``)."""
        from micronet.bench.options import MeasureOptions

        return MeasureOptions(threads=self.threads, warmup=self.warmup, runs=self.runs, min_seconds=self.min_seconds,
                              xnnpack=self.xnnpack, data=self.data, limit=self.limit, memory=self.memory,
                              seed=self.seed)


@dataclass
class DeviceRun:
    """What a device answered: report rows, its environment fingerprint, and (if asked) raw outputs."""

    device: str
    rows: list[dict[str, Any]]
    environment: dict[str, Any]
    outputs: dict[int, Any] = field(default_factory=dict)  # model index -> np.ndarray of raw outputs


@dataclass(frozen=True)
class DeviceCheck:
    """One line of ``micronet devices check``."""

    name: str
    target: str
    reachable: bool
    runtimes: dict[str, str] = field(default_factory=dict)
    summary: str = ""  # board/phone, CPU, OS when reachable
    problem: str | None = None  # why not reachable, or what is missing

    def line(self) -> str:
        head = f"{self.name} ({self.target})" if self.name != self.target else self.name
        if not self.reachable:
            return f"{head}: {self.problem}"
        runtimes = ", ".join(f"{k} {v}" for k, v in self.runtimes.items()) or "none"
        text = f"{head}: reachable · runtimes: {runtimes}"
        if self.summary:
            text += f" · {self.summary}"
        if self.problem:
            text += f" · {self.problem}"
        return text


class Device(abc.ABC):
    """A place to benchmark. Implementations raise ``MicronetError`` with one line for anything a user
    can fix (no route to the host, rejected key, no device, missing binary) and leave nothing behind on
    the device, also on failure."""

    kind: str = ""

    def __init__(self, target: DeviceSpec) -> None:
        self.target = target

    @property
    def name(self) -> str:
        return self.target.name

    @abc.abstractmethod
    def check(self) -> DeviceCheck:
        """Reachable? Which runtimes? Never raises for an unreachable device: that is the answer."""

    @abc.abstractmethod
    def benchmark(self, job: BenchJob, progress: Progress | None = None) -> DeviceRun:
        """Measure ``job`` on the device; rows in report schema v1 with ``device`` = ``self.name``."""


class DeviceError(MicronetError):
    """A device could not be reached or used; the message is the one line the user sees."""


class UnreachableError(DeviceError):
    """No connection at all: wrong host or port, device off or not plugged in."""


class AuthError(DeviceError):
    """The device answered but refused us (SSH key rejected, adb unauthorized)."""


class RunnerFailed(DeviceError):
    """The benchmark process on the device crashed or reported an error."""
