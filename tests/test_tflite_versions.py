"""The minimum TFLite runtime of a file: the op-version table, the manifest sentence, the export summary's column
and warning. Fast: no converter, no interpreter (tests/test_tflite_compat.py checks the claims in a real
tflite-runtime 2.14.0)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from micronet.console import export_summary, export_warnings
from micronet.export import tflite_versions as tv

#: The op versions of the fast graph's int8 file and of the reference graph's dynamic-range file (m0 224).
FAST_INT8 = {"ADD": 2, "CONCATENATION": 2, "CONV_2D": 6, "DEPTHWISE_CONV_2D": 3, "HARD_SWISH": 1, "MEAN": 2,
             "MUL": 3, "PAD": 2, "RESHAPE": 1, "SPLIT": 2, "STRIDED_SLICE": 2, "SUB": 2, "TRANSPOSE": 2}
REFERENCE_DYNAMIC = {"ADD": 1, "CONV_2D": 6, "FULLY_CONNECTED": 12, "RESHAPE": 1}


def test_the_table_matches_tensorflows_for_the_versions_that_decide():
    assert tv.OP_MIN_RUNTIME[("FULLY_CONNECTED", 12)] == "2.17.0"
    assert tv.OP_MIN_RUNTIME[("FULLY_CONNECTED", 11)] == "2.15.0"
    assert tv.OP_MIN_RUNTIME[("CONV_2D", 6)] == "2.9.0"
    assert tv.OP_MIN_RUNTIME[("STRIDED_SLICE", 8)] == "2.14.0"
    for (op, version), runtime in tv.OP_MIN_RUNTIME.items():  # a version never needs an older runtime
        if (op, version - 1) in tv.OP_MIN_RUNTIME:
            assert tv.version_key(runtime) >= tv.version_key(tv.OP_MIN_RUNTIME[(op, version - 1)]), (op, version)


def test_versions_compare_as_numbers():
    assert tv.version_key("2.17.0") > tv.version_key("2.9.0")
    assert not tv.needs_newer_than("2.14.0")
    assert tv.needs_newer_than("2.17.0") and not tv.needs_newer_than("2.9.0") and not tv.needs_newer_than(None)
    with pytest.raises(ValueError, match="not a runtime version"):
        tv.version_key("2.x")


def test_the_newest_op_version_decides_and_is_named():
    found = tv.min_runtime_version(REFERENCE_DYNAMIC)
    assert found == {"min_runtime_version": "2.17.0", "needed_by": ["FULLY_CONNECTED v12"], "unknown": []}
    sentence = tv.runtime_requirement(found)
    assert "2.17.0" in sentence and "FULLY_CONNECTED v12" in sentence and "does not load in tflite-runtime 2.14.0" in sentence
    fast = tv.min_runtime_version(FAST_INT8)
    assert fast["min_runtime_version"] == "2.9.0" and "including tflite-runtime 2.14.0" in tv.runtime_requirement(fast)


def test_an_op_version_missing_from_the_table_is_reported_not_guessed():
    found = tv.min_runtime_version({"CONV_2D": 6, "FULLY_CONNECTED": 99, "NEW_OP": 1})
    assert found["min_runtime_version"] == "2.9.0" and found["unknown"] == ["FULLY_CONNECTED v99", "NEW_OP v1"]
    assert "not in micronet's table: FULLY_CONNECTED v99, NEW_OP v1" in tv.runtime_requirement(found)
    nothing = tv.min_runtime_version({"NEW_OP": 1})
    assert nothing["min_runtime_version"] is None and "unknown" in tv.runtime_requirement(nothing)


def _result(tmp_path, minimums: dict[str, str | None]):
    artifacts, manifests = [], []
    for name, minimum in minimums.items():
        path = tmp_path / name
        path.write_bytes(b"x")
        found = {"min_runtime_version": minimum, "needed_by": ["FULLY_CONNECTED v12"] if minimum else [],
                 "unknown": []}
        manifest = {"format": "tflite", "quantize": "dynamic", "size_bytes": 1, "ops": {"total": 3},
                    "input": {"layout": "NHWC", "dtype": "float32", "quantization": None},
                    "min_runtime_version": minimum, "runtime_requirement": tv.runtime_requirement(found)}
        (tmp_path / f"{name}.json").write_text(json.dumps(manifest))
        artifacts.append(path)
        manifests.append(tmp_path / f"{name}.json")
    return SimpleNamespace(artifacts=artifacts, manifests=manifests)


def test_the_summary_has_a_runtime_column_and_warns_only_for_files_the_pi_runtime_refuses(tmp_path):
    from rich.console import Console

    result = _result(tmp_path, {"a.dynamic.tflite": "2.17.0", "b.int8.tflite": "2.9.0"})
    out = Console(width=200, record=True)
    out.print(export_summary(result))
    text = out.export_text()
    assert "runtime" in text and "TFLite ≥ 2.17.0" in text and "TFLite ≥ 2.9.0" in text
    warnings = export_warnings(result)
    assert len(warnings) == 1 and warnings[0].startswith("a.dynamic.tflite needs TFLite runtime 2.17.0 or newer")
    assert "does not load in tflite-runtime 2.14.0" in warnings[0]
