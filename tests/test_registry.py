"""Variant metadata as data: the figures recomputed (so they cannot drift), the released weights'
entries, descriptive block rows, and the released slot layout kept in the loader only."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from micronet.blocks import MicroBlock
from micronet.budget import check_budgets
from micronet.config import CONFIGS, RELEASED_COLUMNS, BlockRow, rows_from_table
from micronet.counting import count_variant
from micronet.errors import MicronetError
from micronet.model import build_model
from micronet.preprocess import IMAGENET_MEAN, IMAGENET_STD
from micronet.registry import (FIGURES_CLASSES, FIGURES_INPUT_SIZE, RELEASE_URL, RELEASED_WEIGHTS, VARIANTS,
                               ReleasedWeights, VariantInfo, variant_rows)
from micronet.weights import RELEASED_SLOTS, load_weights, released_key_map, save_released_layout

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "checkpoint_keys.json").read_text())

#: The figures the issue states (and the release README rounds); the metadata must say exactly these.
EXPECTED = {
    "m0": (1_777_587, 6_120_032), "m1": (2_393_876, 12_743_440), "m2": (3_146_588, 18_715_232),
    "m3": (3_266_508, 28_954_576), "release-m0": (1_019_590, 4_054_128), "release-m3": (2_622_960, 20_807_520),
}


# --- the figures: recomputed by the counting rule, as torchvision's CI recomputes its weights' meta ----

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_metadata_figures_equal_the_counting(variant):
    info = VARIANTS[variant]
    counts = count_variant(variant, input_size=FIGURES_INPUT_SIZE, num_classes=FIGURES_CLASSES)
    assert (info.params, info.madds) == (counts.params, counts.madds) == EXPECTED[variant]
    for w in info.weights:
        assert (w.params, w.madds) == (counts.params, counts.madds)


def test_every_variant_has_a_config_and_the_expected_figures():
    assert set(VARIANTS) == set(CONFIGS) == set(EXPECTED)


# --- released weights: one entry per published checkpoint -----------------------------------------------

def test_released_weights_entries():
    assert {name: (w.variant, w.top1) for name, w in RELEASED_WEIGHTS.items()} == {
        "micronet-m0.pth": ("release-m0", 46.6), "micronet-m1.pth": ("m0", 51.4),
        "micronet-m2.pth": ("m1", 59.4), "micronet-m3.pth": ("release-m3", 62.5)}
    assert not VARIANTS["m2"].weights and not VARIANTS["m3"].weights
    for w in RELEASED_WEIGHTS.values():
        assert w.url == RELEASE_URL + w.file_name and w.num_classes == 1000
        p = w.preprocessing  # resize the shorter side to 256, centre crop 224, ImageNet mean/std
        assert (p.resize_size, p.input_size, p.interpolation) == (256, 224, "bilinear")
        assert (p.mean, p.std) == (IMAGENET_MEAN, IMAGENET_STD)
        assert w in VARIANTS[w.variant].weights


def test_weights_listed_under_another_variant_is_refused():
    with pytest.raises(ValueError, match="listed under m2 but names m0"):
        VariantInfo("m2", "x", 1, 1, "1M", "1M", (ReleasedWeights("micronet-m1.pth", "m0", 51.4),))


def test_variants_rows_come_from_the_metadata():
    rows = {r["name"]: r for r in variant_rows()}
    assert rows["m0"]["release_checkpoint"] == "micronet-m1.pth" and rows["m0"]["release_top1"] == 51.4
    assert rows["m2"]["release_checkpoint"] is None and rows["m2"]["weights"] == []
    (m3,) = rows["release-m3"]["weights"]
    assert m3["url"] == RELEASE_URL + "micronet-m3.pth" and m3["madds"] == 20_807_520
    assert m3["preprocessing"]["input_size"] == 224 and m3["preprocessing"]["crop_ratio"] == 0.875
    json.dumps(rows)  # the --json output


def test_budget_results_carry_the_variants_recorded_figures(tmp_path):
    budgets = tmp_path / "budgets.toml"
    budgets.write_text("[m0]\nmadds = 7_000_000\n[release-m0]\nparams = 2_000_000\ninput_size = 160\n")
    results = {(r.variant, r.metric): r for r in check_budgets(budgets)}
    assert results["m0", "madds"].recorded == 6_120_032 and results["m0", "madds"].matches_metadata
    assert results["release-m0", "params"].recorded is None  # the metadata speaks of 224 px only
    assert set(results) == {("m0", "madds"), ("release-m0", "params")}  # the file's ceilings stay the gate


# --- block rows: descriptive names, the released columns documented ------------------------------------

def test_block_row_fields_name_the_released_columns():
    assert list(RELEASED_COLUMNS) == "s c ks c1 c2 g1 g2 g3 g4 y1 y2 y3 r".split()
    assert list(RELEASED_COLUMNS.values()) == [f.name for f in fields(BlockRow)]
    for column, name in RELEASED_COLUMNS.items():
        assert f"``{name}`` (``{column}``)" in BlockRow.__doc__  # every field says which column it holds
    (row,) = rows_from_table("1 576 3 1 6 12 12 0 0 2 2 1 2")  # m0's final row, as the released microconfig prints it
    assert (row.expand_groups, row.shift_groups, row.out_shift_groups, row.reduction_factor) == (12, 12, 0, 2)
    assert row.activations == (2, 2, 1) and row.kind == "final"
    with pytest.raises(ValueError, match="needs 13 columns"):
        rows_from_table("1 576 3 1 6 12 12 0 0 2 2 1")


# --- the released slot layout lives in the loader; our keys do not change ------------------------------

@pytest.mark.parametrize("variant", sorted(FIXTURE["state_dict_keys"]))
def test_our_state_dict_keys_are_unchanged(variant):
    assert sorted(build_model(variant).state_dict()) == FIXTURE["state_dict_keys"][variant]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_released_slots_are_unchanged(variant):
    """Every layer with tensors maps to the released slot recorded before the layout moved here."""
    blocks = {}
    for ours, released in released_key_map(build_model(variant)).items():
        if ours.startswith("blocks."):
            blocks[".".join(ours.split(".")[:4])] = ".".join(released.split(".")[:4])
    assert blocks == FIXTURE["released_block_slots"][variant]


def test_blocks_know_nothing_of_the_released_slots():
    block = build_model("m0").blocks[0]
    assert isinstance(block, MicroBlock) and not hasattr(block, "released_slots")
    assert set(RELEASED_SLOTS) == {"A", "BC", "final"}


# --- the loader names the published file a variant loads ----------------------------------------------

def test_wrong_variant_message_names_the_released_file(tmp_path):
    torch.save(save_released_layout(build_model("m1")), tmp_path / "micronet-m2.pth")
    with pytest.raises(MicronetError) as err:
        load_weights(build_model("m0"), tmp_path / "micronet-m2.pth")
    assert str(err.value).endswith("not m0; use --variant m1 (the released micronet-m2.pth loads into m1)")


def test_our_layout_of_the_wrong_variant_names_no_released_file(tmp_path):
    torch.save(build_model("m1").state_dict(), tmp_path / "ours.pt")
    with pytest.raises(MicronetError) as err:
        load_weights(build_model("m0"), tmp_path / "ours.pt")
    assert str(err.value).endswith("not m0; use --variant m1")


def test_readme_variants_table_matches_the_metadata():
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    for name, info in VARIANTS.items():
        (line,) = [ln for ln in readme.splitlines() if ln.startswith(f"| `{name}`")]
        assert f"| {info.params:,} | {info.madds:,} |" in line, line
        for w in info.weights:
            assert f"`{w.file_name}` ({w.top1}%" in line, line
