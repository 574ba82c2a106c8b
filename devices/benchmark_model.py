"""The LiteRT/TFLite ``benchmark_model`` tool: its command line, and its output as report-schema fields.

Why this tool on Android rather than the Python runner: phones have no Python, and
``benchmark_model`` is the measurement the LiteRT team documents (same interpreter, same XNNPACK
delegate as an app). Its schedule matches the desktop harness's: one timed first inference, a
warm-up phase, then the measured runs; ``--warmup_min_secs=0`` and ``--min_secs`` from our
``min_seconds`` (0 if none) make the counts exact instead of "at least 0.5 s / 1 s".

Output it prints (as in its README and the LiteRT measurement guide; newer builds prefix ``INFO: ``)::

    Initialized session in 3.337ms.
    count=9 first=81913 curr=55502 min=55502 max=81913 avg=58984.7 std=8115        <- warm-up, µs
    count=1061 first=56576 curr=56299 min=54669 max=60236 avg=56265.8 std=982       <- measured, µs
    Inference timings in us: Init: 3337, First inference: 81913, Warmup (avg): 58984.7, Inference (avg): 56265.8
    Memory footprint delta from the start of the tool (MB): init=3.05078 overall=10.2734
    Overall peak memory footprint (MB) via periodic monitoring: 13.4297

Times are µs and become ms here; its "MB" are RSS KiB / 1024, i.e. MiB. It prints no p90/p99 (builds
whose statistics print ``median=`` give p50), so those stay null rather than being made up; its
``std`` is the population standard deviation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from micronet.errors import MicronetError

_STATS = re.compile(r"count=(?P<count>\d+)(?P<rest>.*)$")
_PAIR = re.compile(r"(\w+)=(-?[\d.eE+]+)")
_TIMINGS = re.compile(
    r"Inference timings in us: Init: (?P<init>[\d.]+), First inference: (?P<first>[\d.]+), "
    r"Warmup \(avg\): (?P<warmup>[\d.na]+), Inference \(avg\): (?P<inference>[\d.na]+)")
_MEMORY = re.compile(r"Memory footprint delta from the start of the tool \(MB\): init=(?P<init>[\d.]+) "
                     r"overall=(?P<overall>[\d.]+)")
_PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring: (?P<peak>[\d.]+)")
_SESSION = re.compile(r"Initialized session in (?P<ms>[\d.]+)\s*ms")
_XNNPACK = re.compile(r"Replacing (\d+) out of (\d+) node\(s\) with delegate \(TfLiteXNNPackDelegate\)")
_SIZE = re.compile(r"The input model file size \(MB\): (?P<mb>[\d.]+)")
_ERROR = re.compile(r"^(?:ERROR|E tflite|Error|Failed|.*[Ff]ailed to|.*[Cc]ould not)")


@dataclass(frozen=True)
class Stats:
    """One ``count=... min=... max=... avg=... std=...`` line, converted from µs to ms."""

    count: int
    first_ms: float | None
    min_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    std_ms: float | None
    median_ms: float | None = None
    p5_ms: float | None = None
    p95_ms: float | None = None


@dataclass(frozen=True)
class BenchmarkModelResult:
    init_ms: float
    first_ms: float
    warmup: Stats | None
    inference: Stats
    warmup_avg_ms: float | None
    inference_avg_ms: float
    memory_init_mib: float | None = None
    memory_overall_mib: float | None = None
    peak_mib: float | None = None
    xnnpack_nodes: tuple[int, int] | None = None  # (delegated, total) when the log says
    model_mib: float | None = None


def build_command(binary: str, graph: str, *, threads: int, warmup: int, runs: int, min_seconds: float | None,
                  xnnpack: bool, peak_memory: bool = True, cpu_mask: str | None = None) -> list[str]:
    """The device-side argument list; ``taskset MASK`` in front pins it to the given cores."""
    for name, value, low in (("threads", threads, 1), ("warmup", warmup, 0), ("runs", runs, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise MicronetError(f"{name} must be a whole number >= {low}, got {value!r}")
    argv = [binary, f"--graph={graph}", f"--num_threads={threads}", f"--warmup_runs={warmup}",
            "--warmup_min_secs=0", f"--num_runs={runs}", f"--min_secs={min_seconds or 0:g}",
            f"--use_xnnpack={'true' if xnnpack else 'false'}"]
    if peak_memory:
        argv.append("--report_peak_memory_footprint=true")
    if cpu_mask:
        argv = ["taskset", cpu_mask, *argv]
    return argv


def _stats(line: str) -> Stats | None:
    match = _STATS.search(line)
    if not match:
        return None
    pairs = {k: float(v) for k, v in _PAIR.findall(match["rest"])}
    if "curr" in pairs and "min" not in pairs:  # "(all same)": every run took ``curr``
        pairs.update(min=pairs["curr"], max=pairs["curr"], avg=pairs["curr"], std=0.0)

    def ms(key: str) -> float | None:
        return pairs[key] / 1000.0 if key in pairs else None

    return Stats(int(match["count"]), ms("first"), ms("min"), ms("max"), ms("avg"), ms("std"), ms("median"),
                 ms("p5"), ms("p95"))


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def error_line(output: str) -> str:
    """The most telling line of a failed run: its first ``ERROR:`` line (the cause; later ones are
    consequences), else its last failure-looking line, else its last line."""
    lines = [line.strip().removeprefix("INFO: ") for line in output.splitlines() if line.strip()]
    first_error = [line for line in lines if line.startswith("ERROR")][:1]
    failures = [line for line in lines if _ERROR.match(line)][-1:]
    return (first_error or failures or lines[-1:] or ["no output"])[0]


def parse_output(output: str) -> BenchmarkModelResult:
    """Parse a finished run; raise ``MicronetError`` with its error line if it did not finish."""
    timings = _TIMINGS.search(output)
    if not timings:
        raise MicronetError(f"benchmark_model did not finish: {error_line(output)}")
    stats = [s for s in (_stats(line) for line in output.splitlines()) if s is not None]
    if not stats:
        raise MicronetError("benchmark_model printed no run statistics (count=... lines)")
    inference = stats[-1]
    warmup = stats[-2] if len(stats) >= 2 else None
    memory = _MEMORY.search(output)
    peak = _PEAK.search(output)
    xnn = _XNNPACK.search(output)
    size = _SIZE.search(output)
    warmup_avg_us = _number(timings["warmup"])  # "nan" when warm-up was 0 runs
    return BenchmarkModelResult(
        init_ms=float(timings["init"]) / 1000.0,
        first_ms=float(timings["first"]) / 1000.0,
        warmup=warmup,
        inference=inference,
        warmup_avg_ms=warmup_avg_us / 1000.0 if warmup_avg_us is not None else None,
        inference_avg_ms=float(timings["inference"]) / 1000.0,
        memory_init_mib=float(memory["init"]) if memory else None,
        memory_overall_mib=float(memory["overall"]) if memory else None,
        peak_mib=float(peak["peak"]) if peak else None,
        xnnpack_nodes=(int(xnn.group(1)), int(xnn.group(2))) if xnn else None,
        model_mib=float(size["mb"]) if size else None,
    )


def row_fields(result: BenchmarkModelResult, *, warmup: int, runs: int, min_seconds: float | None) -> dict[str, Any]:
    """The report row's measured fields (``init_ms``, ``first_ms``, ``latency``, ``memory``)."""
    s = result.inference
    latency = {
        "warmup": warmup, "runs_requested": runs, "min_seconds": min_seconds,
        "count": s.count, "min_ms": s.min_ms, "mean_ms": s.mean_ms if s.mean_ms is not None else result.inference_avg_ms,
        "std_ms": s.std_ms, "p50_ms": s.median_ms, "p90_ms": None, "p99_ms": None, "max_ms": s.max_ms,
        "measured_s": (s.count * s.mean_ms / 1000.0) if s.mean_ms is not None else None,
        "stopped_by": "runs" if s.count == runs else "min_seconds" if s.count > runs else "max_secs",
        "samples_ms": [], "end_to_end": None,
        "source": "benchmark_model", "std_kind": "population",
        "p5_ms": s.p5_ms, "p95_ms": s.p95_ms,
        "warmup_phase": None if result.warmup is None else {
            "count": result.warmup.count, "mean_ms": result.warmup.mean_ms, "min_ms": result.warmup.min_ms,
            "max_ms": result.warmup.max_ms, "std_ms": result.warmup.std_ms},
    }
    memory = None
    if result.peak_mib is not None or result.memory_overall_mib is not None:
        memory = {"baseline_rss_mib": None, "after_import_rss_mib": None, "after_load_rss_mib": None,
                  "peak_rss_mib": result.peak_mib, "model_mib": result.memory_overall_mib, "inferences": runs + warmup + 1,
                  "source": "benchmark_model --report_peak_memory_footprint",
                  "init_delta_mib": result.memory_init_mib, "overall_delta_mib": result.memory_overall_mib}
    return {"init_ms": result.init_ms, "first_ms": result.first_ms, "latency": latency, "memory": memory}
