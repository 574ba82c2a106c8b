"""MAdds and params: exact against the spec's table, and cross-checked against torch."""

from __future__ import annotations

import pytest
import torch

from micronet.counting import count_model, count_variant, cross_check
from micronet.model import build_model

# shared/spec/architecture.md §3 (224x224, batch 1, 1000 classes)
TARGETS = {
    "m0": (1_777_587, 6_120_032),
    "m1": (2_393_876, 12_743_440),
    "m2": (3_146_588, 18_715_232),
    "m3": (3_266_508, 28_954_576),
    "release-m0": (1_019_590, 4_054_128),
    "release-m3": (2_622_960, 20_807_520),
}
# spec §4.5, released models: conv / Linear (classifier + hyper-functions) / Shift-Max products
SPLITS = {
    "release-m0": (2_458_624, 885_760 + 104_496, 605_248),
    "m0": (3_578_176, 1_512_960 + 222_944, 805_952),
    "m1": (8_025_024, 1_810_432 + 502_672, 2_405_312),
    "release-m3": (15_763_104, 1_908_736 + 564_160, 2_571_520),
}


@pytest.mark.parametrize("variant", TARGETS)
def test_params_and_madds_are_exact(variant):
    counts = count_variant(variant)
    assert (counts.params, counts.madds) == TARGETS[variant]


@pytest.mark.parametrize("variant", SPLITS)
def test_split_by_kind_matches_the_released_models(variant):
    c = count_variant(variant)
    assert (c.total("conv"), c.total("linear"), c.total("shiftmax")) == SPLITS[variant]


@pytest.mark.parametrize("variant", TARGETS)
def test_param_count_equals_torch(variant):
    model = build_model(variant)
    assert count_variant(variant).params == sum(p.numel() for p in model.parameters())


def test_release_m3_per_block_split():
    """spec §4.5: per-block conv / FC / Shift-Max MACs of the released M3."""
    stages = {s["stage"]: s for s in count_variant("release-m3").by_stage()}
    assert (stages["stem"]["conv"], stages["blocks.0"]["conv"], stages["blocks.0"]["linear"],
            stages["blocks.0"]["shiftmax"]) == (1_354_752, 1_505_280, 1_920, 602_112)
    assert (stages["blocks.7"]["conv"], stages["blocks.7"]["linear"], stages["blocks.7"]["shiftmax"]) == (
        2_634_240, 76_800, 376_320)
    assert stages["head"]["linear"] == 1_908_736


def test_madds_scale_with_input_size_and_classes():
    small = count_variant("m0", input_size=96, num_classes=10)
    full = count_variant("m0")
    assert small.madds < full.madds / 3
    assert small.params == full.params - (960 * 990 + 3 * 990)  # Linear weight+bias and BN1d affine


@pytest.mark.parametrize("variant", ["m0", "release-m3"])
def test_flop_counter_agrees_up_to_the_documented_convention(variant):
    check = cross_check(variant)
    assert check["matches"]
    assert check["flop_counter_flops"] == 2 * check["conv_plus_linear_madds"]
    assert check["micronet_madds"] == check["conv_plus_linear_madds"] + check["shiftmax_madds"]


def test_counting_a_real_model_equals_counting_on_meta():
    model = build_model("m1")
    assert count_model(model).madds == count_variant("m1").madds
    assert next(model.parameters()).device == torch.device("cpu")


def test_cross_check_counts_the_same_model_as_the_table():
    """`flops --num-classes 10`: the FlopCounter note must compare against the 10-class total."""
    check = cross_check("release-m0", num_classes=10)
    counts = count_variant("release-m0", num_classes=10)
    assert check["num_classes"] == 10 and check["matches"]
    assert check["micronet_madds"] == counts.madds
    assert check["conv_plus_linear_madds"] == counts.total("conv") + counts.total("linear")
