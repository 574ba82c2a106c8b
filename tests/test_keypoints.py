"""COCO keypoints: the layout and its refusals, top-down crops, heatmap coding and the flip test, and OKS
AP from pycocotools on known predictions."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from micronet.errors import MicronetError
from micronet.keypoints import (FLIP_PAIRS, KEYPOINT_NAMES, crop_transform, decode_heatmaps, encode_heatmaps,
                                flip_back, load_coco_keypoints, oks_average_precision)
from micronet.keypoints.synthetic import JOINT_COLOURS, write_keypoint_set
from micronet.sample_images import bundled_photographs

#: COCO's per-keypoint OKS constants (pycocotools' COCOeval keeps its own copy; these check it independently).
SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("kp") / "coco"
    write_keypoint_set(root, bundled_photographs(), size=(192, 256), train_images=6, val_images=5, seed=1)
    return root


def _gt_results(split):
    return [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
            for a in split.data["annotations"]]


def test_the_synthetic_set_is_a_coco_keypoint_split(coco):
    val = load_coco_keypoints(coco, "val2017")
    assert len(val.data["images"]) == 5 and len(val.data["annotations"]) >= 5
    boxes = val.person_boxes()
    assert len(boxes) == len(val.data["annotations"]) and all(b.image.is_file() for b in boxes)
    for ann in val.data["annotations"]:
        kp = np.array(ann["keypoints"]).reshape(17, 3)
        x, y, w, h = ann["bbox"]
        assert (kp[:, 2] == 2).all() and ann["num_keypoints"] == 17
        assert (kp[:, 0] >= x).all() and (kp[:, 0] <= x + w).all() and (kp[:, 1] >= y).all() and (kp[:, 1] <= y + h).all()
        assert kp[KEYPOINT_NAMES.index("left_shoulder"), 0] > kp[KEYPOINT_NAMES.index("right_shoulder"), 0]


def test_each_joint_is_drawn_in_its_colour_where_annotated(coco):
    val = load_coco_keypoints(coco, "val2017")
    ann = val.data["annotations"][0]
    image = np.asarray(Image.open(val.image_dir / val.images[ann["image_id"]]["file_name"]).convert("RGB")).astype(int)
    kp = np.array(ann["keypoints"]).reshape(17, 3)
    for k in (0, 5, 9, 16):
        x, y = int(round(kp[k, 0])), int(round(kp[k, 1]))
        assert np.abs(image[y, x] - np.array(JOINT_COLOURS[k])).max() < 60, KEYPOINT_NAMES[k]


def test_ground_truth_as_predictions_is_ap_one(coco):
    val = load_coco_keypoints(coco, "val2017")
    stats = oks_average_precision(val.annotation_file, _gt_results(val))
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
    assert oks_average_precision(val.annotation_file, [])["AP"] == 0.0


def _shift_for_oks(area: float, target: float) -> float:
    """The shift (px, the same for every keypoint) at which a person's OKS is ``target``, by bisection on
    OKS = mean_k exp(-d²/(2·area·(2σ_k)²)) (COCO's definition, written out here independently)."""
    lo, hi = 0.0, 10 * math.sqrt(area)
    for _ in range(200):
        mid = (lo + hi) / 2
        oks = np.mean(np.exp(-mid ** 2 / (2 * area * (2 * SIGMAS) ** 2)))
        lo, hi = (mid, hi) if oks > target else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("oks, expected_ap", [(0.72, 0.5), (0.87, 0.8), (0.52, 0.1), (0.45, 0.0)])
def test_a_known_oks_gives_the_ap_of_the_thresholds_it_passes(coco, oks, expected_ap):
    """Each person's prediction shifted so its OKS is ``oks``: with one prediction per person, AP is the
    share of COCO's thresholds 0.50, 0.55, ..., 0.95 that ``oks`` reaches."""
    val = load_coco_keypoints(coco, "val2017")
    areas = {a["id"]: a["area"] for a in val.data["annotations"]}
    results = []
    for ann, r in zip(val.data["annotations"], _gt_results(val)):
        kp = np.array(r["keypoints"], dtype=float).reshape(17, 3)
        kp[:, 0] += _shift_for_oks(areas[ann["id"]], oks)
        results.append({**r, "keypoints": kp.ravel().tolist()})
    assert oks_average_precision(val.annotation_file, results)["AP"] == pytest.approx(expected_ap, abs=1e-6)


def test_ap_falls_as_predictions_get_worse(coco):
    val = load_coco_keypoints(coco, "val2017")
    aps = []
    for shift in (0.0, 2.0, 5.0, 12.0):
        results = [{**r, "keypoints": (np.array(r["keypoints"], float).reshape(17, 3) + [shift, shift, 0]).ravel().tolist()}
                   for r in _gt_results(val)]
        aps.append(oks_average_precision(val.annotation_file, results)["AP"])
    assert aps[0] == pytest.approx(1.0) and aps == sorted(aps, reverse=True) and aps[-1] < 0.5


def test_layout_refusals_are_one_line(coco, tmp_path):
    with pytest.raises(MicronetError, match="not a COCO keypoints folder"):
        load_coco_keypoints(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(coco, broken)
    image = next((broken / "val2017").iterdir())
    image.unlink()
    with pytest.raises(MicronetError, match=f"image.s. listed in person_keypoints_val2017.json are missing, first {image.name}"):
        load_coco_keypoints(broken, "val2017")
    no_kp = tmp_path / "nokp"
    shutil.copytree(coco, no_kp)
    ann_file = no_kp / "annotations" / "person_keypoints_val2017.json"
    data = json.loads(ann_file.read_text())
    data["categories"][0].pop("keypoints")
    ann_file.write_text(json.dumps(data))
    with pytest.raises(MicronetError, match="no person category with COCO's 17 keypoints"):
        load_coco_keypoints(no_kp, "val2017")
    ann_file.write_text("{not json")
    with pytest.raises(MicronetError, match="not a readable JSON annotation file"):
        load_coco_keypoints(no_kp, "val2017")


def test_detections_give_the_boxes_and_bad_ones_are_refused(coco, tmp_path):
    val = load_coco_keypoints(coco, "val2017")
    image_id = val.data["images"][0]["id"]
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": image_id, "category_id": 1, "bbox": [10, 20, 50, 100], "score": 0.9},
                                {"image_id": image_id, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.1},
                                {"image_id": image_id, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.9}]))
    boxes = val.person_boxes(dets, min_score=0.5)
    assert [(b.box, b.score, b.annotation_id) for b in boxes] == [((10.0, 20.0, 50.0, 100.0), 0.9, None)]
    dets.write_text(json.dumps([{"image_id": 999999, "bbox": [0, 0, 1, 1], "score": 1.0}]))
    with pytest.raises(MicronetError, match="image_id 999999 is not in"):
        val.person_boxes(dets)
    dets.write_text(json.dumps({"boxes": []}))
    with pytest.raises(MicronetError, match="not a COCO detections file"):
        val.person_boxes(dets)


