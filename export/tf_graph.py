"""A deploy graph (PyTorch, NCHW) lowered op for op to TensorFlow in NHWC, saved as a SavedModel.

Why not onnx2tf for the fast graph: onnx2tf guesses which axis is the channel axis from tensor sizes and
wraps every op it is unsure of in a TRANSPOSE pair (around each channel rotation of the fast graph) and
lowers depthwise convs behind a broadcast ADD to grouped CONV_2D (figures in docs/export-stages.md). The deploy graphs only ever hold 4-D feature maps whose channel axis is dim 1, or 2-D
(batch, features) vectors after the global pool, so the layout question has one answer: NCHW dim
``d`` is NHWC dim ``NHWC_AXIS[d]``. Lowering the ``torch.export`` graph with that rule gives exactly the
ops the deploy graph asks for, and nothing else.

The graph is taken from ``torch.export`` (ATen ops, static shapes, weights as lifted constants), so any
rewrite of the deploy graph flows to TFLite without touching this file, as long as it stays inside the
small op set below; anything else is a ``MicronetError`` naming the op. The SavedModel's signature is
``input`` (NHWC float32) → ``logits``, like onnx2tf's, and ``tflite.saved_model_to_tflite`` converts it.
Parity is checked by the pipeline's ladder (TFLite float32 against ONNX Runtime) and by
``tests/test_tf_graph.py`` op by op.
"""

from __future__ import annotations

import operator
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from micronet.atomic import replacing_dir
from micronet.errors import MicronetError

#: NCHW axis → NHWC axis, for 4-D feature maps.
NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}
#: The longest CONCATENATION the XNNPACK delegate of ai-edge-litert 2.1.0 takes (docs/export-stages.md).
MAX_CONCAT = 4
#: The most outputs of a SPLIT it takes.
MAX_SPLIT = 4
#: XNNPACK's largest tensor rank (XNN_MAX_TENSOR_DIMS): a channel-split view is (B·H·W, c1..ck).
MAX_TRANSPOSE_RANK = 6
#: A float32 depthwise conv whose channels × taps exceed this runs as SPLIT → depthwise per part → CONCAT:
#: XNNPACK's f32 kernel walks all channels per output pixel, and once the taps' inputs and weights outgrow
#: L1 it slows down (docs/export-stages.md has the timings). The int8 kernel reads 4× fewer bytes and is
#: left whole.
F32_DEPTHWISE_MAX_WEIGHTS = 6400
#: Channels XNNPACK's f32 depthwise kernel takes per step (25p16c, 9p16c): each part keeps whole steps.
DEPTHWISE_CHANNEL_TILE = 16


def _nhwc_const(value: np.ndarray, rank: int) -> np.ndarray:
    """A constant used beside a 4-D NCHW tensor, re-laid out for NHWC (broadcast shape kept)."""
    value = np.asarray(value, dtype=np.float32)
    if rank != 4 or value.ndim == 0:
        return value
    value = value.reshape((1,) * (4 - value.ndim) + value.shape)
    return np.ascontiguousarray(value.transpose(0, 2, 3, 1))


