"""The ``micronet`` command: parses arguments and calls library functions, nothing more.

Every command has a Python twin that the tests call directly. Mistakes a user can make surface as
``MicronetError`` and become one line on stderr with exit code 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from typer._click import ClickException  # typer 0.29 vendors click: its usage errors derive from this

from micronet.errors import MicronetError

app = typer.Typer(
    help="MicroNet for the edge: build, count, export and benchmark the MicroNet image classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
budget_app = typer.Typer(help="FLOP/parameter budgets (the CI gate).", no_args_is_help=True)
app.add_typer(budget_app, name="budget")
datasets_app = typer.Typer(help="Write small real data sets to disk (offline) for training checks.",
                           no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
devices_app = typer.Typer(help="Benchmark targets: this machine, Linux boards over SSH, Android phones over adb.",
                          no_args_is_help=True)
app.add_typer(devices_app, name="devices")


@app.callback()
def root(verbose: bool = typer.Option(False, "--verbose", help="show TensorFlow's own log lines (hidden by default)")
         ) -> None:
    """MicroNet for the edge: build, count, export and benchmark the MicroNet image classifiers."""
    from micronet.quiet import quiet_tensorflow_environment, set_verbose

    set_verbose(verbose)
    quiet_tensorflow_environment()  # before any command imports TensorFlow

VariantOpt = typer.Option("m0", "--variant", "-v", help="m0 m1 m2 m3 release-m0 release-m3 (aliases release-m1, release-m2)")
AnyVariantOpt = typer.Option("m0", "--variant", "-v", help="m0 m1 m2 m3 release-m0 release-m3 (aliases release-m1, "
                             "release-m2); keypoint models pose-m0 pose-m1 pose-m2 pose-m3; segmentation models "
                             "seg-m0 seg-m1 seg-m2 seg-m3")
InputSizeOpt = typer.Option(224, "--input-size", help="input resolution in pixels, a multiple of 32")
DEFAULT_BUDGETS = Path("budgets.toml")


def flag(name: str, help: str):
    """A switch that takes no value. typer labels every bool option ``<bool>`` in --help, which reads
    as if it took true/false (and ``--no-flip true`` is then refused); no metavar shows it as a flag."""
    return typer.Option(False, name, metavar="", help=help)


@app.command()
def variants(as_json: bool = flag("--json", help="machine-readable output")) -> None:
    """List the variants with their exact params/MAdds beside the published figures and released weights."""
    from micronet.registry import variant_rows

    rows = variant_rows()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from micronet.console import VARIANTS_DROP, print_table, variants_table

    print_table(variants_table(rows), drop=VARIANTS_DROP)


@app.command()
def flops(
    variant: str = AnyVariantOpt,
    input_size: Optional[str] = typer.Option(None, "--input-size", help="pixels (224) or H x W (256x192), multiples "
                                             "of 32; default: the variant's own (224; 256x192 for pose-*; "
                                             "1024x2048 for seg-*)"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="classes, or heatmaps for pose-* "
                                              "(default 1000; 17; 19 for seg-*)"),
    per_layer: bool = flag("--per-layer", help="one row per conv/Linear/Shift-Max/BN layer"),
    as_json: bool = flag("--json", help="print the full table as JSON"),
) -> None:
    """MAdds and parameters per stage (or per layer), cross-checked against torch's FlopCounterMode."""
    from micronet.counting import count_variant, cross_check, parse_input_size
    from micronet.registry import resolve_variant

    info = resolve_variant(variant, task=None)
    name = info.name
    size = None if input_size is None else parse_input_size(input_size)
    counts = count_variant(name, input_size=size, num_classes=num_classes)
    check = cross_check(name, input_size=size, num_classes=num_classes)
    if as_json:
        data = counts.to_dict()
        data["other_conventions"] = check
        if info.task == "pose":  # the paper's Table 8 figures, as printed, beside ours
            data["paper"] = {"madds": info.paper_madds, "params": info.paper_params, "ap": info.paper_ap}
        if info.task == "segmentation":  # the paper's Table 9 figures, as printed, beside ours
            data["paper"] = {"madds": info.paper_madds, "params": info.paper_params, "miou": info.paper_miou,
                             "input_size": list(info.input_size),
                             "lr_aspp_mobilenetv3_small": {"madds": "2.90B", "params": "0.47M", "miou": 68.4}}
            if tuple(counts.input_size) == info.input_size and counts.num_classes == info.outputs:
                from micronet.registry import paper_comparison

                # ours / Table 9's; README "Segmentation models" says where the difference sits
                data["paper"]["ours_over_paper"] = paper_comparison(info, counts.params, counts.madds)
        if not per_layer:
            data.pop("layers")
        print(json.dumps(data, indent=2))
        return
    from micronet.console import LAYERS_DROP, STAGES_DROP, console, conventions_note, counts_table, print_table

    print_table(counts_table(counts, per_layer=per_layer), drop=LAYERS_DROP if per_layer else STAGES_DROP)
    console.print(conventions_note(check))
    if info.task == "pose":
        from micronet.console import paper_note

        console.print(paper_note(info, counts))
    if info.task == "segmentation":
        from micronet.console import seg_paper_note

        console.print(seg_paper_note(info, counts))


