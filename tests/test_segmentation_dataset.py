"""The offline segmentation set: written in the real Cityscapes layout, read back by the same scanner a
user's Cityscapes folder goes through, complete or not at all."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from micronet.errors import MicronetError
from micronet.sample_images import bundled_photographs
from micronet.segmentation import IGNORE_INDEX, scan_cityscapes
from micronet.segmentation.synthetic import BACKGROUND, MANIFEST_NAME, SHAPES, write_segmentation_set


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "cityscapes"
    summary = write_segmentation_set(out, bundled_photographs(), height=64, width=128, train_images=8,
                                     val_images=4, seed=3)
    return out, summary


def test_both_splits_read_back_through_the_cityscapes_scanner(small_set):
    out, summary = small_set
    train, val = scan_cityscapes(out, "train"), scan_cityscapes(out, "val")
    assert len(train) == 8 and len(val) == 4 and {s.city for s in train} == {"aachen", "bochum"}
    labels = np.stack([s.load_label() for s in train + val])
    assert labels.shape == (12, 64, 128)
    present = set(np.unique(labels).tolist())
    assert BACKGROUND in present and IGNORE_INDEX in present
    assert {train_id for train_id, _, _ in SHAPES} <= present
    assert summary["classes"]["car"] == 13 and json.loads((out / MANIFEST_NAME).read_text()) == summary


def test_raw_label_ids_say_the_same_as_train_ids(small_set):
    """Each image has both label files; the raw-ID one, mapped, equals the train-ID one."""
    out, _ = small_set
    for sample in scan_cityscapes(out, "val"):
        assert sample.label_kind == "train_ids"
        raw = sample.label.with_name(sample.label.name.replace("labelTrainIds", "labelIds"))
        from dataclasses import replace
        np.testing.assert_array_equal(replace(sample, label=raw, label_kind="label_ids").load_label(),
                                      sample.load_label())


def test_shapes_are_drawn_on_the_image_where_the_label_says(small_set):
    """A car pixel is blue-dominant in the image: the labels are where the drawing is."""
    out, _ = small_set
    from PIL import Image
    sample = scan_cityscapes(out, "train")[0]
    image = np.asarray(Image.open(sample.image)).astype(int)
    label = sample.load_label()
    for train_id, _, colour in SHAPES:
        mask = label == train_id
        if mask.sum() > 50:
            mean = image[mask].mean(axis=0)
            assert np.abs(mean - np.array(colour)).max() < 40


def test_same_request_returns_the_existing_set_and_another_is_refused(small_set):
    out, summary = small_set
    assert write_segmentation_set(out, bundled_photographs(), height=64, width=128, train_images=8,
                                  val_images=4, seed=3) == summary
    with pytest.raises(MicronetError, match="already exists and is not this segmentation data set"):
        write_segmentation_set(out, bundled_photographs(), height=64, width=128, train_images=8,
                               val_images=4, seed=4)


def test_bad_sizes_are_one_line_and_nothing_is_written(tmp_path):
    with pytest.raises(MicronetError, match="width must be a multiple of 32"):
        write_segmentation_set(tmp_path / "x", bundled_photographs(), height=64, width=100)
    assert list(tmp_path.iterdir()) == []


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "micronet.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_writes_and_refuses_in_one_line(tmp_path):
    result = _cli("datasets", "segmentation", "--out", str(tmp_path / "s"), "--input-size", "64x96",
                  "--train-images", "2", "--val-images", "1")
    assert result.returncode == 0, result.stderr
    assert "2 train + 1 val images, 64x96 px" in result.stdout
    assert len(scan_cityscapes(tmp_path / "s", "val")) == 1
    result = _cli("datasets", "segmentation", "--out", str(tmp_path / "t"), "--input-size", "60x96")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "multiple of 32" in lines[0]
    assert not (tmp_path / "t").exists()


def _oracle(samples, num_classes=19):
    """Logits that are one-hot on each image's own labels (ignore → class 0): a perfect model."""
    queue = list(samples)

    def run(batch):
        out = []
        for _ in range(len(batch)):
            label = queue.pop(0).load_label()
            logits = np.zeros((num_classes, *label.shape), np.float32)
            cls = np.where(label == IGNORE_INDEX, 0, label)
            np.put_along_axis(logits, cls[None].astype(np.int64), 1.0, axis=0)
            out.append(logits)
        return np.stack(out)

    return run


def test_a_perfect_model_scores_miou_one_and_a_constant_one_scores_the_background_baseline(small_set):
    from micronet.segmentation.evaluate import evaluate_segmentation
    out, _ = small_set
    samples = scan_cityscapes(out, "val")
    perfect = evaluate_segmentation(_oracle(samples), samples, (64, 128), batch_size=3)
    assert perfect["miou"] == 1.0 and perfect["images"] == 4
    background = evaluate_segmentation(
        lambda batch: np.eye(19, dtype=np.float32)[BACKGROUND][None, :, None, None].repeat(len(batch), 0)
        .repeat(64, 2).repeat(128, 3), samples, (64, 128))
    # all-background: only the background class has an IoU above 0 (its pixel share), the shapes score 0
    assert 0.0 < background["miou"] < 0.3
    assert background["per_class_iou"]["car"] == 0.0 and background["per_class_iou"]["road"] is None


def test_predictions_at_another_resolution_are_scored_at_the_annotations(small_set):
    from micronet.segmentation.evaluate import evaluate_segmentation
    out, _ = small_set
    samples = scan_cityscapes(out, "val")
    full = _oracle(samples)

    def half(batch):  # a model run at 32x64: its perfect labels, subsampled, come back at 64x128
        return full(batch)[:, :, ::2, ::2]

    report = evaluate_segmentation(half, samples, (32, 64))
    assert 0.6 < report["miou"] < 1.0 and report["input_size"] == [32, 64]


def test_the_segmentation_network_runs_through_the_evaluation(small_set):
    """seg-m0's own logits (untrained) at the images' size: a report over all 19 classes."""
    import torch
    from micronet.seg_model import build_seg_model
    from micronet.segmentation.evaluate import evaluate_segmentation

    torch.manual_seed(0)
    model = build_seg_model("seg-m0", input_size=(64, 128)).eval()

    def run(batch):
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()

    out, _ = small_set
    report = evaluate_segmentation(run, scan_cityscapes(out, "val"), (64, 128))
    assert 0.0 <= report["miou"] <= 1.0 and len(report["per_class_iou"]) == 19
