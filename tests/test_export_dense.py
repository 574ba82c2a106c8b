"""`micronet export` of the pose and segmentation variants: H x W inputs, dense parity, manifests, a wrong
bilinear resize caught by the ladder, and the bad inputs (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from micronet.errors import MicronetError
from micronet.export import parity
from micronet.export.deploy import recalibrate_batchnorm, to_deploy
from micronet.export.dense import build_dense_model
from micronet.export.dense_calibration import build_dense_calibration
from micronet.export.pipeline import ExportRequest, ParityFailure, artifact_name, export, kinds_for

from test_cli import assert_one_line_error, run_cli

SEG_SIZE = (64, 128)  # small maps keep onnx2tf short; 512x1024 is measured in the report
POSE_SIZE = (64, 64)


def test_artifact_names_carry_h_by_w_and_classifier_names_are_unchanged():
    assert artifact_name("pose-m0", (256, 192), "tflite", "int8") == "micronet-pose-m0-256x192.int8.tflite"
    assert artifact_name("seg-m0", (512, 1024), "onnx", "float32") == "micronet-seg-m0-512x1024.onnx"
    assert artifact_name("m0", 224, "tflite", "int8") == "micronet-m0-224.int8.tflite"


def test_all_formats_of_a_dense_task_are_onnx_and_tflite():
    kinds = kinds_for("seg-m0", None, None, True)
    assert {k.format for k in kinds} == {"onnx", "tflite"} and len(kinds) == 5
    assert {k.format for k in kinds_for("m0", "all", None, False)} > {"onnx", "tflite"}


def test_pose_deploy_form_keeps_the_spatial_attention():
    """The reference deploy form used to drop DY-ReLU-C's spatial attention of the keypoint models' Shift-Max,
    which moved the heatmaps by ~1e17 relative: it must compute the training form's function."""
    torch.manual_seed(0)
    model = build_dense_model("pose-m0", "pose", POSE_SIZE, 17)
    data = build_dense_calibration("pose", None, POSE_SIZE, count=8, holdout=4)
    recalibrate_batchnorm(model, [torch.from_numpy(data.calibration)])
    model.eval()
    x = torch.from_numpy(data.holdout)
    with torch.no_grad():
        reference, deployed = model(x).numpy(), to_deploy(model)(x).numpy()
    assert parity.compare(reference, deployed)["rel_max_abs_err"] < 1e-3


def test_dense_parity_flattens_maps_and_counts_pixel_labels():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(2, 3, 4, 5))
    same = parity.compare(reference, reference.copy())
    assert same["pixel_label_agreement_pct"] == 100.0 and same["cosine"] == pytest.approx(1.0)
    swapped = reference[:, ::-1]  # channel order reversed: labels and cosine both break
    broken = parity.compare(reference, swapped)
    assert broken["pixel_label_agreement_pct"] < 60.0 and broken["cosine"] < 0.5


def test_dense_calibration_images_are_h_by_w_and_disjoint():
    data = build_dense_calibration("segmentation", None, SEG_SIZE, count=6, holdout=3)
    assert data.calibration.shape == (6, 3, *SEG_SIZE) and data.holdout.shape == (3, 3, *SEG_SIZE)
    assert data.record["is_default"] and "warning" in data.record
    assert not set(data.record["photographs"]["calibration"]) & set(data.record["photographs"]["holdout"])


def test_pose_calibration_uses_person_crops_of_a_coco_folder(tmp_path):
    result = run_cli("datasets", "keypoints", "--out", str(tmp_path / "coco"), "--train-images", "6",
                     "--val-images", "2")
    assert result.returncode == 0, result.stderr
    data = build_dense_calibration("pose", tmp_path / "coco", (64, 64), count=10, holdout=4)
    assert data.calibration.shape[1:] == (3, 64, 64) and len(data.holdout) >= 1
    assert "person crops" in data.record["source"]


@pytest.mark.parametrize("args, message", [
    (("--variant", "seg-m0", "--input-size", "500x1000"), "must both be multiples of 32"),
    (("--variant", "pose-m0", "--input-size", "256x"), "is not a size"),
    (("--variant", "pose-m0", "--format", "openvino"), "is exported as onnx and tflite only"),
    (("--variant", "seg-m0", "--format", "mnn"), "is exported as onnx and tflite only"),
    (("--variant", "m0", "--input-size", "256x192"), "the classifiers take a square input"),
])
def test_bad_dense_requests_are_one_line(tmp_path, args, message):
    out = tmp_path / "out"
    result = run_cli("export", *args, "--output", str(out))
    assert result.returncode == 2
    assert_one_line_error(result, message)
    assert not out.exists() or not any(out.iterdir())


