"""Calibration and hold-out sets: user folders, the embedded default photographs, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from micronet.errors import MicronetError
from micronet.export.calibration import CalibrationData, build_calibration, nhwc
from micronet.images import load_rgb
from micronet.preprocess import Preprocessing, preprocess
from micronet.sample_images import BUNDLED_PHOTOS, bundled_photographs, held_out_photographs

SMALL = Preprocessing(input_size=16)


def solid_images(folder: Path, how_many: int) -> list[tuple[int, int, int]]:
    """Each image one distinct colour, so every array row tells which file it came from."""
    colours = [(10 * i % 256, 255 - 7 * i % 256, 40 + 3 * i % 200) for i in range(how_many)]
    for i, colour in enumerate(colours):
        subfolder = folder / f"set{i % 3}"
        subfolder.mkdir(exist_ok=True)
        Image.new("RGB", (24, 20), colour).save(subfolder / f"img{i:02d}.png")
    return colours


def colour_rows(batch: np.ndarray) -> set[tuple[float, ...]]:
    return {tuple(np.round(row.mean(axis=(1, 2)), 4)) for row in batch}


@pytest.fixture(scope="module")
def default_set() -> CalibrationData:
    return build_calibration(None, count=40, seed=0, preprocessing=SMALL, holdout=8)


def test_user_folder_shapes_record_and_disjoint_holdout(tmp_path: Path) -> None:
    solid_images(tmp_path, 20)
    data = build_calibration(tmp_path, count=12, seed=1, preprocessing=SMALL, holdout=5)
    assert data.calibration.shape == (12, 3, 16, 16) and data.calibration.dtype == np.float32
    assert data.holdout.shape == (5, 3, 16, 16)
    assert not colour_rows(data.calibration) & colour_rows(data.holdout)
    record = data.record
    assert record["source"] == f"user folder {tmp_path}" and record["is_default"] is False
    assert (record["count"], record["holdout"], record["seed"]) == (12, 5, 1)
    assert len(record["files_sha256"]) == 64 and record["skipped"] == [] and "warning" not in record
    assert Preprocessing.from_dict(record["preprocessing"]) == SMALL
    json.dumps(record)  # the manifest must be able to store it


def test_same_inputs_give_byte_identical_arrays(tmp_path: Path) -> None:
    solid_images(tmp_path, 20)
    first = build_calibration(tmp_path, count=8, seed=5, preprocessing=SMALL, holdout=4)
    again = build_calibration(tmp_path, count=8, seed=5, preprocessing=SMALL, holdout=4)
    other_seed = build_calibration(tmp_path, count=8, seed=6, preprocessing=SMALL, holdout=4)
    assert first.calibration.tobytes() == again.calibration.tobytes()
    assert first.holdout.tobytes() == again.holdout.tobytes()
    assert first.record == again.record
    assert first.record["files_sha256"] != other_seed.record["files_sha256"]


def test_small_folder_uses_what_there_is_and_says_so(tmp_path: Path) -> None:
    solid_images(tmp_path, 7)
    data = build_calibration(tmp_path, count=200, preprocessing=SMALL, holdout=32)
    assert (len(data.calibration), len(data.holdout)) == (6, 1)  # holdout = min(32, max(1, 7 // 5))
    assert "only 7 images" in data.record["note"]


def test_unreadable_files_are_skipped_with_a_reason(tmp_path: Path) -> None:
    solid_images(tmp_path, 3)
    (tmp_path / "set0" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "readme.txt").write_text("ignored: not an image extension")
    data = build_calibration(tmp_path, count=10, preprocessing=SMALL, holdout=1)
    assert len(data.calibration) + len(data.holdout) == 3
    assert [entry["file"] for entry in data.record["skipped"]] == ["set0/corrupt.jpg"]
    assert data.record["skipped"][0]["reason"]


def test_unusable_folders_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    for i in range(3):
        (tmp_path / "broken" / f"{i}.jpg").write_bytes(b"not a jpeg")
    for folder, message in [(tmp_path / "missing", "not found"), (tmp_path / "empty", "no images"),
                            (tmp_path / "broken", "could be read")]:
        with pytest.raises(MicronetError, match=message) as info:
            build_calibration(folder, count=4, preprocessing=SMALL, holdout=1)
        assert "\n" not in str(info.value)


def test_default_set_is_crops_of_bundled_photographs(default_set: CalibrationData) -> None:
    record = default_set.record
    assert default_set.calibration.shape == (40, 3, 16, 16) and default_set.holdout.shape == (8, 3, 16, 16)
    assert record["is_default"] is True and "must calibrate on its own" in record["warning"]
    assert record["source"].startswith("embedded default: ")
    bundled = {path.name: path for path in bundled_photographs()}
    calibration_photos = record["photographs"]["calibration"]
    assert set(calibration_photos) | set(record["photographs"]["holdout"]) <= set(bundled)
    # Not noise: the first view of each photo is exactly the evaluation transform of that file.
    for row, name in enumerate(calibration_photos):
        expected = preprocess(load_rgb(bundled[name]), SMALL)
        assert np.array_equal(default_set.calibration[row], expected), name


def test_default_holdout_photos_are_never_calibrated_on(default_set: CalibrationData) -> None:
    photographs = default_set.record["photographs"]
    assert photographs["holdout"] and not set(photographs["holdout"]) & set(photographs["calibration"])
    assert photographs["holdout"] == [path.name for path in held_out_photographs()]
    for row, name in enumerate(photographs["holdout"]):
        path = next(p for p in bundled_photographs() if p.name == name)
        assert np.array_equal(default_set.holdout[row], preprocess(load_rgb(path), SMALL))


def test_default_set_is_deterministic(default_set: CalibrationData) -> None:
    again = build_calibration(None, count=40, seed=0, preprocessing=SMALL, holdout=8)
    assert again.calibration.tobytes() == default_set.calibration.tobytes()
    assert again.holdout.tobytes() == default_set.holdout.tobytes()
    assert again.record == default_set.record


def test_bundled_photographs_are_found_through_the_packages() -> None:
    found = bundled_photographs()
    assert len(found) >= 10 and all(path.is_file() for path in found)
    assert {path.name for path in found} <= {Path(photo.path_in_package).name for photo in BUNDLED_PHOTOS}


def test_nhwc_for_tflite_converters(default_set: CalibrationData) -> None:
    channels_last = nhwc(default_set.calibration)
    assert channels_last.shape == (40, 16, 16, 3)
    assert np.array_equal(channels_last[3, :, :, 1], default_set.calibration[3, 1])


def test_bad_counts_are_user_errors() -> None:
    with pytest.raises(MicronetError, match="at least 1"):
        build_calibration(None, count=0)
    with pytest.raises(MicronetError, match=">= 0"):
        build_calibration(None, holdout=-1)
    with pytest.raises(MicronetError, match="seed"):
        build_calibration(None, seed=-1)


def test_default_falls_back_to_holding_out_the_last_photo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("micronet.export.calibration.held_out_photographs", lambda: [])
    data = build_calibration(None, count=4, preprocessing=SMALL, holdout=2)
    last = bundled_photographs()[-1].name
    assert data.record["photographs"]["holdout"] == [last]
    assert last not in data.record["photographs"]["calibration"] and len(data.holdout) == 2


def test_shortfall_note_counts_the_images_actually_used(tmp_path: Path) -> None:
    """The note once said "using 98 for calibration and 24 held out" beside counts of 97 and 23."""
    solid_images(tmp_path, 8)
    for name in ("bad1.jpg", "bad2.jpg"):
        (tmp_path / "set1" / name).write_bytes(b"\xff\xd8\xff garbage")
    data = build_calibration(tmp_path, count=200, preprocessing=SMALL, holdout=32)
    record = data.record
    assert (record["count"], record["holdout"]) == (len(data.calibration), len(data.holdout))
    assert len(data.calibration) + len(data.holdout) == 8  # 10 files found, 2 of them unreadable
    assert (f"using {len(data.calibration)} for calibration and {len(data.holdout)} held out, "
            "2 unreadable skipped") in record["note"]
    assert "only 10 images" in record["note"]


def test_skipped_files_are_summarised_for_the_terminal(tmp_path: Path) -> None:
    from micronet.export.calibration import skipped_summary

    solid_images(tmp_path, 20)
    for i in range(5):
        (tmp_path / "set0" / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    data = build_calibration(tmp_path, count=30, preprocessing=SMALL, holdout=4)  # every file is sampled
    line = skipped_summary(data.record)
    assert line.startswith("skipped 5 unreadable calibration images: set0/bad0.jpg, set0/bad1.jpg, set0/bad2.jpg "
                           "and 2 more (set0/bad0.jpg: ")
    assert "\n" not in line
    (tmp_path / "clean").mkdir()
    solid_images(tmp_path / "clean", 6)
    assert skipped_summary(build_calibration(tmp_path / "clean", count=4, preprocessing=SMALL, holdout=1).record) is None


def test_a_folder_of_corrupt_images_is_counted_right(tmp_path: Path) -> None:
    """3 corrupt jpgs once gave "none of the 2 sampled images": 2 were sampled for calibration, 1 held out."""
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(MicronetError, match=r"^none of the 3 images under .* could be read \(first: "):
        build_calibration(tmp_path, count=200, preprocessing=SMALL, holdout=32)


def test_an_unreadable_holdout_is_an_error_with_its_own_numbers(tmp_path: Path) -> None:
    from micronet.images import deterministic_sample, find_images

    solid_images(tmp_path, 5)  # 4 calibrate, 1 is held out
    (held,) = deterministic_sample(find_images(tmp_path), 1, 0)
    held.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(MicronetError, match=r"none of the one image sampled to hold out for parity \(of 5 under"):
        build_calibration(tmp_path, count=200, preprocessing=SMALL, holdout=32)


def test_non_int8_artifacts_do_not_carry_the_int8_warning(default_set: CalibrationData) -> None:
    from micronet.export.calibration import record_for_artifact

    assert record_for_artifact(default_set.record, int8=True) == default_set.record
    other = record_for_artifact(default_set.record, int8=False)
    assert "warning" not in other and "warning" in default_set.record  # the shared record is not changed
    assert "no int8 ranges" in other["note"] and "hold-out" in other["note"]
    assert {k: v for k, v in other.items() if k != "note"} == {k: v for k, v in default_set.record.items()
                                                               if k != "warning"}
