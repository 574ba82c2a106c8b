"""MAdds and parameters, per layer, by the rule that reproduces the authors' figures.

The rule (shared/spec/architecture.md §3): count one multiply-accumulate (MAdd) per weight use in
every convolution and every Linear -- the classifier *and* the Dynamic Shift-Max hyper-functions --
plus the Shift-Max products (2 multiplies per element for K=1: a*x + b*x~; 4 for K=2). BatchNorm
(folded at deployment), pooling, ReLU6, channel shuffles and the max are free. This lands on the
released 4.05M/6.12M/12.74M/20.81M and is the only convention reported as "MAdds" anywhere here.

Other conventions are shown beside it and named: ``torch.utils.flop_counter`` counts FLOPs = 2 x
MACs for convolutions and matrix multiplies only (no Shift-Max products), so
``FLOPs / 2 == conv MAdds + Linear MAdds`` exactly; ``cross_check`` proves it on the real model.

The keypoint variants add two things the rule must place: DY-ReLU spatial attention (its 1x1 conv is
a conv; its per-position scaling is 1 product per element, counted like the Shift-Max products, as
op ``attention``) and bilinear x2 upsampling (listed as op ``upsample`` with 0 MAdds: interpolation is
free under the rule, like pooling; about 4 MAdds per output element under a FLOP-style count).

The segmentation variants add MR-ASPP's attention branch (``PooledAttention``): global pooling and the
sigmoid are free, its two grouped 1x1 convs are convs (on a 1x1 map), and its product with the feature
branch is 1 MAdd per element, counted as op ``attention`` exactly like the keypoint models' attention
product; the bilinear x2 and the final upsampling to the input size are free, as in pose.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .layers import DynamicShiftMax, SpatialAttention
from .errors import MicronetError
from .model import build_model
from .seg_head import PooledAttention

RULE = "conv + all Linear (classifier and Shift-Max hyper-functions) + Shift-Max products (2/elt K=1, 4/elt K=2)"
#: What the rule adds for the keypoint variants (printed under their tables).
POSE_RULE = "+ spatial attention (its 1x1 conv, 1 product/elt); bilinear upsampling free"
#: What the rule adds for the segmentation variants: MR-ASPP's attention branch.
SEG_RULE = "+ MR-ASPP attention (its 1x1 convs, 1 product/elt); global pool, sigmoid, bilinear upsampling free"
#: Each task's addition to ``RULE`` (none for classification).
TASK_RULES: dict[str, str] = {"classification": "", "pose": POSE_RULE, "segmentation": SEG_RULE}


#: What a task's outputs are called in tables.
TASK_OUTPUTS_NAME: dict[str, str] = {"classification": "classes", "pose": "heatmaps", "segmentation": "classes"}


#: Modules whose children are the per-block rows: the backbone's rows, the keypoint head's blocks, the parts
#: of MR-ASPP.
STAGE_GROUPS = ("blocks", "head_blocks", "mr_aspp")


def stage_of(module: str) -> str:
    """The stage (per-block row) a module path belongs to, as every per-block table names it (``by_stage``,
    ``micronet profile``, the TFLite lowering's name scopes): ``blocks.3.steps.1.0.conv`` → ``blocks.3``;
    ``stem.conv`` → ``stem``; ``head.fc`` → ``head``; ``mr_aspp.branch.0.conv`` → ``mr_aspp.branch``;
    ``head_blocks.1.steps.0`` → ``head_blocks.1``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] in STAGE_GROUPS and len(parts) > 1 else parts[0]


def task_rule(task: str) -> str:
    """The whole rule a task's table is counted by: ``RULE`` plus the task's addition."""
    return f"{RULE} {TASK_RULES[task]}".strip()

InputSize = int | tuple[int, int]


