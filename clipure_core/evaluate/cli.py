"""Command line: `python -m clipure_core.evaluate --data DIR|cifar10|imagenet-val --out DIR ...`,
and `python -m clipure_core.evaluate compare DIR_A DIR_B` (two runs side by side).

Under torchrun every rank runs this same command; rank 0 prints and writes the outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..attacks import METHODS, SQUARE_QUERIES
from ..defaults import DEFAULT_MODEL, DEFAULT_WEIGHTS
from ..errors import InputError, WeightsUnavailableError
from ..purifiers import (
    PURIFIERS,
    add_defense_flags,
    defense_settings_from_args,
    parser_for,
)
from ..resolution import ATTACK_RESOLUTIONS
from ..threats import THREATS
from .compare import compare_main
from .config import MAX_ATTACK_SEEDS, MAX_EVAL_DRAWS, EvalConfig
from .data import KEYWORDS, DataUnavailableError
from .protocols import ADAPTIVE_DRAWS, ADAPTIVE_EOT, PROTOCOLS
from .report import summary_lines
from .runner import run_evaluation
from .store import PARTIAL_DIR

EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clipure_core.evaluate",
        description="Clean and robust accuracy of zero-shot CLIP and CLIPure on a dataset, "
        "resumable, and sharded across processes under torchrun.",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data", required=True, help=f"an ImageFolder directory, or {' / '.join(KEYWORDS)}"
    )
    data.add_argument(
        "--data-root", default=None, help="CIFAR-10 location (download target), ImageNet val dir"
    )
    data.add_argument(
        "--class-names", default=None, help="ImageFolder names: JSON {folder: name} or lines"
    )
    data.add_argument("--val-labels", default=None, help="flat ImageNet val: 'IMAGE WNID' lines")
    data.add_argument(
        "--num-images",
        "--n",
        dest="n",
        type=_count,
        default=1000,
        help="images to evaluate, or 'all' (under torchrun write --num-images: torchrun reads "
        "--n as an abbreviation of its own options)",
    )
    data.add_argument("--seed", type=int, default=0, help="subset and attack seed")
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model", default=DEFAULT_MODEL, help="open_clip architecture, or local-dir:FOLDER"
    )
    model.add_argument(
        "--pretrained",
        default=DEFAULT_WEIGHTS,
        help="open_clip tag, checkpoint file, hf-hub:ID, random",
    )
    model.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    model.add_argument(
        "--precision", default=None, help="fp32 (default), fp16 or bf16 (run on CPU too, slower)"
    )
    model.add_argument("--templates", default=None, help="ensemble (80 CLIP, default) or single")
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument(
        "--protocol",
        default="custom",
        choices=list(PROTOCOLS),
        help="release: the authors' evaluation reproduced; adaptive: transfer, bpda, full, "
        "square and noise, robust = survives all; custom: the flags below (default)",
    )
    protocol.add_argument(
        "--eval-draws",
        type=int,
        default=None,
        help=f"evaluation draws of a stochastic defence, robust only if all are right "
        f"(1 to {MAX_EVAL_DRAWS}; default 1, adaptive {ADAPTIVE_DRAWS})",
    )
    protocol.add_argument(
        "--attack-seeds",
        type=int,
        default=None,
        help=f"run every attack with this many seeds and report the spread (1 to "
        f"{MAX_ATTACK_SEEDS}; default 1)",
    )
    protocol.add_argument(
        "--square-queries",
        type=int,
        default=SQUARE_QUERIES,
        help=f"query budget of the adaptive protocol's Square attack (default {SQUARE_QUERIES})",
    )
    attack = parser.add_argument_group("attack")
    attack.add_argument(
        "--attack", default=None, choices=sorted(METHODS), help="default: autoattack"
    )
    attack.add_argument(
        "--norm", default=None, choices=["linf", "l2"], help="default: linf (pgd-l2: l2)"
    )
    attack.add_argument(
        "--eps", type=_floats, default=(4.0,), help="comma-separated; L-inf in /255, L2 in [0, 1]"
    )
    attack.add_argument(
        "--steps", type=int, default=None, help="default: 100 (APGD, AutoAttack), 10 (PGD)"
    )
    attack.add_argument("--alpha", type=float, default=None, help="PGD step size, units of eps")
    attack.add_argument(
        "--eot",
        type=int,
        default=None,
        help=f"EOT samples per gradient (default 1; adaptive: {ADAPTIVE_EOT} for stochastic "
        "defences)",
    )
    attack.add_argument(
        "--attack-resolution",
        default=None,
        choices=list(ATTACK_RESOLUTIONS),
        help="native: perturb the images' own pixels, resized inside the model; model: perturb "
        "the model-size pixels (default: native for images of one size smaller than the "
        "model's input, as CIFAR; else model)",
    )
    attack.add_argument(
        "--release-precision",
        default=None,
        help="how the release threat's float16 model runs: emulated (float32 kernels, float16 "
        "rounding; the default on CPU) or float16 (the default on CUDA)",
    )
    attack.add_argument(
        "--threat",
        type=_names,
        default=None,
        help=f"comma-separated: {', '.join(THREATS)} (default: paper)",
    )
    defense = parser.add_argument_group("models")
    defense.add_argument(
        "--defense",
        type=_names,
        default=("none", "clipure_cos"),
        help=f"comma-separated models: none (undefended CLIP), {', '.join(PURIFIERS)}, or "
        "package.module:Class (a defence of your own)",
    )
    add_defense_flags(defense)
    defense.add_argument(
        "--defense-settings",
        type=_json_object,
        default={},
        help='more settings per defence as JSON, e.g. \'{"clipure_diff": {"t_min": 800}}\'',
    )
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, type=Path, help="output folder (resumed if present)")
    run.add_argument("--batch-size", type=int, default=None, help="default 64 (release: 2)")
    run.add_argument(
        "--max-batches",
        type=int,
        default=None,
        help="stop after this many batches per process; rerun to continue (time-limited jobs)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    unknown = [name for name in args.defense_settings if name not in args.defense]
    if unknown:
        raise InputError(f"--defense-settings: {unknown[0]!r} is not in --defense.")
    settings = defense_settings_from_args(args)
    for name, extra in args.defense_settings.items():
        settings[name] = {**settings.get(name, {}), **extra}
    return EvalConfig(
        data=args.data,
        out=args.out,
        data_root=args.data_root,
        class_names=args.class_names,
        val_labels=args.val_labels,
        model=args.model,
        pretrained=args.pretrained,
        device=args.device,
        precision=args.precision,
        templates=args.templates,
        n=args.n,
        seed=args.seed,
        batch_size=args.batch_size,
        attack=args.attack,
        norm=args.norm or METHODS[args.attack or "autoattack"][0],
        eps=args.eps,
        steps=args.steps,
        alpha=args.alpha,
        eot=args.eot,
        threats=args.threat,
        models=args.defense,
        defense_settings=settings,
        max_batches=args.max_batches,
        progress=not args.no_progress,
        protocol=args.protocol,
        eval_draws=args.eval_draws,
        attack_seeds=args.attack_seeds,
        square_queries=args.square_queries,
        attack_resolution=args.attack_resolution,
        release_precision=args.release_precision,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    try:  # the defences of one's own named in argv first: their flags join the parser
        parser = parser_for(argv, build_parser)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        outcome = run_evaluation(config_from_args(args))
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: finished batches are kept in {args.out / PARTIAL_DIR}; "
            "run the same command again to resume.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except (InputError, WeightsUnavailableError, DataUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not outcome.root:
        return 0
    if outcome.results is None:
        print(
            f"{outcome.finished_batches} of {outcome.total_batches} batches finished; "
            "run the same command again to continue."
        )
        return 0
    for notice in outcome.results["notices"]:
        print(f"note: {notice}")
    for line in summary_lines(outcome.results):
        print(line)
    print(f"outputs: {args.out}/results.json, per_image.csv, report.html")
    return 0


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _names(text: str) -> tuple[str, ...]:
    """Comma-separated names, lower-cased except a `package.module:Class`."""
    parts = (part.strip() for part in text.split(","))
    return tuple(part if ":" in part else part.lower() for part in parts if part)


def _count(text: str) -> int | None:
    if text.strip().lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got {text!r}") from None


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"invalid JSON: {error}") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise argparse.ArgumentTypeError('expected {"defence": {"setting": value}}')
    return value
