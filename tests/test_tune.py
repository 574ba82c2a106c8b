"""``micronet export --tune``: candidates built, checked exact and timed on a device; records reused or refused.

Timing figures are never asserted (the machine is shared); what is asserted is the record's consistency, the
shipped file's parity, and that a wrong record, device or request is refused with one line and no file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from micronet.errors import MicronetError
from micronet.export.manifest import read_manifest
from micronet.export.pipeline import ExportRequest, export
from micronet.export.tune import TuneRequest, parse_budget
from micronet.export.tune import record as rec

SIZE = 64


def _request(out: Path, tune: TuneRequest, fmt: str = "onnx") -> ExportRequest:
    return ExportRequest(variant="m0", kinds=[(fmt, "float32")], input_size=SIZE, calib_count=8, holdout=4,
                         output_dir=out, tune=tune)


def _tiny(device: str = "local", **changes) -> TuneRequest:
    """A search that measures a few candidates: 2 rounds of 5 inferences each, a budget of seconds."""
    return TuneRequest(**{"device": device, "threads": 1, "budget_s": 6.0, "rounds": 2, "runs": 5, "warmup": 1,
                          **changes})


def _artifacts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


# ----------------------------------------------------------------------------------------- without a converter

@pytest.mark.parametrize("text, seconds", [("90s", 90.0), ("5m", 300.0), ("1.5h", 5400.0), ("45", 45.0)])
def test_budget_units(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["5q", "", "-3m", "0s", "m5"])
def test_bad_budget_is_one_line(text):
    with pytest.raises(MicronetError, match="--tune-budget") as info:
        parse_budget(text)
    assert "\n" not in str(info.value)


def test_fingerprint_ignores_temperature_and_throttling():
    hot = rec.fingerprint("ssh", "Raspberry Pi 4 · Cortex-A72 ×4 · Linux aarch64 · Python 3.11.2 · 61.0 °C", "litert",
                          "2.1.0")
    cool = rec.fingerprint("ssh", "Raspberry Pi 4 · Cortex-A72 ×4 · Linux aarch64 · Python 3.11.2 · 48.2 °C",
                           "litert", "2.1.0")
    other = rec.fingerprint("ssh", "Raspberry Pi 5 · Cortex-A76 ×4 · Linux aarch64 · Python 3.11.2", "litert", "2.1.0")
    newer = rec.fingerprint("ssh", "Raspberry Pi 4 · Cortex-A72 ×4 · Linux aarch64 · Python 3.11.2", "litert", "2.2.0")
    assert hot["id"] == cool["id"]
    assert len({hot["id"], other["id"], newer["id"]}) == 3


def test_record_checks_name_what_differs():
    export_key = {"variant": "m0", "input_size": 64, "format": "onnx", "profile": "portable", "threads": 1}
    device = rec.fingerprint("local", "Xeon ×2 · Linux x86_64", "onnxruntime", "1.23.0")
    tools = {"torch": "2.13.0", "graph_revision": 7}
    record = {"schema": rec.SCHEMA, "export": export_key, "device": device, "toolchain": tools,
              "chosen": {"switches": {"roll_2d": False}, "blocks": [[3, "merged_groups", False]]}}
    rec.check_record(record, export_key, device, tools, "r.json")  # its own: accepted
    with pytest.raises(MicronetError, match="threads"):
        rec.check_record(record, {**export_key, "threads": 4}, device, tools, "r.json")
    with pytest.raises(MicronetError, match="another device"):
        rec.check_record(record, export_key, rec.fingerprint("ssh", "Pi", "onnxruntime", "1.23.0"), tools, "r.json")
    with pytest.raises(MicronetError, match="another toolchain.*torch"):
        rec.check_record(record, export_key, device, {**tools, "torch": "2.14.0"}, "r.json")
    for chosen, message in [(None, "names no chosen graph"),
                            ({"switches": {}, "blocks": [[0, "pixel_pairs", False]]}, "not a per-block switch"),
                            ({"switches": {}, "blocks": [["x", "roll_2d", False]]}, "block >= 0"),
                            ({"switches": {}, "blocks": [[0, "roll_2d"]]}, "block, switch, on")]:
        with pytest.raises(MicronetError, match=message) as info:
            rec.check_record({**record, "chosen": chosen}, export_key, device, tools, "r.json")
        assert "\n" not in str(info.value) and "r.json" in str(info.value)


def test_unknown_device_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(MicronetError, match="unknown device target") as info:
        export(_request(tmp_path / "out", _tiny("nowhere://board")))
    assert "\n" not in str(info.value)
    assert _artifacts(tmp_path / "out") == []


def test_unreachable_board_is_refused_before_anything_is_written(tmp_path):
    from fixtures.sshd import free_port

    with pytest.raises(MicronetError, match="cannot tune on .*unreachable") as info:
        export(_request(tmp_path / "out", _tiny(f"ssh://nobody@127.0.0.1:{free_port()}")))
    assert "\n" not in str(info.value)
    assert _artifacts(tmp_path / "out") == []


def test_reference_graph_is_not_tuned(tmp_path):
    request = _request(tmp_path / "out", _tiny())
    request.graph = "reference"
    with pytest.raises(MicronetError, match="--graph reference"):
        export(request)


# --------------------------------------------------------------------------------------------- tuning locally

@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """m0 at 64 px, ONNX, tuned on this machine with a budget of seconds (the record cache left out)."""
    out = tmp_path_factory.mktemp("tuned")
    messages: list[str] = []
    result = export(_request(out, _tiny(cache=False)), progress=messages.append)
    return result.artifacts[0], messages


@pytest.mark.slow
def test_tuned_manifest_records_device_threads_candidates_and_choice(tuned):
    path, messages = tuned
    manifest = read_manifest(path)
    record = manifest["tuning"]
    assert record["schema"] == rec.SCHEMA and record["threads"] == 1
    assert record["export"] == {"variant": "m0", "input_size": SIZE, "format": "onnx", "profile": "portable",
                                "threads": 1}
    assert record["device"]["kind"] == "local" and record["device"]["runtime"] == "onnxruntime"
    assert set(record["toolchain"]) >= {"torch", "onnxruntime", "graph_revision"}
    candidates = record["candidates"]
    assert candidates[0]["name"] == "default" and len(candidates[0]["p50_ms"]) == 2
    measured = [c for c in candidates if c["status"] == "measured"]
    assert len(measured) >= 2  # the default and at least one challenger within the budget
    assert record["chosen"]["name"] in {c["name"] for c in measured}
    for c in measured[1:]:
        assert c["won"] == (max(c["p50_ms"]) < min(c["against_p50_ms"]))  # the rule, as recorded
    # The portable profile only switches rewrites off: the ones it has off break some ONNX consumer.
    assert all(on is False for c in candidates for on in c["changed"].values())
    assert any("tuning onnx" in m for m in messages)


@pytest.mark.slow
def test_tuned_file_passes_parity_and_is_built_from_the_chosen_profile(tuned):
    import torch

    from micronet.export import parity
    from micronet.export.calibration import build_calibration
    from micronet.export.fast import PROFILES
    from micronet.export.onnx import run_onnx

    path, _ = tuned
    manifest = read_manifest(path)
    assert manifest["parity"] and all(r["passed"] for r in manifest["parity"])
    chosen = manifest["tuning"]["chosen"]["switches"]
    assert {k: v for k, v in chosen.items() if getattr(PROFILES["portable"], k) != v} == \
        manifest["tuning"]["chosen"]["changed"]
    # The file computes the same logits as its manifest says the export judged (real images, ONNX Runtime).
    from micronet.preprocess import Preprocessing

    data = build_calibration(None, count=8, seed=0, preprocessing=Preprocessing(input_size=SIZE), holdout=4)
    logits = run_onnx(path, data.holdout)
    assert logits.shape == (4, 1000) and torch.isfinite(torch.from_numpy(logits)).all()
    onnx_rung = next(r for r in manifest["parity"] if r["rung"] == "onnx")
    assert onnx_rung["value"] <= parity.THRESHOLDS["onnx"].limit


@pytest.mark.slow
def test_record_is_reused_from_the_manifest_without_measuring(tuned, tmp_path):
    path, _ = tuned
    messages: list[str] = []
    manifest_file = path.with_name(path.name + ".json")
    result = export(_request(tmp_path / "again", _tiny(record=manifest_file)), progress=messages.append)
    record = read_manifest(result.artifacts[0])["tuning"]
    original = read_manifest(path)["tuning"]
    assert record["reused"] is True and record["chosen"] == original["chosen"]
    assert record["candidates"] == original["candidates"]
    assert any("reusing the record" in m for m in messages)
    assert not any("candidate" in m for m in messages)


@pytest.mark.slow
@pytest.mark.parametrize("field, change, message", [
    ("device", {"id": "0" * 64, "summary": "Raspberry Pi 4"}, "another device"),
    ("toolchain", {"torch": "0.0.1"}, "another toolchain"),
    ("export", {"input_size": 96}, "input_size"),
])
def test_record_for_another_device_or_toolchain_is_refused(tuned, tmp_path, field, change, message):
    path, _ = tuned
    record = read_manifest(path)["tuning"]
    record[field] = {**record[field], **change}
    bad = tmp_path / "record.json"
    bad.write_text(json.dumps(record))
    with pytest.raises(MicronetError, match=message) as info:
        export(_request(tmp_path / "out", _tiny(record=bad)))
    assert "\n" not in str(info.value)
    assert _artifacts(tmp_path / "out") == []


@pytest.mark.slow
def test_cli_refuses_a_foreign_record_with_exit_2(tuned, tmp_path):
    from test_cli import assert_one_line_error, run_cli

    path, _ = tuned
    record = read_manifest(path)["tuning"]
    record["device"] = {**record["device"], "id": "f" * 64}
    bad = tmp_path / "record.json"
    bad.write_text(json.dumps(record))
    result = run_cli("export", "--format", "onnx", "--input-size", str(SIZE), "--calib-count", "8",
                     "--tune-from", str(bad), "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    assert_one_line_error(result, "another device")
    assert _artifacts(tmp_path / "out") == []


@pytest.mark.slow
def test_cache_serves_the_second_tuning(tmp_path):
    first: list[str] = []
    export(_request(tmp_path / "a", _tiny(budget_s=1.0)), progress=first.append)
    assert any("tuning record cached" in m for m in first)
    assert list(rec.cache_dir().glob("m0-64-onnx-portable-t1-*.json"))
    second: list[str] = []
    export(_request(tmp_path / "b", _tiny(budget_s=1.0)), progress=second.append)
    assert any("reusing the record" in m for m in second)


# ----------------------------------------------------------------------------------------------- over SSH

@pytest.mark.slow
def test_tuning_over_ssh_end_to_end(sshd, tmp_path):
    """The loopback sshd as the board: every candidate pushed and timed by the device runner there."""
    from fixtures.sshd import write_inventory

    board_tmp = tmp_path / "board"
    board_tmp.mkdir()
    inventory = write_inventory(tmp_path / "devices.toml", sshd, sys.executable,
                                devices={"board": {"target": sshd.target, "workdir": str(board_tmp)}})
    result = export(_request(tmp_path / "out", _tiny("board", inventory=inventory, budget_s=1.0, cache=False)))
    record = read_manifest(result.artifacts[0])["tuning"]
    assert record["device"]["kind"] == "ssh" and record["device"]["target"] == sshd.target
    measured = [c for c in record["candidates"] if c["status"] == "measured"]
    assert measured[0]["name"] == "default" and len(measured) >= 2
    assert record["chosen"]["name"] in {c["name"] for c in measured}
    assert not list(board_tmp.rglob("micronet-run.*"))  # the runner's folders are gone from the board


# ------------------------------------------------------------------------------------ on an adb phone

def _phone_inventory(tmp_path: Path, phone, binary: bool = True) -> Path:
    lines = ["[devices.phone]", 'target = "adb"', f'adb = "{phone.adb}"']
    if binary:
        lines.append(f'benchmark_binary = "{phone.binary}"')
    path = tmp_path / "devices.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_tuning_on_an_adb_phone_end_to_end(tmp_path):
    """The STAND-IN phone (``fixtures/phone.py``: a stand-in adb and a stand-in benchmark_model that runs
    LiteRT here and prints the real tool's format): every candidate pushed and timed by benchmark_model. The
    tool prints no median, so the search compares means, and the record says so; its device fingerprint names
    the binary, so a record made with another benchmark_model build is refused."""
    from fixtures.phone import make_phone

    phone = make_phone(tmp_path)
    inventory = _phone_inventory(tmp_path, phone)
    result = export(_request(tmp_path / "out", _tiny("phone", inventory=inventory, budget_s=1.0, cache=False,
                                                    per_block=False), fmt="tflite"))
    record = read_manifest(result.artifacts[0])["tuning"]
    assert record["device"]["kind"] == "adb" and record["device"]["runtime"] == "benchmark_model"
    assert "sha256:" in record["device"]["runtime_version"]
    assert record["method"]["statistic"] == "mean"
    measured = [c for c in record["candidates"] if c["status"] == "measured"]
    assert measured[0]["name"] == "default" and len(measured) >= 2
    assert all(len(c["p50_ms"]) == 2 and min(c["p50_ms"]) > 0 for c in measured)
    assert record["chosen"]["name"] in {c["name"] for c in measured}
    assert any("benchmark_model" in " ".join(call) for call in phone.calls())
    assert phone.leftovers() == []  # every working folder removed from the phone
    # The same record with another benchmark_model build: refused before anything is built.
    other = tmp_path / "other_benchmark_model"
    other.write_text(phone.binary.read_text() + "# another build\n")
    other.chmod(0o755)
    manifest = result.artifacts[0].with_name(result.artifacts[0].name + ".json")
    with pytest.raises(MicronetError, match="another device") as info:
        export(_request(tmp_path / "again", _tiny("phone", inventory=inventory, record=manifest,
                                                  benchmark_binary=other), fmt="tflite"))
    assert "\n" not in str(info.value) and _artifacts(tmp_path / "again") == []


def test_adb_tuning_refuses_onnx_and_a_phone_without_benchmark_model(tmp_path):
    from fixtures.phone import make_phone

    phone = make_phone(tmp_path)
    with pytest.raises(MicronetError, match="runs .tflite files") as info:
        export(_request(tmp_path / "out", _tiny("phone", inventory=_phone_inventory(tmp_path, phone))))
    assert "\n" not in str(info.value)
    with pytest.raises(MicronetError, match="has no benchmark_model.*--benchmark-binary") as info:
        export(_request(tmp_path / "out", _tiny("phone", inventory=_phone_inventory(tmp_path, phone, binary=False)),
                        fmt="tflite"))
    assert "\n" not in str(info.value)
    assert _artifacts(tmp_path / "out") == []


# ------------------------------------------------------------------------------------ the per-block phase

@pytest.mark.slow
def test_block_phase_ships_and_records_block_exceptions(tmp_path, monkeypatch):
    """The search logic, with a scripted clock instead of the device (real candidates, real parity, fake
    timings): whole-graph flips always lose and every block exception wins. The search must then go on to
    the block phase, keep each winning exception, ship that graph exactly, record it in ``chosen.blocks``,
    and a reused record must rebuild the same graph without measuring."""
    import onnx

    from micronet.export.tune import search
    from micronet.export.tune.measure import Timing

    built: dict[Path, object] = {}
    real_build = search.build_candidate

    def remembering_build(ctx, fmt, profile, folder):
        made = real_build(ctx, fmt, profile, folder)
        built[Path(made.path)] = profile
        return made

    def scripted_clock(target, paths, **_):
        def ms(path):
            profile = built[Path(path)]
            return (2.0 if search.changed(profile, PROFILES["portable"]) else 1.0) - 0.01 * len(profile.blocks)
        return [Timing([ms(p), ms(p)]) for p in paths], {}

    from micronet.export.fast import PROFILES

    monkeypatch.setattr(search, "build_candidate", remembering_build)
    monkeypatch.setattr(search, "time_on_device", scripted_clock)
    result = export(_request(tmp_path / "tuned", _tiny(budget_s=600.0, cache=False)))
    record = read_manifest(result.artifacts[0])["tuning"]
    phases = {c["phase"] for c in record["candidates"]}
    assert phases >= {"default", "graph", "block"}
    blocks = [c for c in record["candidates"] if c["phase"] == "block" and c["status"] == "measured"]
    assert blocks and all(c["won"] for c in blocks)
    chosen = record["chosen"]
    assert chosen["changed"] == {} and len(chosen["blocks"]) == len(blocks)
    assert all(on is False for _, _, on in chosen["blocks"])  # portable: only switched off, block by block
    assert "@" in chosen["name"] and record["final_check"]["won"]
    manifest = read_manifest(result.artifacts[0])
    assert all(r["passed"] for r in manifest["parity"])
    # The record rebuilds the same graph: node for node the same ONNX file, nothing timed.
    monkeypatch.setattr(search, "time_on_device", None)
    again = export(_request(tmp_path / "again", _tiny(record=result.artifacts[0].with_name(
        result.artifacts[0].name + ".json"))))
    first, second = (onnx.load(str(p)).graph for p in (result.artifacts[0], again.artifacts[0]))
    assert [n.op_type for n in first.node] == [n.op_type for n in second.node]
    assert read_manifest(again.artifacts[0])["tuning"]["chosen"] == chosen


def test_a_challenger_wins_round_by_round_through_drift_but_not_on_a_tie():
    """The paired rule: a device that slows down for a round slows both files of that round."""
    from micronet.export.tune.measure import Timing, beats

    incumbent = Timing([1.00, 1.60, 1.02, 1.55, 1.01])  # rounds 2 and 4 hit by another tenant
    faster = Timing([0.95, 1.52, 0.97, 1.47, 0.96])  # 5 % faster in every round
    assert beats(faster, incumbent) and not beats(incumbent, faster)
    assert max(faster.p50_ms) > min(incumbent.p50_ms)  # the earlier all-against-all rule refused it
    tie = Timing([0.99, 1.61, 1.01, 1.56, 1.00])  # faster in three rounds of five, slower in two
    assert not beats(tie, incumbent)
    with pytest.raises(ValueError, match="same rounds"):
        beats(Timing([1.0, 1.0]), incumbent)
    assert TuneRequest().rounds == 5