@app.command("export")
def export_cmd(
    variant: str = VariantOpt,
    fmt: Optional[str] = typer.Option(None, "--format", "-f",
                                      help="onnx, tflite (default), openvino, ncnn, mnn, or all"),
    quantize: Optional[str] = typer.Option(None, "--quantize", "-q",
                                           help="TFLite: int8 (default), float32, float16 or dynamic; "
                                                "OpenVINO: float32 (default), float16 or int8 (NNCF); "
                                                "ncnn: float32 (default) or float16; MNN: float32 (default), "
                                                "float16 or int8 (int8 weights)"),
    all_formats: bool = typer.Option(False, "--all", help="write every format and quantization (= --format all)"),
    weights: Optional[Path] = typer.Option(None, "--weights", help="checkpoint: ours or the authors' micronet-m*.pth"),
    calibration: Optional[Path] = typer.Option(None, "--calibration",
                                               help="folder of your images for int8 calibration and parity"),
    calib_count: int = typer.Option(200, "--calib-count", help="calibration images (deterministic sample)"),
    seed: int = typer.Option(0, "--seed", help="seed of the calibration sample"),
    input_size: Optional[str] = typer.Option(None, "--input-size",
                                             help="pixels, multiples of 32: 224 (classifiers' default), or H x W: "
                                                  "256x192 (pose default), 1024x2048 (segmentation default)"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes",
                                              help="outputs (default: 1000 classes; pose 17; segmentation 19)"),
    output: Path = typer.Option(Path("exports"), "--output", "-o", help="output folder"),
    io_dtype: str = typer.Option("int8", "--io-dtype", help="int8 model input/output type: int8 or uint8"),
    per_tensor: bool = typer.Option(False, "--per-tensor", help="int8 weights per tensor instead of per channel"),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="ONNX with a symbolic batch dimension"),
    optimize_for: str = typer.Option("portable", "--optimize-for",
                                     help="the ONNX file: portable (runs in every ONNX consumer) or onnxruntime "
                                          "(fastest in ONNX Runtime, fails in other consumers: see its manifest)"),
    graph: str = typer.Option("fast", "--graph", help="fast (the fast deploy graph: ONNX built to be portable, "
                              "TFLite built for XNNPACK and lowered to TensorFlow) or reference (the reference "
                              "deploy form; TFLite through onnx2tf)"),
    tune: Optional[str] = typer.Option(None, "--tune", metavar="DEVICE",
                                       help="measure the fast graph's choices on DEVICE (local, ssh://user@host[:port], "
                                            "adb[:SERIAL] or a devices.toml name) at --threads and ship the "
                                            "fastest exact one"),
    tune_budget: str = typer.Option("5m", "--tune-budget", help="time for the tuning search, e.g. 90s, 5m"),
    tune_blocks: bool = typer.Option(True, "--tune-blocks/--no-tune-blocks",
                                     help="after the whole-graph switches, try each block's own switches"),
    threads: int = typer.Option(1, "--threads", help="the thread count the model will run at (for --tune)"),
    tune_from: Optional[Path] = typer.Option(None, "--tune-from",
                                             help="reuse a tuning record (or a tuned export's manifest) instead of "
                                                  "measuring; refused if made on another device or toolchain"),
    inventory: Optional[Path] = typer.Option(None, "--inventory", help="devices.toml for --tune"),
    benchmark_binary: Optional[Path] = typer.Option(None, "--benchmark-binary",
                                                    help="--tune on an adb phone: LiteRT's benchmark_model for its ABI"),
) -> None:
    """Export to ONNX, TFLite, OpenVINO, ncnn or MNN, checking every stage numerically against the one before."""
    from rich.markup import escape

    from micronet.console import (EXPORT_DROP, PARITY_DROP, console, export_summary, export_warnings, parity_table,
                                  print_table)
    from micronet.counting import parse_input_size
    from micronet.export.pipeline import ExportRequest, ParityFailure, export, kinds_for

    request = ExportRequest(
        variant=variant, kinds=kinds_for(variant, fmt, quantize, all_formats, graph), weights=weights,
        calibration=calibration, calib_count=calib_count, seed=seed,
        input_size=parse_input_size(input_size) if input_size is not None else None,
        num_classes=num_classes, output_dir=output, io_dtype=io_dtype, per_channel=not per_tensor,
        dynamic_batch=dynamic_batch, graph=graph, optimize_for=optimize_for,
        tune=_tune_request(tune, tune_budget, threads, tune_from, inventory, tune_blocks, benchmark_binary),
    )
    try:
        with console.status("exporting", spinner="dots") as status:
            def progress(message: str) -> None:
                console.print(message)
                status.update(message)

            result = export(request, progress=progress)
    except ParityFailure as failure:
        print_table(parity_table(failure.rungs), drop=PARITY_DROP)
        raise
    print_table(parity_table(result.rungs), drop=PARITY_DROP)
    print_table(export_summary(result), drop=EXPORT_DROP)
    for line in export_warnings(result):
        console.print(f"[bold yellow]warning:[/bold yellow] {escape(line)}", soft_wrap=True)


