"""Loading weights: our checkpoints and the authors' released ``micronet-m{0..3}.pth`` files.

The released files use the released code's module tree (``features.i.layers.<fixed slot>...``,
``classifier.0.linear...``) and usually a DataParallel ``module.`` prefix. Our blocks are flat lists
of the layers that are really there, so the released layout (fixed slots with empty placeholders)
is known only here, at the edge: ``RELEASED_SLOTS`` gives each layer's slot from its role in the
block. A checkpoint of the wrong variant is named from its tensor shapes (and, for the authors'
files, which published file it is, from ``micronet.registry``) instead of failing with a
size-mismatch traceback.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from .blocks import MicroBlock
from .errors import MicronetError
from .layers import ChannelShuffle, ConvBN, DynamicShiftMax, MicroFactorizedDepthwise
from .model import MicroNet

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")

#: The released code's fixed slot of every layer that holds tensors, per block kind, keyed by the
#: layer's role and how many layers of that role came before it in the block. Its blocks keep a
#: slot for every op they might have (an empty placeholder when a row leaves it out):
#:   A:     0 depthwise, 1 activation, 2-3 shuffles, 4 squeezing 1x1, 5 Shift-Max, 6-7 shuffles
#:   B/C:   0 expanding 1x1, 1 activation, 2 shuffle, 3 depthwise, 4 (always empty), 5 activation,
#:          6 shuffle, 7 squeezing 1x1, 8 Shift-Max, 9-10 shuffles
#:   final: 0 pointwise 1x1, 1 Shift-Max
#: Shuffles and ReLU6 hold no tensors, so they need no slot here; an activation is counted in its
#: role whether it is a ReLU6 or a Shift-Max, since either fills the slot.
RELEASED_SLOTS: dict[str, dict[tuple[str, int], int]] = {
    "A": {("depthwise", 0): 0, ("activation", 0): 1, ("pointwise", 0): 4, ("activation", 1): 5},
    "BC": {("pointwise", 0): 0, ("activation", 0): 1, ("depthwise", 0): 3, ("activation", 1): 5,
           ("pointwise", 1): 7, ("activation", 2): 8},
    "final": {("pointwise", 0): 0, ("activation", 0): 1},
}


def _role(module: nn.Module) -> str:
    """What a block layer does, in the terms of ``RELEASED_SLOTS``."""
    if isinstance(module, MicroFactorizedDepthwise):
        return "depthwise"
    if isinstance(module, ConvBN):
        return "pointwise"
    if isinstance(module, (DynamicShiftMax, nn.ReLU6)):
        return "activation"
    if isinstance(module, ChannelShuffle):
        return "shuffle"
    raise AssertionError(f"no released role for {type(module).__name__}")  # a new layer needs a rule


def released_slots(block: MicroBlock) -> dict[int, int]:
    """Our layer index -> the released slot index, for every layer of ``block`` that holds tensors."""
    seen: dict[str, int] = {}
    slots: dict[int, int] = {}
    for index, module in enumerate(block.layers):
        role = _role(module)
        nth = seen.get(role, 0)
        seen[role] = nth + 1
        if role != "shuffle":
            slots[index] = RELEASED_SLOTS[block.kind][(role, nth)]
    return slots


def _released_block_key(block: MicroBlock, index: int, rest: str) -> str:
    """Our ``layers.{j}.{rest}`` inside a block -> the released ``layers.{slot}.{...}``."""
    j, _, tail = rest.partition(".")
    module = block.layers[int(j)]
    slot = released_slots(block)[int(j)]
    if isinstance(module, MicroFactorizedDepthwise):  # {conv}.{0 conv|1 bn}.param -> conv.{2*conv+k}
        a, b, param = tail.split(".", 2)
        tail = f"conv.{2 * int(a) + int(b)}.{param}"
    elif isinstance(module, DynamicShiftMax):  # fc1/fc2 -> fc.0/fc.2
        tail = tail.replace("fc1.", "fc.0.", 1).replace("fc2.", "fc.2.", 1)
    else:  # pointwise ConvBN: {0 conv|1 bn}.param -> conv.{k}.param
        tail = f"conv.{tail}"
    return f"features.{index + 1}.layers.{slot}.{tail}"


def released_key_map(model: MicroNet) -> dict[str, str]:
    """Our state_dict key -> the released checkpoints' key, for every entry of our state_dict."""
    mapping: dict[str, str] = {}
    for key in model.state_dict():
        if m := re.fullmatch(r"stem\.conv\.(\d)\.(\d)\.(.+)", key):
            released = f"features.0.stem.0.conv.{2 * int(m[1]) + int(m[2])}.{m[3]}"
        elif m := re.fullmatch(r"blocks\.(\d+)\.layers\.(.+)", key):
            released = _released_block_key(model.blocks[int(m[1])], int(m[1]), m[2])
        elif m := re.fullmatch(r"head\.fc([12])\.(\d)\.(.+)", key):
            released = f"classifier.{0 if m[1] == '1' else 2}.linear.{m[2]}.{m[3]}"
        else:
            raise AssertionError(f"no released name for {key}")  # a new module needs a mapping rule
        mapping[key] = released
    return mapping


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file and return a plain state_dict (wrappers and ``module.`` removed)."""
    path = Path(path)
    if path.is_dir():
        raise MicronetError(f"weights path {path} is a directory; give the checkpoint file (.pth or .pt) inside it")
    if not path.is_file():
        raise MicronetError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; the file itself says what is wrong
        raise MicronetError(f"cannot read weights file {path}: {_unreadable_reason(path, exc)}") from None
    return unwrap_state_dict(obj, f"weights file {path}")


def _unreadable_reason(path: Path, exc: Exception) -> str:
    """Why ``torch.load`` refused a file, in a user's terms, from the file's first bytes.

    torch's own messages are written for its developers (a zip reader's internals, "pop from empty
    list" for random bytes), so they are not passed on, except the name of a refused Python class.
    """
    import pickle
    import zipfile

    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as err:
        return err.strerror or str(err)
    if not head:
        return "the file is empty"
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if isinstance(exc, pickle.UnpicklingError) and refused:
        return (f"it stores a Python object ({refused[1].rstrip('.')}) besides tensors, which is not loaded for "
                "safety; save only the model's state_dict")
    if head.startswith(b"PK\x03\x04"):  # a zip archive: the format torch.save writes
        if not zipfile.is_zipfile(path):
            return "the file is truncated or damaged (an incomplete zip archive; was a download or copy cut short?)"
        return "it is a zip archive but not one written by torch.save (or a damaged one)"
    if head[:1] == b"\x80":  # a pickle: torch's legacy format
        return "it is a damaged or truncated checkpoint in torch's legacy (pickle) format"
    return "not a PyTorch checkpoint (torch.save writes a zip archive; this file is neither that nor a pickle)"


def unwrap_state_dict(obj: object, origin: str = "checkpoint") -> dict[str, Tensor]:
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise MicronetError(f"{origin} holds no model state_dict")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def is_released_layout(state: Mapping[str, Tensor]) -> bool:
    return any(k.startswith("features.") for k in state)


def to_our_layout(state: Mapping[str, Tensor], model: MicroNet) -> dict[str, Tensor]:
    if not is_released_layout(state):
        return dict(state)
    inverse = {released: ours for ours, released in released_key_map(model).items()}
    return {inverse.get(k, k): v for k, v in state.items()}


def checkpoint_classes(state: Mapping[str, Tensor]) -> int | None:
    for key in ("head.fc2.1.weight", "classifier.2.linear.1.weight"):
        if key in state:
            return int(state[key].shape[0])
    return None


def _candidates(state: Mapping[str, Tensor]) -> list[str]:
    """Registered variants in the order to try: for a file in the released layout, first the ones
    the authors published weights for (the registry's entries), since that is what such a file
    usually is."""
    from .registry import VARIANTS

    names = list(VARIANTS)
    if is_released_layout(state):
        names.sort(key=lambda name: not VARIANTS[name].weights)  # stable: registry order within each group
    return names


def detect_variant(state: Mapping[str, Tensor]) -> str | None:
    """The registered variant whose every tensor shape matches this state_dict, if any."""
    from .model import build_model

    classes = checkpoint_classes(state) or 1000
    for name in _candidates(state):
        with torch.device("meta"):
            candidate = build_model(name, num_classes=classes)
        ours = to_our_layout(state, candidate)
        expected = candidate.state_dict()
        if set(ours) == set(expected) and all(ours[k].shape == expected[k].shape for k in expected):
            return name
    return None


def released_files_note(variant: str) -> str:
    """Which published file loads into ``variant`` ("the released micronet-m2.pth"), or "" if none.

    The authors number their files one off from the paper (their M2 is the paper's M1), so a
    message that names the variant also names the file a user is holding."""
    from .registry import VARIANTS

    files = [w.file_name for w in VARIANTS[variant].weights]
    return f"the released {' or '.join(files)}" if files else ""


def _mismatch_message(state: Mapping[str, Tensor], model: MicroNet, origin: str) -> str:
    detected = detect_variant(state)
    classes = checkpoint_classes(state)
    if detected == model.config.name and classes != model.num_classes:
        return (f"{origin} has a {classes}-class classifier but the model was built with "
                f"{model.num_classes} classes; pass --num-classes {classes}")
    if detected:
        note = released_files_note(detected) if is_released_layout(state) else ""
        loads = f" ({note} loads into {detected})" if note else ""
        return (f"{origin} is {_article(detected)} {detected} checkpoint ({classes} classes), not {model.config.name}; "
                f"use --variant {detected}{loads}")
    return f"{origin} does not match any MicroNet variant (its tensor names or shapes are foreign)"


def _article(name: str) -> str:
    """"a" or "an" as the name is spoken: "an m1" (em-one, letter by letter), "a release-m3"."""
    first = name[:1].lower()
    spelled = len(name) < 2 or not name[1].isalpha()
    return "an" if first in "aeio" or (spelled and first in "fhlmnrsx") else "a"


#: Top-level modules only one task's models have: how a checkpoint's task is told from its keys.
POSE_ONLY_MODULES = ("head_blocks", "heatmaps")
SEG_ONLY_MODULES = ("mr_aspp",)
#: How a refusal names each task's checkpoints.
CHECKPOINT_KINDS = {"pose": "a keypoint (pose) checkpoint", "classification": "an image-classification checkpoint",
                    "segmentation": "a segmentation checkpoint"}


def checkpoint_task(state: Mapping[str, Tensor]) -> str:
    """"pose" for a keypoint MicroNet's state_dict (it has heatmaps), "segmentation" for one with an MR-ASPP
    head, else "classification"."""
    roots = {k.removeprefix("module.").split(".")[0] for k in state}
    if roots & set(POSE_ONLY_MODULES):
        return "pose"
    return "segmentation" if roots & set(SEG_ONLY_MODULES) else "classification"


def _cross_task_message(state: Mapping[str, Tensor], model: nn.Module, origin: str) -> str | None:
    """One line when checkpoint and model are of different tasks, which no shape check should have to explain."""
    model_task = getattr(model, "task", "classification")  # PoseMicroNet says "pose", SegMicroNet "segmentation"
    found = checkpoint_task(state)
    if found == model_task:
        return None
    return (f"{origin} is {CHECKPOINT_KINDS[found]} but {model.config.name} is a {model_task} model; "
            f"load it into a {found} variant")


def load_weights(model: MicroNet, source: str | Path | Mapping[str, Tensor], strict: bool = True) -> dict:
    """Load our own or a released checkpoint into ``model``; every shape is checked first.

    Returns a record for manifests: absolute path, sha256, the key layout found and tensor count.
    """
    if isinstance(source, Mapping):
        state, origin, digest = unwrap_state_dict(source), "state_dict", None
    else:
        path = Path(source)
        state, origin = read_state_dict(path), f"weights file {path}"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    refusal = _cross_task_message(state, model, origin)
    if refusal:
        raise MicronetError(refusal)
    layout = "released" if is_released_layout(state) else "micronet"
    ours = to_our_layout(state, model)
    expected = model.state_dict()
    missing = [k for k in expected if k not in ours]
    unexpected = [k for k in ours if k not in expected]
    wrong_shape = [k for k in expected if k in ours and ours[k].shape != expected[k].shape]
    if wrong_shape or (strict and (missing or unexpected)):
        raise MicronetError(_mismatch_message(state, model, origin))
    model.load_state_dict(ours, strict=strict)
    # Absolute: a manifest is read from other working directories (``bench --max-drop`` reloads these weights).
    return {"path": None if digest is None else str(Path(source).resolve()), "sha256": digest, "layout": layout,
            "tensors": len(ours)}


def save_released_layout(model: nn.Module) -> dict[str, Tensor]:
    """Our state_dict renamed to the released layout with the DataParallel prefix, as the authors'
    training script writes it (used to test loading without downloading their files)."""
    assert isinstance(model, MicroNet)
    mapping = released_key_map(model)
    return {f"module.{mapping[k]}": v for k, v in model.state_dict().items()}


def load_backbone(model: nn.Module, source: str | Path) -> dict:
    """Load a classifier's stem and rows (ours or a released file) into a segmentation model's backbone,
    leaving MR-ASPP as initialised: ImageNet pretraining for ``train --backbone-weights``.

    The segmentation backbone is its classifier's rows with the same tensors (dilation changes no
    shape), so the file is first loaded into that classifier, with every check and message of
    ``load_weights``, and its ``stem.*``/``blocks.*`` tensors are copied across. Returns
    ``load_weights``' record."""
    from .model import build_model

    seg = model.seg_config
    path = Path(source)
    state, origin = read_state_dict(path), f"weights file {path}"
    found = checkpoint_task(state)
    if found != "classification":
        raise MicronetError(f"{origin} is {CHECKPOINT_KINDS[found]}; --backbone-weights takes an image-classification "
                            f"checkpoint of {seg.backbone}, the backbone of {seg.name}")
    detected = detect_variant(state)
    if detected is not None and detected != seg.backbone:
        note = released_files_note(seg.backbone)
        raise MicronetError(f"{origin} is {_article(detected)} {detected} checkpoint, but {seg.name} is built on "
                            f"{seg.backbone}" + (f" ({note} loads into it)" if note else ""))
    classifier = build_model(seg.backbone, num_classes=checkpoint_classes(state) or 1000)
    record = load_weights(classifier, path)
    backbone = {k: v for k, v in classifier.state_dict().items() if k.startswith(("stem.", "blocks."))}
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    assert not unexpected and all(k.startswith("mr_aspp.") for k in missing), (missing, unexpected)
    return {**record, "tensors": len(backbone)}
