"""Time of one CLIPure-Diff purification (10 steps) relative to one image-encoder forward.

    python bench/diff_latency.py [--model ViT-L-14] [--device cpu|cuda] [--precision fp32]

Uses the ViT-L/14 prior's size (LAION's config: dim 768, depth 24, 32 heads) with random
weights, in the backbone's precision; the timing does not depend on the weights. Prints the
medians and their ratio, measured in one run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import device_name, median_ms, print_flags

from clipure_core import load_backbone
from clipure_core.prior import LatentPrior, PriorConfig
from clipure_core.prior.loading import KNOWN_CONFIGS, LAION_VIT_L14
from clipure_core.purifiers import DiffPurifier


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/diff_latency.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--model", default="ViT-L-14", help="open_clip architecture (random weights)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--precision", default=None, help="fp32 (default), fp16 or bf16")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls (median)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    print_flags(args)

    backbone = load_backbone(args.model, "random", args.device, args.precision)
    device = backbone.device
    config = {**KNOWN_CONFIGS[LAION_VIT_L14], "dim": backbone.encode_text([""]).shape[-1]}
    config["image_embed_dim"] = config["dim"]
    prior = LatentPrior(PriorConfig.from_dict(config)).to(device, backbone.input_dtype).eval()
    purifier = DiffPurifier(backbone, "single", prior=prior.requires_grad_(False)).to(device)
    pixels = torch.rand(1, 3, backbone.image_size, backbone.image_size, device=device)
    with torch.no_grad():
        z = backbone.encode_image(pixels)

    def forward():
        with torch.no_grad():
            backbone.encode_image(pixels)

    def purify():
        with torch.no_grad():
            purifier(z, gradient="paper")

    forward_ms = median_ms(forward, device, args.repeats * 3)
    purify_ms = median_ms(purify, device, args.repeats)
    where = device_name(device)
    millions = sum(p.numel() for p in prior.parameters()) / 1e6
    print(
        f"device: {where}; backbone {args.model} ({backbone.info.precision}); prior dim "
        f"{config['dim']} depth {config['depth']} ({millions:.0f}M params)"
    )
    print(
        f"Diff purification (10 steps) {purify_ms:9.1f} ms | encoder forward {forward_ms:8.1f} ms"
        f" | ratio {purify_ms / forward_ms:.2f}"
    )


if __name__ == "__main__":
    main()
