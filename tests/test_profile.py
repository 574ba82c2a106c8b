"""``micronet profile``: ONNX Runtime's per-node profile joined to MicroNet blocks and their MAdds."""

from __future__ import annotations

import csv
import json

import pytest

from micronet.bench.profile import profile_artifact, write_profile
from micronet.counting import count_variant
from micronet.errors import MicronetError


@pytest.fixture(scope="module")
def m0_profile(exported_m0_small):
    return profile_artifact(exported_m0_small["onnx"], threads=(1, 2), runs=3, warmup=1)


def test_blocks_of_m0_are_joined_with_their_madds(m0_profile):
    counts = count_variant("m0", 64)
    stages = {s["stage"]: s["madds"] for s in counts.by_stage()}
    names = [row.block for row in m0_profile.blocks]
    assert {"stem", "blocks.0", "head"} <= set(names)
    assert set(stages) <= set(names)  # every counted block got timed nodes
    for row in m0_profile.blocks:
        assert row.madds == stages.get(row.block)
        assert set(row.ms) == {1, 2} and all(v >= 0 for v in row.ms.values())
    assert set(m0_profile.wall_ms) == {1, 2} and all(v > 0 for v in m0_profile.wall_ms.values())
    assert sum(row.madds or 0 for row in m0_profile.blocks) == counts.madds
    joined = sum(row.nodes for row in m0_profile.blocks if row.block in stages)
    unjoined = sum(row.nodes for row in m0_profile.blocks if row.block not in stages)
    assert unjoined <= joined // 10  # the join accounts for nearly every node the runtime runs


@pytest.mark.slow
@pytest.mark.parametrize("variant, size", [("seg-m0", (64, 128)), ("pose-m0", (64, 64))])
def test_dense_models_are_joined_per_row_head_block_and_mr_aspp_part(variant, size, tmp_path):
    """Pose and segmentation exports (the reference graph) join too, at ``micronet flops``'s granularity: the
    keypoint head's blocks and MR-ASPP's parts, each beside its MAdds, in the model's order."""
    from micronet.export.pipeline import ExportRequest, export

    result = export(ExportRequest(variant=variant, input_size=size, calib_count=2, holdout=4, graph="reference",
                                  kinds=[("onnx", "float32")], output_dir=tmp_path))
    profile = profile_artifact(result.artifacts[0], threads=(1,), runs=2, warmup=1)
    counts = count_variant(variant, size)
    stages = {s["stage"]: s["madds"] for s in counts.by_stage()}
    names = [row.block for row in profile.blocks]
    assert [n for n in names if n in stages] == [n for n in stages if n in names]  # the model's order
    assert set(stages) <= set(names)  # every counted block is a row (with 0 nodes where ORT fused it away)
    timed = {row.block for row in profile.blocks if row.nodes > 0}
    assert {n for n in stages if n.startswith(("stem", "blocks.", "head_blocks."))} <= timed
    assert len([n for n in stages if n not in timed]) <= 2  # seg: the class projections fused into their Add
    assert sum(row.madds or 0 for row in profile.blocks) == counts.madds
    joined = sum(row.nodes for row in profile.blocks if row.block in stages)
    assert sum(row.nodes for row in profile.blocks if row.block not in stages) <= joined // 10
    # The same time by op type: it adds up to the total, most expensive first, the convolutions among it.
    assert sum(ms[1] for ms in profile.op_ms.values()) == pytest.approx(profile.total_ms[1])
    firsts = [ms[1] for ms in profile.op_ms.values()]
    assert firsts == sorted(firsts, reverse=True) and any("Conv" in op for op in profile.op_ms)


def test_profile_is_written_as_json_and_csv_beside_the_manifest(m0_profile, exported_m0_small, tmp_path):
    manifest = exported_m0_small["onnx"].with_name(exported_m0_small["onnx"].name + ".json")
    before = manifest.read_bytes()
    json_path, csv_path = write_profile(m0_profile, tmp_path / "m0.onnx.profile")
    assert manifest.read_bytes() == before
    data = json.loads(json_path.read_text())
    assert data["threads"] == [1, 2] and [b["block"] for b in data["blocks"]] == [r.block for r in m0_profile.blocks]
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["block"] for r in rows] == [r.block for r in m0_profile.blocks]


def test_cli_prints_the_whole_table_in_80_columns(exported_m0_small, tmp_path):
    from test_cli import run_cli

    result = run_cli("profile", str(exported_m0_small["onnx"]), "--runs", "2", "--out", str(tmp_path / "p"),
                     columns="80")
    assert result.returncode == 0, result.stderr
    for name in ("stem", "blocks.0", "blocks.6", "head", "ms@1T", "ms@2T", "×2T/1T", "total", "wall (run)",
                 "by op type", "op type"):
        assert name in result.stdout
    assert "…" not in result.stdout
    assert (tmp_path / "p.json").is_file() and (tmp_path / "p.csv").is_file()


@pytest.mark.parametrize("name, kwargs, message", [
    ("m.tflite", {}, "not a TFLite flatbuffer"),
    ("m.pb", {}, "expected an exported .onnx or .tflite"),
    ("m.onnx", {"device": "ssh://pi@board"}, "this machine only"),
    ("missing.onnx", {}, "not found"),
])
def test_bad_inputs_are_one_line(tmp_path, name, kwargs, message):
    path = tmp_path / name
    if name != "missing.onnx":
        path.write_bytes(b"x")
    with pytest.raises(MicronetError, match=message) as info:
        profile_artifact(path, **kwargs)
    assert "\n" not in str(info.value)
