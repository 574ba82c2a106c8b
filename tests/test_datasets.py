"""scikit-learn's digits written as an ImageFolder: counts, split, pixels, atomicity, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from micronet.datasets import MANIFEST_NAME, write_digits
from micronet.errors import MicronetError
from micronet.images import scan_labelled

from test_cli import REPO, assert_one_line_error


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("d") / "digits"
    return out, write_digits(out)


def test_all_1797_scans_in_a_stratified_split(digits):
    from sklearn.datasets import load_digits

    out, summary = digits
    train, val = scan_labelled(out / "train"), scan_labelled(out / "val")
    assert train.classes == val.classes == [str(d) for d in range(10)]
    assert (len(train.samples), len(val.samples)) == (summary["train_images"], summary["val_images"]) == (1438, 359)
    names = {p.name for p, _ in train.samples} | {p.name for p, _ in val.samples}
    assert len(names) == 1797  # every scan exactly once, none in both splits
    per_class = Counter(load_digits().target.tolist())
    val_counts = Counter(label for _, label in val.samples)
    assert all(val_counts[d] == round(per_class[d] * 0.2) for d in range(10))
    assert json.loads((out / MANIFEST_NAME).read_text()) == summary


def test_pixels_are_the_scan_upsampled_by_nearest(digits):
    from sklearn.datasets import load_digits

    out, _ = digits
    path = next((out / "train" / "3").iterdir())
    img = Image.open(path)
    assert img.size == (32, 32) and img.mode == "RGB"
    pixels = np.asarray(img)
    scan = load_digits().images[int(path.stem)]
    assert np.array_equal(pixels[..., 0], pixels[..., 2])  # grey stored as RGB
    expected = np.round(255 - scan * 255 / 16).astype(np.uint8).repeat(4, 0).repeat(4, 1)
    assert np.array_equal(pixels[..., 0], expected)  # ink is dark, each scan cell a 4x4 block


def test_same_request_reuses_the_folder_and_another_is_refused(digits):
    out, summary = digits
    stamp = (out / "val" / "0").stat().st_mtime_ns
    assert write_digits(out) == summary
    assert (out / "val" / "0").stat().st_mtime_ns == stamp
    with pytest.raises(MicronetError, match="already exists and is not this digits data set"):
        write_digits(out, size=64)


def test_bilinear_and_seed_change_pixels_and_split(tmp_path):
    a = write_digits(tmp_path / "a", interpolation="bilinear", seed=1)
    b = write_digits(tmp_path / "b", interpolation="nearest", seed=1)
    c = write_digits(tmp_path / "c", interpolation="nearest", seed=2)
    assert a["train_images"] == c["train_images"] == 1438
    split_b = {p.name for p in (tmp_path / "b" / "val").rglob("*.png")}
    assert split_b == {p.name for p in (tmp_path / "a" / "val").rglob("*.png")}  # seed fixes the split
    assert split_b != {p.name for p in (tmp_path / "c" / "val").rglob("*.png")}
    name = sorted(split_b)[0]
    smooth = np.asarray(Image.open(next((tmp_path / "a" / "val").rglob(name))))
    blocky = np.asarray(Image.open(next((tmp_path / "b" / "val").rglob(name))))
    assert len(np.unique(smooth)) > len(np.unique(blocky))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no staging folders left


@pytest.mark.parametrize("kwargs,message", [({"size": 40}, "multiple of 32"), ({"size": 0}, "multiple of 32"),
                                            ({"val_fraction": 1.0}, "between 0 and 1"),
                                            ({"interpolation": "cubic"}, "nearest, bilinear")])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(MicronetError, match=message):
        write_digits(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_cli_writes_64px_digits(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "micronet.cli", "datasets", "digits", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    done = run("--out", str(tmp_path / "d"), "--size", "64")
    assert done.returncode == 0, done.stderr
    assert "1438 train + 359 val images, 64x64 px" in done.stdout
    assert Image.open(next((tmp_path / "d" / "val" / "7").iterdir())).size == (64, 64)
    assert_one_line_error(run("--out", str(tmp_path / "e"), "--size", "48"), "multiple of 32")
