"""The segmentation MicroNets (paper §6.2, Table 9): configs as data, dilation, shapes, counting, CLI, refusals.

Small inputs only (64x128 and the like): the network is fully convolutional, so shapes and the counting
rule are checked at any multiple of 32; the 1024x2048 figures are recomputed on the meta device.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from micronet.blocks import build_block
from micronet.config import CONFIGS
from micronet.counting import count_model, count_variant, cross_check
from micronet.errors import MicronetError
from micronet.layers import ConvBN, MicroFactorizedDepthwise
from micronet.seg_config import (CITYSCAPES_CLASSES, SEG_CONFIGS, SEG_INPUT_SIZE, configs_from_table, row_strides,
                                 seg_variant)
from micronet.seg_head import MicroPointwise, PooledAttention
from micronet.seg_model import SegMicroNet, build_seg_model, check_seg_input_size
from micronet.registry import POSE_VARIANTS, SEG_VARIANTS, VARIANTS, resolve_variant, variant_rows

from test_cli import assert_one_line_error, run_cli
from test_console import assert_whole, max_line, render

SEG = list(SEG_CONFIGS)
SMALL = (64, 128)
TABLE9 = {"seg-m0": ("0.81B", "0.43M", 56.9), "seg-m1": ("1.20B", "0.99M", 63.5),
          "seg-m2": ("1.75B", "1.85M", 66.1), "seg-m3": ("2.52B", "1.87M", 69.1)}


@pytest.fixture(scope="module")
def models() -> dict[str, SegMicroNet]:
    torch.manual_seed(0)
    return {name: build_seg_model(name, input_size=SMALL).eval() for name in ("seg-m0", "seg-m3")}


# --- dilation in the shared blocks ---------------------------------------------------------------

def test_dilation_keeps_the_size_and_defaults_to_the_old_conv():
    plain, dilated = ConvBN(4, 4, (5, 1), (1, 1), groups=4), ConvBN(4, 4, (5, 1), (1, 1), groups=4, dilation=(2, 1))
    assert plain[0].dilation == (1, 1) and plain[0].padding == (2, 0) and repr(plain) == repr(
        ConvBN(4, 4, (5, 1), (1, 1), groups=4, dilation=(1, 1)))
    assert dilated[0].dilation == (2, 1) and dilated[0].padding == (4, 0)
    dw = MicroFactorizedDepthwise(8, 3, 1, dilation=2)
    assert (dw[0][0].dilation, dw[1][0].dilation) == ((2, 1), (1, 2))
    assert dw(torch.zeros(1, 8, 10, 6)).shape == (1, 8, 10, 6)


def test_a_dilated_row_runs_at_stride_1_with_the_classifiers_layers():
    m0 = CONFIGS["m0"]
    row = m0.rows[4]  # stride 2, 32 -> 64
    plain, channels = build_block(row, 32, m0)
    dilated, _ = build_block(row, 32, m0, dilation=2)
    assert [n for n, _ in plain.state_dict().items()] == [n for n, _ in dilated.state_dict().items()]
    assert all(a.shape == b.shape for a, b in zip(plain.state_dict().values(), dilated.state_dict().values()))
    x = torch.zeros(1, 32, 8, 16)
    assert plain(x).shape[-2:] == (4, 8) and dilated(x).shape[-2:] == (8, 16)
    assert dilated.residual == plain.residual  # decided by the row's own stride, as torchvision's
    with pytest.raises(ValueError, match="dilation must be a positive integer"):
        build_block(row, 32, m0, dilation=0)


@pytest.mark.parametrize("name", ["m0", "m3"])
def test_classifiers_unchanged(name):
    """The dilation argument leaves the classifiers' counts exactly at their registry figures."""
    counts = count_variant(name)
    assert (counts.params, counts.madds) == (VARIANTS[name].params, VARIANTS[name].madds)


