"""Ctrl-C and SIGTERM: one line ``interrupted``, exit 128 + signal, nothing left in the output folder; and the
staging folders of exports killed outright (SIGKILL) are removed by the next export, never those of live ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from micronet import interrupts
from micronet.atomic import OWNERLESS_GRACE_S, remove_abandoned_staging, staging_dir

REPO = Path(__file__).resolve().parents[1]
PREFIX = ".micronet-export-"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


# --- staging folders and their owners --------------------------------------------------------------------------

_OWNER = textwrap.dedent("""
    import sys, time
    from micronet.atomic import staging_dir
    with staging_dir(sys.argv[1], ".micronet-export-") as folder:
        (folder / "model.onnx").write_bytes(b"x" * 100_000)
        print(folder, flush=True)
        time.sleep(120)
""")


def _owner(parent: Path) -> tuple[subprocess.Popen, Path]:
    """A process that made a staging folder in ``parent`` and sits in it."""
    child = subprocess.Popen([sys.executable, "-c", _OWNER, str(parent)], stdout=subprocess.PIPE, text=True,
                             env=_env(), cwd=REPO)
    return child, Path(child.stdout.readline().strip())


def test_staging_of_a_killed_export_is_removed_and_a_live_ones_kept(tmp_path):
    dead, dead_folder = _owner(tmp_path)
    live, live_folder = _owner(tmp_path)
    try:
        dead.kill()  # SIGKILL: no cleanup runs, the folder stays
        dead.wait()
        assert dead_folder.is_dir()
        removed = remove_abandoned_staging(tmp_path, PREFIX)
        assert [r.path for r in removed] == [dead_folder] and not dead_folder.exists()
        assert removed[0].pid == dead.pid and removed[0].size_bytes >= 100_000
        line = removed[0].describe()
        assert "removed stale staging folder" in line and "left by an interrupted export" in line
        assert live_folder.is_dir() and (live_folder / "model.onnx").is_file()  # its owner still runs
    finally:
        live.kill()
        live.wait()
    assert [r.path for r in remove_abandoned_staging(tmp_path, PREFIX)] == [live_folder]


def test_a_finished_staging_block_leaves_nothing(tmp_path):
    with staging_dir(tmp_path, PREFIX) as folder:
        (folder / "a").write_text("a")
        assert remove_abandoned_staging(tmp_path, PREFIX) == []  # our own: alive
    assert list(tmp_path.iterdir()) == []


def test_ownerless_folders_are_removed_only_once_old(tmp_path):
    """A folder without an owner file comes from an older micronet, or from an export killed between making the
    folder and locking it; a young one may be an export that is just starting."""
    old, young = tmp_path / f"{PREFIX}old", tmp_path / f"{PREFIX}young"
    old.mkdir()
    young.mkdir()
    (tmp_path / "micronet-m0-224.onnx").write_text("a finished artifact")
    past = time.time() - OWNERLESS_GRACE_S - 60
    os.utime(old, (past, past))
    assert [r.path for r in remove_abandoned_staging(tmp_path, PREFIX)] == [old]
    assert young.is_dir() and (tmp_path / "micronet-m0-224.onnx").is_file()


# --- the interrupt record ---------------------------------------------------------------------------------------

@pytest.fixture
def handlers():
    previous = {s: signal.getsignal(s) for s in interrupts.HANDLED}
    interrupts.install()
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)
    interrupts.reset()


def test_a_signal_inside_a_deferred_block_is_raised_when_it_ends(handlers):
    finished = False
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler has run by now, and did not raise here
            finished = True
    assert finished and interrupts.received() == signal.SIGTERM and interrupts.exit_code() == 143


def test_a_swallowed_interrupt_is_still_seen(handlers):
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    except KeyboardInterrupt:
        pass  # what TensorFlow's converter may do with the exception raised in its Python callback
    with pytest.raises(KeyboardInterrupt):
        interrupts.check()
    assert interrupts.exit_code() == 130


_WRAPPED = textwrap.dedent("""
    import os, signal, sys, time
    import micronet.cli as cli
    from micronet.errors import MicronetError

    def app(**options):  # cli.main passes standalone_mode=False
        try:
            os.kill(os.getpid(), getattr(signal, sys.argv[1]))
            time.sleep(5)
        except BaseException as exc:  # library code that wraps whatever it meets, as the ONNX exporter does
            raise MicronetError("ONNX export of FastMicroNet failed: AttributeError: module 'torch._dynamo' "
                                "has no attribute 'exc'") from None
        print("carried on", flush=True)

    cli.app = app
    cli.main()