def _tune_request(device: Optional[str], budget: str, threads: int, record: Optional[Path],
                  inventory: Optional[Path], per_block: bool = True, benchmark_binary: Optional[Path] = None):
    """``--tune``/``--tune-from`` as a ``TuneRequest`` (None: an untuned export)."""
    from micronet.export.tune import TuneRequest, parse_budget

    if device is None and record is None:
        if benchmark_binary is not None:
            raise MicronetError("--benchmark-binary is for --tune on an adb phone; give --tune adb[:SERIAL] too")
        return None
    return TuneRequest(device=device or "local", threads=threads, budget_s=parse_budget(budget), record=record,
                       inventory=inventory, per_block=per_block, benchmark_binary=benchmark_binary)


@app.command("bench")
def bench_cmd(
    models: list[Path] = typer.Argument(None, help=".onnx/.tflite/.mnn files, .openvino/.ncnn folders (manifests are read from beside them)"),
    variant: Optional[str] = typer.Option(None, "--variant", "-v", help="benchmark this variant, exported on the fly"),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="torch, onnx, tflite (default), openvino, ncnn, mnn or all"),
    quantize: Optional[str] = typer.Option(None, "--quantize", "-q", help="TFLite: int8 (default), float32, float16, dynamic; "
                                           "openvino, mnn: float32 (default), float16, int8; ncnn: float32, float16"),
    matrix: bool = typer.Option(False, "--matrix", help="m0..m3 x torch/ONNX/TFLite fp32/int8 x every installed runtime"),
    runtime: Optional[list[str]] = typer.Option(None, "--runtime", "-r", help="torch, onnxruntime, litert, tflite-runtime, tf-lite, openvino, ncnn, mnn (repeatable)"),
    threads_given: Optional[list[int]] = typer.Option(None, "--threads", "-t",
                                                      help="threads (repeatable; default 1, or the inventory's)"),
    warmup: int = typer.Option(10, "--warmup", help="warm-up runs"),
    runs: Optional[int] = typer.Option(100, "--runs", help="measured runs"),
    min_seconds: Optional[float] = typer.Option(None, "--min-seconds", help="measure at least this long (s)"),
    xnnpack: str = typer.Option("on", "--xnnpack", help="TFLite XNNPACK delegate: on, off or both"),
    data: Optional[Path] = typer.Option(None, "--data", help="class folders (top-1/top-5); a Cityscapes folder "
                                        "(seg: mIoU) or COCO keypoints folder (pose: OKS AP)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="score at most N images"),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="fail if an export loses more top-1 (mIoU, AP) "
                                             "points than this"),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="peak RSS in a fresh process per row"),
    end_to_end: bool = typer.Option(False, "--end-to-end", help="also time preprocessing + inference"),
    weights: Optional[Path] = typer.Option(None, "--weights", help="checkpoint for --variant/--matrix"),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="calibration folder for on-the-fly exports"),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="pixels, a multiple of 32 (classifiers, "
                                             "default 224); pose/seg: HxW (default 256x192 / 512x1024)"),
    num_classes: int = typer.Option(1000, "--num-classes"),
    out: Path = typer.Option(Path("reports"), "--out", "-o", help="folder for the JSON/CSV/Markdown report"),
    device: Optional[str] = typer.Option(None, "--device", "-d",
                                         help="local, ssh://user@host[:port], adb[:SERIAL], emulated[:pi4|pi5] "
                                         "(arm64 under qemu: outputs, no timings) or a devices.toml name"),
    inventory: Optional[Path] = typer.Option(None, "--inventory", help="devices.toml (default: $MICRONET_DEVICES, "
                                             "./devices.toml, ~/.config/micronet/devices.toml)"),
    benchmark_binary: Optional[Path] = typer.Option(None, "--benchmark-binary",
                                                    help="Android: LiteRT benchmark_model built for the phone's ABI"),
    cpu_mask: Optional[str] = typer.Option(None, "--cpu-mask", help="hex CPU affinity mask on the device, e.g. f0"),
    retry_throttled: bool = typer.Option(False, "--retry-throttled",
                                         help="re-run a measurement during which the device throttled, after it cools"),
    cooldown: Optional[float] = typer.Option(None, "--cooldown", help="seconds to pause between models on a device"),
) -> None:
    """Latency, memory, size and accuracy per model, format and runtime; writes JSON, CSV and Markdown."""
    from micronet.bench import gate, report
    from micronet.bench.harness import run_benchmark
    from micronet.bench.request import BenchRequest
    from micronet.bench.targets import bench_targets
    from micronet.console import console
    from micronet.counting import parse_input_size

    input_size = parse_input_size(input_size) if input_size is not None else None
    request = BenchRequest(
        models=models or [], variant=variant, fmt=fmt, quantize=quantize, matrix=matrix, runtime=runtime or [],
        threads=threads_given or [], warmup=warmup, runs=runs, min_seconds=min_seconds, xnnpack=xnnpack, data=data,
        limit=limit, max_drop=max_drop, weights=weights, calibration=calibration, input_size=input_size,
        num_classes=num_classes, out=out, device=device, inventory=inventory, benchmark_binary=benchmark_binary,
        cpu_mask=cpu_mask, cooldown=cooldown, memory=memory)
    checked = request.check()  # every argument, before an export or a measurement starts
    with console.status("benchmarking", spinner="dots") as status:
        def progress(message: str) -> None:
            status.update(message)
            if not message.startswith(("latency:", "memory:", "accuracy:")):
                console.print(message)

        targets = bench_targets(models or [], variant=variant, fmt=fmt, quantize=quantize, matrix=matrix,
                                weights=weights, calibration=calibration, input_size=input_size,
                                num_classes=num_classes, with_reference=max_drop is not None, progress=progress)
        if checked.device is not None:
            on_desktop = [t.label for t in targets if t.path is None]
            if on_desktop:
                console.print(f"not sent to {device} (PyTorch models run on the desktop only): {', '.join(on_desktop)}")
            from micronet.devices.api import DeviceRunOptions, device_report

            on_device = DeviceRunOptions(runtime=runtime[0] if runtime else None, inventory=inventory,
                                         benchmark_binary=benchmark_binary, cpu_mask=cpu_mask,
                                         retry_throttled=True if retry_throttled else None, cooldown_s=cooldown)
            result = device_report(checked.device, [t.path for t in targets if t.path is not None], checked.measure,
                                   on_device, progress=progress)
        else:
            result = run_benchmark(targets, runtime or None, checked.measure, progress, end_to_end=end_to_end)
    paths = report.write_all(result, out)
    report.print_report(result, console=console)
    console.print("report: " + ", ".join(str(p) for p in paths))
    report.raise_if_nothing_measured(result)
    if max_drop is not None:
        drops = gate.accuracy_drops(result["results"])
        for d in drops:
            unit = "%" if d["unit"] == "%" else ""
            console.print(f"{d['metric']} {d['name']} on {d['runtime']}: {d['top1']:.2f}{unit} vs PyTorch "
                          f"{d['reference_top1']:.2f}{unit} (drop {d['drop']:+.2f} points, allowed {max_drop})")
        over = gate.over_budget(result["results"], max_drop)
        if over:
            names = ", ".join(f"{d['name']} on {d['runtime']} ({d['drop']:.2f} points)" for d in over)
            console.print(f"[red]accuracy drop over {max_drop} points:[/red] {names}")
            raise typer.Exit(1)
        if not drops:
            raise MicronetError("--max-drop: no exported model had a PyTorch reference with accuracy to compare to")


