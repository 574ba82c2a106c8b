"""Everything ``micronet bench`` was asked, checked before any export or measurement starts.

Why a separate step: an on-the-fly export takes tens of seconds and a benchmark minutes, so a typo
in ``--device``, a thread count of 0 or a data folder with the wrong number of classes must fail
in the first second with one line, not after the work it would have wasted. ``BenchRequest.check``
does every check that is cheap (parsing, file existence, inventory lookup, a folder scan) and hands
back what it resolved on the way (the scanned images, the device target) so nothing is done twice.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from micronet.errors import MicronetError

from .options import MeasureOptions

XNNPACK_CHOICES: dict[str, tuple[bool, ...]] = {"on": (True,), "off": (False,), "both": (True, False)}


@dataclass
class CheckedRequest:
    """What the checks resolved: the TFLite XNNPACK settings, the scanned data, the device (None = local),
    and the measurement settings for the harness or the device (``measure``)."""

    xnnpack: tuple[bool, ...]
    images: Any = None
    device: Any = None
    measure: MeasureOptions = field(default_factory=MeasureOptions)


@dataclass
class BenchRequest:
    """The ``micronet bench`` options, named as on the command line (``models`` = the positional files)."""

    models: Sequence[Path] = ()
    variant: str | None = None
    fmt: str | None = None
    quantize: str | None = None
    matrix: bool = False
    runtime: Sequence[str] = ()
    threads: Sequence[int] = ()
    warmup: int = 10
    runs: int | None = 100
    min_seconds: float | None = None
    xnnpack: str = "on"
    data: Path | None = None
    limit: int | None = None
    max_drop: float | None = None
    weights: Path | None = None
    calibration: Path | None = None
    input_size: int | tuple[int, int] | None = None  # None: 224, or a pose/seg variant's task default
    num_classes: int = 1000
    out: Path = field(default_factory=lambda: Path("reports"))
    device: str | None = None
    inventory: Path | None = None
    benchmark_binary: Path | None = None
    cpu_mask: str | None = None
    cooldown: float | None = None
    memory: bool = True

    @property
    def on_device(self) -> bool:
        return self.device is not None and self.device != "local"

    def check(self) -> CheckedRequest:
        """Raise ``MicronetError`` for the first mistake; cheap checks first, the data scan last."""
        self._check_what()
        self._check_schedule()
        xnn = XNNPACK_CHOICES.get(self.xnnpack)
        if xnn is None:
            raise MicronetError(f"--xnnpack must be on, off or both, not {self.xnnpack!r}")
        device = self._check_device() if self.on_device else None
        if not self.on_device:
            self._check_runtimes()
        check_output_folder(self.out)
        images = self._check_data()
        measure = self.measure_options(xnn)
        if images is not None:  # the folder is scanned once: the harness and the device take the scan
            measure = dataclasses.replace(measure, data=images)
        return CheckedRequest(xnnpack=xnn, images=images, device=device, measure=measure)

    def measure_options(self, xnnpack: tuple[bool, ...] = (True,)) -> MeasureOptions:
        """The measurement settings of this request (threads None when not given: 1, or the inventory's;
        ``--matrix`` on this machine: 1, 2 and every core this process may use, ``matrix_thread_counts``)."""
        threads = list(self.threads) or (matrix_thread_counts() if self.matrix and not self.on_device else None)
        return MeasureOptions(threads=threads, warmup=self.warmup, runs=self.runs,
                              min_seconds=self.min_seconds, xnnpack=xnnpack, data=self.data, limit=self.limit,
                              memory=self.memory)

    def _check_what(self) -> None:
        """Model files, or a variant (or the matrix) with what to export of it."""
        from .targets import exported_kinds

        if sum(bool(x) for x in (self.models, self.variant, self.matrix)) != 1:
            raise MicronetError("give model files, or --variant, or --matrix (exactly one of them)")
        if self.models:
            if self.fmt or self.quantize:
                raise MicronetError("--format/--quantize choose what to export for --variant; "
                                    "a model file is what it is")
            from .harness import BenchModel

            for path in self.models:  # existence, file format, manifest: all before anything runs
                BenchModel(path=Path(path))
            return
        from micronet.model import check_input_size
        from micronet.registry import resolve_variant

        from .targets import dense_variant

        if self.variant:
            resolve_variant(self.variant, task=None)
        exported_kinds((self.fmt or ("all" if self.matrix else "tflite")).lower(), self.quantize)
        dense = self.variant is not None and dense_variant(self.variant, self.input_size) is not None  # checks H x W
        if dense:
            return self._check_export_inputs()
        if isinstance(self.input_size, tuple):
            if self.input_size[0] != self.input_size[1]:
                raise MicronetError(f"--input-size {self.input_size[0]}x{self.input_size[1]} does not fit a classifier: "
                                    "the classifiers take a square input, e.g. 224")
            check_input_size(self.input_size[0])
        else:
            check_input_size(self.input_size if self.input_size is not None else 224)
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise MicronetError(f"--num-classes must be a positive whole number, got {self.num_classes!r}")
        self._check_export_inputs()

    def _check_export_inputs(self) -> None:
        """The files an on-the-fly export reads: before the export, not minutes into it."""
        if self.weights is not None and not Path(self.weights).is_file():
            raise MicronetError(f"weights file not found: {self.weights}")
        if self.calibration is not None and not Path(self.calibration).is_dir():
            raise MicronetError(f"calibration folder not found: {self.calibration}")

    def _check_schedule(self) -> None:
        self.measure_options().check()
        if self.max_drop is not None:
            if self.data is None:
                raise MicronetError("--max-drop needs --data: the accuracy drop is measured on your labelled images")
            if not math.isfinite(self.max_drop) or self.max_drop < 0:
                raise MicronetError(f"--max-drop must be a number of points >= 0 (top-1, mIoU or AP), "
                                    f"got {self.max_drop!r}")
        if self.limit is not None and self.data is None:
            raise MicronetError("--limit caps the images scored from --data: give --data too")

    def _check_runtimes(self) -> None:
        from .runtimes import runtime_class

        for name in dict.fromkeys(self.runtime):
            runtime_class(name).require()  # unknown → lists the known ones; missing → names the pip package

    def _check_device(self) -> Any:
        from micronet.devices.api import resolve
        from micronet.devices.target import DEVICE_RUNTIMES, check_cpu_mask

        target = resolve(self.device, self.inventory)
        edge = [str(p) for p in self.models if Path(p).suffix.lower() in (".openvino", ".ncnn", ".mnn")]
        if target.kind != "local" and ((self.fmt or "").lower() in ("openvino", "ncnn", "mnn") or edge):
            raise MicronetError(f"{target.name} runs .tflite and .onnx models: OpenVINO, ncnn and MNN "
                                f"({(edge or [self.fmt])[0]}) are measured on this machine only (--device local)")
        if len(self.runtime) > 1:
            raise MicronetError("--device runs one runtime per call: give at most one --runtime")
        if self.runtime and target.kind != "local" and self.runtime[0] not in DEVICE_RUNTIMES:
            raise MicronetError(f"runtime {self.runtime[0]!r} cannot run on {target.name}; "
                                f"choose from {', '.join(DEVICE_RUNTIMES)}")
        if self.cpu_mask is not None:
            check_cpu_mask(self.cpu_mask, "--cpu-mask")
        if self.benchmark_binary is not None and not Path(self.benchmark_binary).expanduser().is_file():
            raise MicronetError(f"benchmark binary not found: {self.benchmark_binary}")
        if self.cooldown is not None and (not math.isfinite(self.cooldown) or self.cooldown < 0):
            raise MicronetError(f"--cooldown must be seconds >= 0, got {self.cooldown!r}")
        return target

    def _check_data(self) -> Any:
        """Scan ``--data`` once; for an export made here, its class count must match ``--num-classes``."""
        if self.data is None:
            return None
        from .accuracy import check_classes
        from .tasks import CLASSIFICATION, load_task_data, task_of_variant

        if self.models:
            from .harness import BenchModel

            tasks = list(dict.fromkeys(BenchModel(path=Path(p)).task for p in self.models))
            if len(tasks) > 1:
                raise MicronetError(f"--data scores one task per run, but the files are {' and '.join(tasks)} "
                                    "models: benchmark them in separate runs")
            task = tasks[0]
        else:
            task = task_of_variant(self.variant) if self.variant else CLASSIFICATION
        images = load_task_data(task, self.data)
        if not self.models and task == CLASSIFICATION:
            check_classes(len(images.classes), self.num_classes)
        return images


def check_output_folder(path: str | Path) -> None:
    """Fail before any work if the report folder cannot be created or written; creates nothing.

    Why not mkdir now: a later check may still fail, and a failed command should leave no trace.
    """
    folder = Path(path).expanduser()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file, not a folder" if existing == folder else f"would be inside {existing}, which is a file"
        raise MicronetError(f"cannot write the report into {folder}: it {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MicronetError(f"cannot write the report into {folder}: {existing} is not writable")


def matrix_thread_counts(cores: int | None = None) -> list[int]:
    """1, 2 and all cores (those this process may run on), each once and none above the cores: a second
    thread and the whole machine are where MicroNet's and its peers' scaling differ."""
    from micronet.cpus import available_cpus

    if cores is None:
        cores = available_cpus()
    return sorted({t for t in (1, 2, cores) if t <= max(cores, 1)})