def input_hw(size: InputSize) -> tuple[int, int]:
    """(H, W) of a square size (int) or of an (H, W) pair."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def parse_input_size(text: str) -> InputSize:
    """``"224"`` -> 224, ``"256x192"`` (H x W) -> (256, 192); anything else is one line saying what to write."""
    parts = str(text).strip().lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values, default=0) <= 0:
        raise MicronetError(f"input size {text!r} is not a size: write pixels, e.g. 224, or H x W, e.g. 256x192")
    return values[0] if len(values) == 1 else (values[0], values[1])


def size_label(size: InputSize) -> str:
    h, w = input_hw(size)
    return f"{h}x{w}"


@dataclass
class LayerCount:
    name: str  # module path in the model
    op: str  # conv / linear / shiftmax / batchnorm
    in_shape: list[int]
    out_shape: list[int]
    params: int
    madds: int


@dataclass
class Counts:
    variant: str
    input_size: InputSize  # int (square, classification) or (H, W)
    num_classes: int  # classes, or heatmaps for a pose variant
    layers: list[LayerCount] = field(default_factory=list)
    task: str = "classification"

    def total(self, op: str | None = None, prefix: str = "") -> int:
        return sum(row.madds for row in self.layers if (op is None or row.op == op) and row.name.startswith(prefix))

    @property
    def madds(self) -> int:
        return self.total()

    @property
    def params(self) -> int:
        return sum(row.params for row in self.layers)

    def by_stage(self) -> list[dict]:
        """Per stem / block / head subtotals: the granularity the spec's per-block table uses."""
        stages: dict[str, dict] = {}
        for row in self.layers:
            stage = stage_of(row.name)
            s = stages.setdefault(stage, {"stage": stage, "params": 0, "madds": 0, "conv": 0, "linear": 0,
                                          "shiftmax": 0, "attention": 0, "out_shape": row.out_shape})
            s["params"] += row.params
            s["madds"] += row.madds
            if ".attention" in row.name:  # its 1x1 conv and its product: the attention's whole cost
                s["attention"] += row.madds
            elif row.op in ("conv", "linear", "shiftmax"):
                s[row.op] += row.madds
            # An attention inside a block does not change the block's output; a stage that *is* an attention
            # (MR-ASPP's) ends with its product, the branch's shape, not its convs' pooled 1x1.
            if row.op != "batchnorm" and (".attention" not in row.name or stage.endswith(".attention")):
                s["out_shape"] = row.out_shape
        return list(stages.values())

    def attention_total(self) -> int:
        """MAdds of the spatial attention (its 1x1 convs and products); 0 for classification."""
        return sum(row.madds for row in self.layers if ".attention" in row.name)

    def to_dict(self) -> dict:
        return {
            "variant": self.variant,
            "task": self.task,
            "input_size": self.input_size if isinstance(self.input_size, int) else list(self.input_size),
            "num_classes": self.num_classes,
            "rule": task_rule(self.task),
            "totals": {
                "madds": self.madds,
                "params": self.params,
                "conv_madds": self.total("conv"),
                "linear_madds": self.total("linear"),
                "shiftmax_madds": self.total("shiftmax"),
                **({"attention_madds": self.attention_total()} if self.task != "classification" else {}),
            },
            "stages": self.by_stage(),
            "layers": [asdict(row) for row in self.layers],
        }


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)


