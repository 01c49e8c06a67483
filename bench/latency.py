"""Latency ratios of one playground request, measured in one run on the current device.

    python bench/latency.py [--model ViT-B-32] [--device cpu|cuda] [--repeats 5]

Prints, as medians over repeats:
  request / floor: a full request (PGD-10 + CLIPure-Cos + every evaluation, text embeddings
      already cached) against its floor, 10 image-encoder forward+backward passes plus the
      two evaluation forwards (clean and adversarial) of the same encoder. Target <= 1.10.
  cos / forward: one `cos_purify` call (10 steps) against one image-encoder forward.
      Target <= 0.01.
Random weights are used (the timing does not depend on them), so it runs offline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import device_name, median_ms, print_flags

from clipure_core import AttackConfig, Playground, cos_purify, load_backbone

ASSET = Path(__file__).resolve().parents[1] / "assets" / "chelsea.png"
ATTACK_STEPS = 10


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/latency.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--model", default="ViT-B-32", help="open_clip architecture (random weights)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    print_flags(args)

    backbone = load_backbone(args.model, "random", device=args.device)
    device = backbone.device
    playground = Playground(backbone, templates="ensemble")
    photo = Image.open(ASSET)
    labels = "cat, dog, car, airplane, coffee mug, rocket, astronaut, bird, ship, truck"
    attack = AttackConfig("pgd", "linf", 4 / 255, ATTACK_STEPS)
    pixels = backbone.prepare(photo).unsqueeze(0)

    def request():
        playground.run(photo, labels, attack, "transfer", ["clipure_cos"], seed=0)

    def forward():
        with torch.no_grad():
            backbone.encode_image(pixels)

    def forward_backward():
        x = pixels.clone().requires_grad_(True)
        torch.autograd.grad(backbone.encode_image(x).sum(), x)

    def floor():
        for _ in range(ATTACK_STEPS):
            forward_backward()
        forward()
        forward()

    z = backbone.encode_image(pixels).detach()
    null = playground.purifier("clipure_cos").null_embedding

    def purify():
        cos_purify(z, null, 10, 30.0)

    request_ms = median_ms(request, device, args.repeats)
    floor_ms = median_ms(floor, device, args.repeats)
    forward_ms = median_ms(forward, device, args.repeats * 4)
    cos_ms = median_ms(purify, device, args.repeats * 20)
    print(f"device: {device_name(device)}; model: {args.model}; embedding dim {z.shape[-1]}")
    print(
        f"request {request_ms:8.1f} ms | floor {floor_ms:8.1f} ms | "
        f"ratio {request_ms / floor_ms:.3f} (target <= 1.10)"
    )
    print(
        f"cos     {cos_ms:8.3f} ms | forward {forward_ms:6.1f} ms | "
        f"ratio {cos_ms / forward_ms:.4f} (target <= 0.01)"
    )


if __name__ == "__main__":
    main()