def test_crop_round_trip_and_aspect():
    t = crop_transform((40.0, 30.0, 60.0, 200.0), size=(256, 192))
    assert t.size == (256, 192)
    # a tall box: its height (200 px, padded 1.25) fills the crop's height
    assert t.scale * 256 == pytest.approx(200 * 1.25)
    points = np.array([[70.0, 130.0], [41.3, 31.7]])
    np.testing.assert_allclose(t.to_image(t.to_crop(points)), points)
    np.testing.assert_allclose(t.to_image(t.to_crop(points, stride=4), stride=4), points)
    centre = t.to_crop(np.array([[69.5, 129.5]]))  # the box's centre (edge 70, 130) → the crop's centre
    np.testing.assert_allclose(centre, [[95.5, 127.5]])
    with pytest.raises(MicronetError, match="has no area"):
        crop_transform((0, 0, 0, 10))


def test_a_dot_lands_in_the_crop_where_the_transform_says():
    image = Image.new("RGB", (320, 240), (0, 0, 0))
    ImageDraw.Draw(image).ellipse([200 - 3, 90 - 3, 200 + 3, 90 + 3], fill=(255, 255, 255))
    t = crop_transform((150, 40, 100, 120), size=(256, 192))
    crop = np.asarray(t.crop(image).convert("L")).astype(float)
    ys, xs = np.nonzero(crop > 128)
    expected = t.to_crop(np.array([[200.0, 90.0]]))[0]
    assert abs(xs.mean() - expected[0]) < 1.0 and abs(ys.mean() - expected[1]) < 1.0


