"""Class embeddings vs open_clip's padded encode_text, measured in one run on one device.

    python bench/text_embeddings.py [--model ViT-B-32] [--device cpu|cuda] [--repeats 3]
        [--imagenet-sample 16] [--imagenet-full]

Prints, as medians over repeats (after one warm-up round; the measurements take turns in
every round, so a change in the machine's load affects them alike), with the text cache
emptied before each timed call:
  - 5 labels x 80 templates: the project's `class_embeddings` (prompts at their own length,
    sorted into batches, cached per label) against open_clip's `encode_text` on the same
    prompts padded to 77 tokens, in batches of the same size. Target: >= 5x faster on CPU.
  - one label added to those five (cached): its time against the five's. Target <= 0.3x.
  - ImageNet-1k x 80 templates (80,000 prompts): estimated from the prompts/s measured on
    --imagenet-sample labels spread over the list (said so), or timed whole (--imagenet-full).
Random weights: the timing does not depend on them, so it runs offline.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import device_name, interleaved_medians_ms, print_flags

from clipure_core import load_backbone
from clipure_core import text_embeddings as cache
from clipure_core.prompts import LABEL_PRESETS, TEMPLATE_PRESETS
from clipure_core.text_encoder import TEXT_BATCH

LABELS = ["cat", "dog", "car", "airplane", "coffee mug", "tiger"]  # the last one is added
TEMPLATES = TEMPLATE_PRESETS["ensemble"]


def empty_cache(folder: Path) -> None:
    """A new, empty cache directory (CLIPURE_CACHE_DIR), and nothing in memory."""
    cache._MEMORY.clear()
    os.environ["CLIPURE_CACHE_DIR"] = tempfile.mkdtemp(dir=folder)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/text_embeddings.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--model", default="ViT-B-32", help="open_clip architecture (random weights)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--precision", default=None, help="fp32 (default), fp16 or bf16")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (median)")
    parser.add_argument("--labels", type=int, default=5, help="labels before the added one")
    parser.add_argument("--imagenet-sample", type=int, default=16, help="labels timed")
    parser.add_argument("--imagenet-full", action="store_true", help="time all 1000 labels")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    print_flags(args)

    backbone = load_backbone(args.model, "random", args.device, args.precision)
    device = backbone.device
    labels, added = LABELS[: args.labels], LABELS[args.labels]
    prompts = [template.format(label) for label in labels for template in TEMPLATES]
    scratch = tempfile.TemporaryDirectory()
    root = Path(scratch.name)

    @torch.no_grad()
    def padded():
        for start in range(0, len(prompts), TEXT_BATCH):
            tokens = backbone.tokenize(prompts[start : start + TEXT_BATCH])
            backbone.model.encode_text(tokens)

    def ours():
        empty_cache(root)
        cache.class_embeddings(backbone, labels, TEMPLATES)

    def one_added() -> float:
        """Seconds to add one label to the cached ones (their encoding is not counted)."""
        ours()
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        cache.class_embeddings(backbone, [*labels, added], TEMPLATES)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    times = interleaved_medians_ms(
        {"padded": padded, "ours": ours, "added": one_added}, device, args.repeats
    )
    padded_ms, ours_ms, added_ms = times["padded"], times["ours"], times["added"]
    how = "at the prompts' length" if backbone.text_at_prompt_length else "encode_text fallback"
    print(
        f"device: {device_name(device)}; model: {args.model} ({backbone.info.precision}, random "
        f"weights); text path: {how}; batch {TEXT_BATCH}, chunk {cache.CHUNK_PROMPTS} prompts"
    )
    print(
        f"{len(labels)} labels x 80 templates: class_embeddings {ours_ms:8.1f} ms | padded "
        f"encode_text "
        f"{padded_ms:8.1f} ms | x{padded_ms / ours_ms:.1f} faster (target >= 5 on CPU)"
    )
    print(
        f"1 label added to {len(labels)} cached: {added_ms:8.1f} ms | {len(labels)} labels "
        f"{ours_ms:8.1f} ms | "
        f"ratio {added_ms / ours_ms:.2f} (target <= 0.3)"
    )

    imagenet = list(LABEL_PRESETS["imagenet1k"])
    if args.imagenet_full:
        sample = imagenet
    else:
        step = max(1, len(imagenet) // args.imagenet_sample)
        sample = imagenet[::step][: args.imagenet_sample]
    empty_cache(root)
    started = time.perf_counter()
    cache.class_embeddings(backbone, sample, TEMPLATES)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    rate = len(sample) * len(TEMPLATES) / seconds
    total = len(imagenet) * len(TEMPLATES)
    how = (
        "timed"
        if args.imagenet_full
        else (f"estimated from {len(sample)} labels ({len(sample) * len(TEMPLATES)} prompts) timed")
    )
    print(
        f"ImageNet-1k x 80 templates ({total:,} prompts): {total / rate / 60:.1f} min at "
        f"{rate:.0f} prompts/s ({how}); padded encode_text: "
        f"{total / (len(prompts) / (padded_ms / 1000)) / 60:.1f} min (estimated)"
    )
    scratch.cleanup()


if __name__ == "__main__":
    main()