@app.command("report")
def report_cmd(
    reports: list[Path] = typer.Argument(..., help="benchmark JSON reports to merge"),
    out: Path = typer.Option(Path("reports/merged"), "--out", "-o", help="folder for the merged table and plots"),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="draw PNG plots"),
) -> None:
    """Merge benchmark reports (variants, formats, runtimes, devices) into one table and plots."""
    from micronet.bench import report
    from micronet.console import console

    merged = report.merged_report(reports)  # rows tagged with their source; every source's warnings kept
    paths = report.write_all(merged, out, stem="merged")
    if plots:
        from micronet.bench.plots import plot_all

        paths += plot_all(merged["results"], out)
    report.print_report(merged, console=console)
    console.print("written: " + ", ".join(str(p) for p in paths))


@budget_app.command("check")
def budget_check(budgets: Path = typer.Argument(DEFAULT_BUDGETS, help="TOML file of per-variant ceilings")) -> None:
    """Fail (exit 1) naming every variant whose MAdds or params exceed its budget."""
    from micronet.budget import check_budgets
    from micronet.console import console

    results = check_budgets(budgets)
    over = [r for r in results if not r.ok]
    # Columns as wide as the widest figure (the segmentation MAdds pass a billion), at least the old 12.
    width = max([12] + [len(f"{v:,}") for r in results for v in (r.measured, r.allowed)])
    for r in results:
        mark = "[green]ok[/green]  " if r.ok else "[red]OVER[/red]"
        console.print(f"{mark} {r.variant:<11} {r.metric:<6} measured {r.measured:>{width},}  "
                      f"allowed {r.allowed:>{width},}")
    if over:
        names = ", ".join(sorted({f"{r.variant} ({r.metric} {r.measured:,} > {r.allowed:,})" for r in over}))
        console.print(f"[red]over budget:[/red] {names}")
        raise typer.Exit(1)
    console.print(f"all {len(results)} budgets hold ({budgets})")


