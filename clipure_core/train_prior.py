"""`python -m clipure_core.train_prior`: a latent diffusion prior for any backbone."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError, WeightsUnavailableError
from .loading import load_backbone
from .prior.training import embed_folder, save_prior, small_prior_config, train_prior


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clipure_core.train_prior", description=__doc__)
    parser.add_argument("--model", required=True, help="open_clip architecture, e.g. ViT-B-32")
    parser.add_argument("--pretrained", default="openai", help="tag, checkpoint file or hf-hub:")
    parser.add_argument("--images", required=True, type=Path, help="folder of images (recursive)")
    parser.add_argument("--out", required=True, type=Path, help="output .safetensors path")
    parser.add_argument("--epochs", type=int, default=20, help="passes over the images")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step")
    parser.add_argument("--lr", type=float, default=3e-4, help="learning rate")
    parser.add_argument("--depth", type=int, default=6, help="transformer layers of the prior")
    parser.add_argument("--heads", type=int, default=8, help="attention heads per layer")
    parser.add_argument("--dim-head", type=int, default=64, help="width of one attention head")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the initialisation and batches"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.out.suffix != ".safetensors":
            raise InputError("--out must end in .safetensors (a JSON config is written beside).")
        for name in ("epochs", "batch_size", "depth", "heads", "dim_head"):
            if getattr(args, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1.")
        backbone = load_backbone(args.model, args.pretrained, device=args.device)
        embeddings = embed_folder(backbone, args.images, args.batch_size)
        config = small_prior_config(embeddings.shape[-1], args.depth, args.heads, args.dim_head)
        prior, report = train_prior(
            backbone, embeddings, config, args.epochs, args.batch_size, args.lr, args.seed
        )
        save_prior(prior, args.out, backbone, report)
    except (InputError, WeightsUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"trained on {report.images} images for {report.epochs} epochs: loss "
        f"{report.losses[0]:.4f} -> {report.losses[-1]:.4f}; wrote {args.out} and "
        f"{args.out.with_suffix('.json')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