def count_model(model: nn.Module, input_size: InputSize | None = None) -> Counts:
    """Count a built model (a ``MicroNet``, ``PoseMicroNet`` or ``SegMicroNet``) by one batch-1 forward pass.

    Shapes come from the pass, the arithmetic from each layer's definition, so the count is exact for
    any input size without allocating activations (on the meta device).
    """
    size = input_size or model.input_size
    task = getattr(model, "task", "classification")  # PoseMicroNet says "pose", SegMicroNet "segmentation"
    counts = Counts(model.config.name, size, model.num_classes, task=task)
    hooks = []

    def record(name: str, module: nn.Module):
        def hook(mod: nn.Module, inputs, output) -> None:
            x = inputs[0]
            if isinstance(mod, nn.Conv2d):
                per_output = (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
                op, madds = "conv", output.numel() * per_output
            elif isinstance(mod, nn.Linear):
                op, madds = "linear", mod.in_features * mod.out_features * x.shape[0]
            elif isinstance(mod, DynamicShiftMax):
                op, madds = "shiftmax", x.numel() * 2 * mod.branches
            elif isinstance(mod, (SpatialAttention, PooledAttention)):
                op, madds = "attention", output.numel()
            elif isinstance(mod, nn.Upsample):
                op, madds = "upsample", 0
            else:
                op, madds = "batchnorm", 0
            counts.layers.append(LayerCount(name, op, list(x.shape), list(output.shape), _own_params(mod), madds))

        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, DynamicShiftMax, SpatialAttention, PooledAttention, nn.Upsample,
                               nn.BatchNorm2d, nn.BatchNorm1d)):
            hooks.append(module.register_forward_hook(record(name, module)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, *input_hw(size), device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    # Hooks fire in execution order; Shift-Max fires after its own Linears, keep it that way but
    # make sure nothing was counted twice.
    assert len({id(r) for r in counts.layers}) == len(counts.layers)
    return counts


def _build(variant: str, input_size: InputSize | None, num_classes: int | None) -> nn.Module:
    """Any task's model; ``None`` sizes and output counts mean the variant's own (224 / 256x192 / 1024x2048,
    1000 / 17 / 19)."""
    from .registry import resolve_variant

    info = resolve_variant(variant, task=None)
    size = info.input_size if input_size is None else input_size
    outputs = info.outputs if num_classes is None else num_classes
    if info.task == "pose":
        from .pose_model import build_pose_model

        return build_pose_model(info.name, keypoints=outputs, input_size=input_hw(size))
    if info.task == "segmentation":
        from .seg_model import build_seg_model

        return build_seg_model(info.name, classes=outputs, input_size=input_hw(size))
    if not isinstance(size, int):
        h, w = input_hw(size)
        if h != w:
            raise MicronetError(f"input size {h}x{w} is not supported for {info.name}: the classifiers take a "
                                "square input, e.g. 224")
        size = h
    return build_model(info.name, num_classes=outputs, input_size=size)


def count_variant(variant: str, input_size: InputSize | None = None, num_classes: int | None = None) -> Counts:
    """Count any variant; ``None`` means its own figures' input size and outputs (``VariantInfo``)."""
    with torch.device("meta"):
        model = _build(variant, input_size, num_classes)
    return count_model(model)


def cross_check(variant: str, input_size: InputSize | None = None, num_classes: int | None = None) -> dict:
    """Compare with ``torch.utils.flop_counter.FlopCounterMode`` on the real model.

    Returns both conventions side by side; ``matches`` is True when FlopCounter's FLOPs / 2 equals
    our conv + Linear MAdds, i.e. when the only difference is the documented Shift-Max products.
    The model is built exactly as the one being counted (input size *and* classes), so the note
    printed under ``micronet flops`` compares against that table's total.
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = _build(variant, input_size, num_classes).eval()
    counts = count_model(model)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, *input_hw(model.input_size)))
    flops = int(counter.get_total_flops())
    by_op = {str(k).split(".")[-1] if not hasattr(k, "__name__") else k.__name__: int(v)
             for k, v in counter.get_flop_counts().get("Global", {}).items()}
    conv_linear = counts.total("conv") + counts.total("linear")
    return {
        "variant": variant,
        "input_size": counts.input_size if isinstance(counts.input_size, int) else list(counts.input_size),
        "num_classes": counts.num_classes,
        "flop_counter_flops": flops,
        "flop_counter_flops_by_op": by_op,
        "flop_counter_as_madds": flops // 2,
        "conv_plus_linear_madds": conv_linear,
        "shiftmax_madds": counts.total("shiftmax"),
        "attention_product_madds": counts.total("attention"),
        "attention_kind": {"pose": "spatial attention", "segmentation": "MR-ASPP attention"}.get(counts.task, ""),
        "micronet_madds": counts.madds,
        "matches": flops == 2 * conv_linear,
    }