@app.command("train")
def train_cmd(
    variant: str = VariantOpt,
    data: Path = typer.Option(..., "--data", help="ImageFolder <class>/<image>, or a folder with train/ and val/; "
                              "pose: a COCO keypoints folder (annotations/, train2017/, val2017/); "
                              "segmentation: a Cityscapes folder (leftImg8bit/, gtFine/)"),
    val: Optional[Path] = typer.Option(None, "--val", help="validation ImageFolder (default: DATA/val if present); "
                                       "pose: a COCO folder holding val2017; segmentation: a Cityscapes folder "
                                       "holding val (default: DATA)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="run folder (default runs/train-VARIANT)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="paper: 600 (classification), 250 (pose), "
                                         "240 (segmentation)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="global batch over all processes "
                                             "(paper: 512 classification; default 32 pose, 16 segmentation)"),
    lr: Optional[float] = typer.Option(None, "--lr", help="default 0.2 x batch / 512; pose: Adam 1e-3, x0.1 at "
                                       "84 and 96 percent of the epochs (210, 240 of 250); segmentation: SGD 0.2 "
                                       "cosine to 1e-4"),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="default 3e-5 (m0, m1), 4e-5 (m2, m3, "
                                                "seg-m0..m3)"),
    warmup_epochs: Optional[float] = typer.Option(None, "--warmup-epochs", help="default 0, 5 for m2/m3/release-m3"),
    label_smoothing: float = typer.Option(0.0, "--label-smoothing"),
    mixup: float = typer.Option(0.0, "--mixup", help="mixup Beta(alpha, alpha); 0 = off"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="default: number of class folders"),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="pixels, multiples of 32: 224 "
                                             "(classification default); pose: HxW, default 256x192; segmentation: "
                                             "HxW, default 512x1024 (training crop and validation size)"),
    weights: Optional[Path] = typer.Option(None, "--weights", help="start from ours or a released checkpoint"),
    backbone_weights: Optional[Path] = typer.Option(None, "--backbone-weights", help="segmentation: start the "
                                                    "backbone from its classifier's checkpoint (ImageNet)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue a run from its last.pt (a larger --epochs extends it)"),
    mutual: bool = flag("--mutual", help="mutual learning with a full-rank partner (paper 5.1)"),
    seed: int = typer.Option(0, "--seed"),
    workers: Optional[int] = typer.Option(None, "--workers", help="data-loading processes per training process "
                                          "(default: min(4, the CPU cores this process may use))"),
    crop_min: float = typer.Option(0.08, "--crop-min", help="smallest random crop, as a fraction of the image area"),
    no_flip: bool = flag("--no-flip", help="no random horizontal flip (e.g. digits, text)"),
    deterministic: bool = flag("--deterministic",
                               help="deterministic kernels: bit-exact reruns and resumes (slower on CUDA)"),
    as_json: bool = flag("--json", help="print the final metrics as JSON on stdout"),
) -> None:
    """Train, fine-tune (--weights) or resume (--resume) a MicroNet, classifier, keypoint model (pose-m0..m3,
    on a COCO keypoints folder) or segmentation model (seg-m0..m3, on a Cityscapes folder); runs under
    torchrun as DDP too."""
    import os

    from micronet.counting import parse_input_size
    from micronet.train import TrainConfig, train

    config = TrainConfig(
        variant=variant, data=str(data), val=str(val) if val else None, out=str(out) if out else None,
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
        label_smoothing=label_smoothing, mixup=mixup, num_classes=num_classes,
        input_size=parse_input_size(input_size) if input_size is not None else None,
        weights=str(weights) if weights else None,
        backbone_weights=str(backbone_weights) if backbone_weights else None,
        resume=str(resume) if resume else None, mutual=mutual,
        seed=seed, workers=workers, crop_scale=(crop_min, 1.0), hflip=not no_flip, deterministic=deterministic,
    )
    result = train(config)
    if as_json and os.environ.get("RANK", "0") == "0":
        print(json.dumps(result, indent=2))