""")


@pytest.mark.parametrize("name, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupt_wrapped_into_an_error_still_reads_interrupted(name, code):
    result = subprocess.run([sys.executable, "-c", _WRAPPED, name], capture_output=True, text=True, timeout=120,
                            env=_env(), cwd=REPO)
    assert (result.returncode, result.stderr, result.stdout) == (code, "interrupted\n", "")


# --- a real export, interrupted at each stage -------------------------------------------------------------------

INT8 = ("-f", "tflite", "-q", "int8")
STAGES = {
    # id: (signal, progress line that starts the stage, seconds after it, what is exported)
    "SIGTERM-preparing": (signal.SIGTERM, "warning: EMBEDDED DEFAULT", 0.0, INT8),  # inputs prepared, nothing staged
    "SIGINT-onnx": (signal.SIGINT, "exporting ONNX", 0.5, ("-f", "onnx")),  # inside the dynamo exporter
    "SIGTERM-tf-graph": (signal.SIGTERM, "lowering it to TensorFlow", 1.0, INT8),  # the fast graph → SavedModel
    "SIGINT-int8": (signal.SIGINT, "building TFLite int8", 0.5, INT8),  # TF's int8 converter and its calibration
}


def _interrupt_export(out: Path, signum: int, line: str, delay: float, kind: tuple[str, ...]) -> tuple[int, str, str]:
    cmd = [sys.executable, "-m", "micronet.cli", "export", "--variant", "m0", *kind,
           "--input-size", "64", "--calib-count", "8", "--output", str(out)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
    seen = []
    try:
        for text in child.stdout:
            seen.append(text)
            if line in text:
                time.sleep(delay)
                child.send_signal(signum)
                break
        else:
            pytest.fail(f"the export never printed {line!r}: {''.join(seen)[-2000:]}{child.stderr.read()[-2000:]}")
        stdout, stderr = child.communicate(timeout=300)
    finally:
        child.kill()
    return child.returncode, "".join(seen) + stdout, stderr


@pytest.mark.slow
@pytest.mark.parametrize("signum, line, delay, kind", STAGES.values(), ids=STAGES.keys())
def test_an_interrupted_export_says_so_and_leaves_nothing(tmp_path, signum, line, delay, kind):
    out = tmp_path / "exports"
    code, stdout, stderr = _interrupt_export(out, signum, line, delay, kind)
    assert code == 128 + signum, stdout[-2000:] + stderr[-2000:]
    assert stderr == "interrupted\n"  # one line: no traceback, no "Aborted!", no error wrapping the interrupt
    assert list(out.iterdir()) == []  # no artifact, no manifest, no staging folder


@pytest.mark.slow
def test_next_export_removes_a_killed_exports_staging_and_says_so(tmp_path):
    from micronet.export.pipeline import ExportRequest, export

    out = tmp_path / "exports"
    out.mkdir()
    dead, dead_folder = _owner(out)
    live, live_folder = _owner(out)
    try:
        dead.kill()
        dead.wait()
        said: list[str] = []
        result = export(ExportRequest(kinds=[("onnx", "float32")], input_size=64, calib_count=8, holdout=4,
                                      output_dir=out), progress=said.append)
        assert not dead_folder.exists() and live_folder.is_dir()  # a concurrent export keeps its folder
        assert any(f"removed stale staging folder {dead_folder}" in s and "interrupted export" in s for s in said)
        assert sorted(p.name for p in out.iterdir()) == sorted([live_folder.name, result.artifacts[0].name,
                                                                result.manifests[0].name])
    finally:
        live.kill()
        live.wait()
