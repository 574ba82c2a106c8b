"""How much of a TFLite graph XNNPACK took (``delegate_coverage``), its report columns, and the warning when
an int8 model ran on TFLite's built-in kernels (tflite-runtime 2.14 delegates no int8 op). Fast: synthetic
node lists and rows."""

from __future__ import annotations

import csv
import io

from micronet.bench import report as rep
from micronet.inference import ROW_FIELDS, delegate_coverage


def _op(index: int, name: str, inputs: list[int], outputs: list[int]) -> dict:
    return {"index": index, "op_name": name, "inputs": inputs, "outputs": outputs}


def test_coverage_counts_the_ops_between_a_delegate_nodes_inputs_and_outputs():
    # 0: CONV(t0)->t1, 1: MAXIMUM(t1)->t2 (left to the built-in kernels), 2: ADD(t2)->t3, 3: MEAN(t3)->t4;
    # the delegate took CONV, and ADD + MEAN as a second partition.
    ops = [_op(0, "CONV_2D", [0, 10, -1], [1]), _op(1, "MAXIMUM", [1, 11], [2]), _op(2, "ADD", [2, 12], [3]),
           _op(3, "MEAN", [3, 13], [4]), _op(4, "DELEGATE", [0, 10], [1]), _op(5, "DELEGATE", [2, 12, 13], [4])]
    assert delegate_coverage(ops) == {"ops": 4, "xnnpack_ops": 3, "partitions": 2, "not_delegated": {"MAXIMUM": 1}}


def test_no_delegate_node_means_every_op_ran_on_the_built_in_kernels():
    ops = [_op(0, "CONV_2D", [0], [1]), _op(1, "ADD", [1], [2])]
    assert delegate_coverage(ops) == {"ops": 2, "xnnpack_ops": 0, "partitions": 0,
                                      "not_delegated": {"ADD": 1, "CONV_2D": 1}}


def _row(quantize: str, xnnpack_ops: int, **fields) -> dict:
    coverage = {"ops": 266, "xnnpack_ops": xnnpack_ops, "partitions": int(xnnpack_ops > 0), "not_delegated": {}}
    base = dict(model=f"m0.{quantize}.tflite", name=f"m0.{quantize}.tflite", format="tflite", quantize=quantize,
                runtime="tflite-runtime", runtime_version="2.14.0", threads=1, xnnpack=True,
                xnnpack_applied=xnnpack_ops > 0, xnnpack_coverage=coverage)
    return rep.make_row(**{**base, **fields})


def test_the_row_schema_has_the_coverage_and_the_csv_its_counts():
    assert ROW_FIELDS.index("xnnpack_coverage") == ROW_FIELDS.index("xnnpack_applied") + 1
    rows = list(csv.DictReader(io.StringIO(rep.csv_text([_row("int8", 0), _row("float32", 250)]))))
    assert [(r["xnnpack_ops"], r["ops"]) for r in rows] == [("0", "266"), ("250", "266")]
    assert "on (not applied) (0/266 ops)" in rep.markdown_text([_row("int8", 0)])


def test_only_int8_on_the_built_in_kernels_is_warned_about():
    rows = [_row("int8", 0), _row("int8", 243, runtime="litert", runtime_version="2.1.0"), _row("float32", 0),
            _row("int8", 0, xnnpack=False, xnnpack_applied=False), _row("int8", 0, invalid=True, invalid_reason="x"),
            _row("int8", 0, device="pi4")]
    warnings = rep.builtin_kernel_warnings(rows)
    assert len(warnings) == 2 and all("ran on TFLite's built-in kernels in tflite-runtime 2.14.0" in w for w in warnings)
    assert "on pi4" in warnings[1]
    # Without a coverage count (an older runner), no delegate node says the same.
    legacy = _row("int8", 0, xnnpack_coverage=None)
    assert rep.on_builtin_kernels(legacy) and not rep.on_builtin_kernels(_row("int8", 5, xnnpack_coverage=None))


def test_the_warning_reaches_the_markdown_and_the_console():
    report = rep.make_report({}, {}, [_row("int8", 0)], rep.builtin_kernel_warnings([_row("int8", 0)]))
    assert "> ⚠️ m0.int8.tflite (int8) ran on TFLite's built-in kernels" in rep.markdown_text(report)
    from rich.console import Console

    out = Console(file=io.StringIO(), width=300)
    rep.print_report(report, out)
    assert "warning: m0.int8.tflite (int8) ran on TFLite's built-in kernels" in out.file.getvalue()