@datasets_app.command("digits")
def datasets_digits(
    out: Path = typer.Option(..., "--out", "-o", help="folder to create (train/ and val/ inside)"),
    size: int = typer.Option(32, "--size", help="image side in pixels, a multiple of 32"),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="share of each digit held out"),
    seed: int = typer.Option(0, "--seed", help="seed of the stratified split"),
) -> None:
    """scikit-learn's 1,797 handwritten digit scans as an ImageFolder of PNGs (no download)."""
    from micronet.datasets import write_digits

    summary = write_digits(out, size=size, val_fraction=val_fraction, seed=seed)
    print(f"digits: {summary['train_images']} train + {summary['val_images']} val images, {size}x{size} px, "
          f"10 classes -> {out}")


@datasets_app.command("segmentation")
def datasets_segmentation(
    out: Path = typer.Option(..., "--out", "-o", help="folder to create (Cityscapes layout inside)"),
    input_size: str = typer.Option("128x256", "--input-size", help="image size HxW in pixels, multiples of 32"),
    train_images: int = typer.Option(48, "--train-images", help="images in the train split"),
    val_images: int = typer.Option(16, "--val-images", help="images in the val split"),
    seed: int = typer.Option(0, "--seed", help="seed of the crops and shapes"),
) -> None:
    """A small segmentation set in the Cityscapes layout, drawn from the bundled photos (no download)."""
    from micronet.counting import input_hw, parse_input_size
    from micronet.sample_images import bundled_photographs
    from micronet.segmentation.synthetic import write_segmentation_set

    height, width = input_hw(parse_input_size(input_size))
    summary = write_segmentation_set(out, bundled_photographs(), height=height, width=width,
                                     train_images=train_images, val_images=val_images, seed=seed)
    print(f"segmentation: {summary['train_images']} train + {summary['val_images']} val images, "
          f"{height}x{width} px, classes {', '.join(summary['classes'])} (+ ignore 255) -> {out}")


