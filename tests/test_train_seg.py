"""Training the segmentation MicroNets through the shared trainer: the §6.2 recipe and its refusals, DeepLab's
augmentation (image and label in register, ignore padding, the scale range), the task's bad inputs (nothing
written), checkpoints and resume, and one slow end-to-end run of ``micronet train --variant seg-m0`` on the
synthetic Cityscapes-layout set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from micronet.errors import MicronetError
from micronet.sample_images import bundled_photographs
from micronet.seg_model import build_seg_model
from micronet.segmentation import CLASS_NAMES, IGNORE_INDEX, ConfusionMatrix, scan_cityscapes
from micronet.segmentation.synthetic import write_segmentation_set
from micronet.segmentation.training_data import (MEAN_RGB, DeepLabAugmentation, SegmentationCrops, augment,
                                                 segmentation_loss)
from micronet.train import TrainConfig, train
from micronet.train.seg_task import SEG_COLUMNS, SegmentationTask, seg_lr_at
from micronet.train.tasks import task_for

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seg") / "cityscapes"
    write_segmentation_set(root, bundled_photographs(), height=64, width=64, train_images=6, val_images=3, seed=1)
    return root


def _tiny(root: Path, out: Path | None, **kwargs) -> TrainConfig:
    defaults = dict(variant="seg-m0", data=str(root), out=str(out) if out else None, epochs=2, batch_size=2,
                    input_size=(64, 64), workers=0)
    return TrainConfig(**{**defaults, **kwargs})


# --- recipe ---------------------------------------------------------------------------------------

def test_seg_recipe_defaults_are_the_papers():
    config = TrainConfig(variant="seg-m0", data="unused")
    resolved = config.resolved()
    assert config.task == "segmentation" and isinstance(task_for(config), SegmentationTask)
    assert (config.epochs, config.batch_size, config.input_size) == (240, 16, (512, 1024))
    assert (resolved.lr, resolved.weight_decay, resolved.warmup_epochs, resolved.momentum) == (0.2, 4e-5, 0.0, 0.9)
    optimizer = SegmentationTask().optimizer(torch.nn.Linear(2, 2).parameters(), resolved)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9


def test_seg_lr_is_a_cosine_from_the_base_down_to_1e_4():
    total = 1000
    assert seg_lr_at(0, total, 0.2) == pytest.approx(0.2)
    assert seg_lr_at(total // 2, total, 0.2) == pytest.approx((0.2 + 1e-4) / 2)
    assert seg_lr_at(total - 1, total, 0.2) == pytest.approx(1e-4, abs=1e-6)
    lrs = [seg_lr_at(s, total, 0.2) for s in range(total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and min(lrs) >= 1e-4
    assert seg_lr_at(total - 1, total, 5e-5) == pytest.approx(5e-5)  # a base below the floor stays put


def test_seg_input_size_is_hxw_in_multiples_of_32():
    assert TrainConfig(variant="seg-m1", data="x", input_size=(64, 128)).input_size == (64, 128)
    assert TrainConfig(variant="seg-m1", data="x", input_size=[96, 64]).input_size == (96, 64)  # from JSON
    assert TrainConfig(variant="seg-m1", data="x", input_size=64).input_size == (64, 64)
    with pytest.raises(MicronetError, match="input size 64x100 is not supported: segmentation MicroNets need H x W, "
                                            "both multiples of 32") as error:
        TrainConfig(variant="seg-m0", data="x", input_size=(64, 100))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kwargs, option", [
    (dict(mutual=True), "--mutual"), (dict(mixup=0.2), "--mixup"), (dict(label_smoothing=0.1), "--label-smoothing"),
    (dict(num_classes=10), "--num-classes"), (dict(crop_scale=(0.5, 1.0)), "--crop-min"),
])
def test_classification_options_are_refused_for_seg_in_one_line(kwargs, option):
    with pytest.raises(MicronetError, match=f"^{option}.* is a classification option; seg-m0 trains with the "
                                            "segmentation recipe") as error:
        TrainConfig(variant="seg-m0", data="unused", **kwargs)
    assert "\n" not in str(error.value)


# --- augmentation ---------------------------------------------------------------------------------

#: One saturated colour per label of the pattern below, far apart so a pixel's class can be read back.
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=np.uint8)


def _pattern(height: int = 64, width: int = 96) -> tuple[Image.Image, np.ndarray]:
    """An asymmetric label map of blocks (train IDs 0-3) and the image that paints each label its colour."""
    label = np.zeros((height, width), dtype=np.uint8)
    label[: height // 2, width // 3:] = 1
    label[height // 2:, : width // 4] = 2
    label[height // 3: 2 * height // 3, width // 2: width // 2 + 12] = 3
    return Image.fromarray(PALETTE[label]), label


def _colour_class(pixels: np.ndarray) -> np.ndarray:
    distances = ((pixels[:, :, None, :].astype(int) - PALETTE[None, None].astype(int)) ** 2).sum(-1)
    return distances.argmin(-1)


@pytest.mark.parametrize("scale, offset, mirrored", [(1.0, (0.0, 0.0), False), (2.0, (0.7, 0.3), True),
                                                     (1.37, (0.5, 0.9), False), (0.6, (0.2, 0.8), True)])
def test_augmented_image_and_label_stay_in_register(scale, offset, mirrored):
    image, label = _pattern()
    out_image, out_label = augment(image, label, (64, 64), scale, offset, mirrored)
    assert out_image.size == (64, 64) and out_label.shape == (64, 64) and out_label.dtype == np.uint8
    labelled = out_label != IGNORE_INDEX
    agree = _colour_class(np.asarray(out_image))[labelled] == out_label[labelled]
    assert labelled.sum() > 1000 and agree.mean() > 0.97  # bilinear blends only along block edges
    assert set(np.unique(out_label)) <= {0, 1, 2, 3, IGNORE_INDEX}  # nearest resizing invents no label


def test_flip_mirrors_both_image_and_label():
    image, label = _pattern()
    plain_image, plain_label = augment(image, label, (64, 64), 1.5, (0.4, 0.6), False)
    flip_image, flip_label = augment(image, label, (64, 64), 1.5, (0.4, 0.6), True)
    assert np.array_equal(flip_label, plain_label[:, ::-1])
    assert np.array_equal(np.asarray(flip_image), np.asarray(plain_image)[:, ::-1])


def test_a_downscaled_image_is_padded_with_ignore_and_the_mean_colour():
    image, label = _pattern()
    out_image, out_label = augment(image, label, (64, 96), 0.5, (0.9, 0.9), False)
    pixels = np.asarray(out_image)
    assert (out_label[:32, :48] != IGNORE_INDEX).all()  # the image at half size, top left
    assert (out_label[32:] == IGNORE_INDEX).all() and (out_label[:, 48:] == IGNORE_INDEX).all()
    assert (pixels[32:] == MEAN_RGB).all() and (pixels[:, 48:] == MEAN_RGB).all()


def test_scales_are_drawn_over_0_5_to_2_and_repeat_per_seed_and_epoch(cityscapes):
    samples = scan_cityscapes(cityscapes, "train")
    crops = SegmentationCrops(samples * 100, (64, 64), seed=3)
    draws = [crops.draw(i) for i in range(len(crops))]
    scales = np.array([d[0] for d in draws])
    assert scales.min() >= 0.5 and scales.max() <= 2.0 and scales.min() < 0.55 and scales.max() > 1.95
    assert 0.4 < np.mean([d[2] for d in draws]) < 0.6  # flip with probability 1/2
    assert crops.draw(5) == SegmentationCrops(samples * 100, (64, 64), seed=3).draw(5)
    crops.epoch = 1
    assert crops.draw(5) != draws[5]
    assert {d[0] for d in (SegmentationCrops(samples, (64, 64), DeepLabAugmentation.none()).draw(i)
                           for i in range(6))} == {1.0}


def test_a_training_sample_is_a_normalised_image_and_an_int64_label(cityscapes):
    crops = SegmentationCrops(scan_cityscapes(cityscapes, "train"), (64, 96))
    image, label = crops[0]
    assert image.shape == (3, 64, 96) and image.dtype == torch.float32
    assert label.shape == (64, 96) and label.dtype == torch.int64
    assert set(label.unique().tolist()) <= set(range(len(CLASS_NAMES))) | {IGNORE_INDEX}


def test_the_loss_leaves_ignored_pixels_out():
    logits = torch.randn(2, 19, 4, 4)
    labels = torch.randint(0, 19, (2, 4, 4))
    labels[0, :2] = IGNORE_INDEX
    keep = labels != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[keep], labels[keep])
    assert segmentation_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    assert segmentation_loss(logits, torch.full_like(labels, IGNORE_INDEX)).item() == 0.0  # not NaN


# --- bad input: one line, nothing written ------------------------------------------------------------

def test_a_folder_not_in_the_cityscapes_layout_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(MicronetError, match="not a Cityscapes folder") as error:
        train(_tiny(tmp_path, out), progress=False)
    assert "\n" not in str(error.value) and not out.exists()


def test_a_label_png_with_unknown_ids_is_refused_before_anything_is_written(cityscapes, tmp_path):
    root = tmp_path / "cityscapes"
    shutil.copytree(cityscapes, root)
    label = sorted((root / "gtFine" / "val").glob("*/*_gtFine_labelTrainIds.png"))[-1]
    values = np.asarray(Image.open(label)).copy()
    values[:4, :4] = 40
    Image.fromarray(values).save(label)
    out = tmp_path / "run"
    with pytest.raises(MicronetError, match=f"{label}: values \\[40\\] are not Cityscapes train IDs") as error:
        train(_tiny(root, out), progress=False)
    assert "\n" not in str(error.value) and not out.exists()


@pytest.mark.parametrize("kind, message", [
    ("classification", "image-classification checkpoint but seg-m0 is a segmentation model"),
    ("pose", "keypoint \\(pose\\) checkpoint but seg-m0 is a segmentation model"),
    ("seg-m1", "does not match"),
])
def test_a_checkpoint_of_another_model_is_refused_before_anything_is_written(cityscapes, tmp_path, kind, message):
    from micronet.model import build_model
    from micronet.pose_model import build_pose_model

    model = {"classification": lambda: build_model("m0", num_classes=10, input_size=32),
             "pose": lambda: build_pose_model("pose-m0", input_size=(64, 64)),
             "seg-m1": lambda: build_seg_model("seg-m1", input_size=(64, 64))}[kind]()
    path = tmp_path / "other.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    out = tmp_path / "run"
    with pytest.raises(MicronetError, match=message) as error:
        train(_tiny(cityscapes, out, weights=str(path)), progress=False)
    assert "\n" not in str(error.value) and not out.exists()


def test_a_classification_run_is_refused_as_resume_for_a_seg_variant(cityscapes, tmp_path):
    """A classification run's last.pt (its layout as ``loop._save`` writes it; only what the resume
    check reads) must not continue as a segmentation run."""
    path = tmp_path / "last.pt"
    torch.save({"format": 1, "optimizer": {}, "epoch": 1,
                "config": TrainConfig(variant="m0", data="digits").resolved().to_dict()}, path)
    out = tmp_path / "run"
    with pytest.raises(MicronetError, match=f"checkpoint {path} is a m0 training run, but this run trains seg-m0"):
        train(_tiny(cityscapes, out, resume=str(path)), progress=False)
    assert not out.exists()


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "micronet.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def test_cli_refuses_bad_seg_input_in_one_line_and_writes_nothing(cityscapes, tmp_path):
    out = tmp_path / "run"
    for args, expected in [
        (("--data", str(tmp_path)), f"error: {tmp_path}: not a Cityscapes folder (no leftImg8bit/train/;"),
        (("--data", str(cityscapes), "--input-size", "64x100"), "error: input size 64x100 is not supported"),
    ]:
        done = _cli("train", "--variant", "seg-m0", *args, "--out", str(out))
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(expected), done.stderr
        assert not out.exists()


# --- runs ----------------------------------------------------------------------------------------------

def test_a_seg_run_writes_miou_metrics_and_a_loadable_best_pt(cityscapes, tmp_path):
    out = tmp_path / "run"
    result = train(_tiny(cityscapes, out), progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and tuple(rows[0]) == SEG_COLUMNS
    assert (out / "metrics.csv").read_text().splitlines()[0] == ",".join(SEG_COLUMNS)
    assert result["best_miou"] == max(r["miou"] for r in rows) and all(0 <= r["miou"] <= 1 for r in rows)
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["classes"] == list(CLASS_NAMES) and best["task"] == "segmentation"
    assert best["miou"] == result["best_miou"] and best["input_size"] == [64, 64]
    from micronet.weights import load_weights

    load_weights(build_seg_model("seg-m0", input_size=(64, 64)), out / "best.pt")
    log = (out / "train.log").read_text()
    assert "training seg-m0 on 6 images (19 Cityscapes classes), 3 val images; input 64x64 px" in log
    assert "SGD lr 0.2 cosine to 0.0001" in log and "val mIoU" in log and "done: best mIoU" in log


def test_a_seg_run_resumes_from_last_pt_and_continues_the_epoch_count(cityscapes, tmp_path):
    out = tmp_path / "run"
    train(_tiny(cityscapes, out, epochs=1), progress=False)
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["classes"] == list(CLASS_NAMES) and last["epoch"] == 1 and "best_miou" in last
    result = train(_tiny(cityscapes, None, epochs=2, resume=str(out / "last.pt")), progress=False)
    assert result["epoch"] == 2 and result["epoch_changes"] == [{"at_epoch": 1, "from_epochs": 1, "to_epochs": 2}]
    assert [row["epoch"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [1, 2]
    with pytest.raises(MicronetError, match="trained with input_size=\\(64, 64\\), this run asks for \\(64, 96\\)"):
        train(_tiny(cityscapes, None, epochs=3, input_size=(64, 96), resume=str(out / "last.pt")), progress=False)


def _ddp_worker(rank: int, port: int, config: dict, report_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = train(TrainConfig(**config), progress=False)
    Path(report_dir, f"rank{rank}.json").write_text(json.dumps(result))


@pytest.mark.slow
def test_two_gloo_processes_train_seg_and_agree_on_the_miou(cityscapes, tmp_path):
    """Rank 0 alone scores the val split; the other rank must still log and return the same figures."""
    import torch.multiprocessing as mp

    from test_train_ddp import free_port

    out = tmp_path / "run"
    config = dict(variant="seg-m0", data=str(cityscapes), out=str(out), epochs=2, batch_size=4, input_size=(64, 64),
                  workers=0, deterministic=True)
    mp.spawn(_ddp_worker, args=(free_port(), config, str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1] and results[0]["best_miou"] is not None
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


# --- end to end -------------------------------------------------------------------------------------

def all_background_miou(root: Path) -> float:
    """The mIoU of predicting the val split's most frequent class at every pixel: what a model that
    learned nothing but the class prior scores."""
    samples = scan_cityscapes(root, "val")
    labels = [s.load_label() for s in samples]
    counts = np.bincount(np.concatenate([l[l != IGNORE_INDEX] for l in labels]), minlength=len(CLASS_NAMES))
    matrix = ConfusionMatrix()
    for label in labels:
        matrix.add(np.full_like(label, int(counts.argmax())), label)
    return matrix.mean_iou()


@pytest.mark.slow
def test_seg_m0_learns_the_synthetic_set_through_the_cli(tmp_path):
    root = tmp_path / "cityscapes"
    made = _cli("datasets", "segmentation", "--out", str(root), "--input-size", "64x128", "--train-images", "48",
                "--val-images", "16")
    assert made.returncode == 0, made.stderr
    out = tmp_path / "run"
    done = _cli("train", "--variant", "seg-m0", "--data", str(root), "--out", str(out), *E2E_SETTINGS,
                "--workers", "0", "--json", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    baseline = all_background_miou(root)
    assert result["best_miou"] >= baseline + E2E_MARGIN, (result["best_miou"], baseline)
    # the figure best.pt records is the one the benchmark's evaluation gives its weights
    from micronet.segmentation.evaluate import evaluate_segmentation

    model = build_seg_model("seg-m0", input_size=(64, 128))
    model.load_state_dict(torch.load(out / "best.pt", weights_only=True)["state_dict"])
    model.eval()
    with torch.no_grad():
        report = evaluate_segmentation(lambda b: model(torch.from_numpy(b)).numpy(), scan_cityscapes(root, "val"),
                                       (64, 128))
    assert report["miou"] == pytest.approx(result["best_miou"], abs=1e-6)


#: Settings for the end-to-end run on 2 shared CPU cores (see README, "Segmentation models").
E2E_SETTINGS = ("--epochs", "20", "--batch-size", "8", "--input-size", "64x128")
#: Val mIoU at least this far (0-1) above the all-background baseline (measured: 0.845 vs 0.209, README).
E2E_MARGIN = 0.4


# --- ImageNet backbone --------------------------------------------------------------------------------

def test_a_released_classifier_starts_the_seg_backbone(cityscapes, tmp_path):
    """The released micronet-m1.pth is the paper's M0 (our m0): its stem and rows load into seg-m0's backbone
    (written here in the released layout from a random m0, since the file cannot be downloaded in CI)."""
    from micronet.model import build_model
    from micronet.weights import save_released_layout

    classifier = build_model("m0")
    path = tmp_path / "micronet-m1.pth"
    torch.save(save_released_layout(classifier), path)
    out = tmp_path / "run"
    config = _tiny(cityscapes, out, epochs=1, backbone_weights=str(path), lr=1e-12, momentum=0.0, weight_decay=0.0)
    train(config, progress=False)
    trained = torch.load(out / "last.pt", weights_only=True)["model"]
    for key, value in classifier.state_dict().items():
        if key.startswith(("stem.", "blocks.")) and "running" not in key and "num_batches" not in key:
            assert torch.allclose(trained[key], value, atol=1e-9), key  # lr 1e-12: still the loaded weights
    assert "loaded the m0 backbone (stem and rows, " in (out / "train.log").read_text()


@pytest.mark.parametrize("variant, message", [
    ("m1", "is an m1 checkpoint, but seg-m0 is built on m0 \\(the released micronet-m1.pth loads into it\\)"),
    ("seg-m0", "is a segmentation checkpoint; --backbone-weights takes an image-classification checkpoint of m0"),
])
def test_a_wrong_backbone_checkpoint_is_refused_before_anything_is_written(cityscapes, tmp_path, variant, message):
    from micronet.model import build_model

    model = build_seg_model(variant, input_size=(64, 64)) if variant.startswith("seg") else build_model(variant)
    path = tmp_path / "other.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    out = tmp_path / "run"
    with pytest.raises(MicronetError, match=message) as error:
        train(_tiny(cityscapes, out, backbone_weights=str(path)), progress=False)
    assert "\n" not in str(error.value) and not out.exists()


def test_backbone_weights_are_refused_outside_segmentation_and_beside_weights():
    with pytest.raises(MicronetError, match="--backbone-weights is for segmentation variants; pose-m0 starts from"):
        TrainConfig(variant="pose-m0", data="x", backbone_weights="m0.pt")
    with pytest.raises(MicronetError, match="give --weights .* or --backbone-weights .*, not both"):
        TrainConfig(variant="seg-m0", data="x", weights="a.pt", backbone_weights="m0.pt")