def test_pose_unchanged():
    counts = count_variant("pose-m0")
    assert (counts.params, counts.madds) == (POSE_VARIANTS["pose-m0"].params, POSE_VARIANTS["pose-m0"].madds)


# --- configs are data ----------------------------------------------------------------------------

def test_the_four_variants_are_table_lines():
    assert SEG == ["seg-m0", "seg-m1", "seg-m2", "seg-m3"]
    for name, config in SEG_CONFIGS.items():
        assert config.backbone == name.removeprefix("seg-")
        assert config.variant.rows == CONFIGS[config.backbone].rows  # the classifier's rows, untouched
        strides = row_strides(config.variant)
        assert [strides[i] for i in config.dilated_rows] == [32] * len(config.dilated_rows)
        assert strides[config.low_row] == 8 and strides[config.low_row + 1] == 16
        assert (config.inner, config.groups, config.classes) == (128, (8, 8), CITYSCAPES_CLASSES)
    assert SEG_CONFIGS["seg-m0"].dilated_rows == (4, 5, 6) and SEG_CONFIGS["seg-m3"].dilated_rows == (7, 8, 9, 10)


@pytest.mark.parametrize("line, message", [
    ("seg-x m0 3-6 1 128 8 8", "dilated rows \\(3, 4, 5, 6\\) are not m0's stride-32 rows \\(4, 5, 6\\)"),
    ("seg-x m0 4-6 0 128 8 8", "stride-8 tap must be m0's last stride-8 row 1"),
    ("seg-x m0 4-6 1 128 7 8", "backbone width 576 is not a multiple of 7 groups"),
    ("seg-x m9 4-6 1 128 8 8", "unknown backbone 'm9'"),
    ("seg-x m0 4-6 1 128 8", "needs 7 columns"),
])
def test_bad_lines_are_named(line, message):
    with pytest.raises(ValueError, match=message):
        seg_variant(line)


def test_published_numbers():
    from micronet.registry import published_number

    assert [published_number(t) for t in ("0.81B", "1.87M", "77.7M", "4M")] == [810_000_000, 1_870_000,
                                                                               77_700_000, 4_000_000]
    with pytest.raises(ValueError, match="ends with K, M or B"):
        published_number("0.81")


def test_a_table_is_parsed_whole():
    assert list(configs_from_table("\n  seg-a m1 6-8 2 64 4 4\n\n")) == ["seg-a"]


# --- the network ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SEG)
def test_logits_at_input_resolution(name):
    with torch.device("meta"):  # shapes only: fast for every variant, at the paper's size too
        model = build_seg_model(name)
        out = model(torch.zeros(2, 3, *SEG_INPUT_SIZE))
        high, low = model.forward_features(torch.zeros(1, 3, 512, 1024))
    assert out.shape == (2, CITYSCAPES_CLASSES, *SEG_INPUT_SIZE)
    assert high.shape[-2:] == (32, 64) and low.shape[-2:] == (64, 128)  # stride 16 and stride 8
    assert high.shape[1] == SEG_CONFIGS[name].high_channels and low.shape[1] == SEG_CONFIGS[name].low_channels


@pytest.mark.parametrize("size", [SMALL, (96, 64), (32, 32), (128, 256)])
def test_real_forward_any_multiple_of_32(models, size):
    with torch.no_grad():
        out = models["seg-m0"](torch.randn(1, 3, *size))
    assert out.shape == (1, CITYSCAPES_CLASSES, *size) and torch.isfinite(out).all()


def test_real_forward_m3_and_grad(models):
    model = build_seg_model("seg-m3", input_size=SMALL).train()
    out = model(torch.randn(2, 3, *SMALL))
    out.mean().backward()
    assert out.shape == (2, CITYSCAPES_CLASSES, *SMALL)
    assert model.mr_aspp.attention.conv[0].weight.grad is not None