def test_decoding_recovers_encoded_keypoints_within_a_quarter_cell():
    rng = np.random.default_rng(0)
    points = rng.uniform([2, 2], [45, 61], (17, 2))
    maps = encode_heatmaps(points, np.ones(17, bool), (64, 48))
    decoded, scores = decode_heatmaps(maps[None])
    assert decoded.shape == (1, 17, 2) and scores.shape == (1, 17)
    error = np.abs(decoded[0] - points)
    assert error.max() <= 0.5 and error.mean() < 0.3  # argmax alone is off by up to 0.5
    assert (scores > 0.85).all()


def test_the_quarter_shift_goes_towards_the_higher_neighbour():
    maps = np.zeros((1, 5, 5), np.float32)
    maps[0, 2, 2], maps[0, 2, 3], maps[0, 1, 2] = 1.0, 0.6, 0.2
    decoded, score = decode_heatmaps(maps)
    np.testing.assert_allclose(decoded[0], [2.25, 1.75])
    assert score[0] == 1.0


def test_invisible_keypoints_get_empty_maps():
    maps = encode_heatmaps(np.array([[10.0, 10.0], [5.0, 5.0], [100.0, 5.0]]), np.array([1, 0, 1], bool), (16, 16))
    assert maps[0].max() == pytest.approx(1.0) and maps[1].max() == 0 and maps[2].max() == 0


def test_flip_back_mirrors_and_swaps_left_and_right():
    rng = np.random.default_rng(1)
    points = rng.uniform(3, 40, (17, 2))
    maps = encode_heatmaps(points, np.ones(17, bool), (64, 48))
    # the mirrored crop's maps: x → W-1-x, and a left joint is seen where the right one was
    mirrored_points = points.copy()
    mirrored_points[:, 0] = 47 - points[:, 0]
    for left, right in FLIP_PAIRS:
        mirrored_points[[left, right]] = mirrored_points[[right, left]]
    mirrored = encode_heatmaps(mirrored_points, np.ones(17, bool), (64, 48))
    np.testing.assert_allclose(flip_back(mirrored), maps, atol=1e-6)
    np.testing.assert_array_equal(flip_back(flip_back(maps)), maps)


def test_cli_writes_the_set_and_refuses_bad_sizes(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "micronet.cli", *args], capture_output=True, text=True, timeout=300)

    result = cli("datasets", "keypoints", "--out", str(tmp_path / "k"), "--train-images", "2", "--val-images", "1")
    assert result.returncode == 0, result.stderr
    assert "2 train + 1 val images" in result.stdout
    assert load_coco_keypoints(tmp_path / "k", "train2017").data["images"]
    result = cli("datasets", "keypoints", "--out", str(tmp_path / "j"), "--image-size", "32x256")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "at least 64 px" in lines[0] and not (tmp_path / "j").exists()


