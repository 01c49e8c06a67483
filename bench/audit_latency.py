"""Time of the robustness audit of one photo on the current device, stage by stage.

    python bench/audit_latency.py [--model ViT-B-32] [--device cpu|cuda] [--repeats 1]
                                  [--steps 10] [--square-queries 100] [--conditions ...]

Prints the audit's median wall time (after one warm-up audit, which also fills the text
embedding cache), its time per stage (clean, gradients, each condition, single step, eps
sweep, checks), and the unit costs that explain them: one image-encoder forward, one
forward+backward in float32, and one forward+backward of the release's float16 model.
Random weights are used (the timing does not depend on them), so it runs offline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import device_name, median_ms, print_flags

from clipure_core import Playground, load_backbone
from clipure_core.audit import SQUARE_QUERIES, run_audit
from clipure_core.threats import attacked_model

ASSET = Path(__file__).resolve().parents[1] / "assets" / "chelsea.png"
LABELS = "cat, dog, car, airplane, coffee mug, rocket, astronaut, bird, ship, truck"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/audit_latency.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--model", default="ViT-B-32", help="open_clip architecture (random weights)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--repeats", type=int, default=1, help="timed audits after the warm-up")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps of gradient conditions")
    parser.add_argument(
        "--square-queries", type=int, default=SQUARE_QUERIES, help="Square attack query budget"
    )
    parser.add_argument("--conditions", default=None, help="comma-separated (default: all)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    print_flags(args)

    backbone = load_backbone(args.model, "random", device=args.device)
    device = backbone.device
    playground = Playground(backbone, templates="ensemble")
    photo = Image.open(ASSET)
    pixels = backbone.prepare(photo).unsqueeze(0)
    results = []

    def audit():
        results.append(
            run_audit(
                playground,
                photo,
                LABELS,
                steps=args.steps,
                square_queries=args.square_queries,
                conditions=args.conditions,
            )
        )

    classifier = playground.classifier([label.strip() for label in LABELS.split(",")])
    label = torch.tensor([0], device=device)

    def forward():
        with torch.no_grad():
            backbone.encode_image(pixels)

    def gradient(model):
        def run():
            x = pixels.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(x), label), x)

        return run

    audit_ms = median_ms(audit, device, args.repeats)
    forward_ms = median_ms(forward, device, 3)
    backward_ms = median_ms(gradient(classifier), device, 3)
    release_ms = median_ms(gradient(attacked_model(classifier, None, "release")), device, 3)
    result = results[-1]
    print(f"device: {device_name(device)}; model: {args.model} (random weights)")
    print(
        f"audit of one photo: {audit_ms / 1000:.1f} s (median of {args.repeats}; "
        f"{args.steps} PGD steps, Square {args.square_queries} queries, "
        f"conditions: {', '.join(result.conditions)})"
    )
    for stage, ms in sorted(result.timings_ms.items(), key=lambda item: -item[1]):
        if stage != "total":
            print(f"  {stage:12} {ms / 1000:8.1f} s  {ms / result.timings_ms['total']:6.1%}")
    print(
        f"unit costs: forward {forward_ms:.0f} ms | forward+backward fp32 {backward_ms:.0f} ms"
        f" | forward+backward of the release's fp16 model {release_ms:.0f} ms"
    )
    print(f"release fp16 gradient / fp32 gradient: x{release_ms / backward_ms:.1f}")


if __name__ == "__main__":
    main()
