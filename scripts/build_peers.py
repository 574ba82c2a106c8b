"""Build the peer models of the benchmarks as ONNX files: timm MobileNetV3-Small and LCNet (classifiers),
and torchvision's LR-ASPP MobileNetV3-Large (segmentation, 19 Cityscapes classes, the peer of seg-m0..m3).

    python scripts/build_peers.py [--venv .cache/peers-venv] [--out reports/peers] [--input-size 224]
    python scripts/build_peers.py --peers lraspp-mnv3-large --input-size 512x1024

timm needs torchvision, and no torchvision on the package index imports beside our pinned torch 2.13.0 CPU
wheel, so the peers are built in a separate virtual environment (made here on first use, exact pins below;
it downloads about 3 GB of wheels once, since torch 2.14.1 from the index is the CUDA build). Only the ONNX
export runs there: ``pretrained=False`` (nothing downloaded at run time), eval mode, the dynamo exporter at
opset 18 with input ``input`` and output ``logits`` like ours. The files are then simplified with the
main environment's onnxsim and go through exactly the same onnx2tf conversion and timing as MicroNet
(``scripts/bench_fast.py --peer-onnx NAME=PATH``). Peer models are benchmark inputs, not part of the package.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import venv
from pathlib import Path

import onnx

#: The peers: name in the report → the model's name in timm, or ``torchvision:`` and the name of a
#: torchvision segmentation builder (built with 19 classes and no weights; its ``out`` map is the output).
PEERS = {
    "mnv3s-0.50": "mobilenetv3_small_050",
    "mnv3s-0.75": "mobilenetv3_small_075",
    "mnv3s-1.00": "mobilenetv3_small_100",
    "lcnet-0.50": "lcnet_050",
    "lraspp-mnv3-large": "torchvision:lraspp_mobilenet_v3_large",
}
#: The peers built by default: the classifiers (a segmentation peer is asked for by name, with its H×W).
CLASSIFIER_PEERS = [name for name, model in PEERS.items() if not model.startswith("torchvision:")]
PEER_PINS = ["torch==2.14.1", "torchvision==0.29.1", "timm==1.0.31", "onnx==1.19.1", "onnxscript==0.7.2"]

_EXPORT_CHILD = """
import sys, torch
name, height, width, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if name.startswith("torchvision:"):
    import torchvision.models.segmentation as seg

    class OutMap(torch.nn.Module):  # torchvision returns {"out": map}; the file's output is the map
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)["out"]

    builder = getattr(seg, name.split(":", 1)[1])
    model = OutMap(builder(weights=None, weights_backbone=None, num_classes=19)).eval()
else:
    import timm

    model = timm.create_model(name, pretrained=False).eval()
torch.onnx.export(model, (torch.zeros(1, 3, height, width),), path, dynamo=True, opset_version=18,
                  input_names=["input"], output_names=["logits"], external_data=False)
"""


def ensure_venv(path: Path) -> Path:
    python = path / "bin" / "python"
    if not python.exists():
        print(f"creating {path} with {' '.join(PEER_PINS)} (a one-off, large download)", flush=True)
        venv.create(path, with_pip=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PINS], check=True)
    return python


def parse_size(text: str) -> tuple[int, int]:
    """``224`` → (224, 224); ``512x1024`` → (512, 1024)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"input size {text!r} is neither N nor HxW")
    return (int(parts[0]), int(parts[-1]))


def export_peer(python: Path, model_name: str, size: tuple[int, int], out: Path) -> Path:
    raw = out.with_suffix(".raw.onnx")
    subprocess.run([str(python), "-c", _EXPORT_CHILD, model_name, str(size[0]), str(size[1]), str(raw)],
                   check=True)
    import onnxsim

    simplified, ok = onnxsim.simplify(onnx.load(str(raw)))
    if not ok:
        raise SystemExit(f"onnxsim could not validate the simplified {model_name}")
    onnx.checker.check_model(simplified)
    onnx.save(simplified, str(out))
    raw.unlink()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", type=Path, default=Path(".cache") / "peers-venv")
    ap.add_argument("--out", type=Path, default=Path("reports") / "peers")
    ap.add_argument("--input-size", type=parse_size, default=(224, 224), help="N or HxW")
    ap.add_argument("--peers", nargs="+", default=CLASSIFIER_PEERS, choices=list(PEERS))
    args = ap.parse_args(argv)
    python = ensure_venv(args.venv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.peers:
        h, w = args.input_size
        stem = name if h == w == 224 else f"{name}-{h}x{w}"
        path = export_peer(python, PEERS[name], args.input_size, args.out / f"{stem}.onnx")
        print(f"{name}={path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
