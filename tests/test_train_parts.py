"""The pieces of training, each checked on its own (no training loop here; those are in test_train_run.py)."""

from __future__ import annotations

import math
import numpy as np
import pytest
import torch
from PIL import Image

from micronet.errors import MicronetError
from micronet.model import build_model
from micronet.preprocess import Preprocessing
from micronet.train import TrainConfig
from micronet.train.checkpoint import load_pretrained, rng_state, save_atomic, set_rng_state
from micronet.train.data import ImageDataset, RandomResizedCropFlip, ShardSampler, load_splits
from micronet.train.distributed import DistContext
from micronet.train.mutual import full_rank_partner, mutual_kl, mutual_loss
from micronet.train.schedule import lr_at
from micronet.weights import save_released_layout

from train_data import write_shapes


# --- recipe ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant,batch,lr,wd,warmup", [
    ("m0", 512, 0.2, 3e-5, 0.0), ("m0", 64, 0.025, 3e-5, 0.0), ("release-m1", 256, 0.1, 3e-5, 0.0),
    ("m1", 512, 0.2, 3e-5, 0.0), ("m2", 1024, 0.4, 4e-5, 5.0), ("m3", 512, 0.2, 4e-5, 5.0),
    ("release-m0", 512, 0.2, 3e-5, 0.0), ("release-m3", 512, 0.2, 4e-5, 5.0),
])
def test_paper_recipe_defaults(variant, batch, lr, wd, warmup):
    config = TrainConfig(variant=variant, data="d", batch_size=batch).resolved()
    assert config.lr == pytest.approx(lr) and config.weight_decay == wd and config.warmup_epochs == warmup
    assert (config.epochs, config.momentum, config.label_smoothing, config.mixup) == (600, 0.9, 0.0, 0.0)
    assert config.crop_scale == (0.08, 1.0) and config.hflip


def test_user_values_win_over_the_recipe():
    config = TrainConfig(variant="m3", data="d", batch_size=64, lr=0.5, weight_decay=0.0, warmup_epochs=1,
                         epochs=10).resolved()
    assert (config.lr, config.weight_decay, config.warmup_epochs) == (0.5, 0.0, 1)
    assert TrainConfig(variant="m3", data="d", epochs=3).resolved().warmup_epochs == 2  # clamped below epochs


@pytest.mark.parametrize("kwargs,message", [
    ({"variant": "m9"}, "unknown variant 'm9'"), ({"batch_size": 1}, "batch size must be at least 2"),
    ({"epochs": 0}, "epochs must be at least 1"), ({"label_smoothing": 1.0}, "label smoothing"),
    ({"crop_scale": (0.5, 0.2)}, "crop scale"), ({"warmup_epochs": 700}, "warm-up epochs"),
])
def test_bad_config_values_are_user_errors(kwargs, message):
    with pytest.raises(MicronetError, match=message):
        TrainConfig(**{"variant": "m0", "data": "d", **kwargs})


# --- schedule -------------------------------------------------------------------------------------

def test_cosine_per_iteration_matches_the_formula():
    total = 1000
    values = [lr_at(t, total, 0.2) for t in range(total)]
    assert values[0] == pytest.approx(0.2) and values[500] == pytest.approx(0.1)
    assert values[250] == pytest.approx(0.2 * (1 + math.cos(math.pi / 4)) / 2)
    assert all(a > b for a, b in zip(values, values[1:]))  # strictly decreasing, every iteration
    assert 0 < values[-1] < 1e-5


def test_warmup_is_linear_then_cosine_from_the_peak():
    ramp = [lr_at(t, 100, 0.4, warmup_steps=10) for t in range(10)]
    assert ramp == pytest.approx([0.04 * (i + 1) for i in range(10)])
    assert lr_at(10, 100, 0.4, warmup_steps=10) == pytest.approx(0.4)
    assert lr_at(55, 100, 0.4, warmup_steps=10) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        lr_at(100, 100, 0.4)


# --- augmentation and data ------------------------------------------------------------------------

