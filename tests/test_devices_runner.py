"""The on-device runner: self-contained, the desktop harness's method and schema, the thermal guard.

The runner runs here in a child process under this machine's Python (``HostRunnerDevice``): the same
push/run/pull/clean-up path an SSH board takes, minus ssh.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures.models import SIZE, tiny_int8_tflite, tiny_onnx
from micronet.bench import report as rep
from micronet.bench import runtimes as bench_runtimes
from micronet import inference as core
from micronet.devices import runner
from micronet.devices.api import model_jobs
from micronet.devices.base import BenchJob, ModelJob, RunnerFailed, ThermalPolicy
from micronet.devices.emulation import HostRunnerDevice
from micronet.devices.remote import ProcessTransport, RunnerDevice, probe_source
from micronet.devices.target import DeviceSpec

RUNNER = Path(runner.__file__)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("tiny")
    x = np.random.default_rng(3).standard_normal((6, 3, SIZE, SIZE)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 5])
    np.savez(folder / "eval.npz", x=x, y=y)
    return {"tflite": tiny_int8_tflite(folder / "tiny int8 ($x).tflite"), "onnx": tiny_onnx(folder / "tiny.onnx"),
            "eval": folder / "eval.npz", "x": x, "y": y}


def _job(paths, eval_file=None, **kwargs) -> BenchJob:
    jobs = [ModelJob(j.path, j.manifest, j.row, eval_file) for j in model_jobs(paths)]
    meta = {"classes": 10, "skipped": 0, "skipped_examples": [], "limit": None} if eval_file else None
    return BenchJob(models=jobs, eval_meta=meta, **{"warmup": 2, "runs": 5, **kwargs})


class _ScratchDevice(RunnerDevice):
    """The runner under this Python, with its working folders in a folder the test can inspect."""

    kind = "process"

    def __init__(self, base: Path) -> None:
        super().__init__(DeviceSpec("process", "process", "scratch"),
                         ProcessTransport([sys.executable], env={"MICRONET_RUNNER_QUIET": "1", "PATH": "/usr/bin:/bin"},
                                          base_dir=base))


# ------------------------------------------------------------------------------------------ self-contained


CORE = Path(core.__file__)


def _imports(path: Path, top_level_only: bool = False) -> set:
    """Top-level names of the modules a file imports (absolute imports only)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    imported = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    return imported


def test_the_core_imports_only_stdlib_and_numpy(tmp_path):
    imported = _imports(CORE)
    assert "micronet" not in imported
    assert imported - set(sys.stdlib_module_names) <= {"numpy"}, imported - set(sys.stdlib_module_names)
    modules = {info.library.split(".")[0] for info in core.RUNTIMES.values()}  # imported by name at run time
    assert modules == {"ai_edge_litert", "tflite_runtime", "tensorflow", "onnxruntime"}
    # In an isolated interpreter (no PYTHONPATH, no checkout on the path) the core alone imports, and
    # importing it loads neither micronet nor any runtime.
    (tmp_path / "micronet_inference.py").write_bytes(CORE.read_bytes())
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import micronet_inference; "
            "heavy = {'micronet', 'ai_edge_litert', 'onnxruntime', 'tensorflow', 'torch'} & set(sys.modules); "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-I", "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_runner_imports_only_stdlib_numpy_and_the_core():
    imported = _imports(RUNNER)
    assert imported - set(sys.stdlib_module_names) <= {"numpy", "micronet_inference", "micronet"}
    tree = ast.parse(RUNNER.read_text())
    from_micronet = [(n.module, [a.name for a in n.names]) for n in ast.walk(tree)
                     if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("micronet")]
    assert from_micronet == [("micronet", ["inference"])]  # only the host's fallback for the core


@pytest.mark.parametrize("path", [RUNNER, CORE], ids=["runner", "core"])
def test_board_files_parse_as_python_3_8(path):
    """A Raspberry Pi's Python may be 3.8: no match statements, annotations never evaluated."""
    tree = ast.parse(path.read_text(), feature_version=(3, 8))
    assert any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and n.names[0].name == "annotations"
               for n in tree.body)
    assert not any(type(n).__name__ == "Match" for n in ast.walk(tree))


