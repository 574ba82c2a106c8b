"""Whole training runs in-process on tiny folders: files written, checkpoints usable, options honoured."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch

from micronet.errors import MicronetError
from micronet.model import build_model
from micronet.train import TrainConfig, train
from micronet.train.metrics_log import COLUMNS
from micronet.train.mutual import full_rank_partner
from micronet.train.schedule import lr_at
from micronet.weights import load_weights

from train_data import write_split


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: same results here, but no OpenMP oversubscription on a busy 2-core runner."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_split(tmp_path_factory.mktemp("shapes"))


def tiny(data: Path, out: Path, **kwargs) -> TrainConfig:
    defaults = dict(variant="m0", data=str(data), out=str(out), epochs=2, batch_size=8, input_size=32,
                    workers=0, deterministic=True, lr=0.1)
    return TrainConfig(**{**defaults, **kwargs})


def test_run_writes_metrics_and_checkpoints(data, tmp_path):
    result = train(tiny(data, tmp_path / "run"), progress=False)
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert tuple(rows[0]) == COLUMNS
    with open(run / "metrics.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [float(r["top1"]) for r in table] == [r["top1"] for r in rows]
    assert rows[-1]["train_loss"] == result["train_loss"] and rows[-1]["top1"] == result["top1"]
    assert 0.0 <= result["top1"] <= 100.0 and result["top5"] == 100.0  # 3 classes: top-5 holds all
    assert result["images_per_s"] > 0 and result["wall_s"] >= result["epoch_s"] > 0
    assert rows[0]["lr"] > rows[1]["lr"] > 0  # cosine decays inside the run
    # 24 train images / batch 8 = 3 steps per epoch; the val set is 12 images, all scored
    last = torch.load(run / "last.pt", weights_only=True)
    assert (last["epoch"], last["step"], last["sampler_epoch"]) == (2, 6, 2)
    assert last["classes"] == ["class_0", "class_1", "class_2"]
    assert set(last["versions"]) >= {"torch", "numpy", "python", "micronet"}
    assert set(last["rng"][0]) >= {"python", "numpy", "torch"}
    assert last["config"]["lr"] == 0.1 and last["config"]["weight_decay"] == 3e-5 and last["config"]["num_classes"] == 3
    # best.pt is a plain weights file for load_weights / --weights (export, bench, fine-tuning)
    model = build_model("m0", num_classes=3, input_size=32)
    record = load_weights(model, run / "best.pt")
    assert record["layout"] == "micronet"
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["top1"] == result["best_top1"] == max(r["top1"] for r in rows)
    log = (run / "train.log").read_text()
    assert "lr 0.1," in log and "weight decay 3e-05" in log and "epoch 2/2" in log


def test_paper_lr_scaling_is_used_without_lr(data, tmp_path):
    train(tiny(data, tmp_path / "run", epochs=1, lr=None), progress=False)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "lr 0.003125 (0.2 x 8/512)" in log


def test_existing_run_is_not_overwritten(data, tmp_path):
    train(tiny(data, tmp_path / "run", epochs=1), progress=False)
    with pytest.raises(MicronetError, match="already holds a training run"):
        train(tiny(data, tmp_path / "run", epochs=1), progress=False)


def test_resume_of_a_finished_run_extends_nothing_and_returns_its_metrics(data, tmp_path):
    first = train(tiny(data, tmp_path / "run", epochs=1), progress=False)
    again = train(tiny(data, tmp_path / "run", epochs=1, resume=str(tmp_path / "run" / "last.pt")), progress=False)
    assert again["top1"] == first["top1"] and again["train_loss"] == first["train_loss"]


def test_resume_refuses_a_changed_recipe(data, tmp_path):
    train(tiny(data, tmp_path / "run", epochs=1), progress=False)
    with pytest.raises(MicronetError, match="trained with lr=0.1, this run asks for 0.2"):
        train(tiny(data, tmp_path / "run", epochs=1, lr=0.2, resume=str(tmp_path / "run" / "last.pt")),
              progress=False)


def test_finetune_with_another_class_count_logs_the_new_classifier(data, tmp_path):
    source = build_model("m0", num_classes=1000, input_size=32)
    torch.save(source.state_dict(), tmp_path / "imagenet.pt")
    train(tiny(data, tmp_path / "run", epochs=1, weights=str(tmp_path / "imagenet.pt"), lr=1e-9),
          progress=False)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "except its 1000-class classifier: head.fc2 re-initialised for 3 classes" in log
    tuned = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["state_dict"]
    # lr ~0: the loaded backbone tensors are (numerically) the source's
    key = "blocks.3.layers.0.0.weight"
    assert torch.allclose(tuned[key], source.state_dict()[key], atol=1e-6)


def test_mutual_learning_saves_the_partner_apart(data, tmp_path):
    result = train(tiny(data, tmp_path / "run", epochs=1, mutual=True), progress=False)
    run = tmp_path / "run"
    partner = full_rank_partner("m0", num_classes=3, input_size=32)
    saved = torch.load(run / "partner.pt", weights_only=True)
    partner.load_state_dict(saved["state_dict"])  # strict: exactly the full-rank twin
    assert saved["full_rank_partner"] is True
    load_weights(build_model("m0", num_classes=3, input_size=32), run / "best.pt")  # best.pt is MicroNet only
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert 0.0 <= row["partner_top1"] <= 100.0 and result["partner"] == str(run / "partner.pt")
    assert "mutual learning" in (run / "train.log").read_text()


def test_mixup_and_label_smoothing_train(data, tmp_path):
    result = train(tiny(data, tmp_path / "run", epochs=1, mixup=0.2, label_smoothing=0.1), progress=False)
    assert result["train_loss"] > 0 and torch.isfinite(torch.tensor(result["train_loss"]))
    config = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["config"]
    assert (config["mixup"], config["label_smoothing"]) == (0.2, 0.1)


def test_num_classes_larger_than_the_folders_is_allowed_smaller_is_not(data, tmp_path):
    train(tiny(data, tmp_path / "run", epochs=1, num_classes=5), progress=False)
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["num_classes"] == 5
    with pytest.raises(MicronetError, match="fewer than the 3 class folders"):
        train(tiny(data, tmp_path / "run2", epochs=1, num_classes=2), progress=False)


def test_training_without_validation_data(tmp_path):
    write_split(tmp_path / "d")
    result = train(tiny(tmp_path / "d" / "train", tmp_path / "run", epochs=1), progress=False)
    assert result["top1"] is None and result["val_loss"] is None
    assert (tmp_path / "run" / "best.pt").is_file()  # the last epoch stands in for the best
    assert "no validation data" in (tmp_path / "run" / "train.log").read_text()


def test_resume_with_more_epochs_extends_a_finished_run(data, tmp_path):
    """The issue's case: a finished run continued to a larger --epochs. The cosine schedule follows the
    new total from the resumed step on, and the run records (last.pt, train.log, result) the change."""
    run = tmp_path / "run"
    train(tiny(data, run, epochs=1), progress=False)
    result = train(tiny(data, run, epochs=3, resume=str(run / "last.pt")), progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    # 3 steps per epoch; each row's lr is its last step's: epoch 1 on the old 3-step curve, then the 9-step one
    assert rows[0]["lr"] == pytest.approx(lr_at(2, 3, 0.1))
    assert rows[1]["lr"] == pytest.approx(lr_at(5, 9, 0.1)) and rows[2]["lr"] == pytest.approx(lr_at(8, 9, 0.1))
    last = torch.load(run / "last.pt", weights_only=True)
    assert (last["epoch"], last["step"], last["config"]["epochs"]) == (3, 9, 3)
    change = {"at_epoch": 1, "from_epochs": 1, "to_epochs": 3}
    assert last["epoch_changes"] == [change] and result["epoch_changes"] == [change]
    log = (run / "train.log").read_text()
    assert "run extended from 1 to 3 epochs at epoch 1: the learning-rate schedule is recomputed for 3 epochs" in log
    assert "epoch 3/3" in log
    # resuming the extended run as it is changes nothing more, and keeps the record
    again = train(tiny(data, run, epochs=3, resume=str(run / "last.pt")), progress=False)
    assert again["epoch_changes"] == [change] and again["top1"] == result["top1"]


def test_extending_keeps_the_recipe_warmup_it_started_with(data, tmp_path):
    """m2's recipe warm-up is min(5, epochs - 1): 0 for a 1-epoch run. Extending to 2 epochs must not
    resolve it anew to 1 (and then refuse the resume as a changed warm-up)."""
    run = tmp_path / "run"
    train(tiny(data, run, variant="m2", epochs=1), progress=False)
    result = train(tiny(data, run, variant="m2", epochs=2, resume=str(run / "last.pt")), progress=False)
    assert result["epochs"] == 2
    assert torch.load(run / "last.pt", weights_only=True)["config"]["warmup_epochs"] == 0.0


def test_resume_refuses_fewer_epochs_than_trained_and_other_changes_with_more(data, tmp_path):
    run = tmp_path / "run"
    train(tiny(data, run, epochs=2), progress=False)
    with pytest.raises(MicronetError, match=r"has already trained 2 epochs, more than --epochs 1; "
                                            r"resume with --epochs 2 or more"):
        train(tiny(data, run, epochs=1, resume=str(run / "last.pt")), progress=False)
    with pytest.raises(MicronetError, match="trained with lr=0.1, this run asks for 0.2"):
        train(tiny(data, run, epochs=3, lr=0.2, resume=str(run / "last.pt")), progress=False)
    with pytest.raises(MicronetError, match="trained with batch_size=8, this run asks for 4"):
        train(tiny(data, run, epochs=3, batch_size=4, resume=str(run / "last.pt")), progress=False)
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2  # nothing was touched


def test_a_stopped_run_can_be_ended_at_the_epochs_it_has(data, tmp_path):
    """A 5-epoch run stopped after 2 (made here by editing last.pt's plan) ended with --epochs 2: nothing
    trains, and last.pt takes the new plan and its record at once."""
    run = tmp_path / "run"
    train(tiny(data, run, epochs=2), progress=False)
    state = torch.load(run / "last.pt", weights_only=True)
    state["config"]["epochs"] = 5
    torch.save(state, run / "last.pt")
    result = train(tiny(data, run, epochs=2, resume=str(run / "last.pt")), progress=False)
    last = torch.load(run / "last.pt", weights_only=True)
    change = {"at_epoch": 2, "from_epochs": 5, "to_epochs": 2}
    assert last["config"]["epochs"] == 2 and last["epoch"] == 2 and last["epoch_changes"] == [change]
    assert result["epoch_changes"] == [change]
    assert "run shortened from 5 to 2 epochs at epoch 2" in (run / "train.log").read_text()


def _cores(monkeypatch, count: int) -> None:
    """Pretend this process may use ``count`` cores (PyTorch's DataLoader check reads the same call)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(count)))


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 2), (4, 4), (64, 4)])
def test_default_workers_fit_the_cores_this_process_may_use(monkeypatch, cores, expected):
    _cores(monkeypatch, cores)
    assert TrainConfig(variant="m0", data="d").resolved().workers == expected
    assert TrainConfig(variant="m0", data="d", workers=3).resolved().workers == 3  # asked for: kept


def test_default_workers_on_two_cores_train_without_a_warning(data, tmp_path, monkeypatch, recwarn):
    """The README's command on a 2-core machine warned about 4 workers: the default now fits."""
    _cores(monkeypatch, 2)
    train(tiny(data, tmp_path / "run", epochs=1, workers=None), progress=False)
    assert not [w for w in recwarn if "worker" in str(w.message)]
    assert "warning" not in (tmp_path / "run" / "train.log").read_text()
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["config"]["workers"] == 2


def test_more_workers_than_cores_asked_for_is_one_line_in_the_log(data, tmp_path, monkeypatch, recwarn):
    _cores(monkeypatch, 1)
    train(tiny(data, tmp_path / "run", epochs=1, workers=2), progress=False)
    assert not [w for w in recwarn if "worker" in str(w.message)]  # not PyTorch's paragraph as well
    lines = [line for line in (tmp_path / "run" / "train.log").read_text().splitlines() if "warning" in line]
    assert lines == ["warning: --workers 2 is more than the 1 CPU core(s) this process may use: data loading may "
                     "slow down or stall; use --workers 1 or fewer"]
