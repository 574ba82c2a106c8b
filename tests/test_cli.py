"""The CLI as a user meets it: a real subprocess of the installed console script or module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run the console script installed beside this interpreter (the one a user runs), or the
    module from the checkout when the package is not installed."""
    exe = Path(sys.executable).parent / "micronet"
    cmd = [str(exe), *args] if exe.is_file() else [sys.executable, "-m", "micronet.cli", *args]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


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
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, message):
    assert_one_line_error(run_cli(*args), message)


def test_budget_gate_passes_on_repo_budgets_and_fails_when_lowered(tmp_path):
    ok = run_cli("budget", "check", str(REPO / "budgets.toml"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lowered = tmp_path / "budgets.toml"
    lowered.write_text("[m0]\nmadds = 6_000_000\nparams = 1_800_000\n[m1]\nmadds = 13_000_000\n")
    over = run_cli("budget", "check", str(lowered))
    assert over.returncode == 1
    assert "over budget: m0 (madds 6,120,032 > 6,000,000)" in over.stdout
    assert "m1 (" not in over.stdout.split("over budget:")[1]


def test_budget_file_with_unknown_key_or_variant(tmp_path):
    bad = tmp_path / "b.toml"
    bad.write_text("[m0]\nflops = 5\n")
    assert_one_line_error(run_cli("budget", "check", str(bad)), "unknown key 'flops'")
    bad.write_text("[m8]\nmadds = 5\n")
    assert_one_line_error(run_cli("budget", "check", str(bad)), "unknown variant 'm8'")