def test_random_resized_crop_respects_area_and_ratio_ranges():
    crop = RandomResizedCropFlip(32)
    rng = np.random.default_rng(0)
    for _ in range(300):
        left, top, right, bottom = crop.crop_box(200, 120, rng)
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 200 and 0 <= top < bottom <= 120
        area = w * h / (200 * 120)
        # rounding of w and h to whole pixels moves area and ratio slightly past the sampled range
        assert 0.08 * 0.9 <= area <= 1.0 and 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05
    # a strip far outside the ratio range falls back to a centre crop clamped to 4:3
    assert crop.crop_box(400, 10, np.random.default_rng(0)) == (193, 0, 206, 10)


def test_crop_output_size_flip_and_per_sample_determinism(tmp_path):
    img = Image.fromarray(np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3))
    crop = RandomResizedCropFlip(32, scale=(1.0, 1.0), ratio=(64 / 48, 64 / 48))
    outs = [crop(img, np.random.default_rng(s)) for s in range(8)]
    assert all(o.size == (32, 32) for o in outs)
    plain = img.resize((32, 32), Image.Resampling.BILINEAR)
    flipped = plain.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    kinds = {("plain" if np.array_equal(o, plain) else "flip" if np.array_equal(o, flipped) else "?") for o in outs}
    assert kinds == {"plain", "flip"}  # whole image, sometimes mirrored, never anything else
    no_flip = RandomResizedCropFlip(32, scale=(1.0, 1.0), ratio=(64 / 48, 64 / 48), hflip=False)
    assert all(np.array_equal(no_flip(img, np.random.default_rng(s)), plain) for s in range(8))

    write_shapes(tmp_path, classes=2, per_class=2)
    splits = load_splits(str(tmp_path), None)
    dataset = ImageDataset(splits.train, Preprocessing(32), RandomResizedCropFlip(32), seed=3)
    first = dataset[1][0]
    assert torch.equal(first, dataset[1][0])  # same (seed, epoch, index): same pixels, any worker
    dataset.epoch = 1
    assert not torch.equal(first, dataset[1][0])  # a new epoch draws new crops


def test_validation_uses_the_evaluation_transform(tmp_path):
    from micronet.images import load_rgb
    from micronet.preprocess import preprocess

    write_shapes(tmp_path, classes=1, per_class=1, size_px=40)
    splits = load_splits(str(tmp_path), None)
    pixels, label = ImageDataset(splits.train, Preprocessing(32))[0]
    assert label == 0
    assert torch.equal(pixels, torch.from_numpy(preprocess(load_rgb(splits.train[0][0]), Preprocessing(32))))


def test_shard_sampler_splits_exactly_without_padding():
    def shard(rank: int) -> list[int]:
        return list(ShardSampler(11, DistContext(rank, 3, rank, torch.device("cpu"))))

    shards = [shard(r) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(11))
    assert [len(s) for s in shards] == [4, 4, 3]


