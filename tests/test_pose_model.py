"""The keypoint MicroNets (paper §6.1, Table 10): configs as data, shapes, counting, CLI, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from micronet.counting import count_model, count_variant, cross_check, parse_input_size
from micronet.errors import MicronetError
from micronet.layers import DynamicShiftMax, SpatialAttention
from micronet.pose_config import (COCO_KEYPOINTS, POSE_CONFIGS, POSE_INPUT_SIZE, PaperBlock, blocks_from_table,
                                  pose_variant)
from micronet.pose_model import PoseMicroNet, build_pose_model, check_pose_input_size
from micronet.registry import POSE_VARIANTS, VARIANTS, resolve_variant, variant_rows

from test_cli import assert_one_line_error, run_cli
from test_console import assert_whole, max_line, render

POSE = list(POSE_CONFIGS)

# Table 10 (shared/spec/pose.md): blocks per column (stem excluded), backbone / head, and the paper's figures.
TABLE10_BLOCKS = {"pose-m0": (7, 3), "pose-m1": (9, 3), "pose-m2": (15, 3), "pose-m3": (15, 3)}
TABLE8 = {"pose-m0": ("77.7M", "1.0M", 50.3), "pose-m1": ("116.8M", "1.8M", 54.9),
          "pose-m2": ("163.2M", "2.2M", 58.7), "pose-m3": ("263.2M", "4.0M", 62.8)}


@pytest.fixture(scope="module")
def models() -> dict[str, PoseMicroNet]:
    torch.manual_seed(0)
    return {name: build_pose_model(name).eval() for name in POSE}


# --- configs are data ----------------------------------------------------------------------------

def test_the_four_variants_are_table_rows_of_one_type():
    assert POSE == ["pose-m0", "pose-m1", "pose-m2", "pose-m3"]
    for name, config in POSE_CONFIGS.items():
        blocks = [b for b in config.paper if b.kind != "stem"]
        assert (sum(not b.head for b in blocks), sum(b.head for b in blocks)) == TABLE10_BLOCKS[name]
        assert [b.kind for b in blocks if b.head] == ["C", "C", "A+"]
        assert config.variant.spatial_attention and len(config.variant.upsample_rows) == 2
        assert len(config.head_rows) == 3  # one code row per paper block: the mapping adds none


def test_table10_lines_are_transcribed():
    m0 = POSE_CONFIGS["pose-m0"].paper
    assert m0[0] == PaperBlock((128, 96), "stem", 3, 12, 4, (1, 4))
    assert m0[4] == PaperBlock((32, 24), "B", 5, 192, 32, (4, 8))
    assert m0[-1] == PaperBlock((64, 48), "A+", 5, 320, 48, (8, 0), head=True)
    m3 = POSE_CONFIGS["pose-m3"].paper
    assert m3[-3] == PaperBlock((32, 24), "C", 5, 1024, 256, (16, 16), head=True)
    assert m3[-1] == PaperBlock((64, 48), "A+", 7, 640, 96, (8, 0), head=True)


def test_mapping_to_code_rows():
    """Paper view -> code view (architecture.md §1), checked on pose-m0's rows."""
    config = POSE_CONFIGS["pose-m0"]
    rows = config.variant.rows
    assert config.variant.stem_groups == (4, 3)  # stem 3 -> 4 -> 12
    a0, a1, a2, b = rows[:4]
    assert (a0.kind, a0.stride, a0.expansion1 * a0.expansion2, a0.out_channels, a0.squeeze_groups) == ("A", 1, 1, 12, 3)
    assert (a1.stride, a1.expansion1, a1.expansion2, a1.out_channels) == (2, 2, 2, 16)
    assert (b.kind, b.stride, b.expansion1 * b.expansion2, b.out_channels, b.squeeze_groups) == ("A", 2, 4, 32, 4)
    c = rows[4]  # first C: B's expand 32 -> 192 (8 groups), depthwise k7, squeeze to 48 (6 groups)
    assert (c.kind, c.expand_groups, c.expansion2, c.kernel, c.out_channels, c.squeeze_groups) == ("BC", 8, 6, 7, 48, 6)
    dagger = rows[-1]  # A+: the previous C's expand 80 -> 320 (10 groups); depthwise on 320, squeeze to 48
    assert (dagger.kind, dagger.expand_groups, dagger.expansion2, dagger.kernel, dagger.out_channels) == (
        "BC", 10, 4, 5, 48)
    assert config.variant.upsample_rows == (7, 8)