def test_runner_and_desktop_share_the_core():
    assert runner.core is core and runner.ROW_FIELDS is rep.ROW_FIELDS is core.ROW_FIELDS
    for name, info in core.RUNTIMES.items():
        cls = bench_runtimes.RUNTIMES[name]
        assert (cls.format, cls.module, cls.library, cls.distribution, cls.pip) == (
            info.format, info.module, info.library, info.distribution, info.pip)


def test_runner_runs_from_a_folder_holding_only_itself_and_the_core(tiny, tmp_path):
    """What a board holds: runner.py and micronet_inference.py (plus the request's files), no micronet
    (-E -s: no PYTHONPATH, no user site; the script's folder stays first on the path as on a board)."""
    board = tmp_path / "board"
    board.mkdir()
    (board / "runner.py").write_bytes(RUNNER.read_bytes())
    request = _request(tiny, board, retry=0)
    (board / "request.json").write_text(json.dumps(request))
    env = {"PATH": "/usr/bin:/bin", "MICRONET_RUNNER_QUIET": "1"}
    argv = [sys.executable, "-E", "-s", str(board / "runner.py"), "--supervise", str(board / "request.json")]
    # Without the core file: -S also drops site-packages, where an installed micronet (CI's wheel) would
    # otherwise serve as the host fallback; a board has no micronet at all.
    no_site = [sys.executable, "-E", "-s", "-S", *argv[3:]]
    proc = subprocess.run(no_site, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == runner.EXIT_FATAL, proc.stderr
    assert proc.stderr.strip() == "micronet-runner: error: micronet_inference.py must sit beside runner.py"
    (board / runner.CORE_FILE).write_bytes(CORE.read_bytes())
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = json.loads((board / "result.json").read_text())["results"][0]
    assert list(row) == list(rep.ROW_FIELDS) and not row["invalid"] and row["latency"]["count"] == 3
    # The probe needs no files on the device: core and runner travel as one script on stdin.
    proc = subprocess.run([sys.executable, "-E", "-s", "-", "--probe"], input=probe_source(), capture_output=True,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "litert" in json.loads(proc.stdout)["runtimes"]


def test_probe_lists_runtimes_without_writing(tmp_path):
    info = HostRunnerDevice().transport.probe()
    assert info["numpy"] == np.__version__ and "litert" in info["runtimes"] and "onnxruntime" in info["runtimes"]
    assert info["environment"]["cpu"]["logical_cores"] >= 1 and "board" in info["environment"]


# ------------------------------------------------------------------------------------------ measuring


def test_rows_match_the_desktop_runtime_outputs_and_schema(tiny, tmp_path):
    job = _job([tiny["tflite"], tiny["onnx"]], tiny["eval"], threads=[1, 2], keep_outputs=True)
    run = _ScratchDevice(tmp_path).benchmark(job)
    assert list(tmp_path.iterdir()) == []  # working folder removed
    assert [(r["format"], r["runtime"], r["threads"]) for r in run.rows] == [
        ("tflite", "litert", 1), ("tflite", "litert", 2), ("onnx", "onnxruntime", 1), ("onnx", "onnxruntime", 2)]
    for row in run.rows:
        assert list(row)[:len(rep.ROW_FIELDS)] == list(rep.ROW_FIELDS) and not row["invalid"]
        lat = row["latency"]
        assert lat["count"] == 5 and lat["warmup"] == 2 and lat["p50_ms"] > 0 and len(lat["samples_ms"]) == 5
        assert row["device"] == "scratch" and row["model"] in (str(tiny["tflite"]), str(tiny["onnx"]))
        assert row["settings"]["thermal"]["problems"] == []
    assert run.rows[0]["input"]["dtype"] == "int8" and run.rows[0]["input"]["layout"] == "NHWC"
    assert run.rows[0]["xnnpack_applied"] is True and run.rows[2]["xnnpack"] is None
    coverage = run.rows[0]["xnnpack_coverage"]  # how much of the model XNNPACK took, counted on the device
    assert 0 < coverage["xnnpack_ops"] <= coverage["ops"] and coverage["partitions"] >= 1
    assert run.rows[2]["xnnpack_coverage"] is None  # ONNX
    # The runner's outputs on the pushed inputs equal the desktop harness runtimes' outputs, bit for bit.
    for index, (path, name) in enumerate(((tiny["tflite"], "litert"), (tiny["onnx"], "onnxruntime"))):
        desktop = bench_runtimes.get_runtime(name)
        desktop.load(path)
        expected = np.concatenate([desktop.run(desktop.prepare(tiny["x"][i:i + 1])) for i in range(6)])
        np.testing.assert_array_equal(run.outputs[index], expected.reshape(6, -1))
        logits = desktop.to_logits(expected)
        top1 = 100.0 * (logits.argmax(1) == tiny["y"]).mean()
        assert run.rows[2 * index]["accuracy"]["top1"] == pytest.approx(top1)
        assert run.rows[2 * index + 1]["accuracy"] == run.rows[2 * index]["accuracy"]  # scored once per runtime
    assert run.environment["device"]["name"] == "scratch" and run.environment["cpu"]["arch"]


def test_a_broken_model_is_an_invalid_row_not_a_crash(tiny, tmp_path):
    bad = tmp_path / "models" / "broken.tflite"
    bad.parent.mkdir()
    bad.write_bytes(b"\0\0\0\0TFL3" + b"\0" * 64)
    scratch = tmp_path / "device"
    scratch.mkdir()
    run = _ScratchDevice(scratch).benchmark(_job([bad, tiny["tflite"]]))
    assert run.rows[0]["invalid"] and run.rows[0]["invalid_reason"] and not run.rows[1]["invalid"]
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"runtime": "tflite-runtime"}, "scratch: runtime tflite-runtime is not installed on this device: "
                                        "pip install tflite-runtime"),
        ({"runtime": "onnxruntime"}, "scratch: runtime onnxruntime runs onnx models, not tflite"),
        ({"cpu_mask": "100000000"}, "scratch: cpu_mask 100000000 selects CPUs [32], none of which this device"),
    ],
)
def test_requests_that_cannot_run_fail_in_one_line_and_clean_up(tiny, tmp_path, kwargs, message):
    with pytest.raises(RunnerFailed) as info:
        _ScratchDevice(tmp_path).benchmark(_job([tiny["tflite"]], **kwargs))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_cpu_mask_pins_the_runner(tiny, tmp_path):
    run = _ScratchDevice(tmp_path).benchmark(_job([tiny["tflite"]], cpu_mask="1"))
    assert run.rows[0]["settings"]["cpu_affinity"] == [0]
    assert run.environment["threads"]["cpu_affinity"] == [0]


