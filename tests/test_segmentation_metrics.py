"""mIoU and the Cityscapes layout: checked against scikit-learn's independent IoU and confusion matrix,
and on hand-made folders in the real layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix, jaccard_score

from micronet.errors import MicronetError
from micronet.segmentation import CLASS_NAMES, IGNORE_INDEX, LABEL_ID_TO_TRAIN_ID, ConfusionMatrix, scan_cityscapes
from micronet.segmentation.cityscapes import label_ids_to_train_ids

NUM = len(CLASS_NAMES)


def _noisy_prediction(rng: np.random.Generator, label: np.ndarray, wrong: float) -> np.ndarray:
    prediction = np.where(label == IGNORE_INDEX, rng.integers(0, NUM, label.shape), label)
    flip = rng.random(label.shape) < wrong
    return np.where(flip, rng.integers(0, NUM, label.shape), prediction)


def test_miou_matches_scikit_learn_over_a_split_with_ignored_pixels():
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, NUM, (24, 48)) for _ in range(5)]
    for label in labels:
        label[rng.random(label.shape) < 0.2] = IGNORE_INDEX
    predictions = [_noisy_prediction(rng, label, 0.4) for label in labels]
    cm = ConfusionMatrix()
    for prediction, label in zip(predictions, labels):
        cm.add(prediction, label)
    y_true = np.concatenate([lab.ravel() for lab in labels])
    y_pred = np.concatenate([p.ravel() for p in predictions])
    keep = y_true != IGNORE_INDEX
    expected_iou = jaccard_score(y_true[keep], y_pred[keep], labels=list(range(NUM)), average=None,
                                 zero_division=0)
    assert np.isfinite(cm.iou()).all()  # every class occurs, so no undefined IoU to compare
    np.testing.assert_array_equal(cm.counts, confusion_matrix(y_true[keep], y_pred[keep], labels=list(range(NUM))))
    np.testing.assert_allclose(cm.iou(), expected_iou, rtol=1e-12)
    assert cm.mean_iou() == pytest.approx(float(np.nanmean(expected_iou)), rel=1e-12)
    assert 0.3 < cm.mean_iou() < 0.9  # neither perfect nor chance: the noise is visible


def test_perfect_prediction_is_one_whatever_is_predicted_on_ignored_pixels():
    label = np.array([[0, 0, 1], [IGNORE_INDEX, 2, 2]])
    cm = ConfusionMatrix()
    cm.add(np.array([[0, 0, 1], [7, 2, 2]]), label)
    assert cm.mean_iou() == 1.0 and cm.pixel_accuracy() == 1.0 and cm.counts.sum() == 5
    report = cm.report()
    assert report["per_class_iou"]["road"] == 1.0 and report["per_class_iou"]["sky"] is None


def test_a_hand_computed_case():
    """road: TP 2, FP 1, FN 0 → 2/3; sidewalk: TP 1, FP 0, FN 1 → 1/2; mean 7/12."""
    cm = ConfusionMatrix()
    cm.add(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1]))
    assert cm.iou()[:2] == pytest.approx([2 / 3, 1 / 2])
    assert np.isnan(cm.iou()[2:]).all()
    assert cm.mean_iou() == pytest.approx(7 / 12)


def test_out_of_range_classes_and_shape_mismatch_are_one_line_errors():
    cm = ConfusionMatrix()
    with pytest.raises(MicronetError, match="label holds class 19"):
        cm.add(np.zeros((2, 2)), np.full((2, 2), 19))
    with pytest.raises(MicronetError, match="prediction holds class 40"):
        cm.add(np.full((2, 2), 40), np.zeros((2, 2)))
    with pytest.raises(MicronetError, match="does not match"):
        cm.add(np.zeros((2, 3)), np.zeros((3, 2)))
    assert cm.counts.sum() == 0


def test_label_id_table_is_cityscapes():
    """The 19 evaluated classes come from 19 distinct label IDs, in train-ID order, and the rest is ignored."""
    assert sorted(LABEL_ID_TO_TRAIN_ID.values()) == list(range(NUM))
    assert LABEL_ID_TO_TRAIN_ID[7] == CLASS_NAMES.index("road") and LABEL_ID_TO_TRAIN_ID[26] == CLASS_NAMES.index("car")
    assert LABEL_ID_TO_TRAIN_ID[33] == CLASS_NAMES.index("bicycle") and LABEL_ID_TO_TRAIN_ID[23] == CLASS_NAMES.index("sky")
    mapped = label_ids_to_train_ids(np.arange(34, dtype=np.uint8))
    assert (mapped[[0, 1, 6, 9, 10, 14, 15, 16, 18, 29, 30]] == IGNORE_INDEX).all()
    with pytest.raises(MicronetError, match=r"values \[34, 200\] are not Cityscapes label IDs"):
        label_ids_to_train_ids(np.array([7, 34, 200], dtype=np.uint8))


def _write_pair(root, split, city, stem, label, suffix):
    (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
    (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (label.shape[1], label.shape[0]), (90, 120, 60)).save(
        root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
    Image.fromarray(label.astype(np.uint8), mode="L").save(root / "gtFine" / split / city / f"{stem}{suffix}")


def test_scan_reads_train_ids_and_maps_raw_label_ids(tmp_path):
    _write_pair(tmp_path, "val", "lindau", "lindau_000000_000019", np.array([[7, 26], [0, 33]]),
                "_gtFine_labelIds.png")
    _write_pair(tmp_path, "val", "munster", "munster_000001_000019", np.array([[0, 13], [255, 18]]),
                "_gtFine_labelTrainIds.png")
    samples = scan_cityscapes(tmp_path, "val")
    assert [(s.city, s.label_kind) for s in samples] == [("lindau", "label_ids"), ("munster", "train_ids")]
    np.testing.assert_array_equal(samples[0].load_label(), [[0, 13], [IGNORE_INDEX, 18]])
    np.testing.assert_array_equal(samples[1].load_label(), [[0, 13], [IGNORE_INDEX, 18]])


def test_scan_refuses_other_layouts_in_one_line(tmp_path):
    with pytest.raises(MicronetError, match=r"not a Cityscapes folder \(no leftImg8bit/val/"):
        scan_cityscapes(tmp_path, "val")
    _write_pair(tmp_path, "val", "lindau", "a", np.zeros((2, 2)), "_gtFine_labelTrainIds.png")
    (tmp_path / "leftImg8bit" / "val" / "lindau" / "b_leftImg8bit.png").write_bytes(
        (tmp_path / "leftImg8bit" / "val" / "lindau" / "a_leftImg8bit.png").read_bytes())
    with pytest.raises(MicronetError, match="1 image.s. without a gtFine annotation, first leftImg8bit/val/lindau/b_"):
        scan_cityscapes(tmp_path, "val")
    with pytest.raises(MicronetError, match="unknown Cityscapes split"):
        scan_cityscapes(tmp_path, "valid")
    _write_pair(tmp_path, "train", "x", "c", np.full((2, 2), 19), "_gtFine_labelTrainIds.png")
    with pytest.raises(MicronetError, match=r"values \[19\] are not Cityscapes train IDs"):
        scan_cityscapes(tmp_path, "train")[0].load_label()
