"""Converter stages: PyTorch → ONNX, PyTorch fast graph → TensorFlow SavedModel (``tf_graph``; or ONNX → onnx2tf
for the reference graph) → TFLite, plus inspection, parity and manifests.

One module per stage, each a function from an input artifact to an output artifact plus a small JSON-ready
record. Nothing heavy is imported here: torch, onnx and tensorflow are imported inside the functions that
need them, so importing the package (e.g. for ``micronet --help``) stays fast.
"""
