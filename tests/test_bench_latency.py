"""Latency schedule and statistics, driven by fake runtimes so nothing depends on machine speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from micronet.bench import latency
from micronet.bench.latency import LatencyStats, measure_latency
from micronet.errors import MicronetError


class FakeClock:
    """A perf_counter_ns that only moves when a fake runtime says its run took time."""

    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns

    def advance_ms(self, ms: float) -> None:
        self.ns += int(round(ms * 1e6))


class ScriptedRuntime:
    """Each run "takes" the next duration from a script (ms); the last one repeats."""

    def __init__(self, clock: FakeClock, durations_ms: list[float]) -> None:
        self.clock, self.durations, self.calls = clock, list(durations_ms), 0

    def run(self, native_input):
        d = self.durations[min(self.calls, len(self.durations) - 1)]
        self.calls += 1
        self.clock.advance_ms(d)
        return native_input


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(latency, "_now_ns", fake)
    return fake


def test_stats_are_exact_for_known_durations(clock):
    measured = [float(v) for v in range(1, 11)]  # 1..10 ms
    rt = ScriptedRuntime(clock, [50.0, 9.0, 9.0, 9.0] + measured)
    result = measure_latency(rt, "x", warmup=3, runs=10, min_seconds=None)
    s = result.stats
    assert result.first_ms == pytest.approx(50.0)
    assert rt.calls == 1 + 3 + 10  # first + warm-up + measured
    assert result.samples_ms == pytest.approx(measured)  # warm-up excluded, order kept
    assert (s.count, s.min_ms, s.max_ms, s.mean_ms) == (10, pytest.approx(1.0), pytest.approx(10.0), pytest.approx(5.5))
    assert s.p50_ms == pytest.approx(5.5)
    assert s.p90_ms == pytest.approx(np.percentile(measured, 90))
    assert s.p99_ms == pytest.approx(np.percentile(measured, 99))
    assert s.std_ms == pytest.approx(np.std(measured, ddof=1))
    assert result.measured.stopped_by == "runs"
    assert result.measured.measured_s == pytest.approx(0.055)


def test_min_seconds_alone_runs_until_the_time_is_spent(clock):
    rt = ScriptedRuntime(clock, [10.0])
    result = measure_latency(rt, "x", warmup=0, runs=None, min_seconds=0.25)
    assert result.stats.count == 25
    assert result.measured.measured_s >= 0.25
    assert result.measured.stopped_by == "min_seconds"


@pytest.mark.parametrize(
    ("runs", "min_seconds", "count", "stopped_by"),
    [(5, 0.1, 10, "min_seconds"),  # time ends later than the run count
     (30, 0.1, 30, "runs")],  # run count ends later than the time
)
def test_runs_and_min_seconds_together_end_whichever_is_later(clock, runs, min_seconds, count, stopped_by):
    rt = ScriptedRuntime(clock, [10.0])
    result = measure_latency(rt, "x", warmup=0, runs=runs, min_seconds=min_seconds)
    assert result.stats.count == count
    assert result.measured.stopped_by == stopped_by


def test_max_runs_caps_a_time_bounded_phase(clock):
    rt = ScriptedRuntime(clock, [0.001])
    result = measure_latency(rt, "x", warmup=0, runs=None, min_seconds=10.0, max_runs=50)
    assert result.stats.count == 50
    assert result.measured.stopped_by == "max_runs"


def test_real_sleeps_give_ordered_stats_and_exact_counts():
    class Sleeper:
        calls = 0

        def run(self, native_input):
            self.calls += 1
            time.sleep(0.002)

    rt = Sleeper()
    result = measure_latency(rt, None, warmup=2, runs=8, min_seconds=None)
    s = result.stats
    assert rt.calls == 1 + 2 + 8
    assert len(result.samples_ms) == s.count == 8
    assert s.min_ms >= 2.0  # sleep never returns early; no upper bound asserted (noisy VM)
    assert s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms <= s.max_ms
    assert s.min_ms <= s.mean_ms <= s.max_ms
    assert result.first_ms >= 2.0


def test_end_to_end_phase_times_preprocess_prepare_run_and_dequantize(clock):
    calls: list[str] = []

    class Pipeline(ScriptedRuntime):
        def prepare(self, batch):
            calls.append("prepare")
            return batch

        def run(self, native_input):
            calls.append("run")
            return super().run(native_input)

        def to_logits(self, raw):
            calls.append("to_logits")
            clock.advance_ms(1.0)
            return raw

    def preprocess():
        calls.append("preprocess")
        clock.advance_ms(3.0)
        return np.zeros((1, 3, 4, 4), np.float32)

    rt = Pipeline(clock, [2.0])
    result = measure_latency(rt, "x", warmup=1, runs=4, min_seconds=None, end_to_end=preprocess)
    assert result.stats.p50_ms == pytest.approx(2.0)  # the plain phase times run only
    assert result.end_to_end is not None and result.end_to_end.stats.count == 4
    assert result.end_to_end.stats.p50_ms == pytest.approx(6.0)  # 3 preprocess + 2 run + 1 dequantize
    assert calls[-4:] == ["preprocess", "prepare", "run", "to_logits"]


@pytest.mark.parametrize(
    ("warmup", "runs", "min_seconds", "fragment"),
    [
        (0, 0, None, "runs"),
        (0, -3, None, "runs"),
        (0, 2.5, None, "runs"),
        (0, True, None, "runs"),
        (-1, 10, None, "warmup"),
        (0, None, 0, "min_seconds"),
        (0, None, -1.0, "min_seconds"),
        (0, None, float("nan"), "min_seconds"),
        (0, None, None, "runs"),
    ],
)
def test_bad_schedules_are_user_errors(warmup, runs, min_seconds, fragment):
    rt = ScriptedRuntime(FakeClock(), [1.0])
    with pytest.raises(MicronetError, match=fragment):
        measure_latency(rt, "x", warmup=warmup, runs=runs, min_seconds=min_seconds)
    assert rt.calls == 0  # rejected before the first inference


def test_result_dict_has_stats_and_every_raw_sample(clock):
    rt = ScriptedRuntime(clock, [4.0, 1.0, 2.0, 3.0])
    d = measure_latency(rt, "x", warmup=0, runs=3, min_seconds=None).to_dict()
    assert d["samples_ms"] == pytest.approx([1.0, 2.0, 3.0])
    assert d["count"] == 3 and d["p50_ms"] == pytest.approx(2.0) and d["end_to_end"] is None
    assert {"min_ms", "mean_ms", "std_ms", "p90_ms", "p99_ms", "max_ms", "warmup", "stopped_by"} <= set(d)


def test_single_sample_has_zero_spread():
    s = LatencyStats.from_samples([3.0])
    assert (s.std_ms, s.min_ms, s.p99_ms, s.max_ms) == (0.0, 3.0, 3.0, 3.0)
    with pytest.raises(MicronetError):
        LatencyStats.from_samples([])