def test_a_classification_checkpoint_is_refused_by_a_pose_variant(tmp_path):
    from micronet.model import build_model

    checkpoint = tmp_path / "m0.pt"
    torch.save(build_model("m0", input_size=64).state_dict(), checkpoint)
    out = tmp_path / "out"
    result = run_cli("export", "--variant", "pose-m0", "--weights", str(checkpoint), "--output", str(out))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("variant, size, stride, names", [("seg-m0", SEG_SIZE, 1, "class_names"),
                                                          ("pose-m0", (64, 32), 4, "keypoint_names")])
def test_dense_onnx_export_with_a_dense_ladder_and_manifest(tmp_path, variant, size, stride, names):
    result = export(ExportRequest(variant=variant, input_size=size, calib_count=8, holdout=4,
                                  kinds=[("onnx", "float32")], output_dir=tmp_path))
    name = f"micronet-{variant}-{size[0]}x{size[1]}.onnx"
    assert [p.name for p in result.artifacts] == [name]
    rungs = {r["rung"]: r for r in result.rungs}
    assert rungs["onnx"]["passed"] and "pixel_label_agreement_pct" in rungs["onnx"]
    if variant.startswith("seg"):  # a well-conditioned model: the classifiers' float limit holds
        assert rungs["onnx"]["limit"] == 1e-4 and rungs["deploy"]["limit"] == 1e-4
    manifest = json.loads(Path(f"{tmp_path / name}.json").read_text())
    assert manifest["input_size"] == list(size) and manifest["output"]["stride"] == stride
    maps = (size[0] // stride, size[1] // stride)
    assert manifest["output"]["layout"] == "NCHW" and manifest["output"]["shape"][2:] == list(maps)
    assert len(manifest["output"][names]) == manifest["output"]["shape"][1]
    assert manifest["input"]["preprocessing"]["input_size"] == list(size)


@pytest.mark.slow
def test_seg_tflite_maps_are_judged_in_pytorch_layout(tmp_path):
    """TFLite gives NHWC maps; the ladder judges them in NCHW against the ONNX file (onnx2tf's source), and
    the manifest says which layout the file's output has. 128x256: onnx2tf converts seg-m0 at this size."""
    size = (128, 256)
    result = export(ExportRequest(variant="seg-m0", input_size=size, calib_count=8, holdout=4,
                                  kinds=[("tflite", "float32"), ("tflite", "int8")], output_dir=tmp_path))
    rungs = {r["rung"]: r for r in result.rungs}
    assert rungs["tflite_float32"]["rel_max_abs_err"] <= 1e-4  # half-pixel Resize kept by onnx2tf
    assert rungs["tflite_float32"]["pixel_label_agreement_pct"] > 99.9
    assert rungs["tflite_int8"]["passed"] and "pixel_label_agreement_pct" in rungs["tflite_int8"]
    manifest = json.loads(Path(f"{tmp_path / 'micronet-seg-m0-128x256.int8.tflite'}.json").read_text())
    assert manifest["output"]["layout"] == "NHWC" and manifest["output"]["shape"] == [1, *size, 19]
    assert manifest["output"]["stride"] == 1 and manifest["task"] == "segmentation"
    # Every op version of a segmentation file is in the runtime table (RESIZE_BILINEAR v3: half-pixel centres).
    for name in ("float32", "int8"):
        m = json.loads(Path(f"{tmp_path / f'micronet-seg-m0-128x256.{name}.tflite'}.json").read_text())
        assert "not in micronet's table" not in m["runtime_requirement"], m["runtime_requirement"]
        assert "RESIZE_BILINEAR" in m["ops"]["by_op"]


@pytest.mark.slow
def test_a_wrong_bilinear_resize_is_caught_by_the_ladder(tmp_path, monkeypatch):
    """PyTorch, ONNX and TFLite must all resize with half-pixel centres (align_corners=False). Exporting the
    ONNX file from a graph whose upsamplings use align_corners=True (what a careless converter option or a
    hand-written export does) must break the ``onnx`` rung, and nothing may be written."""
    from micronet.export import onnx as onnx_export

    real = onnx_export.export_onnx

    def corners_aligned(model, example, path, **kwargs):
        for module in model.modules():
            if isinstance(module, torch.nn.Upsample):
                module.align_corners = True
        return real(model, example, path, **kwargs)

    monkeypatch.setattr(onnx_export, "export_onnx", corners_aligned)
    with pytest.raises(ParityFailure) as failure:
        export(ExportRequest(variant="seg-m0", input_size=SEG_SIZE, calib_count=8, holdout=4,
                             kinds=[("onnx", "float32")], output_dir=tmp_path))
    broken = failure.value.rungs[-1]
    assert broken["rung"] == "onnx" and not broken["passed"] and broken["rel_max_abs_err"] > 1e-2
    assert not any(p for p in tmp_path.iterdir() if not p.name.startswith("."))


@pytest.mark.slow
def test_bench_runtimes_serve_the_segmentation_evaluator(tmp_path):
    """ONNX Runtime and LiteRT, loaded as the benchmark loads them, wrapped as the evaluator's ``Runner``:
    the same maps as the ONNX file run directly, and the same mIoU from both runtimes."""
    from micronet.bench.dense import dense_runner
    from micronet.bench.runtimes import get_runtime
    from micronet.export.onnx import run_onnx
    from micronet.segmentation import scan_cityscapes
    from micronet.segmentation.evaluate import evaluate_segmentation

    size = (128, 256)
    data = tmp_path / "cityscapes"
    made = run_cli("datasets", "segmentation", "--out", str(data), "--input-size", "128x256",
                   "--train-images", "2", "--val-images", "3")
    assert made.returncode == 0, made.stderr
    out = tmp_path / "exports"
    export(ExportRequest(variant="seg-m0", input_size=size, calib_count=8, holdout=2, calibration=data,
                         kinds=[("onnx", "float32"), ("tflite", "float32")], output_dir=out))
    samples = scan_cityscapes(data, "val")
    reports = {}
    for name, file in (("onnxruntime", "micronet-seg-m0-128x256.onnx"),
                       ("litert", "micronet-seg-m0-128x256.float32.tflite")):
        runtime = get_runtime(name, threads=1)
        runtime.load(out / file)
        try:
            run = dense_runner(runtime)
            batch = build_dense_calibration("segmentation", data, size, count=2, holdout=1).calibration
            np.testing.assert_allclose(run(batch), run_onnx(out / "micronet-seg-m0-128x256.onnx", batch),
                                       rtol=0, atol=1e-3)
            reports[name] = evaluate_segmentation(run, samples, size)
        finally:
            runtime.close()
    assert reports["onnxruntime"]["images"] == 3
    assert reports["litert"]["miou"] == pytest.approx(reports["onnxruntime"]["miou"], abs=0.5)


@pytest.mark.slow
def test_pose_float32_tflite_converts_at_the_default_256x192(tmp_path):
    """onnx2tf lost the layout of the 5-D channel shuffle at 256x192 (12 groups on a 16x12 map); the dense
    deploy form writes shuffles and Shift-Max partners as one Gather on the channel axis, which converts."""
    import onnx

    from micronet.export.onnx import export_onnx

    result = export(ExportRequest(variant="pose-m0", calib_count=8, holdout=4,
                                  kinds=[("tflite", "float32")], output_dir=tmp_path))
    rungs = {r["rung"]: r for r in result.rungs}
    assert rungs["tflite_float32"]["passed"] and rungs["tflite_float32"]["rel_max_abs_err"] <= 1e-4
    manifest = json.loads(Path(f"{tmp_path / 'micronet-pose-m0-256x192.float32.tflite'}.json").read_text())
    assert manifest["output"]["layout"] == "NHWC" and manifest["output"]["shape"] == [1, 64, 48, 17]
    graph = to_deploy(build_dense_model("pose-m0", "pose", (64, 64), 17), shift="gather", shuffle="gather")
    export_onnx(graph.eval(), torch.zeros(1, 3, 64, 64), tmp_path / "gather.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "gather.onnx")).graph.node]
    assert ops.count("Gather") >= 40 and "Transpose" not in ops and "GatherND" not in ops
