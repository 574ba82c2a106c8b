"""``micronet profile`` on a .tflite: the file cut after each block, the prefixes timed on the device.

Timings are never asserted (the machine is shared); what is asserted is that each prefix computes exactly what
the full file computes up to its cut, that every operator is counted in exactly one block in the model's order,
that the blocks add up to the whole file's time, and that it runs on this machine, over SSH (the loopback
sshd) and on the stand-in phone.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from micronet.bench.profile import profile_artifact, write_profile
from micronet.bench.tflite_profile import Segment, _model, op_blocks, segments, write_prefix
from micronet.counting import count_variant
from micronet.errors import MicronetError


def test_segments_join_unnamed_ops_to_their_neighbour_and_keep_a_split_block_in_two_runs():
    blocks = [None, "stem", "stem", "blocks.0", None, "blocks.1", "blocks.0", "head", None]
    assert segments(blocks) == [Segment("stem", 0, 3), Segment("blocks.0", 3, 5), Segment("blocks.1", 5, 6),
                                Segment("blocks.0", 6, 7), Segment("head", 7, 9)]
    with pytest.raises(MicronetError, match="names no MicroNet blocks") as info:
        segments([None, None])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_every_op_of_a_fast_tflite_is_in_one_block_in_the_models_order(exported_m0_small, kind):
    model = _model(exported_m0_small[kind])
    blocks = op_blocks(model)
    assert sum(b is None for b in blocks) <= 3  # int8: the input QUANTIZE, the output DEQUANTIZE
    order = [s.block for s in segments(blocks)]
    assert order == ["stem", *(f"blocks.{i}" for i in range(7)), "head"]  # each block one contiguous run


@pytest.mark.filterwarnings("ignore:Warning. Enabling .experimental_preserve_all_tensors.")
def test_a_prefix_computes_what_the_full_file_computes_up_to_its_cut(exported_m0_small, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    path = exported_m0_small["float32"]
    model = _model(path)
    parts = segments(op_blocks(model))
    cut = next(s for s in parts if s.block == "blocks.3")
    prefix = write_prefix(model, cut.end, tmp_path / "prefix.tflite")
    x = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype(np.float32)

    full = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    full.allocate_tensors()
    full.set_tensor(full.get_input_details()[0]["index"], x)
    full.invoke()
    by_name = {t["name"]: t["index"] for t in full.get_tensor_details()}

    part = Interpreter(model_path=str(prefix))
    part.allocate_tensors()
    part.set_tensor(part.get_input_details()[0]["index"], x)
    part.invoke()
    outputs = part.get_output_details()
    # the graph's input first (what a harness reads back: the same for every cut), then the cut maps
    assert outputs[0]["name"] == part.get_input_details()[0]["name"] and len(outputs) >= 2
    assert len(model.subgraphs[0].operators) > cut.end
    assert len(_model(prefix).subgraphs[0].operators) == cut.end
    for out in outputs:  # the cut map (and any tensor a later block reads), equal to the full run's
        np.testing.assert_allclose(part.get_tensor(out["index"]), full.get_tensor(by_name[out["name"]]),
                                   rtol=1e-5, atol=1e-5)
    assert all(len(o["shape"]) == 4 for o in outputs)  # feature maps, not the logits


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_blocks_add_up_to_the_whole_file_with_their_madds(exported_m0_small, kind):
    profile = profile_artifact(exported_m0_small[kind], threads=(1, 2), runs=3, warmup=1, rounds=2)
    stages = {s["stage"]: s["madds"] for s in count_variant("m0", 64).by_stage()}
    assert profile.method == "prefixes" and profile.runtime == "litert" and profile.device == "local"
    assert [row.block for row in profile.blocks] == list(stages)
    assert all(row.madds == stages[row.block] for row in profile.blocks)
    ops = len(_model(exported_m0_small[kind]).subgraphs[0].operators)
    assert sum(row.nodes for row in profile.blocks) == ops == sum(sum(r.ops.values()) for r in profile.blocks)
    for t in (1, 2):
        assert profile.total_ms[t] > 0 and profile.wall_ms[t] > 0  # the cuts' ops; the file as run
        assert sum(row.ms[t] for row in profile.blocks) == pytest.approx(profile.total_ms[t])
    assert profile.op_ms == {}  # no per-op time: the prefixes time blocks


def test_cli_prints_the_tflite_table_in_80_columns_and_writes_it(exported_m0_small, tmp_path):
    from test_cli import run_cli

    result = run_cli("profile", str(exported_m0_small["float32"]), "--runs", "2", "--rounds", "2",
                     "--out", str(tmp_path / "p"), columns="80")
    assert result.returncode == 0, result.stderr
    for name in ("stem", "blocks.0", "blocks.6", "head", "ms@1T", "ms@2T", "×2T/1T", "total", "wall (run)",
                 "litert", "local"):
        assert name in result.stdout
    assert "…" not in result.stdout and "by op type" not in result.stdout
    import json

    data = json.loads((tmp_path / "p.json").read_text())
    assert data["method"] == "prefixes" and data["rounds"] == 2 and "prefix" in data["units"]["ms"]
    assert (tmp_path / "p.csv").read_text().startswith("block,madds,ms_1_threads,ms_2_threads,nodes")


@pytest.mark.slow
def test_profile_over_ssh_on_the_loopback_board(exported_m0_small, sshd, tmp_path):
    """Every prefix pushed to the board and timed by the device runner there; nothing left behind."""
    from fixtures.sshd import write_inventory

    board_tmp = tmp_path / "board"
    board_tmp.mkdir()
    inventory = write_inventory(tmp_path / "devices.toml", sshd, sys.executable,
                                devices={"board": {"target": sshd.target, "workdir": str(board_tmp)}})
    profile = profile_artifact(exported_m0_small["float32"], device="board", inventory=inventory, threads=(1,),
                               runs=2, warmup=1, rounds=1)
    assert profile.device == "board" and [r.block for r in profile.blocks][0] == "stem"
    assert sum(row.ms[1] for row in profile.blocks) == pytest.approx(profile.total_ms[1])
    assert not list(board_tmp.rglob("micronet-run.*"))


@pytest.mark.slow
def test_profile_on_the_stand_in_phone(exported_m0_small, tmp_path):
    """The STAND-IN phone (``fixtures/phone.py``): the prefixes timed by its benchmark_model."""
    from fixtures.phone import make_phone

    phone = make_phone(tmp_path)
    inventory = tmp_path / "devices.toml"
    inventory.write_text(f'[devices.phone]\ntarget = "adb"\nadb = "{phone.adb}"\n'
                         f'benchmark_binary = "{phone.binary}"\n')
    profile = profile_artifact(exported_m0_small["int8"], device="phone", inventory=inventory, threads=(1,),
                               runs=2, warmup=1, rounds=1)
    assert profile.runtime == "benchmark_model" and len(profile.blocks) == 9
    assert any("benchmark_model" in " ".join(call) for call in phone.calls())
    assert phone.leftovers() == []


def test_written_profile_round_trips(exported_m0_small, tmp_path):
    profile = profile_artifact(exported_m0_small["float32"], threads=(1,), runs=2, warmup=1, rounds=1)
    json_path, csv_path = write_profile(profile, tmp_path / "x.profile")
    assert json_path.is_file() and csv_path.read_text().count("\n") == len(profile.blocks) + 1


@pytest.mark.parametrize("content, kwargs, message", [
    (b"x", {}, "not a TFLite flatbuffer"),
    (None, {"device": "nowhere-board"}, "nowhere-board"),
])
def test_bad_tflite_inputs_are_one_line(exported_m0_small, tmp_path, content, kwargs, message):
    path = tmp_path / "m.tflite"
    path.write_bytes(content if content is not None else exported_m0_small["float32"].read_bytes())
    with pytest.raises(MicronetError, match=message) as info:
        profile_artifact(path, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_a_float16_file_keeps_each_weight_dequantize_with_its_reader(tmp_path):
    """The converter puts a float16 file's weight DEQUANTIZEs at the top of the graph; a cut between one and its
    reader would turn the weight into an output. Each is moved to just before its reader and counted there."""
    from micronet.export.pipeline import ExportRequest, export

    result = export(ExportRequest(variant="m0", kinds=[("tflite", "float16")], input_size=64, calib_count=4,
                                  holdout=4, output_dir=tmp_path))
    path = result.artifacts[0]
    model = _model(path)
    graph = model.subgraphs[0]
    blocks = op_blocks(model)
    assert [s.block for s in segments(blocks)] == ["stem", *(f"blocks.{i}" for i in range(7)), "head"]
    from micronet.bench.tflite_profile import _op_names

    names = _op_names(model)
    dequantize = [k for k, op in enumerate(graph.operators) if names[op.opcodeIndex] == "DEQUANTIZE"]
    assert len(dequantize) > 20
    for k in dequantize:  # its reader follows it (after the other weights that reader takes), in its block
        made = set(graph.operators[k].outputs)
        reader = next(j for j in range(k + 1, len(graph.operators)) if made & set(graph.operators[j].inputs))
        assert all(names[graph.operators[j].opcodeIndex] == "DEQUANTIZE" for j in range(k + 1, reader))
        assert blocks[k] == blocks[reader]
    profile = profile_artifact(path, threads=(1,), runs=2, warmup=1, rounds=1)
    assert sum(row.nodes for row in profile.blocks) == len(graph.operators)