def test_pose_m2_as_printed_cannot_be_built():
    """Two of pose-m2's printed group pairs do not divide their channels; the data swaps them, with a note."""
    printed = """
        128x96 stem 3 16 4 1 4
        128x96 A    3 16 16 4 -
        64x48  A    3 64 24 4 -
        64x48  B    5 192 32 4 8
        32x24  C    5 384 96 8 12
        16x12  C    5 720 120 10 12
        16x12  A+   5 720 96 8 -
    """
    with pytest.raises(ValueError, match="squeeze 384 -> 120 with 10 groups: 384 is not a multiple of 10"):
        pose_variant("x", printed)


@pytest.mark.parametrize("bad, message", [
    ("128x96 stem 3 12 4 1", "needs 7 columns"),
    ("128x96 D 3 12 4 1 4", "unknown block kind 'D'"),
])
def test_bad_table_lines_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        blocks_from_table(bad)


def test_a_table_must_end_without_an_expand():
    with pytest.raises(ValueError, match="must end with a block that has no expand"):
        pose_variant("x", "128x96 stem 3 12 4 1 4\n64x48 B 5 192 32 4 8")


# --- the network ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", POSE)
def test_heatmaps_at_stride_4(name):
    with torch.device("meta"):  # shapes only: fast for the big variants
        out = build_pose_model(name)(torch.zeros(2, 3, 256, 192))
    assert out.shape == (2, COCO_KEYPOINTS, 64, 48)


