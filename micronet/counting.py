"""MAdds and parameters, per layer, by the rule that reproduces the authors' figures.

The rule (shared/spec/architecture.md §3): count one multiply-accumulate (MAdd) per weight use in
every convolution and every Linear -- the classifier *and* the Dynamic Shift-Max hyper-functions --
plus the Shift-Max products (2 multiplies per element for K=1: a*x + b*x~; 4 for K=2). BatchNorm
(folded at deployment), pooling, ReLU6, channel shuffles and the max are free. This lands on the
released 4.05M/6.12M/12.74M/20.81M and is the only convention reported as "MAdds" anywhere here.

Other conventions are shown beside it and named: ``torch.utils.flop_counter`` counts FLOPs = 2 x
MACs for convolutions and matrix multiplies only (no Shift-Max products), so
``FLOPs / 2 == conv MAdds + Linear MAdds`` exactly; ``cross_check`` proves it on the real model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .layers import DynamicShiftMax
from .model import MicroNet, build_model

RULE = "conv + all Linear (classifier and Shift-Max hyper-functions) + Shift-Max products (2/elt K=1, 4/elt K=2)"


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
    input_size: int
    num_classes: int
    layers: list[LayerCount] = field(default_factory=list)

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
            parts = row.name.split(".")
            stage = ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]
            s = stages.setdefault(stage, {"stage": stage, "params": 0, "madds": 0, "conv": 0, "linear": 0,
                                          "shiftmax": 0, "out_shape": row.out_shape})
            s["params"] += row.params
            s["madds"] += row.madds
            if row.op in ("conv", "linear", "shiftmax"):
                s[row.op] += row.madds
            if row.op != "batchnorm":
                s["out_shape"] = row.out_shape
        return list(stages.values())

    def to_dict(self) -> dict:
        return {
            "variant": self.variant,
            "input_size": self.input_size,
            "num_classes": self.num_classes,
            "rule": RULE,
            "totals": {
                "madds": self.madds,
                "params": self.params,
                "conv_madds": self.total("conv"),
                "linear_madds": self.total("linear"),
                "shiftmax_madds": self.total("shiftmax"),
            },
            "stages": self.by_stage(),
            "layers": [asdict(row) for row in self.layers],
        }


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)


def count_model(model: MicroNet, input_size: int | None = None) -> Counts:
    """Count a built model by running one batch-1 forward pass on the meta device.

    Shapes come from the pass, the arithmetic from each layer's definition, so the count is exact for
    any input size without allocating activations.
    """
    size = input_size or model.input_size
    counts = Counts(model.config.name, size, model.num_classes)
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
            else:
                op, madds = "batchnorm", 0
            counts.layers.append(LayerCount(name, op, list(x.shape), list(output.shape), _own_params(mod), madds))

        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, DynamicShiftMax, nn.BatchNorm2d, nn.BatchNorm1d)):
            hooks.append(module.register_forward_hook(record(name, module)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    # Hooks fire in execution order; Shift-Max fires after its own Linears, keep it that way but
    # make sure nothing was counted twice.
    assert len({id(r) for r in counts.layers}) == len(counts.layers)
    return counts


def count_variant(variant: str, input_size: int = 224, num_classes: int = 1000) -> Counts:
    with torch.device("meta"):
        model = build_model(variant, num_classes=num_classes, input_size=input_size)
    return count_model(model, input_size)


def cross_check(variant: str, input_size: int = 224, num_classes: int = 1000) -> dict:
    """Compare with ``torch.utils.flop_counter.FlopCounterMode`` on the real model.

    Returns both conventions side by side; ``matches`` is True when FlopCounter's FLOPs / 2 equals
    our conv + Linear MAdds, i.e. when the only difference is the documented Shift-Max products.
    The model is built exactly as the one being counted (input size *and* classes), so the note
    printed under ``micronet flops`` compares against that table's total.
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(variant, num_classes=num_classes, input_size=input_size).eval()
    counts = count_model(model, input_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, input_size, input_size))
    flops = int(counter.get_total_flops())
    by_op = {str(k).split(".")[-1] if not hasattr(k, "__name__") else k.__name__: int(v)
             for k, v in counter.get_flop_counts().get("Global", {}).items()}
    conv_linear = counts.total("conv") + counts.total("linear")
    return {
        "variant": variant,
        "input_size": input_size,
        "num_classes": num_classes,
        "flop_counter_flops": flops,
        "flop_counter_flops_by_op": by_op,
        "flop_counter_as_madds": flops // 2,
        "conv_plus_linear_madds": conv_linear,
        "shiftmax_madds": counts.total("shiftmax"),
        "micronet_madds": counts.madds,
        "matches": flops == 2 * conv_linear,
    }
