"""The benchmark report: one JSON document per run, plus CSV, Markdown and console views of it.

Why one schema: reports from a laptop, CI and a phone farm get merged and plotted together, so every
number carries its unit in its name (``_ms``, ``_mib``, ``_bytes``, ``madds``) and every row echoes
the settings that produced it. The JSON is the record; CSV (one row per result, no raw samples),
Markdown (a table for PR comments) and the rich console table are views of it. Files are written
atomically (temp file in the same folder, then ``os.replace``), so a crash never leaves half a report.

JSON schema, version 1
======================

Top level::

    schema_version  int     1. Bumped on any incompatible change; readers refuse newer versions.
    kind            str     "micronet-bench-report": tells a report from any other JSON file.
    created_utc     str     ISO 8601 UTC time the report was written.
    environment     object  machine and software fingerprint (``micronet.bench.environment``):
                            timestamp_utc, hostname, os{system,release,version,machine,platform},
                            python{version,implementation,executable}, cpu{model,arch,logical_cores,
                            physical_cores,governor,cur_mhz,min_mhz,max_mhz,load_avg_1m/5m/15m},
                            memory_total_mib, libraries{torch,onnxruntime,ai-edge-litert,
                            tflite-runtime,tensorflow,numpy,micronet}, micronet_git{sha,dirty}|null,
                            threads{requested,env,cpu_affinity}. Unknown values are null.
    warnings        list[str]  conditions that make the numbers noisy (busy machine, more threads
                            than CPUs, a non-"performance" frequency governor); empty when none.
    settings        object  the run's options: warmup, runs, min_seconds, threads (list),
                            runtimes (list), xnnpack (list of bools tried on TFLite), memory (bool),
                            memory_inferences, data (path or null), limit, batch, end_to_end (bool),
                            seed (of the synthetic N(0,1) input that latency and memory are timed on).
    results         list    one row per (model, runtime, threads, xnnpack) combination, below.

Result row::

    model           str     the model file as given, or "torch:<name>" for an in-memory module.
    name            str     display name: the file name, or the module's name/variant.
    variant         str|null   MicroNet variant (from the manifest or the target), if known.
    format          str     "torch" | "onnx" | "tflite".
    quantize        str|null   "float32" | "float16" | "dynamic" | "int8" (manifest), null if unknown.
    runtime         str     "torch" | "onnxruntime" | "litert" | "tflite-runtime" | "tf-lite".
    runtime_version str|null   installed version of the runtime's package.
    threads         int     intra-op threads given to the runtime.
    xnnpack         bool|null  TFLite only: XNNPACK delegate requested (true = the runtime default).
    xnnpack_applied bool|null  TFLite only: a delegate node was found in the loaded graph.
    xnnpack_coverage object|null  TFLite only (``micronet.inference.delegate_coverage``): ops (the model's
                            nodes), xnnpack_ops (taken by XNNPACK), partitions, not_delegated {op: count}.
                            An int8 row whose XNNPACK took no op ran on TFLite's built-in kernels
                            (tflite-runtime 2.14 does that): the report warns (``builtin_kernel_warnings``).
    device          str     "local" (this machine); device farms write their own name.
    input           object|null  the fed tensor: name, shape (null = dynamic axis), dtype, layout
                            ("NCHW"|"NHWC"), quantization {scale, zero_point}|null.
    madds           int|null   multiply-adds per image (micronet's counting rule), from the manifest
                            or counted for a MicroNet module.
    params          int|null   trainable parameters.
    size_bytes      int|null   model file size in bytes (null for an in-memory torch module).
    size_mib        float|null the same in MiB (2**20 bytes).
    init_ms         float|null load time in ms: parse + session/interpreter creation + allocation,
                            library import excluded.
    first_ms        float|null the first inference after load, in ms, timed on its own.
    latency         object|null  steady-state latency of ``run`` only (``micronet.bench.latency``):
                            warmup, runs_requested, min_seconds, count (samples), min_ms, mean_ms,
                            std_ms (sample std), p50_ms, p90_ms, p99_ms, max_ms, measured_s (wall
                            time of the measured phase, s), stopped_by ("runs"|"min_seconds"|
                            "max_runs"), samples_ms (every sample, ms, in order), end_to_end (same
                            statistics for preprocess + prepare + run + dequantize, or null).
    memory          object|null  fresh-process RSS (``micronet.bench.memory``): baseline_rss_mib,
                            after_import_rss_mib, after_load_rss_mib, peak_rss_mib, model_mib
                            (peak − after import), inferences.
    accuracy        object|null  (``micronet.bench.accuracy``): top1, top5 (percent), count; a pose or
                                 segmentation model's (``micronet.bench.tasks``): task, metric, unit, and
                                 miou, pixel_accuracy, per_class_iou or ap, ap50, ap75, apm, apl (points)
                            (images scored), skipped (files left out), skipped_examples (first
                            few "path: reason"), classes, limit, batch.
    settings        object  everything the runtime echoed about itself (threads, execution mode,
                            op resolver, providers, ...).
    notes           list[str]  non-fatal remarks (e.g. why memory was not measured).
    invalid         bool    true when this combination could not be measured.
    invalid_reason  str|null   the one-line reason.

``merge_reports`` adds ``source`` {path, hostname, cpu_model, timestamp_utc} to each row it returns
so rows from different machines stay distinguishable (a row that already has one, from a merged
report, keeps it). ``merged_report`` wraps them in a report of the same schema whose
``environment`` is empty, whose ``merged_from`` lists those sources, and whose ``warnings`` are
every source's warnings prefixed with the source they came from.
"""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from micronet.errors import MicronetError
from .tasks import headline, metric_of

