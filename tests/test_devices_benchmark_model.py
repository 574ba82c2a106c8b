"""LiteRT ``benchmark_model``: the command we send to a phone, and its output read into report fields.

The sample outputs follow the format of the tool's README and the LiteRT performance-measurement
guide (plain lines in older builds, ``INFO: ``-prefixed in newer ones). They were not captured from a
phone here: no phone exists on this machine.
"""

from __future__ import annotations

import pytest

from micronet.bench import report as rep
from micronet.devices import benchmark_model as bm
from micronet.errors import MicronetError

PLAIN = """\
STARTING!
Log parameter values verbosely: [0]
Num threads: [4]
Graph: [/data/local/tmp/micronet-run.1a2b3c4d/model-0.tflite]
#threads used for CPU inference: [4]
Loaded model /data/local/tmp/micronet-run.1a2b3c4d/model-0.tflite
The input model file size (MB): 2.24446
Initialized session in 2.614ms.
Running benchmark for at least 10 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
count=10 first=59398 curr=13003 min=12731 max=59398 avg=17393.3 std=13826

Running benchmark for at least 100 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
count=100 first=13110 curr=13052 min=12753 max=14214 avg=13183.9 std=270

Inference timings in us: Init: 2614, First inference: 59398, Warmup (avg): 17393.3, Inference (avg): 13183.9
Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
Memory footprint delta from the start of the tool (MB): init=3.05078 overall=10.2734
Overall peak memory footprint (MB) via periodic monitoring: 13.4297
"""

INFO = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Graph: [/data/local/tmp/micronet-run.1a2b3c4d/model-0.tflite]
INFO: Use xnnpack: [1]
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
VERBOSE: Replacing 58 out of 58 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 1 partitions for the whole graph.
INFO: Initialized session in 3.337ms.
INFO: count=9 first=81913 curr=55502 min=55502 max=81913 avg=58984.7 std=8115
INFO: count=1061 first=56576 curr=56299 min=54669 max=60236 avg=56265.8 std=982 p5=55001 median=56123 p95=58000
INFO: Inference timings in us: Init: 3337, First inference: 81913, Warmup (avg): 58984.7, Inference (avg): 56265.8
INFO: Overall peak memory footprint (MB) via periodic monitoring: 93.2383
"""

FAILED = """\
STARTING!
Graph: [/data/local/tmp/micronet-run.1a2b3c4d/model-0.tflite]
ERROR: Didn't find op for builtin opcode 'CONV_2D' version '6'. An older version of this builtin might be supported. Are you using an old TFLite binary with a newer model?
ERROR: Registration failed.
Failed to initialize the interpreter
Benchmarking failed.
"""


def test_command_has_every_setting_and_an_optional_taskset():
    argv = bm.build_command("/data/local/tmp/x/benchmark_model", "/data/local/tmp/x/model-0.tflite", threads=4,
                            warmup=10, runs=100, min_seconds=None, xnnpack=False, cpu_mask="f0")
    assert argv[:3] == ["taskset", "f0", "/data/local/tmp/x/benchmark_model"]
    assert argv[3:] == ["--graph=/data/local/tmp/x/model-0.tflite", "--num_threads=4", "--warmup_runs=10",
                        "--warmup_min_secs=0", "--num_runs=100", "--min_secs=0", "--use_xnnpack=false",
                        "--report_peak_memory_footprint=true"]
    argv = bm.build_command("bm", "g", threads=1, warmup=0, runs=5, min_seconds=2.5, xnnpack=True, peak_memory=False)
    assert argv == ["bm", "--graph=g", "--num_threads=1", "--warmup_runs=0", "--warmup_min_secs=0", "--num_runs=5",
                    "--min_secs=2.5", "--use_xnnpack=true"]
    with pytest.raises(MicronetError, match="runs must be"):
        bm.build_command("bm", "g", threads=1, warmup=0, runs=0, min_seconds=None, xnnpack=True)


def test_plain_output_becomes_ms_and_mib():
    r = bm.parse_output(PLAIN)
    assert r.init_ms == pytest.approx(2.614) and r.first_ms == pytest.approx(59.398)
    assert r.warmup.count == 10 and r.warmup_avg_ms == pytest.approx(17.3933)
    s = r.inference
    assert (s.count, s.min_ms, s.max_ms, s.mean_ms, s.std_ms) == (100, 12.753, 14.214, pytest.approx(13.1839), 0.27)
    assert s.median_ms is None
    assert (r.memory_init_mib, r.memory_overall_mib, r.peak_mib) == (3.05078, 10.2734, 13.4297)
    assert r.model_mib == 2.24446 and r.xnnpack_nodes is None


def test_info_prefixed_output_with_percentiles_and_delegate():
    r = bm.parse_output(INFO)
    assert r.inference.count == 1061 and r.inference.median_ms == pytest.approx(56.123)
    assert r.inference.p5_ms == pytest.approx(55.001) and r.inference.p95_ms == pytest.approx(58.0)
    assert r.xnnpack_nodes == (58, 58) and r.peak_mib == 93.2383 and r.memory_overall_mib is None


def test_all_same_statistics_line():
    text = PLAIN.replace("count=100 first=13110 curr=13052 min=12753 max=14214 avg=13183.9 std=270",
                         "count=3 curr=13000(all same)")
    s = bm.parse_output(text).inference
    assert (s.count, s.min_ms, s.max_ms, s.mean_ms, s.std_ms) == (3, 13.0, 13.0, 13.0, 0.0)


def test_fields_fit_the_report_schema():
    fields = bm.row_fields(bm.parse_output(INFO), warmup=9, runs=1000, min_seconds=None)
    lat = fields["latency"]
    assert lat["count"] == 1061 and lat["p50_ms"] == pytest.approx(56.123) and lat["p90_ms"] is None
    assert lat["stopped_by"] == "min_seconds" and lat["samples_ms"] == [] and lat["source"] == "benchmark_model"
    assert lat["measured_s"] == pytest.approx(1061 * 56.2658 / 1000)
    row = rep.make_row(model="m.tflite", name="m.tflite", format="tflite", runtime="benchmark_model", threads=4,
                       device="pixel", **fields)
    assert row["memory"]["peak_rss_mib"] == 93.2383 and row["first_ms"] == pytest.approx(81.913)
    csv = rep.csv_text([row])
    assert "pixel" in csv and "93.2383" in csv
    plain = bm.row_fields(bm.parse_output(PLAIN), warmup=10, runs=100, min_seconds=None)
    assert plain["latency"]["p50_ms"] is None and plain["latency"]["stopped_by"] == "runs"  # never made up
    assert plain["memory"]["model_mib"] == 10.2734


def test_a_failed_run_is_one_line_with_its_reason():
    with pytest.raises(MicronetError) as info:
        bm.parse_output(FAILED)
    assert str(info.value) == ("benchmark_model did not finish: ERROR: Didn't find op for builtin opcode 'CONV_2D' "
                               "version '6'. An older version of this builtin might be supported. Are you using an "
                               "old TFLite binary with a newer model?")
    assert bm.error_line("Loaded\nFailed to allocate tensors!\nBenchmarking failed.\n") == "Failed to allocate tensors!"
    with pytest.raises(MicronetError, match="did not finish: /system/bin/sh: benchmark_model: not found"):
        bm.parse_output("/system/bin/sh: benchmark_model: not found\n")
