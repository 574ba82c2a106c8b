"""Training the keypoint MicroNets through the shared trainer: the pose recipe and its refusals, the task
plumbing (data layout, loss, lr drops, metric columns, checkpoints, resume) and the centre-guess baseline;
the end-to-end run (train through the CLI to an AP, export int8, bench) is the pose proof in
tests/test_bench_dense.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from micronet.errors import MicronetError
from micronet.keypoints import KEYPOINT_NAMES, load_coco_keypoints, oks_average_precision
from micronet.keypoints.synthetic import write_keypoint_set
from micronet.pose_model import build_pose_model
from micronet.sample_images import bundled_photographs
from micronet.train import TrainConfig, train
from micronet.train.tasks import POSE_COLUMNS, ClassificationTask, PoseTask, pose_lr_at, pose_lr_drops, task_for

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pose") / "coco"
    write_keypoint_set(root, bundled_photographs(), size=(96, 96), train_images=6, val_images=3, seed=2)
    return root


def _tiny(coco: Path, out: Path | None, **kwargs) -> TrainConfig:
    defaults = dict(variant="pose-m0", data=str(coco), out=str(out) if out else None, epochs=2, batch_size=2, input_size=(64, 64),
                    workers=0)
    return TrainConfig(**{**defaults, **kwargs})


# --- recipe ---------------------------------------------------------------------------------------

def test_pose_recipe_defaults_are_the_papers():
    config = TrainConfig(variant="pose-m0", data="unused")
    resolved = config.resolved()
    assert config.task == "pose" and isinstance(task_for(config), PoseTask)
    assert (config.epochs, config.batch_size, config.input_size) == (250, 32, (256, 192))
    assert (resolved.lr, resolved.weight_decay, resolved.warmup_epochs) == (1e-3, 0.0, 0.0)
    assert pose_lr_drops(250) == (210, 240)
    classification = TrainConfig(variant="m0", data="unused")
    assert (classification.epochs, classification.batch_size, classification.input_size) == (600, 512, 224)
    assert isinstance(task_for(classification), ClassificationTask)


def test_pose_lr_drops_tenfold_at_the_papers_fractions_of_any_length():
    total = 250 * 10  # 10 steps per epoch
    assert pose_lr_at(0, total, 1e-3) == 1e-3
    assert pose_lr_at(2099, total, 1e-3) == 1e-3  # epoch 209.9
    assert pose_lr_at(2100, total, 1e-3) == pytest.approx(1e-4)
    assert pose_lr_at(2400, total, 1e-3) == pytest.approx(1e-5)
    assert pose_lr_at(0, 500, 1e-3, warmup_steps=10) == pytest.approx(1e-4)  # linear warm-up first
    assert pose_lr_drops(50) == (42, 48)
    assert pose_lr_at(42 * 4, 50 * 4, 1e-3) == pytest.approx(1e-4)


@pytest.mark.parametrize("kwargs, option", [
    (dict(mutual=True), "--mutual"), (dict(mixup=0.2), "--mixup"), (dict(label_smoothing=0.1), "--label-smoothing"),
    (dict(num_classes=10), "--num-classes"), (dict(crop_scale=(0.5, 1.0)), "--crop-min"),
])
def test_classification_options_are_refused_for_pose_in_one_line(kwargs, option):
    with pytest.raises(MicronetError, match=f"^{option}.* is a classification option; pose-m0 trains with the "
                                            "pose recipe") as error:
        TrainConfig(variant="pose-m0", data="unused", **kwargs)
    assert "\n" not in str(error.value)


def test_input_sizes_per_task():
    assert TrainConfig(variant="pose-m1", data="x", input_size=128).input_size == (128, 128)
    assert TrainConfig(variant="pose-m1", data="x", input_size=[128, 96]).input_size == (128, 96)  # from JSON
    assert TrainConfig(variant="m0", data="x", input_size=(64, 64)).input_size == 64
    with pytest.raises(MicronetError, match="not square: classification models take one side"):
        TrainConfig(variant="m0", data="x", input_size=(64, 32))


# --- the task's parts -------------------------------------------------------------------------------

def test_pose_data_is_checked_and_described(coco, tmp_path):
    data = PoseTask().load_data(_tiny(coco, tmp_path / "run"))
    assert data.names == list(KEYPOINT_NAMES)
    assert data.train_count == len(load_coco_keypoints(coco, "train2017").person_boxes()) and data.val_count >= 3
    with pytest.raises(MicronetError, match="not a COCO keypoints folder"):
        PoseTask().load_data(_tiny(tmp_path, tmp_path / "run"))


def test_missing_val2017_trains_without_validation(coco, tmp_path):
    only_train = tmp_path / "coco"
    only_train.mkdir()
    (only_train / "annotations").mkdir()
    (only_train / "train2017").symlink_to(coco / "train2017")
    name = "person_keypoints_train2017.json"
    (only_train / "annotations" / name).write_text((coco / "annotations" / name).read_text())
    data = PoseTask().load_data(_tiny(only_train, tmp_path / "run"))
    assert data.val is None and data.warnings and "no validation" in data.warnings[0]


def test_pose_objective_is_the_weighted_heatmap_mse():
    objective = PoseTask().objective(TrainConfig(variant="pose-m0", data="x"))
    targets, weights = torch.zeros(2, 17, 4, 3), torch.ones(2, 17)
    weights[:, 0] = 0  # an unlabelled keypoint: its map does not count
    predicted = torch.zeros(2, 17, 4, 3)
    predicted[:, 0] = 5.0
    images = torch.zeros(2, 3, 16, 12)
    same, loss = objective.mix(images, (targets, weights))
    assert same is images and objective(predicted, loss).item() == 0.0
    predicted[:, 1] = 1.0
    assert objective(predicted, loss).item() == pytest.approx(0.5 / 17)


def test_pose_evaluation_is_oks_ap_of_the_flip_test(coco, tmp_path):
    config = _tiny(coco, tmp_path / "run")
    task = PoseTask()
    data = task.load_data(config)
    model = build_pose_model("pose-m0", input_size=(64, 64))
    from micronet.train.distributed import DistContext

    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    figures = task.evaluate(model, model, data.val, ctx, False, config)
    assert set(figures) == {"ap", "ap50", "ap75", "ar"} and all(0.0 <= v <= 1.0 for v in figures.values())
    assert model.training  # put back as it was found
    assert "val AP" in task.val_text({**figures}) and task.val_text({}) == "no validation data"


# --- runs ----------------------------------------------------------------------------------------------

def test_a_pose_run_writes_pose_metrics_and_a_loadable_best_pt(coco, tmp_path):
    out = tmp_path / "run"
    result = train(_tiny(coco, out), progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and tuple(rows[0]) == POSE_COLUMNS
    assert result["best_ap"] == max(r["ap"] for r in rows) and "best_top1" not in result
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["keypoints"] == list(KEYPOINT_NAMES) and best["task"] == "pose" and best["ap"] == result["best_ap"]
    from micronet.weights import load_weights

    load_weights(build_pose_model("pose-m0", input_size=(64, 64)), out / "best.pt")
    log = (out / "train.log").read_text()
    assert "training pose-m0 on" in log and "Adam lr 0.001 x0.1 at epochs 2, 2" in log and "val AP" in log


def test_a_pose_run_resumes_and_extends(coco, tmp_path):
    out = tmp_path / "run"
    train(_tiny(coco, out, epochs=1), progress=False)
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["classes"] == list(KEYPOINT_NAMES) and "best_ap" in last
    result = train(_tiny(coco, None, epochs=2, resume=str(out / "last.pt")), progress=False)
    assert result["epoch"] == 2 and result["epoch_changes"] == [{"at_epoch": 1, "from_epochs": 1, "to_epochs": 2}]
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    with pytest.raises(MicronetError, match="trained with lr=0.001, this run asks for 0.01"):
        train(_tiny(coco, None, epochs=3, lr=0.01, resume=str(out / "last.pt")), progress=False)


def test_a_classification_checkpoint_is_refused_for_a_pose_variant_in_one_line(coco, tmp_path):
    from micronet.model import build_model

    path = tmp_path / "m0.pt"
    torch.save({"state_dict": build_model("m0", num_classes=10, input_size=32).state_dict()}, path)
    with pytest.raises(MicronetError, match="image-classification checkpoint but pose-m0 is a pose model") as e:
        train(_tiny(coco, tmp_path / "run", weights=str(path)), progress=False)
    assert "\n" not in str(e.value)


def _ddp_worker(rank: int, port: int, config: dict, report_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = train(TrainConfig(**config), progress=False)
    Path(report_dir, f"rank{rank}.json").write_text(json.dumps(result))


@pytest.mark.slow
def test_two_gloo_processes_train_pose_and_agree_on_the_ap(coco, tmp_path):
    """Rank 0 alone runs COCOeval; the other rank must still log and return the same figures."""
    import torch.multiprocessing as mp

    from test_train_ddp import free_port

    out = tmp_path / "run"
    config = dict(variant="pose-m0", data=str(coco), out=str(out), epochs=2, batch_size=4, input_size=(64, 64),
                  workers=0, deterministic=True)
    mp.spawn(_ddp_worker, args=(free_port(), config, str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1] and results[0]["best_ap"] is not None
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "micronet.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def test_cli_refuses_a_folder_not_in_the_coco_layout_in_one_line(tmp_path):
    done = _cli("train", "--variant", "pose-m0", "--data", str(tmp_path), "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path}: not a COCO keypoints folder (no annotations/person_keypoints_train2017.json)"]


def test_cli_refuses_mutual_for_pose_in_one_line(tmp_path):
    done = _cli("train", "--variant", "pose-m0", "--data", str(tmp_path), "--mutual")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "--mutual (mutual learning with a full-rank classifier partner) is a classification option" in done.stderr


# --- baseline ------------------------------------------------------------------------------------

def centre_guess_ap(root: Path) -> float:
    """OKS AP (0-1) of every keypoint of every person at its box's centre, scored 1: what a model that learned
    nothing about where the joints are, but was given the box, would reach (the floor of the pose proof in
    tests/test_bench_dense.py)."""
    val = load_coco_keypoints(root, "val2017")
    results = []
    for box in val.person_boxes():
        x, y, w, h = box.box
        results.append({"image_id": box.image_id, "category_id": 1, "score": 1.0,
                        "keypoints": [x + w / 2 - 0.5, y + h / 2 - 0.5, 1.0] * len(KEYPOINT_NAMES)})
    return float(oks_average_precision(val.annotation_file, results)["AP"])


def test_the_centre_guess_scores_far_below_the_truth(coco):
    val = load_coco_keypoints(coco, "val2017")
    truth = [{"image_id": a["image_id"], "category_id": 1, "score": 1.0, "keypoints": a["keypoints"]}
             for a in val.data["annotations"]]
    assert oks_average_precision(val.annotation_file, truth)["AP"] == pytest.approx(1.0)
    assert centre_guess_ap(coco) < 0.1
