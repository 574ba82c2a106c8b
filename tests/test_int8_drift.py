"""int8_drift: every op output of an int8 file against its float32 twin, in execution order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from micronet.errors import MicronetError
from micronet.export import parity
from micronet.export.calibration import build_calibration
from micronet.export.inspect import run_tflite
from micronet.export.int8_drift import int8_drift
from micronet.preprocess import Preprocessing

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return build_calibration(None, count=1, holdout=4, preprocessing=Preprocessing(input_size=64)).holdout


def test_the_last_op_agrees_as_the_parity_rung_does(exported_m0_small, images):
    rows = int8_drift(exported_m0_small["float32"], exported_m0_small["int8"], images)
    assert len(rows) > 50 and [r.step for r in rows] == sorted(r.step for r in rows)
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "MUL"} <= {r.op for r in rows}
    assert all(-1.0 <= r.cosine <= 1.0 + 1e-9 for r in rows)
    logits32, logits8 = (run_tflite(exported_m0_small[q], images) for q in ("float32", "int8"))
    per_image = np.mean([parity.compare(a[None], b[None])["cosine"] for a, b in zip(logits32, logits8)])
    assert rows[-1].shape[-1] == 1000 and rows[-1].cosine == pytest.approx(per_image, abs=1e-3)
    assert max(r.drop for r in rows) > 0.0  # int8 loses agreement somewhere: the report says where


def test_a_file_against_itself_drifts_nowhere(exported_m0_small, images):
    rows = int8_drift(exported_m0_small["int8"], exported_m0_small["int8"], images)
    assert rows and all(r.cosine == pytest.approx(1.0) and abs(r.drop) < 1e-9 for r in rows)


def test_a_batch_that_is_not_nchw_is_one_error(exported_m0_small):
    with pytest.raises(MicronetError, match="NCHW batch"):
        int8_drift(exported_m0_small["float32"], exported_m0_small["int8"], np.zeros((3, 64, 64), np.float32))


def test_the_script_prints_the_ops_that_lost_most(exported_m0_small, tmp_path):
    out = tmp_path / "drift.csv"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "int8_drift.py"), str(exported_m0_small["float32"]),
                             str(exported_m0_small["int8"]), "--count", "2", "--top", "3", "--csv", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "output: cosine" in result.stdout and "summed by op type" in result.stdout
    assert len(out.read_text().splitlines()) > 50


def test_the_script_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path):
    stray = tmp_path / "stray.tflite"
    stray.write_bytes(b"not a model")
    out = tmp_path / "drift.csv"
    for files in ([str(tmp_path / "missing.tflite"), str(stray)], [str(stray), str(stray)]):
        result = subprocess.run([sys.executable, str(ROOT / "scripts" / "int8_drift.py"), *files, "--csv", str(out)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert not out.exists()