from .labels import (LABEL_DIMENSIONS, distinguishing_parts, input_pixels, label_values, model_name,  # noqa: F401
                     precision_label, row_labels)
from micronet.inference import ROW_FIELDS  # the row schema, shared with the on-device runner

SCHEMA_VERSION = 1
KIND = "micronet-bench-report"

_REQUIRED = ("model", "name", "format", "runtime", "threads")

# CSV: (column, path into the row). Scalars only; the raw samples stay in the JSON.
CSV_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("model", ("model",)), ("name", ("name",)), ("variant", ("variant",)), ("format", ("format",)),
    ("quantize", ("quantize",)), ("runtime", ("runtime",)), ("runtime_version", ("runtime_version",)),
    ("threads", ("threads",)), ("xnnpack", ("xnnpack",)), ("xnnpack_applied", ("xnnpack_applied",)),
    ("xnnpack_ops", ("xnnpack_coverage", "xnnpack_ops")), ("ops", ("xnnpack_coverage", "ops")),
    ("device", ("device",)), ("input_layout", ("input", "layout")), ("input_dtype", ("input", "dtype")),
    ("madds", ("madds",)), ("params", ("params",)), ("size_bytes", ("size_bytes",)), ("size_mib", ("size_mib",)),
    ("init_ms", ("init_ms",)), ("first_ms", ("first_ms",)), ("warmup", ("latency", "warmup")),
    ("runs", ("latency", "count")), ("measured_s", ("latency", "measured_s")),
    ("min_ms", ("latency", "min_ms")), ("mean_ms", ("latency", "mean_ms")), ("std_ms", ("latency", "std_ms")),
    ("p50_ms", ("latency", "p50_ms")), ("p90_ms", ("latency", "p90_ms")), ("p99_ms", ("latency", "p99_ms")),
    ("max_ms", ("latency", "max_ms")), ("e2e_p50_ms", ("latency", "end_to_end", "p50_ms")),
    ("e2e_p90_ms", ("latency", "end_to_end", "p90_ms")),
    ("baseline_rss_mib", ("memory", "baseline_rss_mib")), ("after_load_rss_mib", ("memory", "after_load_rss_mib")),
    ("peak_rss_mib", ("memory", "peak_rss_mib")), ("model_mib", ("memory", "model_mib")),
    ("top1", ("accuracy", "top1")), ("top5", ("accuracy", "top5")), ("accuracy_count", ("accuracy", "count")),
    ("accuracy_skipped", ("accuracy", "skipped")), ("miou", ("accuracy", "miou")),
    ("pixel_accuracy", ("accuracy", "pixel_accuracy")), ("ap", ("accuracy", "ap")), ("ap50", ("accuracy", "ap50")),
    ("ap75", ("accuracy", "ap75")), ("apm", ("accuracy", "apm")), ("apl", ("accuracy", "apl")),
    ("invalid", ("invalid",)), ("invalid_reason", ("invalid_reason",)),
    ("source", ("source", "path")), ("hostname", ("source", "hostname")),
)