@datasets_app.command("keypoints")
def datasets_keypoints(
    out: Path = typer.Option(..., "--out", "-o", help="folder to create (COCO keypoints layout inside)"),
    image_size: str = typer.Option("256x256", "--image-size", help="image size HxW in pixels"),
    train_images: int = typer.Option(64, "--train-images", help="images in train2017"),
    val_images: int = typer.Option(16, "--val-images", help="images in val2017"),
    seed: int = typer.Option(0, "--seed", help="seed of the crops and figures"),
) -> None:
    """A small keypoint set in the COCO layout: figures drawn on the bundled photos (no download)."""
    from micronet.counting import input_hw, parse_input_size
    from micronet.keypoints.synthetic import write_keypoint_set
    from micronet.sample_images import bundled_photographs

    size = input_hw(parse_input_size(image_size))
    summary = write_keypoint_set(out, bundled_photographs(), size=size, train_images=train_images,
                                 val_images=val_images, seed=seed)
    print(f"keypoints: {summary['train_images']} train + {summary['val_images']} val images, "
          f"{summary['people']} figures with 17 joints, {size[0]}x{size[1]} px -> {out}")


@app.command("profile")
def profile_cmd(
    artifact: Path = typer.Argument(..., help="an exported .onnx or .tflite file (its manifest beside it gives "
                                              "the MAdds)"),
    device: str = typer.Option("local", "--device", help="where to run a .tflite: local, ssh:user@host[:port], "
                                                         "adb[:serial] or a devices.toml name (.onnx: local)"),
    threads: int = typer.Option(2, "--threads", help="the thread count compared with 1 thread"),
    runs: int = typer.Option(50, "--runs", help="timed inferences per thread count (.tflite: per round)"),
    rounds: int = typer.Option(5, "--rounds", help=".tflite: interleaved rounds over the file's prefixes"),
    inventory: Optional[Path] = typer.Option(None, "--inventory", help="devices.toml for --device names"),
    out: Optional[Path] = typer.Option(None, "--out", help="write <out>.json and <out>.csv (default: beside the "
                                                          "artifact, <artifact>.profile.json/.csv)"),
) -> None:
    """Per-block time joined to MicroNet blocks and their MAdds, at 1 and N threads: ONNX Runtime's profiler for
    an .onnx (and the time by op type), the file's prefixes timed on the device for a .tflite."""
    from micronet.bench.profile import op_table, profile_artifact, profile_table, write_profile
    from micronet.console import console, print_table

    with console.status("profiling", spinner="dots") as status:
        result = profile_artifact(artifact, device=device, threads=(1, threads), runs=runs, rounds=rounds,
                                  inventory=inventory, progress=status.update)
    print_table(profile_table(result))
    if result.op_ms:
        print_table(op_table(result))
    for path in write_profile(result, out or artifact.with_name(artifact.name + ".profile")):
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)


