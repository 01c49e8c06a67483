"""Time of the robustness audit of one photo on the current device, stage by stage.

    python bench/audit_latency.py [--model ViT-B-32] [--device cpu|cuda] [--repeats 1]
                                  [--steps 10] [--square-queries 100] [--conditions ...]
                                  [--release-precision emulated|float16] [--float16-unit]

Prints the audit's median wall time (after one warm-up: a clean-only audit of the same photo,
which fills the text embedding cache), its time per stage (clean, gradients, each condition,
the checklist's runs, checks), and the unit costs that explain them, measured taking turns
right after the audits (so that the machine's load affects them alike): one image-encoder
forward, one forward+backward in float32 (input gradient only), and one forward+backward of
the release's model in the audit's release precision (and in float16 with --float16-unit).
The headline is the audit's time in float32 forward+backward passes (issue target: <= 180
on a 2-core CPU). Random weights are used (the timing does not depend on them), so it runs
offline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import device_name, interleaved_medians_ms, print_flags

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
    parser.add_argument("--release-precision", default=None, help="emulated or float16")
    parser.add_argument(
        "--float16-unit", action="store_true", help="also time the real float16 model's pass"
    )
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

    def audit(conditions=args.conditions):
        results.append(
            run_audit(
                playground,
                photo,
                LABELS,
                steps=args.steps,
                square_queries=args.square_queries,
                conditions=conditions,
                release_precision=args.release_precision,
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

    audit("clean")  # the warm-up: text embeddings cached, as in a running app
    samples = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        audit()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1000)
    audit_ms = statistics.median(samples)
    result = results[-1]
    precision = result.settings["release_precision"] or args.release_precision
    units = {
        "forward": forward,
        "fp32": gradient(classifier),
        "release": gradient(
            attacked_model(classifier, None, "release", release_precision=precision)
        ),
    }
    if args.float16_unit:
        units["float16"] = gradient(
            attacked_model(classifier, None, "release", release_precision="float16")
        )
    unit_ms = interleaved_medians_ms(units, device, 3)
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
        f"unit costs: forward {unit_ms['forward']:.0f} ms | forward+backward fp32 "
        f"{unit_ms['fp32']:.0f} ms | forward+backward of the release's model ({precision}) "
        f"{unit_ms['release']:.0f} ms"
        + (f" | in float16 {unit_ms['float16']:.0f} ms" if "float16" in unit_ms else "")
    )
    print(
        f"audit = {audit_ms / unit_ms['fp32']:.0f} float32 forward+backward passes "
        f"(release precision {precision}; target <= 180 on a 2-core CPU)"
    )
    print(
        f"release ({precision}) gradient / fp32 gradient: "
        f"x{unit_ms['release'] / unit_ms['fp32']:.1f}"
    )


if __name__ == "__main__":
    main()