def _oracle(split, input_size=(256, 192)):
    """A "model" that outputs, for each crop, the target heatmaps of the ground truth it was cut from: the
    crop's pixels are matched back to the annotation through the same transform, so any error in
    cropping, flipping, decoding or mapping back shows as lost AP."""
    from micronet.keypoints.predict import HEATMAP_STRIDE
    boxes = split.person_boxes()
    by_box = {b.box: a for b, a in zip(boxes, split.data["annotations"])}
    queue = []

    def run(batch):
        maps = []
        for _ in range(len(batch)):
            box, mirrored = queue.pop(0)
            ann = by_box[box]
            kp = np.array(ann["keypoints"], float).reshape(17, 3)
            t = crop_transform(box, input_size)
            points = t.to_crop(kp[:, :2], stride=HEATMAP_STRIDE)
            shape = (input_size[0] // HEATMAP_STRIDE, input_size[1] // HEATMAP_STRIDE)
            if mirrored:
                points[:, 0] = shape[1] - 1 - points[:, 0]
                for left, right in FLIP_PAIRS:
                    points[[left, right]] = points[[right, left]]
            maps.append(encode_heatmaps(points, kp[:, 2] > 0, shape))
        return np.stack(maps)

    return boxes, queue, run


@pytest.mark.parametrize("flip", [False, True])
def test_prediction_path_on_perfect_heatmaps_scores_near_one(coco, flip):
    from micronet.keypoints.predict import predict_keypoints
    val = load_coco_keypoints(coco, "val2017")
    boxes, queue, run = _oracle(val)
    batch = 2
    for start in range(0, len(boxes), batch):
        chunk = boxes[start:start + batch]
        queue += [(b.box, False) for b in chunk] + ([(b.box, True) for b in chunk] if flip else [])
    results = predict_keypoints(run, boxes, flip=flip, batch_size=batch)
    assert not queue and len(results) == len(boxes)
    ap = oks_average_precision(val.annotation_file, results)["AP"]
    assert ap > 0.95  # only the heatmap grid's quantisation (a quarter cell = ~1 px here) is lost
    kp = np.array(results[0]["keypoints"]).reshape(17, 3)
    gt = np.array(val.data["annotations"][0]["keypoints"]).reshape(17, 3)
    assert np.abs(kp[:, :2] - gt[:, :2]).max() < 2.5 and (kp[:, 2] > 0.8).all()


def test_training_crops_put_each_target_on_its_drawn_joint(coco):
    """Under rotation, scale and flip, a target's peak sits on a pixel drawn in that joint's colour, and
    the figures face the viewer in every crop: the left shoulder's target is right of the right shoulder's
    (without the swap a flipped crop would put it left)."""
    from micronet.keypoints.predict import HEATMAP_STRIDE
    from micronet.keypoints.training_data import Augmentation, KeypointCrops
    from micronet.preprocess import IMAGENET_MEAN, IMAGENET_STD
    train = load_coco_keypoints(coco, "train2017")
    data = KeypointCrops(train, augmentation=Augmentation(rotation=45, scale=(0.8, 1.2), flip=0.5), seed=3)
    checked = flipped = 0
    for index in range(len(data)):
        image, targets, weights = data.sample(index)
        rgb = (image.transpose(1, 2, 0) * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)) * 255
        positions, _ = decode_heatmaps(targets)
        for k in (0, 5, 10, 15):
            if not weights[k]:
                continue
            x, y = (positions[k] + 0.5) * HEATMAP_STRIDE - 0.5
            patch = rgb[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2].reshape(-1, 3)
            assert np.abs(patch - np.array(JOINT_COLOURS[k])).max(axis=1).min() < 70, (index, KEYPOINT_NAMES[k])
            checked += 1
        rng = np.random.default_rng([3, 0, index])
        rng.normal(), rng.uniform()
        flipped += rng.random() < 0.5
        if weights[5] and weights[6]:
            assert positions[5, 0] > positions[6, 0], index
    assert checked >= 12 and flipped >= 1
    assert image.shape == (3, 256, 192) and targets.shape == (17, 64, 48) and weights.shape == (17,)