InventoryOpt = typer.Option(None, "--inventory",
                            help="devices.toml (default: $MICRONET_DEVICES, ./devices.toml, ~/.config/micronet/devices.toml)")


@devices_app.command("list")
def devices_list(inventory: Optional[Path] = InventoryOpt,
                 as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """The device inventory: each name with its target and options, one line each."""
    from micronet.devices.api import describe_inventory

    lines, data = describe_inventory(inventory)
    print(json.dumps(data, indent=2) if as_json else "\n".join(lines))


@devices_app.command("check")
def devices_check(names: Optional[list[str]] = typer.Argument(None, help="inventory names or targets (default: all)"),
                  inventory: Optional[Path] = InventoryOpt) -> None:
    """Is each device reachable, and which runtimes does it have? One line each; exit 1 if any is not usable."""
    from micronet.devices.api import iter_checks

    usable = True
    for result in iter_checks(names or None, inventory=inventory):
        print(result.line(), flush=True)
        usable &= result.reachable
    if not usable:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point: user mistakes (ours and the argument parser's) become one line and exit
    code 2; Ctrl-C and SIGTERM become the one line ``interrupted`` and exit 130 / 143 (128 + signal),
    whatever exception the interrupt caused on its way out (library code may wrap it into a MicronetError).

    Typer runs in non-standalone mode so that its usage errors reach us instead of being drawn as a boxed
    panel of several lines: a usage error is a user mistake like any other."""
    from micronet import interrupts

    interrupts.install()
    try:
        code = app(standalone_mode=False)
    except BaseException as exc:  # noqa: BLE001 - every way out is mapped to one line and an exit code below
        if interrupts.received() is not None or isinstance(exc, KeyboardInterrupt):
            _interrupted(interrupts.exit_code())
        if isinstance(exc, (MicronetError, ClickException)):
            _error_line(exc)
        if isinstance(exc, typer.Abort):
            _interrupted(interrupts.exit_code())
        raise
    if interrupts.received() is not None:  # typer returns 130 for a KeyboardInterrupt it caught
        _interrupted(interrupts.exit_code())
    sys.exit(code if isinstance(code, int) else 0)


def _interrupted(code: int) -> None:
    """The one line and the exit code, final: the staging folder is gone by now (its cleanup ran while the
    interrupt unwound), so the interpreter's own shutdown is skipped. Left to run, it could turn a late
    KeyboardInterrupt (a second signal, or one a library re-raises during finalization) into a death by
    SIGINT and a traceback instead of this exit code."""
    import os

    print("interrupted", file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe must not hide the exit code
            pass
    os._exit(code)


def _error_line(exc: BaseException) -> None:
    """One line on stderr and the error's exit code (2 for a user mistake)."""
    from rich.markup import escape

    from micronet.console import err_console

    if isinstance(exc, ClickException):
        message = exc.format_message()
        if not message:  # no arguments at all: the help was printed, which is the answer
            sys.exit(exc.exit_code)
        context = getattr(exc, "ctx", None)
        if context is not None:
            message += f" (see '{context.command_path} --help')"
        code = exc.exit_code
    else:
        message, code = str(exc), exc.exit_code
    # escape: a message naming a TOML section ("[m0]", "[devices.pi4]") is not rich markup
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
