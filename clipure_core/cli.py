"""Command line: `python -m clipure_core predict IMAGE --labels "cat,dog" [...]`, and
`python -m clipure_core cache-text --labels imagenet1k [...]` to fill the text cache;
`python -m clipure_core audit IMAGE --labels ...` (see `audit/cli.py`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from .attacks import METHODS, AttackConfig
from .audit.cli import add_audit_parser
from .columns import home_ref
from .defaults import DEFAULT_MODEL, DEFAULT_WEIGHTS
from .errors import InputError, WeightsUnavailableError
from .images import open_image
from .loading import load_backbone
from .pipeline import Playground, check_request
from .prompts import null_prompts, parse_labels, resolve_templates
from .purifiers import add_defense_flags, defense_settings_from_args, parser_for
from .text_embeddings import (
    cache_root,
    class_prompt_groups,
    missing_prompts,
    prompt_group_embeddings,
    tqdm_progress,
)
from .threats import THREATS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clipure_core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser(
        "predict", help="attack one image and compare undefended vs CLIPure predictions"
    )
    predict.add_argument("image", help="path of a photo (PNG, JPEG, ...)")
    predict.add_argument(
        "--labels", required=True, help="comma-separated class names, or cifar10 / imagenet1k"
    )
    predict.add_argument(
        "--model", default=DEFAULT_MODEL, help="open_clip architecture, or local-dir:FOLDER"
    )
    predict.add_argument(
        "--pretrained",
        default=DEFAULT_WEIGHTS,
        help="open_clip tag, local checkpoint file, hf-hub:org/repo, or 'random' (not read "
        "with --model local-dir:FOLDER, a folder with open_clip_config.json and its weights)",
    )
    predict.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    predict.add_argument(
        "--precision", default=None, help="fp32 (default), fp16 or bf16 (run on CPU too, slower)"
    )
    predict.add_argument("--templates", default="ensemble", help="ensemble (80 CLIP) or single")
    predict.add_argument("--attack", default="pgd", choices=sorted(METHODS), help="attack method")
    predict.add_argument("--norm", default=None, help="linf or l2 (default: the method's first)")
    predict.add_argument(
        "--eps", type=float, default=4.0, help="L-inf in /255 units, L2 in [0, 1] pixel units"
    )
    predict.add_argument("--steps", type=int, default=10, help="attack iterations")
    predict.add_argument("--alpha", type=float, default=None, help="step size, same units as eps")
    predict.add_argument("--target", default=None, help="target class (targeted attack)")
    predict.add_argument("--true-label", default=None, help="default: clean prediction")
    predict.add_argument("--eot", type=int, default=1, help="EOT samples per gradient")
    predict.add_argument("--restarts", type=int, default=1, help="restarts (APGD variants)")
    predict.add_argument(
        "--threat", default="transfer", choices=list(THREATS), help="what the attacker sees"
    )
    predict.add_argument(
        "--defense",
        default="clipure_cos",
        help="comma-separated columns: DEFENSE or DEFENSE@BACKBONE (none@fare2-l14); "
        "package.module:Class for your own; '' for none",
    )
    add_defense_flags(predict)
    predict.add_argument("--seed", type=int, default=0, help="seed of the attack and the defences")
    predict.add_argument("--json", action="store_true", help="print the full result as JSON")
    predict.add_argument("--save-adversarial", default=None, help="write the adversarial PNG here")
    text = commands.add_parser(
        "cache-text",
        help="encode and cache the text embeddings of labels (the app then finds them)",
    )
    text.add_argument(
        "--labels", required=True, help="comma-separated class names, or cifar10 / imagenet1k"
    )
    text.add_argument("--model", default=DEFAULT_MODEL, help="open_clip architecture")
    text.add_argument("--pretrained", default=DEFAULT_WEIGHTS, help="as for predict")
    text.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    text.add_argument("--precision", default=None, help="fp32 (default), bf16 or fp16")
    text.add_argument("--templates", default="ensemble", help="ensemble (80 CLIP) or single")
    text.set_defaults(handler=cache_text)
    add_audit_parser(commands)
    return parser


def attack_config(args: argparse.Namespace) -> AttackConfig:
    """Translate CLI units (L-inf eps and alpha in /255) to an AttackConfig."""
    method = args.attack
    norm = (args.norm or METHODS[method][0]).lower()
    scale = 1 / 255 if norm == "linf" else 1.0
    alpha = None if args.alpha is None else args.alpha * scale
    return AttackConfig(
        method,
        norm,
        args.eps * scale,
        args.steps,
        alpha,
        eot_samples=args.eot,
        restarts=args.restarts,
    )


def defense_settings(args: argparse.Namespace) -> dict[str, dict]:
    """Per-defence settings from the CLI options (flags from the purifier registry)."""
    return defense_settings_from_args(args)


def predict(args: argparse.Namespace) -> int:
    image = open_image(args.image)
    request = {
        "attack": attack_config(args),
        "threat": args.threat,
        "defenses": [name.strip() for name in args.defense.split(",") if name.strip()],
        "seed": args.seed,
        "true_label": args.true_label,
        "target_label": args.target,
    }
    home = home_ref(args.model, args.pretrained)  # refused before loading weights:
    labels = check_request(args.labels, **request, home=home).labels
    resolve_templates(args.templates)
    backbone = load_backbone(args.model, args.pretrained, args.device, args.precision)
    playground = Playground(backbone, args.templates)
    with tqdm_progress():  # text embeddings not cached yet: prompts done / total on stderr
        result = playground.run(image, labels, **request, defense_settings=defense_settings(args))
    if args.save_adversarial:
        try:
            result.adversarial_image.save(args.save_adversarial, format="PNG")
        except OSError as error:
            raise InputError(f"cannot write {args.save_adversarial}: {error}") from error
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    if backbone.info.random_weights:
        print("WARNING: random weights - predictions are meaningless.")
    for notice in result.notices:
        print(f"note: {notice}")
    settings = result.settings["attack"]
    print(
        f"{settings['method']} ({settings['norm']}, eps={args.eps:g}"
        f"{'/255' if settings['norm'] == 'linf' else ''}, {settings['steps']} steps), "
        f"threat: {result.settings['threat']}, true label: {result.true_label}"
    )
    for line in result.verdicts():
        print(f"  {line}")
    for name, diagnostics in result.diagnostics.items():
        angle = diagnostics["angle_moved_deg"]
        print(f"  {name} moved the adversarial embedding by {angle:.1f} deg")
    print(f"  time: {result.timings_ms['total']:.0f} ms")
    return 0


def cache_text(args: argparse.Namespace) -> int:
    """Encode the labels' template ensembles and the null prompt into the cache."""
    labels, _ = parse_labels(args.labels)
    templates = resolve_templates(args.templates)
    backbone = load_backbone(args.model, args.pretrained, args.device, args.precision)
    groups = [*class_prompt_groups(labels, templates), null_prompts(templates)]
    missing = missing_prompts(backbone, groups)
    started = time.perf_counter()
    with tqdm_progress():
        prompt_group_embeddings(backbone, groups)
    elapsed = time.perf_counter() - started
    rate = f" ({missing / elapsed:.0f} prompts/s)" if missing and elapsed > 0 else ""
    print(
        f"{len(labels)} labels x {len(templates)} templates and the null prompt: "
        f"{missing} prompts encoded in {elapsed:.1f} s{rate}, "
        f"{sum(map(len, groups)) - missing} were cached; cache: {cache_root() / 'text'}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # the defences of one's own named in argv first: their flags join the parser
        parser = parser_for(argv, build_parser)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return getattr(args, "handler", predict)(args)
    except (InputError, WeightsUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
