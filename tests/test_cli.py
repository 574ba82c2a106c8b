"""The CLI as a user meets it: a real subprocess of the installed console script or module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path = REPO, columns: str | None = "200", timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the console script installed beside this interpreter (the one a user runs), or the
    module from the checkout when the package is not installed. stdout is a pipe; ``columns``
    sets $COLUMNS (None: unset, as in most pipes and CI logs); ``timeout`` in seconds."""
    exe = Path(sys.executable).parent / "micronet"
    cmd = [str(exe), *args] if exe.is_file() else [sys.executable, "-m", "micronet.cli", *args]
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess, pattern: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert pattern in lines[0], lines[0]


def test_variants_json_lists_exact_figures():
    result = run_cli("variants", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["m0"]["params"] == 1_777_587 and rows["m0"]["madds"] == 6_120_032
    assert rows["release-m3"]["madds"] == 20_807_520 and rows["m0"]["aliases"] == ["release-m1"]


@pytest.mark.slow
def test_flops_table_and_json():
    table = run_cli("flops", "--variant", "m0", "--per-layer")
    assert table.returncode == 0, table.stderr
    assert "6,120,032" in table.stdout and "1,777,587" in table.stdout and "FlopCounterMode" in table.stdout
    data = json.loads(run_cli("flops", "--variant", "release-m2", "--json", "--input-size", "160").stdout)
    assert data["variant"] == "m1" and data["input_size"] == 160
    assert data["other_conventions"]["matches"] is True
    assert data["totals"]["madds"] == sum(s["madds"] for s in data["stages"])


@pytest.mark.parametrize(
    "args,message",
    [
        (("flops", "--variant", "m9"), "unknown variant 'm9'"),
        (("flops", "--input-size", "100"), "multiple of 32"),
        (("flops", "--num-classes", "0"), "num_classes must be a positive integer"),
        (("budget", "check", "nope.toml"), "budgets file not found"),
        # the argument parser's own errors are one line too, not a boxed panel of several
        (("flops", "--bogus"), "No such option: --bogus"),
        (("flops", "--num-classes", "abc"), "Invalid value for '--num-classes'"),
        (("flops", "--input-size", "abc"), "input size 'abc' is not a size"),
        (("train", "--data", ".", "--no-flip", "true"), "unexpected extra argument"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, message):
    assert_one_line_error(run_cli(*args), message)


@pytest.mark.slow
def test_budget_gate_passes_on_repo_budgets_and_fails_when_lowered(tmp_path):
    ok = run_cli("budget", "check", str(REPO / "budgets.toml"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lowered = tmp_path / "budgets.toml"
    lowered.write_text("[m0]\nmadds = 6_000_000\nparams = 1_800_000\n[m1]\nmadds = 13_000_000\n")
    over = run_cli("budget", "check", str(lowered))
    assert over.returncode == 1
    assert "over budget: m0 (madds 6,120,032 > 6,000,000)" in over.stdout
    assert "m1 (" not in over.stdout.split("over budget:")[1]


@pytest.mark.slow
def test_budget_file_with_unknown_key_or_variant(tmp_path):
    bad = tmp_path / "b.toml"
    bad.write_text("[m0]\nflops = 5\n")
    assert_one_line_error(run_cli("budget", "check", str(bad)), "unknown key 'flops'")
    bad.write_text("[m8]\nmadds = 5\n")
    assert_one_line_error(run_cli("budget", "check", str(bad)), f"budgets file {bad}: [m8]: unknown variant 'm8'")


@pytest.mark.slow
def test_flops_cross_check_uses_the_counted_class_count():
    """The FlopCounter note compares against the table's own total, at any --num-classes."""
    data = json.loads(run_cli("flops", "--variant", "release-m0", "--num-classes", "10", "--json").stdout)
    check = data["other_conventions"]
    assert check["num_classes"] == 10 and check["matches"] is True
    assert check["micronet_madds"] == data["totals"]["madds"]
    assert check["conv_plus_linear_madds"] == data["totals"]["conv_madds"] + data["totals"]["linear_madds"]
    table = run_cli("flops", "--variant", "release-m0", "--num-classes", "10")
    assert f"the {data['totals']['madds']:,} above" in table.stdout


# --- tables in a pipe: never a cut number or name ------------------------------------------------

def _whole(text: str, *cells: str) -> None:
    assert "…" not in text
    for cell in cells:
        assert cell in text, cell


@pytest.mark.slow
@pytest.mark.parametrize("columns", [None, "80"])
def test_variants_table_in_a_pipe_is_whole(columns):
    rows = json.loads(run_cli("variants", "--json").stdout)
    table = run_cli("variants", columns=columns)
    assert table.returncode == 0, table.stderr
    _whole(table.stdout, *(f"{r['params']:,}" for r in rows), *(f"{r['madds']:,}" for r in rows),
           *(r["name"] for r in rows), *(r["description"] for r in rows), "micronet-m3.pth (62.5%)")


@pytest.mark.slow
@pytest.mark.parametrize("columns", [None, "80"])
@pytest.mark.parametrize("per_layer", [False, True])
def test_flops_table_in_a_pipe_is_whole(columns, per_layer):
    data = json.loads(run_cli("flops", "--variant", "release-m3", "--json", "--per-layer").stdout)
    table = run_cli("flops", "--variant", "release-m3", *(["--per-layer"] if per_layer else []), columns=columns)
    assert table.returncode == 0, table.stderr
    rows = data["layers"] if per_layer else data["stages"]
    names = [r["name"] for r in rows] if per_layer else [r["stage"] for r in rows]
    _whole(table.stdout, *names, *(f"{r['madds']:,}" for r in rows), f"{data['totals']['madds']:,}",
           f"{data['totals']['params']:,}", f"{data['totals']['shiftmax_madds']:,}")
    for line in table.stdout.splitlines():  # each layer name stands whole in its cell
        if line.startswith("│ blocks."):
            assert line.split("│")[1].strip() in names


# --- budgets: every mistake one line naming the file (and the section) ----------------------------

@pytest.mark.slow
@pytest.mark.parametrize(
    "text,message",
    [
        ("", "sets no budgets"),
        ("# only a comment\n", "sets no budgets"),
        ("m0 = 5\n", ": [m0] must be a table"),
        ("[m0]\nmadds = -1\n", ": [m0] madds must be a positive integer"),
        ("[m0]\ninput_size = 224\n", ": [m0] sets no limit"),
        ("[m0]\nmadds = 7_000_000\n[m8]\nmadds = 5\n", ": [m8]: unknown variant 'm8'"),
        ("[m0]\nmadds = 7_000_000\ninput_size = 100\n", ": [m0]: input size 100"),
    ],
)
def test_budget_file_mistakes_name_file_and_section(tmp_path, text, message):
    bad = tmp_path / "b.toml"
    bad.write_text(text)
    result = run_cli("budget", "check", str(bad))
    assert_one_line_error(result, f"budgets file {bad}")
    assert message in result.stderr and result.returncode == 2
    assert "budgets hold" not in result.stdout


@pytest.mark.slow
def test_budget_path_that_is_a_directory(tmp_path):
    result = run_cli("budget", "check", str(tmp_path))
    assert_one_line_error(result, f"budgets file {tmp_path} is a directory")
    assert result.returncode == 2


@pytest.mark.slow
def test_inventory_error_names_the_device_section(tmp_path):
    inventory = tmp_path / "devices.toml"
    inventory.write_text('[devices.pi4]\ntarget = "ssh://pi@h"\nthreads = 0\n')
    result = run_cli("devices", "list", "--inventory", str(inventory))
    assert_one_line_error(result, f"{inventory} [devices.pi4]: threads must be")
    inventory.write_text('[device.pi4]\ntarget = "local"\n')
    assert_one_line_error(run_cli("devices", "list", "--inventory", str(inventory)),
                          "expected [defaults] and [devices.NAME]")


def test_benchmark_binary_without_tune_is_one_line(tmp_path):
    result = run_cli("export", "-v", "m0", "--format", "tflite", "--benchmark-binary", str(tmp_path / "bm"),
                     "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert_one_line_error(result, "--benchmark-binary is for --tune on an adb phone")
    assert not (tmp_path / "out").exists()