# ------------------------------------------------------------------------------------------ building


def make_row(**fields: Any) -> dict[str, Any]:
    """A result row with every schema field present (missing ones null), in schema order."""
    unknown = set(fields) - set(ROW_FIELDS) - {"source"}
    if unknown:
        raise ValueError(f"unknown report row fields: {sorted(unknown)}")  # a harness bug, not a user error
    missing = [key for key in _REQUIRED if fields.get(key) is None]
    if missing:
        raise ValueError(f"report row lacks {missing}")
    row = {key: fields.get(key) for key in ROW_FIELDS}
    row["device"] = row["device"] or "local"
    row["notes"] = list(row["notes"] or [])
    row["settings"] = dict(row["settings"] or {})
    row["invalid"] = bool(row["invalid"])
    if "source" in fields:
        row["source"] = fields["source"]
    return row


def make_report(environment: dict[str, Any], settings: dict[str, Any], results: list[dict[str, Any]],
                warnings: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": environment,
        "warnings": list(warnings),
        "settings": settings,
        "results": results,
    }


def rows_of(report_or_rows: dict[str, Any] | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Writers take a whole report or a list of rows (e.g. from ``merge_reports``)."""
    if isinstance(report_or_rows, dict):
        return list(report_or_rows.get("results") or [])
    return list(report_or_rows)


# ------------------------------------------------------------------------------------------ reading


def read_report(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check one report; anything that is not a micronet report of a known version is an error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MicronetError(f"report not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MicronetError(f"cannot read report {path}: {exc}") from None
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MicronetError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}): corrupt report?") from None
    if not isinstance(report, dict) or report.get("kind") != KIND or "schema_version" not in report:
        raise MicronetError(f"{path} is not a micronet benchmark report")
    version = report["schema_version"]
    if not isinstance(version, int) or version < 1:
        raise MicronetError(f"{path} has an invalid schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise MicronetError(f"{path} has report schema {version}, newer than this micronet reads ({SCHEMA_VERSION}): upgrade micronet")
    results = report.get("results")
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise MicronetError(f"{path} has no list of results: corrupt report?")
    return report


def _source(path: str | os.PathLike, report: dict[str, Any]) -> dict[str, Any]:
    env = report.get("environment") or {}
    return {
        "path": str(path),
        "hostname": env.get("hostname"),
        "cpu_model": (env.get("cpu") or {}).get("model"),
        "timestamp_utc": env.get("timestamp_utc") or report.get("created_utc"),
    }


def source_name(source: dict[str, Any]) -> str:
    """"path (hostname)": how a merged table or warning names the run a row came from."""
    return str(source.get("path")) + (f" ({source['hostname']})" if source.get("hostname") else "")


def merged_report(paths: Iterable[str | os.PathLike]) -> dict[str, Any]:
    """Several reports as one: every row tagged with its ``source``, every warning with its source's name.

    Why warnings travel: a "machine busy" on one source explains its noisy rows in the merged table too.
    """
    paths = list(paths)
    if not paths:
        raise MicronetError("no reports to merge")
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    sources = []
    for path in paths:
        report = read_report(path)
        source = _source(path, report)
        sources.append(source)
        rows.extend({**row, "source": row.get("source") or source} for row in report["results"])
        warnings.extend(f"{source_name(source)}: {line}" for line in report.get("warnings") or [])
    merged = make_report({}, {}, rows, warnings)
    merged["merged_from"] = sources
    return merged


def merge_reports(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """All result rows of several reports, each tagged with ``source`` (path, hostname, CPU, time)."""
    return merged_report(paths)["results"]


# ------------------------------------------------------------------------------------------ writing


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` so readers see the old file or the new one, never half of one."""
    from micronet.atomic import replacing

    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
    return Path(path)


def write_json(report: dict[str, Any], path: str | os.PathLike) -> Path:
    # allow_nan=False: NaN is not JSON and other tools choke on it; a NaN here is a bug to see early.
    return atomic_write_text(path, json.dumps(report, indent=2, allow_nan=False) + "\n")


def _get(row: dict[str, Any], keys: tuple[str, ...]) -> Any:
    value: Any = row
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def csv_text(report_or_rows: dict[str, Any] | Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([name for name, _ in CSV_COLUMNS])
    for row in rows_of(report_or_rows):
        writer.writerow(["" if (v := _get(row, keys)) is None else v for _, keys in CSV_COLUMNS])
    return buffer.getvalue()


def write_csv(report_or_rows: dict[str, Any] | Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """One line per result row, scalar columns only (``CSV_COLUMNS``); raw samples stay in the JSON."""
    return atomic_write_text(path, csv_text(report_or_rows))


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _madds(value: Any) -> str:
    return "—" if value is None else f"{value / 1e6:.2f}M"


def _xnnpack(row: dict[str, Any]) -> str:
    if row.get("xnnpack") is None:
        return "—"
    state = "on" if row["xnnpack"] else "off"
    if row.get("xnnpack_applied") is not None and row["xnnpack_applied"] != row["xnnpack"]:
        state += " (not applied)" if row["xnnpack"] else " (applied!)"
    coverage = row.get("xnnpack_coverage")
    if row["xnnpack"] and coverage:
        state += f" ({coverage['xnnpack_ops']}/{coverage['ops']} ops)"
    return state


def on_builtin_kernels(row: dict[str, Any]) -> bool:
    """An int8 TFLite row measured with XNNPACK asked for, of which XNNPACK took no op: it ran on TFLite's
    built-in kernels (tflite-runtime 2.14 delegates no int8 op), so its latency is not XNNPACK's."""
    if row.get("format") != "tflite" or row.get("quantize") != "int8" or not row.get("xnnpack") or row.get("invalid"):
        return False
    coverage = row.get("xnnpack_coverage")
    return (coverage["xnnpack_ops"] == 0) if coverage else row.get("xnnpack_applied") is False


def builtin_kernel_warnings(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One report warning per int8 row that ran on the built-in kernels (``on_builtin_kernels``)."""
    lines = []
    for row in rows:
        if on_builtin_kernels(row):
            version = f" {row['runtime_version']}" if row.get("runtime_version") else ""
            where = f" on {row['device']}" if (row.get("device") or "local") != "local" else ""
            lines.append(f"{row.get('name')} (int8) ran on TFLite's built-in kernels in {row.get('runtime')}{version}"
                         f"{where}: XNNPACK took none of its ops, so it is much slower than in LiteRT "
                         "(ai-edge-litert), where XNNPACK runs int8; do not read it as int8's speed")
    return lines


def _status(row: dict[str, Any]) -> str:
    return f"invalid: {row.get('invalid_reason') or 'unknown'}" if row.get("invalid") else "ok"


class NothingMeasured(MicronetError):
    """Every row of a benchmark is invalid: the report (written) says why; the exit status must say it too."""

    exit_code = 1


def raise_if_nothing_measured(report_or_rows: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
    """Raise ``NothingMeasured`` when no row holds a measurement, with the first reason on its one line."""
    rows = rows_of(report_or_rows)
    if not rows:
        raise NothingMeasured("nothing was measured: the benchmark produced no results")
    bad = [r for r in rows if r.get("invalid")]
    if len(bad) == len(rows):
        raise NothingMeasured(f"nothing was measured: all {len(rows)} result(s) are invalid (the report above lists "
                              f"why), e.g. {bad[0].get('name')} · {bad[0].get('runtime')}: "
                              f"{bad[0].get('invalid_reason') or 'unknown'}")


# ------------------------------------------------------------------------------------------ tables

SUMMARY_COLUMNS = ("model", "device", "format", "quantize", "runtime", "threads", "XNNPACK", "MAdds", "p50 ms", "p90 ms",
                   "init ms", "first ms", "peak RSS MiB", "size MiB", "top-1 %", "status")
#: Dimensions the Markdown table has columns for; the model cell adds whatever else tells rows apart.
_SUMMARY_SHOWN = ("engine", "runtime", "threads", "xnnpack", "file")


def _model_cell(row: dict[str, Any], extra: Sequence[str]) -> str:
    return " · ".join([str(row.get("name") or row.get("model")), *extra])


def accuracy_header(rows: Sequence[dict[str, Any]], console: bool = False) -> str:
    """The accuracy column's title: the metric every scored row shares ("top-1 %", "mIoU", "AP"), else
    "accuracy" (the cells then mix metrics; the JSON and CSV name each)."""
    metrics = {metric_of(r.get("accuracy")) for r in rows if r.get("accuracy")}
    if not metrics:
        metrics = {metric_of(None)}
    if len(metrics) > 1:
        return "accuracy"
    metric = metrics.pop()
    return metric.name if console or metric.unit != "%" else f"{metric.name} {metric.unit}"


def _columns(columns: Sequence[str], rows: Sequence[dict[str, Any]], console: bool) -> list[str]:
    accuracy = "top-1" if console else "top-1 %"
    return [accuracy_header(rows, console) if c == accuracy else c for c in columns]


def summary_cells(row: dict[str, Any], extra: Sequence[str] = ()) -> list[str]:
    """The cells of the Markdown table, in ``SUMMARY_COLUMNS`` order; ``extra`` joins the model cell."""
    lat, mem, acc = row.get("latency") or {}, row.get("memory") or {}, row.get("accuracy") or {}
    return [
        _model_cell(row, extra), str(row.get("device") or "local"), str(row.get("format") or "—"),
        str(row.get("quantize") or "—"),
        str(row.get("runtime")), str(row.get("threads")), _xnnpack(row), _madds(row.get("madds")),
        _num(lat.get("p50_ms"), 3), _num(lat.get("p90_ms"), 3), _num(row.get("init_ms"), 1),
        _num(row.get("first_ms"), 3), _num(mem.get("peak_rss_mib"), 1), _num(row.get("size_mib"), 3),
        _num(headline(acc), 2), _status(row),
    ]


def _machine_line(report: dict[str, Any]) -> str:
    if report.get("merged_from") is not None:
        sources = report["merged_from"]
        return f"merged from {len(sources)} report(s): " + "; ".join(
            source_name(s) + (f", {s['cpu_model']}" if s.get("cpu_model") else "") for s in sources)
    env = report.get("environment") or {}
    cpu = env.get("cpu") or {}
    libs = env.get("libraries") or {}
    parts = [
        f"{cpu.get('model') or 'unknown CPU'} ({cpu.get('logical_cores') or '?'} logical cores)",
        f"{(env.get('os') or {}).get('system') or '?'} {(env.get('os') or {}).get('release') or ''}".strip(),
        f"Python {(env.get('python') or {}).get('version') or '?'}",
        f"micronet {libs.get('micronet') or '?'}"
        + (f" @ {env['micronet_git']['sha'][:10]}" if env.get("micronet_git") else ""),
        env.get("timestamp_utc") or report.get("created_utc") or "",
    ]
    return " · ".join(p for p in parts if p)


def markdown_text(report_or_rows: dict[str, Any] | Sequence[dict[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table (for PR comments): latency of ``run`` in ms, memory in MiB."""
    lines = []
    if isinstance(report_or_rows, dict):
        lines += [f"**MicroNet benchmark** · {_machine_line(report_or_rows)}", ""]
        lines += [f"> ⚠️ {w}" for w in report_or_rows.get("warnings") or []]
        if report_or_rows.get("warnings"):
            lines.append("")
    rows = rows_of(report_or_rows)
    columns = _columns(SUMMARY_COLUMNS, rows, console=False)
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" if c in ("model", "format", "quantize", "runtime", "XNNPACK", "status")
                                 else "---:" for c in columns) + "|")
    for row, extra in zip(rows, distinguishing_parts(rows, _SUMMARY_SHOWN)):
        cells = [c.replace("|", "\\|") for c in summary_cells(row, extra)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "p50/p90: latency of the inference call alone (no preprocessing), ms. "
              "Peak RSS: fresh process, MiB. Size: model file, MiB."]
    return "\n".join(lines) + "\n"


def write_markdown(report_or_rows: dict[str, Any] | Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    return atomic_write_text(path, markdown_text(report_or_rows))


CONSOLE_COLUMNS = ("model", "runtime", "MAdds", "p50", "p90", "init", "first", "RSS", "size", "top-1", "status")
#: Left out, in this order, when the table does not fit the terminal: never model, runtime, p50, top-1, status.
CONSOLE_DROP_ORDER = ("first", "init", "size", "RSS", "MAdds", "p90")
CONSOLE_TITLE = ("MicroNet benchmark · ms: p50/p90 of the inference call, init (load), first inference · "
                 "MiB: peak RSS (fresh process), file size · top-1 in % · ×N = threads")
#: Dimensions the console table shows in its runtime cell (and, via quantization, its model cell).
_CONSOLE_SHOWN = ("engine", "runtime", "threads", "xnnpack", "file")


def console_cells(row: dict[str, Any], invalid_index: int | None = None, extra: Sequence[str] = ()) -> list[str]:
    """The Markdown table folded to fit a terminal: quantization joins the model, threads/XNNPACK the
    runtime, and an invalid row points to its footnote instead of carrying its reason inline.
    ``extra``: what else tells this row from the others (input size, machine), joined to the model."""
    lat, mem, acc = row.get("latency") or {}, row.get("memory") or {}, row.get("accuracy") or {}
    name = str(row.get("name") or row.get("model"))
    quant = row.get("quantize")
    model = name + (f" ({quant})" if quant and quant not in name and row.get("format") != "torch" else "")
    model = " · ".join([model, *extra])
    runtime = f"{row.get('runtime')} ×{row.get('threads')}" + (" no XNNPACK" if row.get("xnnpack") is False else "")
    if (row.get("device") or "local") != "local" and f"@ {row['device']}" not in extra:
        runtime += f" @ {row['device']}"  # merged runs from several devices must stay apart on screen
    status = f"invalid [{invalid_index}]" if row.get("invalid") else "ok"
    return [model, runtime, _madds(row.get("madds")), _num(lat.get("p50_ms")), _num(lat.get("p90_ms")),
            _num(row.get("init_ms"), 1), _num(row.get("first_ms")), _num(mem.get("peak_rss_mib"), 1),
            _num(row.get("size_mib")), _num(headline(acc), 1), status]


#: Console columns that hold text and may wrap at spaces; every other column is a number and never wraps.
_CONSOLE_WRAPABLE = ("model", "runtime", "status")


def console_table(report_or_rows: dict[str, Any] | Sequence[dict[str, Any]], width: int | None = None) -> Any:
    """A ``rich.table.Table`` of the Markdown table's numbers, narrower; invalid rows in red.

    ``width``: the cells it must fit in (``micronet.console.fit_table``: numbers are never cut, the
    least important columns are left out, ``CONSOLE_DROP_ORDER``, until it fits); ``table.dropped``
    names them. None: every column, natural widths.
    """
    from rich import box
    from rich.table import Table

    from micronet.console import fit_table

    rows = rows_of(report_or_rows)
    caption = _machine_line(report_or_rows) if isinstance(report_or_rows, dict) else None
    header = accuracy_header(rows, console=True)
    title = CONSOLE_TITLE if header == "top-1" else CONSOLE_TITLE.replace("top-1 in %", f"{header} in points")
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False)
    for column in _columns(CONSOLE_COLUMNS, rows, console=True):
        if column in _CONSOLE_WRAPABLE:
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, justify="right", no_wrap=True)
    invalid = 0
    for row, extra in zip(rows, distinguishing_parts(rows, _CONSOLE_SHOWN)):
        invalid += bool(row.get("invalid"))
        table.add_row(*console_cells(row, invalid, extra), style="red" if row.get("invalid") else None)
    if width is not None:
        fit_table(table, width, CONSOLE_DROP_ORDER)
    kept = {str(column.header) for column in table.columns}
    table.dropped = [column for column in CONSOLE_DROP_ORDER if column not in kept]
    return table


def invalid_footnotes(report_or_rows: dict[str, Any] | Sequence[dict[str, Any]]) -> list[str]:
    """"[n] model · runtime: reason" for each invalid row, numbered as in the console table."""
    bad = [r for r in rows_of(report_or_rows) if r.get("invalid")]
    return [f"[{i}] {r.get('name')} · {r.get('runtime')} ×{r.get('threads')}: {r.get('invalid_reason') or 'unknown'}"
            for i, r in enumerate(bad, 1)]


def print_report(report_or_rows: dict[str, Any] | Sequence[dict[str, Any]], console: Any = None) -> None:
    """The console table, invalid rows' reasons and the warnings.

    In a terminal the table fits its width (less important columns left out, and said so); anywhere
    else (a pipe, a log, CI) it is printed whole at its natural width, since nothing there wraps it.
    """
    from rich.console import Console

    from micronet.console import print_table

    console = console or Console()
    table = console_table(report_or_rows)
    print_table(table, CONSOLE_DROP_ORDER, console)
    kept = {str(column.header) for column in table.columns}
    table.dropped = [column for column in CONSOLE_DROP_ORDER if column not in kept]
    whole = not console.is_terminal  # a log keeps each line whole; a terminal gets them wrapped at spaces
    if table.dropped:
        console.print(f"left out to fit {console.width} columns: {', '.join(table.dropped)} "
                      "(the JSON, CSV and Markdown files have every column)", markup=False, highlight=False,
                      soft_wrap=whole)
    for line in invalid_footnotes(report_or_rows):
        console.print(line, style="red", markup=False, highlight=False, soft_wrap=whole)
    if isinstance(report_or_rows, dict):
        for line in report_or_rows.get("warnings") or []:
            console.print(f"warning: {line}", style="yellow", markup=False, highlight=False, soft_wrap=whole)


def write_all(report_or_rows: dict[str, Any] | Sequence[dict[str, Any]], out_dir: str | os.PathLike,
              stem: str | None = None) -> list[Path]:
    """The JSON (for a full report), CSV and Markdown files of one run, named by its UTC time."""
    import time

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or time.strftime("bench-%Y%m%d-%H%M%S", time.gmtime())
    paths = []
    if isinstance(report_or_rows, dict):
        paths.append(write_json(report_or_rows, out / f"{stem}.json"))
    paths.append(write_csv(report_or_rows, out / f"{stem}.csv"))
    paths.append(write_markdown(report_or_rows, out / f"{stem}.md"))
    return paths
