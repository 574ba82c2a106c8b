"""Fingerprints of the fast deploy graph, to prove a refactor of export/fast leaves every graph byte-identical.

    PYTHONPATH=$PWD python scripts/fast_graph_fingerprint.py --out before.json
    PYTHONPATH=$PWD python scripts/fast_graph_fingerprint.py --out after.json --compare before.json

For each variant (m0 m1 m2 m3 release-m0 release-m3) at 96 and 224 px, each runtime profile (xnnpack,
onnxruntime, portable) and form (plain, relu_max; batch_one for onnxruntime only) it records:

* ``graph``: a SHA-256 of the ``torch.export`` graph in canonical form: every call_function node's ATen
  target and arguments in execution order, nodes named by position, every parameter, buffer or constant
  replaced by the SHA-256 of its dtype, shape and bytes. Constants are thus compared in the order the
  graph first uses them, independent of their module path or registration order (a refactor may rename
  or regroup submodules; what the runtimes receive is the same graph);
* ``ops``: the number of call_function nodes (a readable hint when the graph hash differs);
* ``logits``: a SHA-256 of the float32 logits on a fixed seeded input (batch of one).

Models are built under ``torch.manual_seed(0)`` and their BatchNorm statistics and affine parameters are
randomised from a fixed generator, so the folded weights and the border terms are not degenerate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from torch.fx import Node

from micronet.export.fast import batch_one_form, relu_max_form, to_fast_deploy
from micronet.model import build_model

VARIANTS = ("m0", "m1", "m2", "m3", "release-m0", "release-m3")
SIZES = (96, 224)
PROFILE_NAMES = ("xnnpack", "onnxruntime", "portable")


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    """Deterministic, non-trivial BatchNorm statistics and affine parameters (untrained ones are 0/1)."""
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.75 + 0.5 * torch.rand(n, generator=gen))
                m.weight.copy_(1.0 + 0.1 * torch.randn(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))


def _tensor_digest(t: torch.Tensor) -> str:
    t = t.detach().contiguous().cpu()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def graph_fingerprint(module: torch.nn.Module, example: torch.Tensor) -> tuple[str, int]:
    """(SHA-256 of the canonical exported graph, number of call_function nodes)."""
    ep = torch.export.export(module, (example,))
    sig = ep.graph_signature
    state = ep.state_dict
    consts = dict(ep.constants)
    lifted = {**sig.inputs_to_parameters, **sig.inputs_to_buffers, **sig.inputs_to_lifted_tensor_constants}
    names: dict[Node, str] = {}
    lines: list[str] = []
    calls = 0

    def canon(arg):
        if isinstance(arg, Node):
            return names[arg]
        if isinstance(arg, (list, tuple)):
            return "[" + ",".join(canon(a) for a in arg) + "]"
        if isinstance(arg, dict):
            return "{" + ",".join(f"{k}:{canon(v)}" for k, v in sorted(arg.items())) + "}"
        return repr(arg)

    for node in ep.graph.nodes:
        if node.op == "placeholder":
            key = lifted.get(node.name)
            if key is None:
                names[node] = f"input{len(names)}"
            else:
                tensor = state[key] if key in state else consts[key]
                names[node] = "const:" + _tensor_digest(tensor)
        elif node.op == "call_function":
            names[node] = f"n{calls}"
            calls += 1
            kwargs = canon(dict(node.kwargs)) if node.kwargs else ""
            lines.append(f"{names[node]}={node.target}({canon(node.args)}){kwargs}")
        elif node.op == "output":
            lines.append(f"out({canon(node.args)})")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest(), calls


def fingerprints(variants=VARIANTS, sizes=SIZES) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for variant in variants:
        for size in sizes:
            torch.manual_seed(0)
            model = build_model(variant, input_size=size).eval()
            _randomise_batchnorm(model)
            x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(7))
            for profile in PROFILE_NAMES:
                fast = to_fast_deploy(model, profile=profile)
                forms = {"plain": fast, "relu_max": relu_max_form(fast)}
                if profile == "onnxruntime":
                    forms["batch_one"] = batch_one_form(fast)
                for form, module in forms.items():
                    t0 = time.time()
                    graph, ops = graph_fingerprint(module, torch.zeros(1, 3, size, size))
                    with torch.no_grad():
                        logits = module(x)
                    key = f"{variant}/{size}/{profile}/{form}"
                    out[key] = {"graph": graph, "ops": ops, "logits": _tensor_digest(logits)}
                    print(f"{key}: {ops} ops, {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--compare", type=Path, help="a previous --out file; exit 1 if any fingerprint differs")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    args = ap.parse_args()
    prints = fingerprints(args.variants, args.sizes)
    args.out.write_text(json.dumps(prints, indent=1, sort_keys=True) + "\n")
    if args.compare is None:
        return 0
    before = json.loads(args.compare.read_text())
    differ = [k for k in prints if before.get(k) != prints[k]]
    missing = [k for k in before if k not in prints]
    for k in differ:
        print(f"DIFFERS {k}: before {before.get(k)} after {prints[k]}")
    print(f"{len(prints) - len(differ)} of {len(prints)} identical; {len(missing)} in the old file not computed")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
