"""Two gloo processes on CPU: the DDP path of ``train`` without a GPU.

Each worker is a real process that joins a process group through the same environment variables
``torchrun`` sets; it records which files it wrote and a fingerprint of its weights before every
validation, then reports what ``train`` returned.
"""

from __future__ import annotations

import pytest

import hashlib
import json
import os
import socket
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from micronet.images import load_rgb
from micronet.model import build_model
from micronet.preprocess import Preprocessing, preprocess
from micronet.train import TrainConfig, train

from train_data import write_split

WORLD = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, config: dict, report_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from micronet.train import checkpoint, loop

    writes: list[str] = []
    fingerprints: list[str] = []
    save, evaluate = checkpoint.save_atomic, loop._evaluate

    def counting_save(obj, path):
        writes.append(Path(path).name)
        save(obj, path)

    def fingerprinting_evaluate(net, *args, **kwargs):
        flat = torch.cat([t.detach().flatten().double() for t in net.state_dict().values()])
        fingerprints.append(hashlib.sha256(flat.numpy().tobytes()).hexdigest())
        return evaluate(net, *args, **kwargs)

    checkpoint.save_atomic = loop.save_atomic = counting_save
    loop._evaluate = fingerprinting_evaluate
    result = train(TrainConfig(**config), progress=False)
    Path(report_dir, f"rank{rank}.json").write_text(json.dumps({"result": result, "writes": writes,
                                                                "fingerprints": fingerprints}))


@pytest.mark.slow
def test_two_gloo_processes_agree_and_write_once(tmp_path):
    data = write_split(tmp_path / "data", classes=3, train_per_class=8, val_per_class=5)
    out = tmp_path / "run"
    config = dict(variant="m0", data=str(data), out=str(out), epochs=2, batch_size=8, input_size=32, workers=0,
                  lr=0.1, deterministic=True)
    mp.spawn(_worker, args=(free_port(), config, str(tmp_path)), nprocs=WORLD, join=True)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]

    assert reports[0]["result"] == reports[1]["result"]  # every figure, timings included
    assert reports[0]["fingerprints"] == reports[1]["fingerprints"]  # DDP kept the weights and BN stats in step
    assert len(reports[0]["fingerprints"]) == 2
    assert reports[1]["writes"] == []
    assert reports[0]["writes"].count("last.pt") == 2 and set(reports[0]["writes"]) <= {"last.pt", "best.pt"}
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    log = (out / "train.log").read_text()
    assert log.count("training m0 on 24 images") == 1 and "batch 8 (4/process x 2), 3 steps/epoch" in log

    last = torch.load(out / "last.pt", weights_only=True)
    assert last["world_size"] == 2 and len(last["rng"]) == 2 and last["step"] == 6
    assert not torch.equal(last["rng"][0]["torch"], last["rng"][1]["torch"])  # each rank its own dropout stream

    # The summed shards score exactly the 15 validation images, as one process would.
    model = build_model("m0", num_classes=3, input_size=32)
    model.load_state_dict(last["model"])
    model.eval()
    from micronet.train.data import load_splits

    samples = load_splits(str(data), None).val
    batch = torch.from_numpy(np.stack([preprocess(load_rgb(p), Preprocessing(32)) for p, _ in samples]))
    labels = torch.tensor([label for _, label in samples])
    with torch.no_grad():
        logits = model(batch)
    top1 = 100.0 * (logits.argmax(1) == labels).sum().item() / len(samples)
    assert reports[0]["result"]["top1"] == top1
    val_loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert abs(reports[0]["result"]["val_loss"] - val_loss) < 1e-5