# ------------------------------------------------------------------------------------------ thermal guard


def test_throttle_words_are_decoded():
    assert runner.throttle_flags(0x50005) == ["under-voltage", "throttled", "under-voltage (since boot)",
                                              "throttled (since boot)"]
    assert runner.throttle_flags(None) == [] and runner.throttle_flags(0) == []


@pytest.mark.parametrize(
    ("before", "after", "max_temp", "expected"),
    [
        ({"throttled": 0, "temperature_c": 50}, {"throttled": 0, "temperature_c": 55}, None, None),
        ({"throttled": 0x50000, "temperature_c": 50}, {"throttled": 0x50000, "temperature_c": 55}, None, None),
        ({"throttled": 0x0, "temperature_c": 60}, {"throttled": 0x40000, "temperature_c": 79}, None,
         "board throttled during the run (throttled; vcgencmd get_throttled 0x0 -> 0x40000)"),
        ({"throttled": 0x0, "temperature_c": 60}, {"throttled": 0x80008, "temperature_c": 82}, None,
         "board throttled during the run (soft temperature limit; vcgencmd get_throttled 0x0 -> 0x80008)"),
        ({"throttled": None, "temperature_c": 60}, {"throttled": None, "temperature_c": 81.5}, 80.0,
         "SoC at 81.5 °C after the run, above max_temp_c 80 °C"),
        ({"throttled": None, "temperature_c": None}, {"throttled": None, "temperature_c": None}, 80.0, None),
    ],
)
def test_thermal_problems(before, after, max_temp, expected):
    problems = runner.thermal_problems(before, after, max_temp)
    assert problems == ([expected] if expected else [])


