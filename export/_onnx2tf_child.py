"""Child process for ``tflite.onnx_to_saved_model``: ONNX → TensorFlow SavedModel with onnx2tf's Python API.

Run as ``python -P _onnx2tf_child.py MODEL.onnx SAVED_MODEL_DIR RECORD.json`` with the working directory set
to a scratch folder holding onnx2tf's sample-data stub. It is a separate process because onnx2tf and
TensorFlow print thousands of lines, keep global state and hold ~600 MiB; the parent captures the output to
a log file. ``-P`` matters: ``export/`` holds ``onnx.py`` and ``inspect.py``, which must not shadow the real
modules.

Why the API rather than the ``onnx2tf`` CLI: ``disable_model_save=True`` returns the Keras model before
onnx2tf writes its own float32/float16 .tflite files, which the parent rebuilds anyway (builtins only,
same converter). The SavedModel is then written the way ``-osd`` writes it, except that the signature's
output is keyed by the ONNX output name: the TFLite files have the same ops and numerics as the CLI
route's (measured; with ``-osd``'s unnamed output they were byte-identical) in half the wall time.

Every outgoing socket connection is refused and recorded: onnx2tf downloads sample data when the stub is
missing, and the record proves no download was attempted.
"""

import json
import socket
import sys
import time


def refuse_network(attempts: list) -> None:
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect(self, address)
        attempts.append(repr(address))
        raise OSError(f"network access is disabled during conversion (tried {address!r})")

    socket.socket.connect = connect
    socket.socket.connect_ex = lambda self, address: (attempts.append(repr(address)), 111)[1]


def main(onnx_path: str, saved_model_dir: str, record_path: str) -> int:
    attempts: list = []
    refuse_network(attempts)
    record: dict = {"network_attempts": attempts}
    try:
        _convert(onnx_path, saved_model_dir, record)
    finally:  # the record (network attempts above all) is wanted most when the conversion failed
        with open(record_path, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
    return 0


def guard_grouped_conv_layout(tf) -> list:
    """Work around onnx2tf 1.29.24 reading a grouped Conv's input shape before it fixes the input's layout.

    Its binary ops often leave their result in ONNX's NCHW order inside the TensorFlow graph; a Conv then
    transposes such an input to NHWC itself, but decides "depthwise" from the last axis of the shape it read
    *before* that transpose. When the map's width equals the group count (pose-m2's 16x12 stride-16 map
    feeding a 12-group 1x1 conv at 256x192) the conv is built as a depthwise one and the conversion fails
    ("Dimensions must be equal, 7200 and 720"). This makes the same transpose onnx2tf would make, only
    before the shape is read, for exactly that case; the parity ladder judges the converted file as always.
    Returns the list that names each Conv it applied to (the record keeps it).
    """
    import onnx2tf.ops.Conv as conv_module

    original = conv_module.make_node
    fixed: list = []

    def make_node(*args, **kwargs):
        node, layers = kwargs.get("graph_node"), kwargs.get("tf_layers_dict")
        group = node.attrs.get("group", 1) if node is not None else 1
        entry = layers.get(node.inputs[0].name) if group > 1 and layers is not None else None
        tensor = entry.get("tf_node") if entry else None
        onnx_shape = list(node.inputs[0].shape or []) if entry else []
        tf_shape = list(getattr(tensor, "shape", None) or []) if tensor is not None else []
        if (len(onnx_shape) == 4 and tf_shape == onnx_shape and all(isinstance(d, int) for d in onnx_shape)
                and tf_shape[-1] == group and tf_shape[1] != group):
            entry["tf_node"] = tf.transpose(tensor, perm=[0, 2, 3, 1])
            fixed.append(node.name)
            try:
                return original(*args, **kwargs)
            finally:
                entry["tf_node"] = tensor
        return original(*args, **kwargs)

    conv_module.make_node = make_node
    return fixed


def _shape(tensor) -> list:
    return [d if d is not None else -1 for d in tensor.shape]


def _named(names: list, outputs) -> dict:
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return dict(zip(names, outputs))


def _convert(onnx_path: str, saved_model_dir: str, record: dict) -> None:
    t0 = time.perf_counter()
    import onnx
    import onnx2tf
    import tensorflow as tf
    import tf_keras

    record["import_s"] = round(time.perf_counter() - t0, 3)
    record["grouped_conv_layout_fixes"] = guard_grouped_conv_layout(tf)
    t1 = time.perf_counter()
    # not_use_onnxsim: the ONNX stage already simplified the graph; running onnxsim again changes nothing.
    # output_signaturedefs: the op naming of the CLI's -osd, which the SavedModel signature below relies on.
    model = onnx2tf.convert(input_onnx_file_path=onnx_path, output_folder_path=saved_model_dir,
                            not_use_onnxsim=True, output_signaturedefs=True, disable_model_save=True)
    record["convert_s"] = round(time.perf_counter() - t1, 3)
    if model is None:
        raise RuntimeError("onnx2tf returned no model")
    t2 = time.perf_counter()
    # The signature's output keys are the ONNX output names ("logits"), so signature runners see the same
    # names as onnxruntime; its input keys are already the ONNX input names.
    output_names = [o.name for o in onnx.load(onnx_path, load_external_data=False).graph.output]
    archive = tf_keras.export.ExportArchive()
    archive.add_endpoint(name="serving_default", fn=lambda *inputs: _named(output_names, model(inputs)),
                         input_signature=[tf.TensorSpec(t.shape, t.dtype, t.name) for t in model.inputs])
    archive.write_out(saved_model_dir)
    record["save_s"] = round(time.perf_counter() - t2, 3)
    record["inputs"] = [{"name": t.name, "shape": _shape(t)} for t in model.inputs]
    record["outputs"] = [{"name": n, "shape": _shape(t)} for n, t in zip(output_names, model.outputs)]
    record["output_nhwc"] = dict(getattr(model, "onnx_output_layouts", None) or {})


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
