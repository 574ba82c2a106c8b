"""Converter stages: PyTorch → ONNX, PyTorch fast graph → TensorFlow SavedModel (``tf_graph``; or ONNX → onnx2tf
for the reference graph) → TFLite, plus inspection, parity and manifests.

``pipeline.export`` runs an export as its stages: ``request`` (what is asked: artifact kinds), ``plan`` (the
graphs and files those kinds need), ``stages`` (one function per artifact, each from an input artifact to an
output artifact plus a small JSON-ready record), ``ladder`` (the parity rungs, timings and progress lines).
The converters they call live one per module (``deploy``, ``fast``, ``onnx``, ``tf_graph``, ``tflite``,
``edge`` (ONNX → OpenVINO, ncnn, MNN), ``calibration``, ``inspect``, ``parity``, ``manifest``). Nothing heavy is imported here: torch, onnx and
tensorflow are imported inside the functions that need them, so importing the package (e.g. for
``micronet --help``) stays fast.
"""