def _fake_thermal(monkeypatch, readings):
    """Drive the runner's thermal readings: each call of thermal_state() takes the next one."""
    sequence = iter(readings)
    last = {}

    def state():
        nonlocal last
        last = next(sequence, last)
        return dict(last)

    monkeypatch.setattr(runner, "thermal_state", state)
    monkeypatch.setattr(runner.time, "sleep", lambda s: None)


def _request(tiny, workdir: Path, retry: int) -> dict:
    model = workdir / "model-0.tflite"
    model.write_bytes(tiny["tflite"].read_bytes())
    return {"runner_protocol": runner.PROTOCOL, "device": "pi", "threads": [1], "warmup": 1, "runs": 3, "seed": 0,
            "models": [{"file": model.name, "manifest": None, "format": "tflite",
                        "row": {"model": "m.tflite", "name": "m.tflite", "format": "tflite"}}],
            "thermal": ThermalPolicy(retry_throttled=retry, cool_to_c=60.0).to_dict()}


COOL = {"temperature_c": 55.0, "throttled": 0x0}
HOT = {"temperature_c": 82.0, "throttled": 0x60006}


def test_a_run_during_which_the_board_throttled_is_invalid(tiny, tmp_path, monkeypatch):
    _fake_thermal(monkeypatch, [COOL, COOL, HOT])  # environment(), before, after
    result = runner.run_request(_request(tiny, tmp_path, retry=0), str(tmp_path))
    row = result["results"][0]
    assert row["invalid"] and row["invalid_reason"].startswith(
        "board throttled during the run (arm frequency capped, throttled; vcgencmd get_throttled 0x0 -> 0x60006)")
    assert row["latency"]["count"] == 3  # the numbers are kept, but flagged
    assert row["settings"]["thermal"] == {"temp_before_c": 55.0, "temp_after_c": 82.0, "throttled_before": "0x0",
                                          "throttled_after": "0x60006", "problems": [row["invalid_reason"]]}


def test_retry_throttled_cools_down_and_measures_again(tiny, tmp_path, monkeypatch):
    cooling = {"temperature_c": 70.0, "throttled": 0x60000}
    # environment(), attempt 1 before/after, wait_cool() polls (too warm, then cool), attempt 2 before/after
    _fake_thermal(monkeypatch, [COOL, COOL, HOT, cooling, {"temperature_c": 58.0, "throttled": 0x60000},
                                {"temperature_c": 58.0, "throttled": 0x60000}, {"temperature_c": 59.0, "throttled": 0x60000}])
    result = runner.run_request(_request(tiny, tmp_path, retry=2), str(tmp_path))
    row = result["results"][0]
    assert not row["invalid"], row["invalid_reason"]
    attempts = row["settings"]["thermal_attempts"]
    assert len(attempts) == 2 and attempts[0]["problems"] and attempts[1]["problems"] == []
    assert "measured 2 times: earlier attempts throttled" in row["notes"]


def test_cooldown_between_models(tiny, tmp_path, monkeypatch):
    slept = []
    monkeypatch.setattr(runner.time, "sleep", slept.append)
    request = _request(tiny, tmp_path, retry=0)
    request["models"] *= 2
    request["thermal"]["cooldown_s"] = 30.0
    runner.run_request(request, str(tmp_path))
    assert slept == [30.0]  # between the two models, not before the first


def test_runner_cli_writes_result_json(tiny, tmp_path):
    import subprocess

    request = _request(tiny, tmp_path, retry=0)
    (tmp_path / "request.json").write_text(json.dumps(request))
    proc = subprocess.run([sys.executable, str(RUNNER), "--supervise", str(tmp_path / "request.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["results"][0]["device"] == "pi" and result["runner_protocol"] == runner.PROTOCOL
    bad = dict(request, runner_protocol=99)
    (tmp_path / "request.json").write_text(json.dumps(bad))
    proc = subprocess.run([sys.executable, str(RUNNER), str(tmp_path / "request.json")], capture_output=True, text=True)
    assert proc.returncode == runner.EXIT_FATAL
    assert proc.stderr.strip().splitlines()[-1] == "micronet-runner: error: request protocol 99, this runner speaks 1"