class _Lowering:
    """Walks a ``torch.export`` graph and builds the same computation with ``tf`` ops (NHWC)."""

    def __init__(self, tf, exported, max_via_relu: bool = False, split_depthwise: bool = False) -> None:
        self.tf = tf
        self.ep = exported
        self.split_depthwise = split_depthwise
        self._nhwc_ready: set[str] = set()
        self.channel_transposes = 0  # TRANSPOSE ops emitted, all of them permutes of channel axes
        self.consts: dict[str, np.ndarray] = {}
        state = exported.state_dict
        for spec in exported.graph_signature.input_specs:
            if spec.kind.name in ("PARAMETER", "BUFFER"):
                self.consts[spec.arg.name] = state[spec.target].detach().double().numpy()
            elif spec.kind.name == "CONSTANT_TENSOR":
                self.consts[spec.arg.name] = exported.constants[spec.target].detach().double().numpy()
        self.user_inputs = [s.arg.name for s in exported.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
        self.handlers: dict[str, Callable] = {
            "aten.conv2d.default": self._conv2d,
            "aten.linear.default": self._linear,
            "aten.add.Tensor": self._binary(lambda a, b: a + b),
            "aten.sub.Tensor": self._binary(lambda a, b: a - b),
            "aten.mul.Tensor": self._binary(lambda a, b: a * b),
            "aten.div.Tensor": self._binary(lambda a, b: a / b),
            "aten.maximum.default": self._binary(self._maximum_via_relu if max_via_relu else self.tf.maximum),
            "aten.minimum.default": self._binary(lambda a, b: self.tf.minimum(a, b)),
            "aten.relu.default": lambda x: self.tf.nn.relu(x),
            "aten.relu6.default": lambda x: self.tf.nn.relu6(x),
            "aten.hardtanh.default": self._hardtanh,
            "aten.clamp.default": self._clamp,
            "aten.hardswish.default": lambda x: x * self.tf.nn.relu6(x + 3.0) * (1.0 / 6.0),
            "aten.hardsigmoid.default": lambda x: self.tf.nn.relu6(x + 3.0) * (1.0 / 6.0),
            "aten.avg_pool2d.default": self._avg_pool2d,
            "aten.mean.dim": self._mean,
            "aten.cat.default": self._cat,
            "aten.slice.Tensor": self._slice,
            "aten.split.Tensor": self._split,
            "aten.split_with_sizes.default": self._split_sizes,
            "aten.flatten.using_ints": self._flatten,
            "aten.view.default": self._view,
            "aten.reshape.default": self._view,
            "aten.permute.default": self._permute,
            "aten.dropout.default": lambda x, p=0.0, train=False: x,
        }

    # -------------------------------------------------------------------------------------------- helpers
    def _rank(self, node) -> int:
        return len(node.meta["val"].shape)

    def _value(self, env: dict, arg):
        if hasattr(arg, "name") and hasattr(arg, "op"):
            return env[arg.name]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self._value(env, a) for a in arg)
        return arg

    def _axis(self, node, dim: int) -> int:
        rank = self._rank(node)
        dim = dim % rank
        if rank >= 5:  # a channel-split view (B, c1..ck, H, W), held as (B·H·W, c1..ck)
            if not 1 <= dim <= rank - 3:
                raise MicronetError(f"an op on axis {dim} of a channel-split {rank}-D view is not supported")
            return dim
        return NHWC_AXIS[dim] if rank == 4 else dim

    # ----------------------------------------------------------------------------------------------- ops
    def _conv2d(self, x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
        tf = self.tf
        if not isinstance(w, np.ndarray) or (b is not None and not isinstance(b, np.ndarray)):
            raise MicronetError("conv2d with a computed (non-constant) weight cannot be lowered")
        if isinstance(padding, str) or tuple(dilation) != (1, 1):
            raise MicronetError(f"conv2d with padding={padding!r} dilation={dilation!r} is not supported")
        cout, cin_g, kh, kw = w.shape
        cin = cin_g * groups
        sh, sw = stride
        ph, pw = padding
        if (sh, sw) == (1, 1) and kh == 2 * ph + 1 and kw == 2 * pw + 1:
            pad: Any = "SAME"  # symmetric, as PyTorch pads
        elif (ph, pw) == (0, 0):
            pad = "VALID"
        else:
            pad = [[0, 0], [ph, ph], [pw, pw], [0, 0]]
        if groups > 1 and groups == cin and cin_g == 1 and sh == sw:
            mult = cout // cin  # output channel c·mult + m comes from input channel c, in both frameworks
            f = w[:, 0].reshape(cin, mult, kh, kw).transpose(2, 3, 0, 1).astype(np.float32)
            if not isinstance(pad, str):
                x = tf.pad(x, pad)
                pad = "VALID"
            parts = self._depthwise_parts(cin, mult, kh * kw)
            if parts == 1:
                y = tf.nn.depthwise_conv2d(x, f, (1, sh, sw, 1), pad)
            else:
                fs = np.split(f, parts, axis=2)
                y = tf.concat([tf.nn.depthwise_conv2d(xp, fp, (1, sh, sw, 1), pad)
                               for xp, fp in zip(tf.split(x, parts, axis=3), fs)], axis=3)
        else:  # dense or grouped: TensorFlow infers the groups from the filter's input depth
            y = tf.nn.conv2d(x, w.transpose(2, 3, 1, 0).astype(np.float32), (1, sh, sw, 1), pad)
        return y if b is None else tf.nn.bias_add(y, b.astype(np.float32))

    def _depthwise_parts(self, channels: int, mult: int, taps: int) -> int:
        """How many channel parts a depthwise conv is lowered as (see F32_DEPTHWISE_MAX_WEIGHTS)."""
        if not self.split_depthwise or mult != 1 or channels * taps <= F32_DEPTHWISE_MAX_WEIGHTS:
            return 1
        for parts in range(2, MAX_SPLIT + 1):
            if channels % parts == 0 and (channels // parts) % DEPTHWISE_CHANNEL_TILE == 0 \
                    and channels // parts * taps <= F32_DEPTHWISE_MAX_WEIGHTS:
                return parts
        return 1

    def _linear(self, x, w, b=None):
        y = self.tf.matmul(x, w.T.astype(np.float32))
        return y if b is None else y + b.astype(np.float32)

    def _binary(self, fn):
        def lower(a, b, alpha=1):
            if alpha != 1:
                raise MicronetError("add/sub with alpha != 1 is not supported")
            return fn(a, b)
        return lower

    def _maximum_via_relu(self, a, b):
        """max(a, b) = b + relu(a - b): SUB with a fused RELU and an ADD, both taken by XNNPACK in int8,
        where MAXIMUM runs in the slow built-in kernel and splits the delegated graph. Equal up to one
        rounding of the sum."""
        return b + self.tf.nn.relu(a - b)

    def _hardtanh(self, x, lo=-1.0, hi=1.0):
        if (lo, hi) == (0.0, 6.0):
            return self.tf.nn.relu6(x)
        return self.tf.clip_by_value(x, lo, hi)

    def _clamp(self, x, lo=None, hi=None):
        tf = self.tf
        if lo == 0.0 and hi == 6.0:
            return tf.nn.relu6(x)
        if lo == 0.0 and hi is None:
            return tf.nn.relu(x)
        if lo is not None:
            x = tf.maximum(x, np.float32(lo))
        if hi is not None:
            x = tf.minimum(x, np.float32(hi))
        return x

    def _avg_pool2d(self, x, kernel, stride=None, padding=(0, 0), ceil_mode=False, count_include_pad=True,
                    divisor_override=None):
        h, w = int(x.shape[1]), int(x.shape[2])
        if tuple(kernel) != (h, w) or tuple(padding) not in ((0, 0), (0,), 0):
            raise MicronetError(f"avg_pool2d with kernel {kernel} on a {h}×{w} map: only global pooling is supported")
        return self.tf.reduce_mean(x, axis=[1, 2], keepdims=True)

    # Structural ops need the node (for its rank), so they are dispatched with it.
    def _mean(self, node, x, dims, keepdim=False):
        return self.tf.reduce_mean(x, axis=[self._axis(node.args[0], d) for d in dims], keepdims=keepdim)

    def _cat(self, node, tensors, dim=0):
        # XNNPACK takes CONCATENATION of at most MAX_CONCAT inputs; a longer one would run in the slow
        # built-in kernel and cut the delegated graph in two, so it becomes a tree of short ones.
        parts, axis = list(tensors), self._axis(node, dim)
        while len(parts) > MAX_CONCAT:
            parts = [self.tf.concat(parts[i:i + MAX_CONCAT], axis=axis) if len(parts[i:i + MAX_CONCAT]) > 1
                     else parts[i] for i in range(0, len(parts), MAX_CONCAT)]
        return self.tf.concat(parts, axis=axis) if len(parts) > 1 else parts[0]

    def _slice(self, node, x, dim=0, start=None, end=None, step=1):
        axis = self._axis(node, dim)
        size = int(x.shape[axis])
        start = 0 if start is None else max(0, start + size if start < 0 else start)
        end = size if end is None else min(size, end + size if end < 0 else end)
        if start == 0 and end == size and step == 1:
            return x
        index = [slice(None)] * len(x.shape)
        index[axis] = slice(start, end, step)
        return x[tuple(index)]

    def _split(self, node, x, split_size, dim=0):
        axis = self._axis(node.args[0], dim)
        size = int(x.shape[axis])
        sizes = [split_size] * (size // split_size) + ([size % split_size] if size % split_size else [])
        return self._split_sizes(node, x, sizes, dim)

    def _split_sizes(self, node, x, sizes, dim=0):
        axis = self._axis(node.args[0], dim)
        return self._split_tree(x, [int(n) for n in sizes], axis)

    def _split_tree(self, x, sizes: list[int], axis: int) -> list:
        """Equal parts become SPLIT, which XNNPACK takes (SPLIT_V, for unequal parts, runs in the built-in
        kernel); more than ``MAX_SPLIT`` parts become a tree of splits."""
        if len(sizes) == 1:
            return [x]
        if len(set(sizes)) > 1:
            return self.tf.split(x, sizes, axis=axis)
        if len(sizes) <= MAX_SPLIT:
            return self.tf.split(x, len(sizes), axis=axis)
        for ways in range(MAX_SPLIT, 1, -1):
            if len(sizes) % ways == 0:
                step = len(sizes) // ways
                return [part for chunk in self.tf.split(x, ways, axis=axis)
                        for part in self._split_tree(chunk, sizes[:step], axis)]
        return self.tf.split(x, sizes, axis=axis)

    def _flatten(self, node, x, start=0, end=-1):
        shape = tuple(node.args[0].meta["val"].shape)
        if len(shape) == 4 and shape[2:] == (1, 1):  # (B, C, 1, 1): the NHWC order is the same
            return self.tf.reshape(x, [int(d) for d in node.meta["val"].shape])
        raise MicronetError(f"flatten of a {tuple(shape)} feature map is not supported (only after a global pool)")

    def _view(self, node, x, shape):
        src = tuple(node.args[0].meta["val"].shape)
        dst = tuple(int(d) for d in node.meta["val"].shape)
        if node.args[0].name in self._nhwc_ready:  # already laid out as this 4-D map (_pixels_from_channels)
            return x
        if (len(src) == 4 and src[2:] == (1, 1) and len(dst) == 2) or (len(src) < 4 and len(dst) < 4):
            return self.tf.reshape(x, list(dst))
        if len(src) == 2 and len(dst) == 4 and dst[2:] == (1, 1):  # (B, C) → (B, C, 1, 1) = NHWC (B, 1, 1, C)
            return self.tf.reshape(x, [dst[0], 1, 1, dst[1]])
        # Channel-split views: (B, C, H, W) ↔ (B, c1..ck, H, W), held in TensorFlow as (B·H·W, c1..ck), so
        # that NHWC's channel-last memory order is kept and a transpose of the channel axes is one TRANSPOSE.
        if len(src) == 4 and len(dst) >= 5 and dst[0] == src[0] and dst[-2:] == src[2:] \
                and int(np.prod(dst[1:-2])) == src[1]:
            if len(dst) - 2 > MAX_TRANSPOSE_RANK:
                raise MicronetError(f"view {src} → {dst}: more than {MAX_TRANSPOSE_RANK - 1} channel axes")
            return self.tf.reshape(x, [src[0] * src[2] * src[3], *dst[1:-2]])
        if len(src) >= 5 and len(dst) == 4 and dst[0] == src[0] and dst[2:] == src[-2:] \
                and int(np.prod(src[1:-2])) == dst[1]:
            return self.tf.reshape(x, [dst[0], dst[2], dst[3], dst[1]])
        raise MicronetError(f"view {src} → {dst} mixes the channel and spatial axes; not supported")

    def _permute(self, node, x, dims):
        rank = self._rank(node.args[0])
        dims = [d % rank for d in dims]
        if rank == 5 and dims == [0, 2, 3, 4, 1]:
            return self._pixels_from_channels(node, x)
        if rank < 5 or dims[0] != 0 or dims[-2:] != [rank - 2, rank - 1]:
            raise MicronetError(f"permute {dims} of a {rank}-D tensor: only channel axes of a channel-split view")
        self.channel_transposes += 1
        return self.tf.transpose(x, dims[:-2])

    def _pixels_from_channels(self, node, x):
        """(B, p, C, H, W) → (B, C, H, W, p), then viewed as (B, C, H, W·p): channels (r·C + c) that hold
        pixel p·j + r (export.fast.PixelPairs). In NHWC memory the source, held as (B·H·W, p, C), already is
        (B, H, W·p, C): one RESHAPE, and the 4-D view after it is that tensor."""
        b, p, c, h, w = (int(d) for d in node.args[0].meta["val"].shape)
        users = list(node.users)
        if not users or any(str(u.target) not in ("aten.view.default", "aten.reshape.default")
                            or tuple(int(d) for d in u.meta["val"].shape) != (b, c, h, w * p) for u in users):
            raise MicronetError("a permute moving a channel axis behind W must be viewed as (B, C, H, W·p)")
        self._nhwc_ready.add(node.name)
        return self.tf.reshape(x, [b, h, w * p, c])

    _STRUCTURAL = {"aten.mean.dim", "aten.cat.default", "aten.slice.Tensor", "aten.split.Tensor",
                   "aten.split_with_sizes.default", "aten.flatten.using_ints", "aten.view.default",
                   "aten.reshape.default", "aten.permute.default"}

    # ------------------------------------------------------------------------------------------- driver
    def run(self, x):
        """The lowered computation on the NHWC input ``x``; returns the output tensors."""
        self.channel_transposes, self._nhwc_ready = 0, set()  # per trace (TensorFlow may trace twice)
        env: dict[str, Any] = {self.user_inputs[0]: x}
        for name, value in self.consts.items():
            env[name] = value
        outputs = None
        for node in self.ep.graph.nodes:
            if node.op == "placeholder":
                continue
            if node.op == "output":
                outputs = [self._value(env, a) for a in node.args[0]]
                break
            if node.target is operator.getitem:
                env[node.name] = env[node.args[0].name][node.args[1]]
                continue
            key = str(node.target)
            handler = self.handlers.get(key)
            if handler is None:
                raise MicronetError(f"the TensorFlow lowering has no rule for {key} (node {node.name})")
            args = [self._value(env, a) for a in node.args]
            kwargs = {k: self._value(env, v) for k, v in node.kwargs.items()}
            args = [self._const_for(node, a) for a in args]
            with self.tf.name_scope(_block_scope(node)):
                env[node.name] = (handler(node, *args, **kwargs) if key in self._STRUCTURAL
                                  else handler(*args, **kwargs))
        return outputs

    def _const_for(self, node, arg):
        """Constants beside a 4-D operand of an elementwise op are re-laid out; weights are left alone."""
        if isinstance(arg, np.ndarray) and str(node.target) not in ("aten.conv2d.default", "aten.linear.default"):
            return _nhwc_const(arg, self._rank(node))
        return arg


def _block_scope(node) -> str:
    """The TensorFlow name scope of ``node``'s ops: the MicroNet block of its module (``stem``, ``blocks.3``,
    ``head``; ``micronet.counting.stage_of``), so each op of the TFLite file names its block in its output tensors'
    names and ``micronet profile`` can time a .tflite per block. Empty for a node outside any module."""
    from micronet.counting import stage_of

    stack = node.meta.get("nn_module_stack") or {}
    path = next(reversed(stack.values()))[0] if stack else ""
    return stage_of(path) if path else ""


def export_saved_model(module, example_nchw, saved_model_dir: str | os.PathLike, *,
                       max_via_relu: bool = False, split_depthwise: bool | None = None) -> dict[str, Any]:
    """Lower ``module`` (an eval-mode deploy graph, NCHW float32 input) to a TensorFlow SavedModel at
    ``saved_model_dir`` (replaced), signature ``serving_default``: ``input`` (NHWC) → ``logits``.

    ``max_via_relu`` writes max(a, b) as b + relu(a - b) (the int8 lowering); ``split_depthwise`` lowers
    depthwise convs beyond ``F32_DEPTHWISE_MAX_WEIGHTS`` in channel parts (default: for the float lowering
    only). Returns a record with the input/output shapes, ``input_layout`` "NHWC" and wall times. The
    folder appears only when complete."""
    import torch

    start = time.perf_counter()
    with torch.no_grad():
        exported = torch.export.export(module.eval(), (example_nchw,))
    export_s = time.perf_counter() - start
    from micronet.quiet import import_tensorflow

    tf = import_tensorflow()

    b, c, h, w = (int(d) for d in example_nchw.shape)
    if split_depthwise is None:  # the float lowering splits large depthwise convs, the int8 one does not
        split_depthwise = not max_via_relu
    lowering = _Lowering(tf, exported, max_via_relu=max_via_relu, split_depthwise=split_depthwise)
    spec = tf.TensorSpec([b, h, w, c], tf.float32, name="input")

    class _Graph(tf.Module):
        @tf.function(input_signature=[spec], autograph=False)
        def serve(self, input):  # noqa: A002 - the signature's input name
            (logits,) = lowering.run(input)
            return {"logits": logits}

    graph = _Graph()
    concrete = graph.serve.get_concrete_function()
    out_shape = [int(d) for d in concrete.structured_outputs["logits"].shape]
    target = Path(saved_model_dir)
    with replacing_dir(target) as tmp:
        tf.saved_model.save(graph, str(tmp), signatures={"serving_default": concrete})
    return {
        "stage": "tf_graph",
        "tool": "micronet.export.tf_graph (torch.export → TensorFlow NHWC)",
        "tensorflow": tf.__version__,
        "wall_s": round(time.perf_counter() - start, 3),
        "torch_export_s": round(export_s, 3),
        "inputs": [{"name": "input", "shape": [b, h, w, c]}],
        "outputs": [{"name": "logits", "shape": out_shape}],
        "input_layout": "NHWC",
        "max_via_relu": max_via_relu,
        "split_depthwise": split_depthwise,
        "channel_transposes": lowering.channel_transposes,
        "aten_ops": _op_counts(exported),
    }


def _op_counts(exported) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in exported.graph.nodes:
        if node.op == "call_function" and node.target is not operator.getitem:
            counts[str(node.target)] = counts.get(str(node.target), 0) + 1
    return dict(sorted(counts.items()))
