"""Training checkpoints: written atomically, resumable exactly, and loadable by ``load_weights``.

* ``last.pt`` - everything needed to continue: weights, optimizer, AMP scaler, step, epoch, best
  top-1 (pose: best AP), the config, every rank's RNG states, the metrics history and library versions.
* ``best.pt`` - ``{"state_dict": ...}`` plus a few facts (variant, classes and top-1, or for a pose run
  keypoint names and OKS AP; ``tasks.TrainTask.best_record``): the file that ``micronet.load_weights`` /
  ``--weights`` reads for fine-tuning, export and benchmarking.
* ``partner.pt`` - the mutual-learning partner's weights (never exported).

Everything is stored as tensors and plain Python values so ``torch.load(weights_only=True)`` can read
it: a checkpoint downloaded from elsewhere cannot run code when it is loaded.
"""

from __future__ import annotations

import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from micronet.atomic import replacing
from micronet.errors import MicronetError
from micronet.model import MicroNet, build_model
from micronet.weights import checkpoint_classes, load_weights, read_state_dict

from .recipe import TRAJECTORY_FIELDS, TrainConfig

LAST_NAME, BEST_NAME, PARTNER_NAME = "last.pt", "best.pt", "partner.pt"
#: Bumped when the layout of ``last.pt`` changes, so an old file is refused with a reason.
FORMAT_VERSION = 1


def save_atomic(obj: Any, path: Path) -> None:
    """A kill at any moment leaves either the previous complete file or the new one, never half of one."""
    with replacing(path) as tmp:
        torch.save(obj, tmp)


def library_versions() -> dict[str, str]:
    from micronet import __version__

    return {"micronet": __version__, "torch": str(torch.__version__), "numpy": str(np.__version__),
            "python": platform.python_version()}


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values (numpy's key array becomes a tensor)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def read_training_state(path: str | Path) -> dict[str, Any]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise MicronetError(f"checkpoint to resume not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # many exception types, one meaning for the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MicronetError(f"cannot read checkpoint {path}: {first[:160]}") from None
    if not isinstance(state, dict) or "format" not in state or "optimizer" not in state:
        raise MicronetError(f"{path} is not a training checkpoint (last.pt); to start from weights use --weights")
    if state["format"] != FORMAT_VERSION:
        raise MicronetError(f"{path} is a training checkpoint of format {state['format']}, this version reads "
                            f"format {FORMAT_VERSION}")
    return state


def saved_config(state: dict[str, Any]) -> TrainConfig:
    """The resolved config a training checkpoint was written with."""
    return TrainConfig.from_dict(state["config"])


def check_resumable(state: dict[str, Any], config: TrainConfig, classes: list[str], path: str) -> None:
    """Refuse to continue a different experiment under the old one's name, with the reason in one line.

    The one change allowed is the planned number of epochs (to extend a run, or end it sooner), as long
    as it does not fall below the epochs already trained: the schedule is recomputed for the new total
    and the run records the change (``epochs_change``)."""
    saved = saved_config(state)
    if saved.variant != config.variant:
        raise MicronetError(f"checkpoint {path} is a {saved.variant} training run, but this run trains "
                            f"{config.variant}; use --variant {saved.variant} or start a new run")
    if config.epochs < state["epoch"]:
        raise MicronetError(f"checkpoint {path} has already trained {state['epoch']} epochs, more than "
                            f"--epochs {config.epochs}; resume with --epochs {state['epoch']} or more")
    for name in TRAJECTORY_FIELDS:
        before, now = getattr(saved, name), getattr(config, name)
        if before != now:
            raise MicronetError(f"checkpoint {path} was trained with {name}={before!r}, this run asks for "
                                f"{now!r}; resume with the same settings")
    if state["classes"] != classes:
        raise MicronetError(f"checkpoint {path} was trained on classes {state['classes'][:5]}..., the data now "
                            f"has {classes[:5]}...; resume on the same data")


def epochs_change(state: dict[str, Any], config: TrainConfig) -> dict[str, int] | None:
    """``{"at_epoch", "from_epochs", "to_epochs"}`` when this resume changes the planned epochs, else None.
    Kept in ``last.pt`` (``epoch_changes``): the cosine schedule of a changed run is not the one a
    straight run of either length follows, and whoever reads the run later must be able to tell."""
    before = saved_config(state).epochs
    if before == config.epochs:
        return None
    return {"at_epoch": int(state["epoch"]), "from_epochs": int(before), "to_epochs": int(config.epochs)}


def load_pretrained(model: MicroNet, path: str, log) -> None:
    """``--weights``: our or the released checkpoints. When the class count differs, every tensor but the
    final classifier (head.fc2) is loaded and head.fc2 keeps its fresh initialisation."""
    state = read_state_dict(path)
    classes = checkpoint_classes(state)
    if classes is None or classes == model.num_classes:
        load_weights(model, path)
        log(f"loaded weights {path}")
        return
    # Load into a twin with the checkpoint's class count first: that checks the variant and shapes
    # with load_weights' messages, then everything but head.fc2 is copied across.
    twin = build_model(model.config.name, num_classes=classes, input_size=model.input_size)
    load_weights(twin, path)
    kept = {k: v for k, v in twin.state_dict().items() if not k.startswith("head.fc2.")}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    assert not unexpected and all(k.startswith("head.fc2.") for k in missing), (missing, unexpected)
    log(f"loaded weights {path} except its {classes}-class classifier: head.fc2 re-initialised for "
        f"{model.num_classes} classes")


def module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}
