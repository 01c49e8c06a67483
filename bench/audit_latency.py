"""Time of the robustness audit of one photo on the current device, stage by stage.

    python bench/audit_latency.py [--model ViT-B-32] [--device cpu|cuda] [--repeats 1]
                                  [--steps 10] [--square-queries 100] [--conditions ...]
                                  [--release-precision emulated|float16] [--float16-unit]
                                  [--unshared]

Prints the audit's median wall time (after one warm-up: a clean-only audit of the same photo,
which fills the text embedding cache), its time per stage (clean, gradients, each condition,
the checklist's runs, checks), and the unit costs that explain them, measured taking turns
right after the audits (so that the machine's load affects them alike): a classifier forward
and forward+backward (input gradient only) for each precision (float32, the release's
'emulated' or 'float16') and batch size the audit ran, and in float16 with --float16-unit.
The headline is the audit's time in float32 forward+backward passes (issue target: <= 180
on a 2-core CPU). Then the image-encoder passes the audit ran, counted (bench/pass_counter.py:
deterministic, unlike a time), and what they cost in float32 forward+backward passes at the
measured unit costs; --unshared also counts one audit without the shared encodings
(clipure_core/encoding_memo.py), the work the sharing saves. Random weights are used (the
timing does not depend on them), so it runs offline.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from unittest.mock import patch

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pass_counter import PassCounter
from timing import device_name, interleaved_medians_ms, print_flags

from clipure_core import Playground, load_backbone
from clipure_core.audit import SQUARE_QUERIES, run_audit, runner
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
    parser.add_argument(
        "--unshared",
        action="store_true",
        help="also count the passes of one audit without the shared encodings (encoding_memo)",
    )
    return parser


def main() -> None:
    args = build_parser().parse_args()
    print_flags(args)

    backbone = load_backbone(args.model, "random", device=args.device)
    device = backbone.device
    playground = Playground(backbone, templates="ensemble")
    photo = Image.open(ASSET)
    options = {
        "steps": args.steps,
        "square_queries": args.square_queries,
        "conditions": args.conditions,
        "release_precision": args.release_precision,
    }
    run_audit(playground, photo, LABELS, **(options | {"conditions": "clean"}))  # warm-up
    samples, counter = [], PassCounter()
    for _ in range(args.repeats):
        start = time.perf_counter()
        with counter:
            result = run_audit(playground, photo, LABELS, **options)
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1000)
    audit_ms = statistics.median(samples)
    unshared = None
    if args.unshared:  # the same audit with every image encoded each time it is asked for
        unshared = PassCounter()
        with unshared, _without_encoding_memo():
            run_audit(playground, photo, LABELS, **options)
    precision = result.settings["release_precision"] or args.release_precision
    pixels = backbone.prepare(photo).unsqueeze(0)
    shapes = {(p, b) for _, p, b in counter.counts} | {("float32", 1), (precision, 1)}
    if args.float16_unit:
        shapes.add(("float16", 1))
    classifier = playground.classifier([label.strip() for label in LABELS.split(",")])
    models = {
        p: classifier if p == "float32" else attacked_model(classifier, None, "release", False, p)
        for p in {p for p, _ in shapes}
    }
    unit_ms = interleaved_medians_ms(_units(models, pixels, shapes), device, 3)
    print(f"device: {device_name(device)}; model: {args.model} (random weights)")
    print(
        f"audit of one photo: {audit_ms / 1000:.1f} s (median of {args.repeats}; "
        f"{args.steps} PGD steps, Square {args.square_queries} queries, "
        f"conditions: {', '.join(result.conditions)})"
    )
    for stage, ms in sorted(result.timings_ms.items(), key=lambda item: -item[1]):
        if stage != "total":
            print(f"  {stage:12} {ms / 1000:8.1f} s  {ms / result.timings_ms['total']:6.1%}")
    _report_units(unit_ms, precision)
    fp32 = unit_ms[("fwd+bwd", "float32", 1)]
    print(
        f"audit = {audit_ms / fp32:.0f} float32 forward+backward passes by wall time "
        f"(release precision {precision}; target <= 180 on a 2-core CPU)"
    )
    _report_counts("image-encoder passes of one audit", counter, unit_ms, args.repeats)
    if unshared is not None:
        _report_counts("without the shared encodings (encoding_memo off)", unshared, unit_ms, 1)


def _without_encoding_memo():
    """The audit's encoding memo switched off (for the --unshared count)."""
    return patch.object(runner, "remembering_encodings", contextlib.nullcontext)


def _units(models: dict, pixels: torch.Tensor, shapes: set[tuple[str, int]]) -> dict:
    """A forward and a forward+backward (input gradient only) per (precision, batch size)."""
    units = {}
    for precision, batch in sorted(shapes):
        model, x = models[precision], pixels.repeat(batch, 1, 1, 1)
        label = torch.zeros(batch, dtype=torch.long, device=pixels.device)

        def forward(model=model, x=x):
            with torch.no_grad():
                model(x)

        def gradient(model=model, x=x, label=label):
            leaf = x.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(leaf), label), leaf)

        units[("forward", precision, batch)] = forward
        units[("fwd+bwd", precision, batch)] = gradient
    return units


def _report_units(unit_ms: dict, precision: str) -> None:
    print(f"unit costs (ms; emulated/float16: the release's model; audit's: {precision}):")
    for (kind, p, batch), ms in sorted(unit_ms.items()):
        print(f"  {kind:8} {p:8} batch {batch}: {ms:8.1f}")


def _report_counts(title: str, counter: PassCounter, unit_ms: dict, audits: int) -> None:
    """The counted passes per audit and their cost in float32 forward+backward passes: a
    pass with a backward costs a fwd+bwd unit, a forward alone a forward unit."""
    print(f"{title} (counted, per audit):")
    print(counter.table(per=audits))
    total = 0.0
    for (kind, precision, batch), n in counter.counts.items():
        if kind == "backward":
            total += n * unit_ms[("fwd+bwd", precision, batch)]
        else:
            alone = n - counter.counts.get(("backward", precision, batch), 0)
            total += alone * unit_ms[("forward", precision, batch)]
    passes = total / audits / unit_ms[("fwd+bwd", "float32", 1)]
    print(f"  = {passes:.0f} float32 forward+backward passes by count x unit cost")


if __name__ == "__main__":
    main()