@pytest.mark.parametrize("name, size", [("pose-m0", (256, 192)), ("pose-m3", (128, 96))])
def test_real_forward_is_finite(models, name, size):
    with torch.no_grad():
        out = models[name](torch.randn(1, 3, *size))
    assert out.shape == (1, COCO_KEYPOINTS, size[0] // 4, size[1] // 4) and torch.isfinite(out).all()


@pytest.mark.parametrize("size", [(32, 32), (128, 96), (192, 256), (384, 288)])
def test_any_multiple_of_32(models, size):
    with torch.no_grad():
        out = models["pose-m0"](torch.randn(1, 3, *size))
    assert out.shape == (1, COCO_KEYPOINTS, size[0] // 4, size[1] // 4)


def test_backbone_stops_at_stride_16(models):
    with torch.no_grad():
        assert models["pose-m1"].forward_features(torch.zeros(1, 3, 256, 192)).shape[-2:] == (16, 12)


@pytest.mark.parametrize("size", [(250, 192), (256, 100), (0, 192), (16, 16), (256,), "256x192", None])
def test_bad_sizes_are_one_line(size):
    with pytest.raises(MicronetError, match="multiples of 32") as info:
        check_pose_input_size(size)
    assert "\n" not in str(info.value)


def test_keypoints_and_unknown_names():
    assert build_pose_model("pose-m0", keypoints=5)(torch.zeros(1, 3, 64, 64)).shape[1] == 5
    with pytest.raises(MicronetError, match="keypoints must be a positive integer"):
        build_pose_model("pose-m0", keypoints=0)
    with pytest.raises(MicronetError, match="m0 is a classification model"):
        build_pose_model("m0")


def test_every_shift_max_has_spatial_attention_and_classifiers_none(models):
    shift_maxes = [m for m in models["pose-m2"].modules() if isinstance(m, DynamicShiftMax)]
    assert shift_maxes and all(isinstance(m.attention, SpatialAttention) for m in shift_maxes)
    from micronet.model import build_model

    assert all(m.attention is None for m in build_model("m0").modules() if isinstance(m, DynamicShiftMax))


def test_upsampling_is_bilinear_and_breaks_no_residual(models):
    for name, model in models.items():
        ups = [m for m in model.modules() if isinstance(m, nn.Upsample)]
        assert len(ups) == 2 and all(u.mode == "bilinear" and u.align_corners is False and u.scale_factor == 2
                                     for u in ups)
        for block in model.head_blocks[:2]:
            assert not block.residual
    layers = list(models["pose-m3"].head_blocks[0].layers)  # the expand runs before the upsampling: cheaper
    assert [type(m).__name__ for m in layers[:4]] == ["ConvBN", "DynamicShiftMax", "ChannelShuffle", "Upsample"]


def test_spatial_attention_is_a_clipped_scaled_softmax():
    att = SpatialAttention(8)
    nn.init.zeros_(att.conv.weight)
    nn.init.zeros_(att.conv.bias)
    pi = att.weights(torch.randn(2, 8, 6, 4))
    assert torch.allclose(pi, torch.full_like(pi, 1 / 3))  # uniform softmax * HW/3
    nn.init.normal_(att.conv.weight, std=50.0)
    pi = att.weights(torch.randn(2, 8, 6, 4))
    assert pi.min() >= 0 and pi.max() <= 1.0



@pytest.mark.slow
@pytest.mark.parametrize("name", POSE)
def test_a_pose_model_starts_with_uniform_attention_and_learns_heatmaps(name):
    """The released He-normal start on the attention's single-output conv left holes (pi < 0.01) in 7-28%
    of each layer's positions in training mode, and pose-m0 did not fit even one batch; every variant must
    start uniform and fit a small batch of blobs (a pose-m1 run that stayed flat for 49 steps was too
    short, not broken: this fit tells the two apart)."""
    model = build_pose_model(name, input_size=(64, 64))
    attentions = [m for m in model.modules() if isinstance(m, SpatialAttention)]
    assert attentions and all(not a.conv.weight.any() and not a.conv.bias.any() for a in attentions)
    torch.manual_seed(0)
    images = torch.randn(8, 3, 64, 64) * 0.1
    targets = torch.zeros(8, 17, 16, 16)
    for i in range(8):  # one bright square per image; every heatmap has its peak under it
        y, x = divmod(i * 5 + 3, 14)
        images[i, :, 4 * y + 2:4 * y + 10, 4 * x + 2:4 * x + 10] = 2.0
        targets[i, :, y + 1, x + 1] = 1.0
    optimiser = torch.optim.Adam(model.parameters(), 2e-3)
    model.train()
    for _ in range(60):
        loss = ((model(images) - targets) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    peaks = model(images).flatten(2).argmax(-1)
    assert (peaks == targets.flatten(2).argmax(-1)).float().mean() > 0.9

# --- counting ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", POSE)
def test_registry_figures_are_the_count(name):
    counts = count_variant(name)
    info = POSE_VARIANTS[name]
    assert (counts.params, counts.madds) == (info.params, info.madds)
    assert counts.input_size == POSE_INPUT_SIZE and counts.num_classes == COCO_KEYPOINTS
    assert (info.paper_madds, info.paper_params, info.paper_ap) == TABLE8[name]


@pytest.mark.parametrize("name", POSE)
def test_params_are_torchs(models, name):
    assert count_variant(name).params == sum(p.numel() for p in models[name].parameters())


def test_flop_counter_agrees_up_to_the_documented_products():
    check = cross_check("pose-m0")  # what `micronet flops` prints under the table (a real forward pass)
    assert check["matches"]  # torch's FLOPs / 2 == our conv (incl. attention convs) + Linear MAdds
    assert check["micronet_madds"] == (check["conv_plus_linear_madds"] + check["shiftmax_madds"]
                                       + check["attention_product_madds"])


@pytest.mark.parametrize("name", POSE)
@pytest.mark.parametrize("size", [(256, 192), (96, 64)])
def test_independent_count_on_the_meta_device(name, size):
    """torch's FlopCounterMode (its own formulas, shapes only) against the rule's conv + Linear part."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_pose_model(name, input_size=size)
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, *size))
    counts = count_model(model)
    assert counter.get_total_flops() == 2 * (counts.total("conv") + counts.total("linear"))


def test_a_block_counted_by_hand():
    """pose-m0's A+ block at 64x48: expand 80->320 /10, depthwise 5x1 + 1x5 on 320, squeeze 320->48 /8."""
    stages = {s["stage"]: s for s in count_variant("pose-m0").by_stage()}
    hw = 64 * 48
    assert stages["head_blocks.2"]["conv"] == hw * 320 * 8 + hw * 320 * 10 + hw * 48 * 40
    # Shift-Max: K=2 after the expand and the depthwise (4/elt), K=1 after the squeeze (2/elt)
    assert stages["head_blocks.2"]["shiftmax"] == hw * (320 * 4 + 320 * 4 + 48 * 2)
    # attention: a 1x1 conv to one channel and one product per element, on each of the three
    assert stages["head_blocks.2"]["attention"] == 2 * hw * (320 + 320 + 48)
    assert stages["heatmaps"]["madds"] == hw * 48 * COCO_KEYPOINTS and stages["heatmaps"]["params"] == 48 * 17 + 17


@pytest.mark.parametrize("name", ["pose-m0", "pose-m2"])
def test_per_layer_and_stage_tables_sum_to_the_total(name):
    counts = count_variant(name)
    stages = counts.by_stage()
    assert sum(row.madds for row in counts.layers) == counts.madds == sum(s["madds"] for s in stages)
    assert sum(s["conv"] + s["linear"] + s["shiftmax"] + s["attention"] for s in stages) == counts.madds
    assert counts.attention_total() == sum(s["attention"] for s in stages) > 0
    assert [r.op for r in counts.layers].count("upsample") == 2
    assert all(r.madds == 0 for r in counts.layers if r.op == "upsample")


def test_other_input_sizes_scale():
    small, full = count_variant("pose-m0", input_size=(128, 96)), count_variant("pose-m0")
    assert small.params == full.params and small.madds < full.madds / 3


@pytest.mark.parametrize("text, size", [("256x192", (256, 192)), ("224", 224), (" 384X288 ", (384, 288))])
def test_parse_input_size(text, size):
    assert parse_input_size(text) == size


@pytest.mark.parametrize("text", ["", "256x", "axb", "-32", "1x2x3"])
def test_parse_input_size_refuses(text):
    with pytest.raises(MicronetError, match="is not a size"):
        parse_input_size(text)


def test_classifier_sizes_stay_square():
    with pytest.raises(MicronetError, match="take a square input"):
        count_variant("m0", input_size=(256, 192))
    assert count_variant("m0", input_size=(224, 224)).madds == VARIANTS["m0"].madds


# --- tables: nothing cut in 80 columns -----------------------------------------------------------

def test_variants_table_lists_every_pose_variant_whole():
    from micronet.console import VARIANTS_DROP, variants_table

    rows = variant_rows()
    text = render(variants_table(rows), VARIANTS_DROP, 80)
    assert_whole(text, POSE + [f"{POSE_VARIANTS[n].madds:,}" for n in POSE] + [f"{POSE_VARIANTS[n].params:,}"
                                                                                 for n in POSE])
    assert_whole(text, ["77.7M", "263.2M", "AP 50.3", "AP 62.8"])  # the paper's figures stay beside ours at 80
    assert max_line(text) <= 80
    wide = render(variants_table(rows), VARIANTS_DROP, 200)
    assert_whole(wide, ["256x192", "77.7M MAdds, 1.0M, AP 50.3", "263.2M MAdds, 4.0M, AP 62.8", "224x224"])


@pytest.mark.parametrize("per_layer", [False, True])
def test_flops_tables_whole_at_80_columns(per_layer):
    from micronet.console import LAYERS_DROP, STAGES_DROP, counts_table

    counts = count_variant("pose-m0")
    text = render(counts_table(counts, per_layer=per_layer), LAYERS_DROP if per_layer else STAGES_DROP, 80)
    assert max_line(text) <= 80
    names = [r.name for r in counts.layers] if per_layer else [s["stage"] for s in counts.by_stage()]
    numbers = [f"{r.madds:,}" for r in counts.layers] if per_layer else [f"{s['madds']:,}" for s in counts.by_stage()]
    assert_whole(text, names + numbers + [f"{counts.madds:,}", f"{counts.params:,}", "256x192, 17 heatmaps"])
    if per_layer:
        assert_whole(text, ["head_blocks.2.layers.0.0", "head_blocks.2.layers.4.attention.conv"])


# --- refusals and the CLI ------------------------------------------------------------------------

def test_classification_only_code_refuses_pose_in_one_line():
    with pytest.raises(MicronetError, match="pose-m1 is a pose model and this command handles classification") as e:
        resolve_variant("POSE-M1")
    assert "\n" not in str(e.value)
    from micronet.train.recipe import TrainConfig

    assert TrainConfig(variant="pose-m0", data="unused").task == "pose"  # train handles pose (test_train_pose.py)
    assert resolve_variant("pose-m1", task=None).task == "pose"


def test_load_weights_refuses_the_other_task():
    from micronet.model import build_model
    from micronet.weights import load_weights

    pose, classifier = build_pose_model("pose-m0"), build_model("m0")
    with pytest.raises(MicronetError, match="is a keypoint \\(pose\\) checkpoint but m0 is a classification model"):
        load_weights(classifier, pose.state_dict())
    with pytest.raises(MicronetError, match="is an image-classification checkpoint but pose-m0 is a pose model"):
        load_weights(pose, classifier.state_dict())
    assert load_weights(build_pose_model("pose-m0"), pose.state_dict())["tensors"] == len(pose.state_dict())


def test_budgets_file_holds_for_pose(tmp_path):
    from micronet.budget import check_budgets

    results = [r for r in check_budgets("budgets.toml") if r.variant.startswith("pose-")]
    assert len(results) == 8 and all(r.ok and r.matches_metadata for r in results)
    bad = tmp_path / "b.toml"
    bad.write_text("[pose-m0]\nmadds = 1\ninput_size = 256\n")
    with pytest.raises(MicronetError, match="input_size is for the square classifiers"):
        check_budgets(bad)


def test_cli_flops_json_and_refusals():
    data = json.loads(run_cli("flops", "--variant", "pose-m0", "--input-size", "256x192", "--json").stdout)
    assert data["task"] == "pose" and data["input_size"] == [256, 192] and data["num_classes"] == 17
    assert data["totals"]["madds"] == POSE_VARIANTS["pose-m0"].madds
    assert data["other_conventions"]["matches"] is True
    assert data["paper"] == {"madds": "77.7M", "params": "1.0M", "ap": 50.3}
    assert_one_line_error(run_cli("flops", "--variant", "pose-m0", "--input-size", "250x192"),
                          "input size 250x192 is not supported: keypoint MicroNets need H x W")
    # bench takes pose variants (tests/test_bench_dense.py); a size that is not H x W in 32s is one line
    assert_one_line_error(run_cli("bench", "--variant", "pose-m0", "--input-size", "250x192"),
                          "H and W must both be multiples of 32")


def test_cli_per_layer_in_a_pipe_is_whole():
    """In a pipe the table keeps its natural width (the 80-column fit is test_flops_tables_whole_at_80_columns)."""
    result = run_cli("flops", "--variant", "pose-m0", "--per-layer", columns=None)
    assert result.returncode == 0, result.stderr
    table = result.stdout.split("torch FlopCounterMode")[0]
    assert_whole(table, [r.name for r in count_variant("pose-m0").layers])
    assert f"{POSE_VARIANTS['pose-m0'].madds:,}" in table and "paper (Table 8, 256x192): 77.7M" in result.stdout