def test_half_body_box_takes_the_chosen_half_or_the_other():
    from micronet.keypoints.training_data import half_body_box

    kp = np.zeros((17, 3))
    kp[:, 2] = 2
    kp[:, 0] = np.arange(17) * 10.0
    kp[:, 1] = np.where(np.arange(17) < 11, 5.0, 95.0)
    assert half_body_box(kp, upper_first=True) == (0.5, 5.5, 100.0, 1.0)  # joints 0..10: x 0..100, y 5
    assert half_body_box(kp, upper_first=False) == (110.5, 95.5, 50.0, 1.0)  # joints 11..16
    kp[12:, 2] = 0  # one lower joint left: the lower half falls back to the upper
    assert half_body_box(kp, upper_first=False) == half_body_box(kp, upper_first=True)
    kp[1:11, 2] = 0
    assert half_body_box(kp, upper_first=True) is None  # one joint in each half


def test_half_body_crops_frame_one_half_of_the_figure(coco):
    """With half-body on, a person with more than 8 labelled joints is cropped around one half's joints padded
    by 1.5: every target sits where that crop puts its joint (not where the whole-person crop would)."""
    import dataclasses

    from micronet.keypoints.crops import BOX_PADDING, crop_transform
    from micronet.keypoints.predict import HEATMAP_STRIDE
    from micronet.keypoints.training_data import HALF_BODY_PADDING, Augmentation, KeypointCrops, half_body_box
    train = load_coco_keypoints(coco, "train2017")
    half = KeypointCrops(train, augmentation=dataclasses.replace(Augmentation.none(), half_body=1.0), seed=1)
    framed = 0
    for index in range(len(half)):
        kp = half.keypoints[index]
        if (kp[:, 2] > 0).sum() <= 8:
            continue
        _, targets, weights = half.sample(index)
        found = decode_heatmaps(targets)[0][weights > 0]

        def expected(box, padding):
            return crop_transform(box, half.input_size, padding).to_crop(kp[:, :2], HEATMAP_STRIDE)[weights > 0]

        candidates = [expected(half_body_box(kp, upper), HALF_BODY_PADDING) for upper in (True, False)]
        errors = [np.abs(found - c).max() for c in candidates]
        assert min(errors) <= 0.5, (index, errors)  # the grid's quantisation: peaks sit on cells
        assert np.abs(found - expected(half.people[index].box, BOX_PADDING)).max() > 2, index
        framed += 1
    assert framed >= 2


def test_heatmap_loss_ignores_unlabelled_joints():
    import torch
    from micronet.keypoints.training_data import heatmap_loss
    targets = torch.zeros(1, 2, 4, 4)
    predicted = torch.ones(1, 2, 4, 4)
    assert float(heatmap_loss(predicted, targets, torch.tensor([[1.0, 0.0]]))) == pytest.approx(0.25)
    assert float(heatmap_loss(predicted, targets, torch.tensor([[0.0, 0.0]]))) == 0.0


def test_the_pose_network_runs_through_the_prediction_path(coco):
    """pose-m0's own heatmaps (untrained) go through crop, flip test, decode and COCOeval: one result per
    person with 17 keypoints inside the crops, and a finite AP."""
    import torch
    from micronet.keypoints.predict import predict_keypoints
    from micronet.pose_model import build_pose_model

    torch.manual_seed(0)
    model = build_pose_model("pose-m0").eval()

    def run(batch):
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()

    val = load_coco_keypoints(coco, "val2017")
    boxes = val.person_boxes()[:3]
    results = predict_keypoints(run, boxes, flip=True)
    assert len(results) == 3
    for box, result in zip(boxes, results):
        kp = np.array(result["keypoints"]).reshape(17, 3)
        t = crop_transform(box.box)
        inside = t.to_crop(kp[:, :2])
        assert (inside >= -0.5).all() and (inside[:, 0] <= 191.5).all() and (inside[:, 1] <= 255.5).all()
    assert 0.0 <= oks_average_precision(val.annotation_file, results)["AP"] <= 1.0
    with pytest.raises(MicronetError, match="heatmaps must be"):
        decode_heatmaps(np.zeros((4, 4)))
