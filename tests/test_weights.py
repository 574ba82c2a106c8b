"""Loading our checkpoints and the authors' released ones (built here in their key layout)."""

from __future__ import annotations

import pytest
import torch

from micronet.errors import MicronetError
from micronet.model import build_model
from micronet.weights import detect_variant, load_weights, released_key_map, save_released_layout


def _randomise(model):
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.dtype.is_floating_point:
                t.copy_(torch.randn_like(t) * 0.1 + (1.0 if t.ndim == 1 else 0.0))
    return model


@pytest.mark.parametrize("variant,entries", [("release-m0", 218), ("release-m3", 322)])
def test_released_layout_has_the_spec_key_count(variant, entries):
    assert len(released_key_map(build_model(variant))) == entries


def test_released_key_examples_from_spec():
    state = save_released_layout(build_model("release-m0"))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["module.features.1.layers.0.conv.0.weight"] == (8, 1, 3, 1)
    assert shapes["module.features.1.layers.4.conv.0.weight"] == (8, 8, 1, 1)
    assert shapes["module.features.1.layers.5.fc.2.weight"] == (16, 4)
    assert shapes["module.features.4.layers.1.fc.2.weight"] == (256, 8)
    assert shapes["module.features.7.layers.1.fc.0.weight"] == (24, 384)
    assert shapes["module.classifier.2.linear.1.running_var"] == (1000,)
    assert "module.features.0.stem.0.conv.3.running_mean" in state


@pytest.mark.parametrize("wrapper", ["raw", "state_dict", "no_prefix"])
def test_released_checkpoint_round_trips_with_identical_outputs(tmp_path, wrapper):
    source = _randomise(build_model("m0")).eval()
    state = save_released_layout(source)
    if wrapper == "no_prefix":
        state = {k[len("module."):]: v for k, v in state.items()}
    obj = {"state_dict": state, "epoch": 600} if wrapper == "state_dict" else state
    path = tmp_path / "micronet-m1.pth"
    torch.save(obj, path)
    target = build_model("release-m1").eval()
    record = load_weights(target, path)
    assert record["layout"] == "released" and len(record["sha256"]) == 64
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_own_checkpoint_round_trips(tmp_path):
    source = _randomise(build_model("m1")).eval()
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    target = build_model("m1").eval()
    assert load_weights(target, tmp_path / "ckpt.pt")["layout"] == "micronet"
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_wrong_variant_is_named_from_shapes(tmp_path):
    torch.save(save_released_layout(build_model("release-m3")), tmp_path / "micronet-m3.pth")
    with pytest.raises(MicronetError, match="is a release-m3 checkpoint .* not m0; use --variant release-m3"):
        load_weights(build_model("m0"), tmp_path / "micronet-m3.pth")


def test_wrong_class_count_says_which(tmp_path):
    torch.save(build_model("m0", num_classes=10).state_dict(), tmp_path / "digits.pt")
    with pytest.raises(MicronetError, match="10-class classifier .* built with 1000 classes; pass --num-classes 10"):
        load_weights(build_model("m0"), tmp_path / "digits.pt")


def test_detect_variant():
    for name in ("m0", "m2", "release-m0"):
        assert detect_variant(build_model(name).state_dict()) == name
    assert detect_variant({"foo.weight": torch.zeros(3)}) is None


def test_corrupt_and_missing_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(MicronetError, match="cannot read weights file .*bad.pth"):
        load_weights(build_model("m0"), bad)
    with pytest.raises(MicronetError, match="weights file not found"):
        load_weights(build_model("m0"), tmp_path / "missing.pth")
    torch.save({"epoch": 1}, tmp_path / "empty.pth")
    with pytest.raises(MicronetError, match="holds no model state_dict"):
        load_weights(build_model("m0"), tmp_path / "empty.pth")


def test_article_before_a_variant_name(tmp_path):
    torch.save(save_released_layout(build_model("m1")), tmp_path / "micronet-m2.pth")
    with pytest.raises(MicronetError, match="is an m1 checkpoint .* not m0; use --variant m1"):
        load_weights(build_model("m0"), tmp_path / "micronet-m2.pth")


def _damaged_files(tmp_path):
    """name -> (bytes or None for a folder, what the one-line error must say)."""
    good = tmp_path / "good.pth"
    torch.save(build_model("m0").state_dict(), good)
    whole = good.read_bytes()
    rng = torch.Generator().manual_seed(0)
    return {
        "truncated.pth": (whole[: len(whole) // 2], "truncated or damaged"),
        "random.pth": (bytes(torch.randint(0, 256, (4096,), generator=rng, dtype=torch.uint8).tolist()),
                       "not a PyTorch checkpoint"),
        "text.pth": (b"<html>404 Not Found</html>\n" * 20, "not a PyTorch checkpoint"),
        "empty.pth": (b"", "the file is empty"),
        "folder.pth": (None, "is a directory"),
    }


def test_damaged_checkpoints_are_one_clear_line(tmp_path):
    for name, (content, reason) in _damaged_files(tmp_path).items():
        path = tmp_path / name
        if content is None:
            path.mkdir()
        else:
            path.write_bytes(content)
        with pytest.raises(MicronetError) as info:
            load_weights(build_model("m0"), path)
        message = str(info.value)
        assert str(path) in message and reason in message, message
        assert "\n" not in message and "pop from empty list" not in message and "zip archive:" not in message
        assert "PytorchStreamReader" not in message and "weights_only" not in message


def test_a_pickled_object_is_named(tmp_path):
    import argparse

    torch.save({"args": argparse.Namespace(lr=0.1), "state_dict": build_model("m0").state_dict()},
               tmp_path / "with-args.pth")
    with pytest.raises(MicronetError, match=r"with-args.pth: .*argparse.Namespace.*save only the model's state_dict"):
        load_weights(build_model("m0"), tmp_path / "with-args.pth")
