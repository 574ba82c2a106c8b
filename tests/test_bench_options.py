"""The measurement settings as one object (``MeasureOptions``), shared by the harness, the device API and
the CLI's request; and the plain names that replaced two of the project's "Targets"."""

from __future__ import annotations

import pytest

from fixtures.models import tiny_onnx
from micronet.bench.harness import run_benchmark
from micronet.bench.options import MeasureOptions
from micronet.bench.request import BenchRequest
from micronet.devices.api import DeviceRunOptions, device_report, run_on_device
from micronet.errors import MicronetError


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return tiny_onnx(tmp_path_factory.mktemp("options") / "tiny.onnx")


def test_options_build_split_and_xnnpack_choices():
    base = MeasureOptions(runs=5, threads=[1, 2])
    assert MeasureOptions.build(base, warmup=0) == MeasureOptions(runs=5, threads=[1, 2], warmup=0)
    assert MeasureOptions.split({"runs": 3, "cpu_mask": "f"}) == ({"runs": 3}, {"cpu_mask": "f"})
    assert MeasureOptions(xnnpack=False).xnnpack_list() == [False]
    assert MeasureOptions(xnnpack=(True, False, True)).xnnpack_list() == [True, False]
    assert MeasureOptions(xnnpack=()).xnnpack_list() == [True]
    with pytest.raises(TypeError):
        MeasureOptions.build(None, rnus=3)  # a misspelt setting is a bug, not a silent default
    with pytest.raises(MicronetError, match="runs must be a whole number >= 1"):
        MeasureOptions(runs=0).check()
    with pytest.raises(MicronetError, match="threads must be a positive whole number"):
        MeasureOptions(threads=[0]).check()


def test_the_request_hands_its_settings_over_as_one_object(tmp_path, onnx_model):
    request = BenchRequest(models=[onnx_model], threads=[2], warmup=1, runs=3, xnnpack="both", memory=False,
                           out=tmp_path / "reports")
    checked = request.check()
    assert checked.measure == MeasureOptions(threads=[2], warmup=1, runs=3, xnnpack=(True, False), memory=False)
    assert BenchRequest(models=[onnx_model]).check().measure.threads is None  # not given: 1, or the inventory's


def test_harness_and_device_api_take_the_object_or_keywords(onnx_model):
    options = MeasureOptions(warmup=0, runs=2, memory=False)
    by_object = run_benchmark([onnx_model], ["onnxruntime"], options)
    by_keywords = run_benchmark([onnx_model], runtimes=["onnxruntime"], warmup=0, runs=2, memory=False)
    for report in (by_object, by_keywords):
        (row,) = report["results"]
        assert row["latency"]["count"] == 2 and row["latency"]["warmup"] == 0 and row["memory"] is None
    assert by_object["settings"] == by_keywords["settings"]
    overridden = run_benchmark([onnx_model], ["onnxruntime"], options, runs=3)  # a keyword overrides the object
    assert overridden["results"][0]["latency"]["count"] == 3

    (row,) = run_on_device("local", [onnx_model], options, DeviceRunOptions(runtime="onnxruntime"))
    assert row["device"] == "local" and row["latency"]["count"] == 2
    report = device_report("local", [onnx_model], options, runtime="onnxruntime", seed=3)
    assert report["settings"]["runs"] == 2 and report["settings"]["seed"] == 3
    assert report["settings"]["runtime"] == "onnxruntime"
    with pytest.raises(TypeError):
        run_on_device("local", [onnx_model], options, cpu_maks="1")


def test_distinct_names_for_a_benchmark_model_and_a_device():
    import micronet.bench.harness as harness
    import micronet.devices.target as target

    assert hasattr(harness, "BenchModel") and not hasattr(harness, "BenchTarget")
    assert hasattr(target, "DeviceSpec") and not hasattr(target, "Target")
    assert target.parse_target("local").__class__ is target.DeviceSpec
