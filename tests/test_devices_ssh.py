"""SSH devices against a real OpenSSH server on a loopback port (``fixtures/sshd.py``).

The "board" is this machine reached through sshd: real ``ssh`` client, real authentication, real
remote shell, the runner pushed and run under the Python named in the inventory. Every failure mode
is checked for a one-line error and for the remote working folder being gone afterwards.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures.models import M0_SIZE, exported_m0_int8, tiny_int8_tflite
from fixtures.sshd import free_port, write_inventory
from micronet.bench import report as rep
from micronet.bench.harness import run_benchmark
from micronet.bench.runtimes import get_runtime
from micronet.devices.api import check_devices, device_report, run_on_device
from micronet.devices.base import AuthError, RunnerFailed, UnreachableError
from micronet.devices.target import load_inventory
from micronet.errors import MicronetError

_CRASH_SITE = '''import os, signal, sys, threading
def _fire():
    # Only the benchmark child (runner.py REQUEST), not the supervisor or the probe/mkdtemp calls.
    if sys.argv and sys.argv[0].endswith("runner.py") and "--supervise" not in sys.argv and "--probe" not in sys.argv:
        os.kill(os.getpid(), signal.SIGSEGV)
_t = threading.Timer(0.5, _fire)
_t.daemon = True
_t.start()
'''


@pytest.fixture(scope="module")
def remote_tmp(tmp_path_factory) -> Path:
    """The base of the runner's working folders on the "board", so a test can see what is left there."""
    return tmp_path_factory.mktemp("board-tmp")


@pytest.fixture(scope="module")
def inventory(sshd, remote_tmp, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inventory")
    site = folder / "crashsite"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_CRASH_SITE)
    crashing = folder / "crashing-python"  # a Python that segfaults 0.5 s into the benchmark
    crashing.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{sys.executable}" "$@"\n')
    crashing.chmod(0o755)
    hostile = remote_tmp / "it's a $(touch pwned) `id` dir"
    return write_inventory(folder / "devices.toml", sshd, sys.executable, devices={
        "board": {"target": sshd.target, "workdir": str(remote_tmp)},
        "hostile": {"target": sshd.target, "workdir": str(hostile)},
        "crashy": {"target": sshd.target, "workdir": str(remote_tmp), "python": str(crashing)},
        "badkey": {"target": sshd.target, "workdir": str(remote_tmp),
                   "ssh_config": str(sshd.client_config(sshd.rejected_key, "rejected_config"))},
        "nohostkey": {"target": sshd.target, "ssh_options": ["UserKnownHostsFile=/dev/null"]},
        "nopython": {"target": sshd.target, "python": "/nonexistent/python3"},
        "wrongport": {"target": f"ssh://{sshd.user}@127.0.0.1:{free_port()}"},
    })


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    # A hostile local file name: it must never reach a remote command line (files get fixed names there).
    return tiny_int8_tflite(tmp_path_factory.mktemp("tiny") / "tiny; $(touch pwned) 'q'.tflite")


def _left(remote_tmp: Path) -> list[str]:
    return sorted(str(p.relative_to(remote_tmp)) for p in remote_tmp.rglob("micronet-run.*"))


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


# ------------------------------------------------------------------------------------------ it works


def test_check_says_reachable_with_runtimes(sshd, inventory):
    (check,) = check_devices(["board"], inventory=inventory)
    assert check.reachable and check.problem is None
    assert "litert" in check.runtimes and "onnxruntime" in check.runtimes
    assert check.line().startswith(f"board ({sshd.target}): reachable · runtimes: litert ")


@pytest.mark.slow
def test_tiny_model_end_to_end_leaves_nothing_behind(sshd, inventory, tiny, remote_tmp):
    rows = run_on_device("board", [tiny], inventory=inventory, threads=[1, 2], xnnpack=[True, False], warmup=2, runs=5)
    assert [(r["threads"], r["xnnpack"]) for r in rows] == [(1, True), (2, True), (1, False), (2, False)]
    assert all(r["device"] == "board" and not r["invalid"] and r["latency"]["count"] == 5 for r in rows)
    assert rows[0]["settings"]["device"] == {"name": "board", "kind": "ssh", "target": sshd.target}
    assert _left(remote_tmp) == []