def test_dilated_rows_keep_stride_16(models):
    """Every block from the classifier's stride-32 rows on runs at stride 16, with dilation 2."""
    model = models["seg-m3"]
    x = model.stem(torch.zeros(1, 3, *SMALL))
    sizes = []
    with torch.no_grad():
        for block in model.blocks:
            x = block(x)
            sizes.append(x.shape[-1])
    assert sizes[6:] == [SMALL[1] // 16] * 5  # rows 6..10: the last stride-16 row, then the 4 dilated ones
    dilations = [{m.dilation for m in b.modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels}
                 for b in model.blocks]
    assert all(d == {(1, 1)} for d in dilations[:7]) and dilations[7] == dilations[8] == {(2, 1), (1, 2)}
    assert dilations[10] == set()  # the final row is pointwise only


def test_head_is_micro_factorized(models):
    head = models["seg-m0"].mr_aspp
    pointwise = [m for m in head.modules() if isinstance(m, MicroPointwise)]
    assert len(pointwise) == 2 and isinstance(head.attention, PooledAttention)
    first, _, second = head.branch[0]
    assert (first[0].in_channels, first[0].out_channels, first[0].groups) == (576, 128, 8)
    assert (second[0].in_channels, second[0].out_channels, second[0].groups) == (128, 128, 8)
    assert head.high_classifier.groups == head.low_classifier.groups == 1  # 19 is prime
    ups = [m for m in models["seg-m0"].modules() if isinstance(m, nn.Upsample)]
    assert [u.scale_factor for u in ups] == [2.0, 8.0]
    assert all(u.mode == "bilinear" and u.align_corners is False for u in ups)


def test_attention_scales_each_channel_by_a_sigmoid():
    att = PooledAttention(16, 8, (4, 2))
    for m in att.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.zeros_(m.weight)
    y = torch.randn(1, 8, 4, 6)
    assert torch.allclose(att(torch.randn(1, 16, 4, 6), y), y / 2)  # sigmoid(0) = 1/2 everywhere


@pytest.mark.parametrize("size", [(250, 512), (64, 100), (0, 64), (16, 16), (64,), "64x128", None])
def test_bad_sizes_are_one_line(size):
    with pytest.raises(MicronetError, match="multiples of 32") as info:
        check_seg_input_size(size)
    assert "\n" not in str(info.value)


def test_classes_and_unknown_names():
    assert build_seg_model("seg-m0", classes=5, input_size=(32, 64))(torch.zeros(1, 3, 32, 64)).shape[1] == 5
    with pytest.raises(MicronetError, match="classes must be a positive integer"):
        build_seg_model("seg-m0", classes=0)
    with pytest.raises(MicronetError, match="m0 is a classification model"):
        build_seg_model("m0")


# --- counting ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SEG)
def test_registry_figures_are_the_count(name):
    counts = count_variant(name)
    info = SEG_VARIANTS[name]
    assert (counts.params, counts.madds) == (info.params, info.madds)
    assert counts.input_size == SEG_INPUT_SIZE and counts.num_classes == CITYSCAPES_CLASSES
    assert counts.task == info.task == "segmentation"
    assert (info.paper_madds, info.paper_params, info.paper_miou) == TABLE9[name]


def test_params_are_torchs(models):
    assert count_variant("seg-m3", input_size=SMALL).params == sum(p.numel() for p in models["seg-m3"].parameters())


@pytest.mark.parametrize("name", SEG)
@pytest.mark.parametrize("size", [SEG_INPUT_SIZE, (96, 64)])
def test_independent_count_on_the_meta_device(name, size):
    """torch's FlopCounterMode (its own formulas, shapes only) against the rule's conv + Linear part."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_seg_model(name, input_size=size)
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, *size))
    counts = count_model(model)
    assert counter.get_total_flops() == 2 * (counts.total("conv") + counts.total("linear"))


def test_flop_counter_on_the_real_model_agrees_up_to_the_documented_products():
    check = cross_check("seg-m0", input_size=SMALL)  # what `micronet flops` prints under the table
    assert check["matches"] and check["attention_kind"] == "MR-ASPP attention"
    assert check["micronet_madds"] == (check["conv_plus_linear_madds"] + check["shiftmax_madds"]
                                       + check["attention_product_madds"])


def test_the_head_counted_by_hand():
    """seg-m0 at 1024x2048: stride-16 map 64x128 on 576 channels, stride-8 map 128x256 on 16."""
    stages = {s["stage"]: s for s in count_variant("seg-m0").by_stage()}
    hw16, hw8 = 64 * 128, 128 * 256
    assert stages["mr_aspp.branch"]["conv"] == hw16 * (128 * 576 // 8 + 128 * 128 // 8)
    # the attention: its two grouped 1x1s on the pooled 1x1 map, and 1 product per element of the branch
    assert stages["mr_aspp.attention"]["attention"] == (128 * 576 // 8 + 128 * 128 // 8) + hw16 * 128
    assert stages["mr_aspp.high_classifier"]["madds"] == hw8 * 128 * 19  # after the x2 upsampling
    assert stages["mr_aspp.low_classifier"]["madds"] == hw8 * 16 * 19
    assert stages["mr_aspp.upsample"]["madds"] == stages["upsample"]["madds"] == 0
    assert stages["upsample"]["out_shape"] == [1, 19, 1024, 2048]
    assert stages["mr_aspp.attention"]["out_shape"] == [1, 128, 64, 128]  # the product's, not the pooled convs' 1x1


def test_stage_and_layer_tables_sum_to_the_total():
    counts = count_variant("seg-m1", input_size=SMALL)
    stages = counts.by_stage()
    assert sum(row.madds for row in counts.layers) == counts.madds == sum(s["madds"] for s in stages)
    assert sum(s["conv"] + s["linear"] + s["shiftmax"] + s["attention"] for s in stages) == counts.madds
    assert [r.op for r in counts.layers].count("upsample") == 2
    assert counts.to_dict()["rule"].endswith("global pool, sigmoid, bilinear upsampling free")


# --- tables: nothing cut in 80 columns -----------------------------------------------------------

def test_variants_table_lists_every_seg_variant_whole():
    from micronet.console import VARIANTS_DROP, variants_table

    rows = variant_rows()
    text = render(variants_table(rows), VARIANTS_DROP, 80)
    assert_whole(text, SEG + [f"{SEG_VARIANTS[n].madds:,}" for n in SEG] + [f"{SEG_VARIANTS[n].params:,}" for n in SEG])
    # the paper's figures stay beside ours at 80 (the label may wrap before its figure, never inside one)
    assert_whole(text, ["0.81B", "2.52B", "0.43M", "1.87M", "56.9", "69.1"])
    assert max_line(text) <= 80
    wide = render(variants_table(rows), VARIANTS_DROP, 200)
    assert_whole(wide, ["1024x2048", "0.81B MAdds, 0.43M, mIoU 56.9", "segmentation"])


@pytest.mark.parametrize("per_layer", [False, True])
def test_flops_tables_whole_at_80_columns(per_layer):
    from micronet.console import LAYERS_DROP, STAGES_DROP, counts_table

    counts = count_variant("seg-m3")
    text = render(counts_table(counts, per_layer=per_layer), LAYERS_DROP if per_layer else STAGES_DROP, 80)
    assert max_line(text) <= 80
    names = [r.name for r in counts.layers] if per_layer else [s["stage"] for s in counts.by_stage()]
    numbers = [f"{r.madds:,}" for r in counts.layers] if per_layer else [f"{s['madds']:,}" for s in counts.by_stage()]
    assert_whole(text, names + numbers + [f"{counts.madds:,}", f"{counts.params:,}", "1024x2048, 19 classes"])


# --- refusals and the CLI ------------------------------------------------------------------------

def test_classification_only_code_refuses_seg_in_one_line():
    with pytest.raises(MicronetError, match="seg-m1 is a segmentation model and this command handles classification") as e:
        resolve_variant("SEG-M1")
    assert "\n" not in str(e.value)
    from micronet.train.recipe import TrainConfig

    assert TrainConfig(variant="seg-m0", data="unused").task == "segmentation"  # train handles it (test_train_seg.py)
    with pytest.raises(MicronetError, match="seg-m0 is a segmentation model and this command handles pose"):
        resolve_variant("seg-m0", task="pose")
    assert resolve_variant("seg-m1", task=None).task == "segmentation"


def test_load_weights_refuses_the_other_tasks():
    from micronet.model import build_model
    from micronet.pose_model import build_pose_model
    from micronet.weights import load_weights

    seg, classifier = build_seg_model("seg-m0", input_size=SMALL), build_model("m0")
    with pytest.raises(MicronetError, match="is a segmentation checkpoint but m0 is a classification model"):
        load_weights(classifier, seg.state_dict())
    with pytest.raises(MicronetError, match="is an image-classification checkpoint but seg-m0 is a segmentation"):
        load_weights(seg, classifier.state_dict())
    with pytest.raises(MicronetError, match="is a keypoint \\(pose\\) checkpoint but seg-m0 is a segmentation"):
        load_weights(seg, build_pose_model("pose-m0").state_dict())
    assert load_weights(build_seg_model("seg-m0", input_size=SMALL), seg.state_dict())["tensors"] == len(
        seg.state_dict())


def test_budgets_file_holds_for_seg(tmp_path):
    from micronet.budget import check_budgets

    results = [r for r in check_budgets("budgets.toml") if r.variant.startswith("seg-")]
    assert len(results) == 8 and all(r.ok and r.matches_metadata for r in results)
    bad = tmp_path / "b.toml"
    bad.write_text("[seg-m0]\nmadds = 1\ninput_size = 1024\n")
    with pytest.raises(MicronetError, match="a segmentation budget is at its own 1024x2048"):
        check_budgets(bad)


def test_cli_flops_json_and_refusals():
    data = json.loads(run_cli("flops", "--variant", "seg-m0", "--input-size", "64x128", "--json").stdout)
    assert data["task"] == "segmentation" and data["input_size"] == [64, 128] and data["num_classes"] == 19
    assert data["totals"]["madds"] == count_variant("seg-m0", input_size=SMALL).madds
    assert data["totals"]["attention_madds"] > 0 and data["other_conventions"]["matches"] is True
    assert data["paper"]["madds"] == "0.81B" and data["paper"]["miou"] == 56.9
    assert data["paper"]["input_size"] == [1024, 2048]
    assert "ours_over_paper" not in data["paper"]  # only at Table 9's own size
    full = json.loads(run_cli("flops", "--variant", "seg-m0", "--json").stdout)
    assert full["input_size"] == [1024, 2048] and full["paper"]["ours_over_paper"] == {
        "paper_madds": 810_000_000, "paper_params": 430_000, "madds_ratio": 0.627, "params_ratio": 0.662}
    assert_one_line_error(run_cli("flops", "--variant", "seg-m0", "--input-size", "1000x2048"),
                          "input size 1000x2048 is not supported: segmentation MicroNets need H x W")
    # bench takes seg variants (tests/test_bench_dense.py); a size that is not H x W in 32s is one line
    assert_one_line_error(run_cli("bench", "--variant", "seg-m0", "--input-size", "100x256"),
                          "H and W must both be multiples of 32")


def test_cli_per_layer_in_a_pipe_is_whole():
    result = run_cli("flops", "--variant", "seg-m0", "--input-size", "64x128", "--per-layer", columns=None)
    assert result.returncode == 0, result.stderr
    table = result.stdout.split("torch FlopCounterMode")[0]
    assert_whole(table, [r.name for r in count_variant("seg-m0", input_size=SMALL).layers])
    assert "MR-ASPP attention products" in result.stdout
    assert "paper (Table 9, 1024x2048): 0.81B MAdds, 0.43M params, mIoU 56.9" in result.stdout