def test_unreadable_class_folder_is_warned_and_skipped(tmp_path):
    write_shapes(tmp_path, classes=3, per_class=2)
    for png in (tmp_path / "class_1").iterdir():
        png.write_bytes(b"not a png at all")
    (tmp_path / "class_2" / "broken.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "class_3").mkdir()
    for i in range(5):
        (tmp_path / "class_0" / f"notes{i}.txt").write_text("not an image")
    splits = load_splits(str(tmp_path), None)
    assert splits.classes == ["class_0", "class_1", "class_2", "class_3"]  # indices keep their folder order
    assert sorted({label for _, label in splits.train}) == [0, 2]
    assert len(splits.train) == 4
    assert any("class_1 has no readable images: skipped" in w for w in splits.warnings)
    assert any("skipped 3 unreadable image(s)" in w for w in splits.warnings)
    assert f"train: skipped (class folder has no images): {tmp_path / 'class_3'}" in splits.warnings
    not_images = [w for w in splits.warnings if "(not an image file)" in w]
    assert len(not_images) == 1 and not_images[0].endswith("notes2.txt and 2 more")  # one line per reason


# --- mutual learning ------------------------------------------------------------------------------

def test_full_rank_partner_has_no_factorized_ops_and_same_interface():
    partner = full_rank_partner("m0", num_classes=10, input_size=64)
    micro = build_model("m0", num_classes=10, input_size=64)
    convs = [m for m in partner.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        kh, kw = conv.kernel_size
        assert kh == kw, conv  # no k x 1 / 1 x k halves left
        if kh == 1:
            assert conv.groups == 1, conv  # every 1x1 is full rank
        elif conv.in_channels > 3:
            assert conv.groups == conv.in_channels, conv  # k x k depthwise, channel multiplier kept
    micro_convs = [m for m in micro.modules() if isinstance(m, torch.nn.Conv2d)]
    assert any(c.groups > 1 and c.kernel_size == (1, 1) for c in micro_convs)
    x = torch.randn(2, 3, 64, 64)
    micro.eval(), partner.eval()
    assert partner(x).shape == micro(x).shape == (2, 10)
    feats_p, feats_m = partner.forward_features(x), micro.forward_features(x)
    assert feats_p.shape == feats_m.shape  # same widths and strides everywhere up to the head
    assert sum(p.numel() for p in partner.parameters()) > sum(p.numel() for p in micro.parameters())


def test_mutual_kl_is_zero_for_agreement_and_trains_only_the_student_side():
    a = torch.randn(4, 10, requires_grad=True)
    b = torch.randn(4, 10, requires_grad=True)
    assert mutual_kl(a, a.clone()).item() == pytest.approx(0.0, abs=1e-7)
    kl = mutual_kl(a, b)
    expected = (b.softmax(1) * (b.log_softmax(1) - a.log_softmax(1))).sum(1).mean()
    assert kl.item() == pytest.approx(expected.item(), rel=1e-5)
    kl.backward()
    assert a.grad is not None and b.grad is None  # the teacher side is a fixed target
    targets = torch.tensor([0, 1, 2, 3])
    ce = torch.nn.functional.cross_entropy
    total = mutual_loss(a, b, lambda logits: ce(logits, targets))
    both = ce(a, targets) + ce(b, targets) + mutual_kl(a, b) + mutual_kl(b, a)
    assert total.item() == pytest.approx(both.item(), rel=1e-6)


# --- checkpoints ----------------------------------------------------------------------------------

def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "last.pt"
    save_atomic({"epoch": 1}, target)
    with pytest.raises(Exception):
        save_atomic({"bad": lambda: None}, target)  # lambdas cannot be pickled
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    save_atomic(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


@pytest.mark.parametrize("layout", ["ours", "released"])
def test_finetune_loads_everything_but_a_different_classifier(tmp_path, layout):
    source = build_model("m0", num_classes=1000, input_size=32)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.1)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict() if layout == "ours" else save_released_layout(source), path)
    model = build_model("m0", num_classes=10, input_size=32)
    fresh_fc2 = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("head.fc2.")}
    messages: list[str] = []
    load_pretrained(model, str(path), messages.append)
    state, original = model.state_dict(), source.state_dict()
    for key, value in state.items():
        if key.startswith("head.fc2."):
            assert torch.equal(value, fresh_fc2[key]), key
        else:
            assert torch.equal(value, original[key]), key
    assert len(messages) == 1 and "1000-class classifier" in messages[0] and "re-initialised for 10" in messages[0]


def test_finetune_from_another_variant_names_it(tmp_path):
    path = tmp_path / "m1.pt"
    torch.save(build_model("m1", num_classes=1000, input_size=32).state_dict(), path)
    with pytest.raises(MicronetError, match="is an m1 checkpoint"):
        load_pretrained(build_model("m0", num_classes=10, input_size=32), str(path), print)


def test_same_class_count_loads_strictly(tmp_path):
    source = build_model("m0", num_classes=10, input_size=32)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    model = build_model("m0", num_classes=10, input_size=32)
    load_pretrained(model, str(path), lambda m: None)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))


@pytest.mark.parametrize("per_s, text", [(0.316, "0.316"), (2.0, "2"), (12.345, "12.3"), (99.94, "99.9"),
                                         (1234.4, "1234"), (56789.0, "56789")])
def test_epoch_line_rate_is_never_rounded_to_zero_or_written_with_an_exponent(per_s, text):
    from micronet.train.metrics_log import rate_text

    assert rate_text(per_s) == text