@pytest.mark.slow
def test_hostile_remote_folder_is_quoted_not_executed(sshd, inventory, tiny, remote_tmp, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a `touch pwned` run by a remote shell in our cwd would land
    rows = run_on_device("hostile", [tiny], inventory=inventory, warmup=1, runs=2)
    assert not rows[0]["invalid"]
    hostile = remote_tmp / "it's a $(touch pwned) `id` dir"
    assert hostile.is_dir() and list(hostile.iterdir()) == []  # created literally, emptied afterwards
    assert not list(remote_tmp.rglob("pwned")) and not (tmp_path / "pwned").exists()
    assert not Path(os.path.expanduser("~/pwned")).exists()


@pytest.mark.slow
def test_m0_int8_export_with_accuracy_on_pushed_inputs(sshd, inventory, remote_tmp, tmp_path_factory):
    """The headline: a real ``micronet export`` benchmarked on the "board" with accuracy from .npy inputs."""
    model = exported_m0_int8(tmp_path_factory.getbasetemp())
    manifest = json.loads(Path(f"{model}.json").read_text())
    desktop = get_runtime("litert")
    desktop.load(model)
    x = np.random.default_rng(5).standard_normal((8, 3, M0_SIZE, M0_SIZE)).astype(np.float32)
    predicted = np.concatenate([desktop.to_logits(desktop.run(desktop.prepare(x[i:i + 1]))) for i in range(8)]).argmax(1)
    labels = np.where(np.arange(8) < 6, predicted, (predicted + 1) % 1000)  # 6 of 8 right by construction
    eval_file = tmp_path_factory.mktemp("eval") / "inputs.npz"
    np.savez(eval_file, x=x, y=labels)
    report = device_report("board", [model], inventory=inventory, eval_inputs=eval_file, warmup=3, runs=20)
    (row,) = report["results"]
    assert not row["invalid"], row["invalid_reason"]
    assert row["device"] == "board" and row["runtime"] == "litert" and row["format"] == "tflite"
    assert row["variant"] == "m0" and row["quantize"] == "int8" and row["madds"] == manifest["madds"]
    assert row["input"]["dtype"] == "int8" and row["input"]["layout"] == "NHWC"
    assert row["accuracy"]["top1"] == pytest.approx(75.0) and row["accuracy"]["count"] == 8
    assert row["latency"]["count"] == 20 and row["init_ms"] > 0
    assert report["environment"]["device"]["kind"] == "ssh" and report["environment"]["board"] is not None
    assert _left(remote_tmp) == []


@pytest.mark.slow
def test_device_report_merges_with_a_local_run(sshd, inventory, tmp_path_factory, tmp_path):
    model = exported_m0_int8(tmp_path_factory.getbasetemp())
    remote = device_report("board", [model], inventory=inventory, warmup=2, runs=10)
    local = run_benchmark([model], runtimes=["litert"], warmup=2, runs=10, memory=False)
    rep.write_json(remote, tmp_path / "board.json")
    rep.write_json(local, tmp_path / "local.json")
    rows = rep.merge_reports([tmp_path / "local.json", tmp_path / "board.json"])
    assert [r["device"] for r in rows] == ["local", "board"]
    assert {r["name"] for r in rows} == {model.name}
    csv = rep.csv_text(rows).splitlines()
    device_col = csv[0].split(",").index("device")
    assert [line.split(",")[device_col] for line in csv[1:]] == ["local", "board"]


# ------------------------------------------------------------------------------------------ failures


def test_wrong_port_is_unreachable(inventory, tiny):
    with pytest.raises(UnreachableError) as info:
        run_on_device("wrongport", [tiny], inventory=inventory)
    assert _one_line(info.value).endswith("unreachable: connection refused (no SSH server on that port?)")
    (check,) = check_devices(["wrongport"], inventory=inventory)
    assert not check.reachable and check.line().startswith("wrongport (ssh://")
    assert check.line().endswith(": unreachable: connection refused (no SSH server on that port?)")


def test_rejected_key_is_an_authentication_failure(sshd, inventory, tiny, remote_tmp):
    with pytest.raises(AuthError) as info:
        run_on_device("badkey", [tiny], inventory=inventory)
    text = _one_line(info.value)
    assert f"{sshd.target}: authentication failed (" in text and "Permission denied (publickey)" in text
    assert _left(remote_tmp) == []


def test_unknown_host_key_is_never_accepted_silently(inventory, tiny):
    with pytest.raises(AuthError, match="host key is unknown or has changed; connect once by hand"):
        run_on_device("nohostkey", [tiny], inventory=inventory)


def test_no_python_on_the_device(inventory, tiny):
    with pytest.raises(MicronetError, match=r"no Python at '/nonexistent/python3' on the device .*set python ="):
        run_on_device("nopython", [tiny], inventory=inventory)


@pytest.mark.slow
def test_runner_crash_is_one_line_and_the_folder_is_removed(inventory, remote_tmp, tmp_path_factory):
    # The crash fires 0.5 s into the benchmark child. The tiny model's 100,000 runs (the runner's cap) took
    # less than that on a fast CPU, so the run ended cleanly before it; m0's take seconds on any machine.
    model = exported_m0_int8(tmp_path_factory.getbasetemp())
    with pytest.raises(RunnerFailed) as info:
        run_on_device("crashy", [model], inventory=inventory, warmup=10, runs=100_000)
    assert _one_line(info.value) == "the benchmark runner crashed on crashy (SIGSEGV): Fatal Python error: Segmentation fault"
    assert _left(remote_tmp) == []


def test_runner_error_is_one_line_and_the_folder_is_removed(inventory, tiny, remote_tmp):
    with pytest.raises(RunnerFailed) as info:
        run_on_device("board", [tiny], inventory=inventory, runtime="tflite-runtime")
    assert _one_line(info.value) == ("board: runtime tflite-runtime is not installed on this device: "
                                     "pip install tflite-runtime")
    assert _left(remote_tmp) == []


@pytest.mark.slow
def test_raw_target_uses_inventory_defaults(sshd, inventory, tiny):
    rows = run_on_device(sshd.target, [tiny], inventory=inventory, warmup=1, runs=2)
    assert rows[0]["device"] == sshd.target
    assert load_inventory(inventory).resolve(sshd.target).options.python == sys.executable


# ------------------------------------------------------------------ pose and segmentation on the board


@pytest.fixture(scope="module")
def dense_exports(tmp_path_factory) -> dict:
    """seg-m0 at 64×128 as ONNX and float32 TFLite (NHWC maps), pose-m0 at 64×64 as ONNX, with their data."""
    from micronet.export.pipeline import ExportRequest, export
    from micronet.keypoints.synthetic import write_keypoint_set
    from micronet.sample_images import bundled_photographs
    from micronet.segmentation.synthetic import write_segmentation_set

    base = tmp_path_factory.mktemp("dense")
    write_segmentation_set(base / "city", bundled_photographs(), height=64, width=128, train_images=1, val_images=3)
    write_keypoint_set(base / "coco", bundled_photographs(), size=(128, 128), train_images=1, val_images=2)
    seg = export(ExportRequest(variant="seg-m0", input_size=(64, 128), calib_count=4, holdout=4, graph="reference",
                               kinds=[("onnx", "float32"), ("tflite", "float32")], output_dir=base / "seg"))
    pose = export(ExportRequest(variant="pose-m0", input_size=(64, 64), calib_count=4, holdout=4, graph="reference",
                                kinds=[("onnx", "float32")], output_dir=base / "pose"))
    return {"segmentation": (list(seg.artifacts), base / "city"), "pose": (list(pose.artifacts), base / "coco")}


@pytest.mark.slow
@pytest.mark.parametrize("task", ["segmentation", "pose"])
def test_dense_models_scored_on_the_board_equal_the_desktop(task, sshd, inventory, dense_exports, remote_tmp,
                                                            tmp_path):
    """The board answers the desktop evaluator's own inputs (labels for seg, heatmaps for pose, flips included)
    and the desktop scores them: same file, same runtime, so the figures must be the desktop's exactly, and
    the answers the desktop runner's to float rounding (a layout or order slip changes both)."""
    from micronet.bench.dense import dense_runner
    from micronet.bench.tasks import load_task_data
    from micronet.devices.api import benchmark_on_device
    from micronet.devices.evalset import build_dense_eval_sets

    files, folder = dense_exports[task]
    data = load_task_data(task, folder)
    run = benchmark_on_device("board", files, inventory=inventory, data=data, warmup=0, runs=2)
    local = {(r["name"], r["runtime"]): r for r in
             run_benchmark([str(f) for f in files], data=data, warmup=0, runs=2, memory=False)["results"]}
    assert [r["name"] for r in run.rows] == [Path(f).name for f in files]
    key = "miou" if task == "segmentation" else "ap"
    for index, remote_row in enumerate(run.rows):
        assert not remote_row["invalid"], remote_row["invalid_reason"]
        assert remote_row["accuracy"], remote_row["notes"]
        local_row = local[(remote_row["name"], remote_row["runtime"])]
        remote_acc, local_acc = remote_row["accuracy"], local_row["accuracy"]
        assert remote_acc["task"] == task and remote_acc[key] == pytest.approx(local_acc[key], abs=1e-9)
        if task == "segmentation":
            assert remote_acc["per_class_iou"] == local_acc["per_class_iou"]
            assert remote_acc["pixel_accuracy"] == pytest.approx(local_acc["pixel_accuracy"], abs=1e-9)
        else:
            assert [remote_acc[k] for k in ("ap50", "ap75")] == [local_acc[k] for k in ("ap50", "ap75")]
        # The answers themselves, against the desktop runner on the same recorded inputs.
        manifest = json.loads(Path(f"{files[index]}.json").read_text())
        (npz,), _, _ = build_dense_eval_sets([(files[index], manifest)], data, None, tmp_path)
        x = np.load(npz)["x"]
        runtime = get_runtime(local_row["runtime"])
        runtime.load(files[index], manifest=manifest)
        maps = dense_runner(runtime)(x)
        answers = run.outputs[index]
        if task == "segmentation":
            assert answers.dtype == np.uint8 and answers.shape == (len(x), 64, 128)
            assert np.mean(answers == maps.argmax(axis=1)) > 0.999  # near-ties may flip between processes
        else:
            assert answers.shape == maps.shape == (len(x), 17, 16, 16)
            np.testing.assert_allclose(answers, maps, rtol=1e-5, atol=1e-6)
    assert _left(remote_tmp) == []


@pytest.mark.slow
def test_dense_model_without_its_manifest_is_one_line_before_anything_is_pushed(sshd, inventory, dense_exports,
                                                                                 tmp_path, remote_tmp):
    from micronet.bench.tasks import load_task_data

    files, folder = dense_exports["segmentation"]
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(Path(files[0]).read_bytes())  # no .json beside it
    with pytest.raises(MicronetError) as err:
        run_on_device("board", [bare], inventory=inventory, data=load_task_data("segmentation", folder),
                      warmup=0, runs=1)
    assert "needs its pose or segmentation manifest" in _one_line(err.value)
    assert _left(remote_tmp) == []


@pytest.mark.slow
def test_bench_cli_scores_a_seg_export_on_the_board(sshd, inventory, dense_exports, remote_tmp, tmp_path):
    """What a user types: the mIoU column is filled from the board's answers, in the JSON report too."""
    from test_cli import run_cli

    files, folder = dense_exports["segmentation"]
    onnx_file = next(f for f in files if Path(f).suffix == ".onnx")
    result = run_cli("bench", str(onnx_file), "--device", "board", "--inventory", str(inventory), "--data",
                     str(folder), "--runs", "2", "--warmup", "0", "--out", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(next((tmp_path / "r").glob("*.json")).read_text())["results"]
    assert row["device"] == "board" and row["accuracy"]["task"] == "segmentation"
    assert 0.0 <= row["accuracy"]["miou"] <= 100.0 and len(row["accuracy"]["per_class_iou"]) == 19
    assert "mIoU" in result.stdout
    assert _left(remote_tmp) == []
