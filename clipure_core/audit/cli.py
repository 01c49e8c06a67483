"""`python -m clipure_core audit IMAGE --labels ...` (or `--data FOLDER`): the audit's command."""

from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm

from ..attacks import AttackConfig
from ..columns import home_ref, parse_columns
from ..curve import eps_ladder, robustness_curve
from ..defaults import DEFAULT_MODEL, DEFAULT_WEIGHTS
from ..errors import InputError
from ..evaluate.data import DataUnavailableError, load_dataset
from ..images import open_image
from ..loading import load_backbone
from ..pipeline import Playground
from ..purifiers import add_defense_flags, check_defense, defense_settings_from_args
from ..resolution import ATTACK_RESOLUTIONS
from ..threats import check_threat
from .checks import CHECKS
from .conditions import CONDITIONS, check_checks_runnable, gradient_attack
from .dataset import DatasetAudit, audit_dataset
from .result import AuditResult
from .runner import SQUARE_QUERIES, run_audit


def add_audit_parser(commands: argparse._SubParsersAction) -> None:
    """The `audit` subcommand; its handler is stored as `args.handler`."""
    audit = commands.add_parser(
        "audit",
        help="run every threat condition against every model, measure the gradients each "
        "attacker sees, and run the standard sanity checks",
    )
    audit.add_argument("image", nargs="?", help="path of a photo (or give --data)")
    audit.add_argument("--labels", default=None, help="comma-separated class names, or a preset")
    audit.add_argument("--true-label", default=None, help="default: undefended clean prediction")
    audit.add_argument("--data", default=None, help="an ImageFolder to audit instead of IMAGE")
    audit.add_argument("--data-root", default=None, help="with --data cifar10 / imagenet-val")
    audit.add_argument("--class-names", default=None, help="ImageFolder names: JSON or lines")
    audit.add_argument(
        "--num-images", type=int, default=None, help="with --data: a stratified subset"
    )
    audit.add_argument(
        "--model", default=DEFAULT_MODEL, help="open_clip architecture, or local-dir:FOLDER"
    )
    audit.add_argument(
        "--pretrained", default=DEFAULT_WEIGHTS, help="open_clip tag, checkpoint, or 'random'"
    )
    audit.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    audit.add_argument(
        "--precision", default=None, help="fp32 (default), fp16 or bf16 (run on CPU too, slower)"
    )
    audit.add_argument("--templates", default="ensemble", help="ensemble (80 CLIP) or single")
    audit.add_argument("--norm", default="linf", choices=["linf", "l2"])
    audit.add_argument(
        "--eps", type=float, default=4.0, help="L-inf in /255 units, L2 in [0, 1] pixel units"
    )
    audit.add_argument("--steps", type=int, default=10, help="PGD steps of gradient conditions")
    audit.add_argument(
        "--attack-resolution",
        default=None,
        choices=list(ATTACK_RESOLUTIONS),
        help="native: perturb the image's own pixels, resized inside the model; model: the "
        "model-size pixels (default: native for images smaller than the model's input)",
    )
    audit.add_argument(
        "--square-queries", type=int, default=SQUARE_QUERIES, help="Square attack query budget"
    )
    audit.add_argument("--eot", type=int, default=1, help="EOT samples for random models")
    audit.add_argument(
        "--defense",
        default="clipure_cos",
        help="comma-separated columns: DEFENSE or DEFENSE@BACKBONE (none@fare2-l14); "
        "package.module:Class for your own; '' for none",
    )
    add_defense_flags(audit)
    audit.add_argument(
        "--conditions", default=None, help=f"comma-separated subset of {', '.join(CONDITIONS)}"
    )
    audit.add_argument(
        "--checks", default=None, help=f"comma-separated subset of {', '.join(CHECKS)}"
    )
    audit.add_argument(
        "--thorough",
        action="store_true",
        help="run the checklist checks' expensive settings in full (every eps rung, restarts)",
    )
    audit.add_argument(
        "--release-precision",
        default=None,
        help="how the 'release' condition's float16 model runs: emulated (float32 kernels, "
        "float16 rounding; the default on CPU) or float16 (the default on CUDA)",
    )
    audit.add_argument(
        "--curve",
        action="store_true",
        help="also the robustness curve: PGD (PGD-L2 with --norm l2) with --steps at eps "
        "0, 1, 2, 4, 8, 16/255 (L2: 0, 0.125, 0.25, 0.5, 1, 2), under --curve-threat",
    )
    audit.add_argument(
        "--curve-threat", default="full", help="the curve's threat model (default: full)"
    )
    audit.add_argument("--seed", type=int, default=0, help="seed of the attacks and defences")
    audit.add_argument("--json", action="store_true", help="print the result as JSON")
    audit.add_argument("--quiet", action="store_true", help="no progress bar")
    audit.set_defaults(handler=audit_command)


def audit_command(args: argparse.Namespace) -> int:
    if (args.image is None) == (args.data is None):
        raise InputError("give either IMAGE (with --labels) or --data FOLDER, not both.")
    if args.data is None and not args.labels:
        raise InputError("--labels is required with IMAGE (e.g. --labels 'cat,dog').")
    if args.data is not None and (args.labels or args.true_label):
        raise InputError("with --data the labels are the data set's classes; drop --labels.")
    check_checks_runnable(args.checks, args.conditions)  # before the weights are loaded
    if args.data is not None and args.curve:
        raise InputError("--curve draws one photo's curve: give IMAGE instead of --data.")
    if args.curve:
        check_threat(args.curve_threat)
    parse_columns(args.defense, home_ref(args.model, args.pretrained))  # before the weights
    curve_attack = audit_curve_attack(args) if args.curve else None
    image = open_image(args.image) if args.image is not None else None
    dataset = None
    if image is None:  # read before the weights are loaded
        try:
            dataset = load_dataset(args.data, args.data_root, args.class_names)
        except DataUnavailableError as error:
            raise InputError(str(error)) from error
    backbone = load_backbone(args.model, args.pretrained, args.device, args.precision)
    playground = Playground(backbone, args.templates)
    options = {
        "eps": args.eps / 255 if args.norm == "linf" else args.eps,
        "norm": args.norm,
        "steps": args.steps,
        "defenses": args.defense,
        "defense_settings": defense_settings_from_args(args),
        "conditions": args.conditions,
        "checks": args.checks,
        "square_queries": args.square_queries,
        "eot": args.eot,
        "attack_resolution": args.attack_resolution,
        "thorough": args.thorough,
        "release_precision": args.release_precision,
    }
    if dataset is not None:
        report = _audit_set(playground, dataset, args, options)
        print(json.dumps(report.to_dict(), indent=2) if args.json else _set_text(report))
        return 0
    with tqdm(total=1, desc="audit", unit="query", disable=args.quiet, file=sys.stderr) as bar:

        def on_progress(done: int, total: int, stage: str) -> None:
            bar.total = total
            bar.set_postfix_str(stage, refresh=False)
            bar.update(done - bar.n)

        result = run_audit(
            playground,
            image,
            args.labels,
            true_label=args.true_label,
            seed=args.seed,
            on_progress=on_progress,
            **options,
        )
    data = result.to_dict()
    if curve_attack is not None:
        data["curve"] = _curve(playground, image, args, curve_attack)
    print(json.dumps(data, indent=2) if args.json else _text(result, data.get("curve")))
    return 0


def audit_curve_attack(args: argparse.Namespace) -> AttackConfig:
    """The curve's attack, the audit's gradient attack: `--eot` gradients per step when a
    defence is random (checked before the weights are loaded)."""
    names = [name.strip().partition("@")[0] for name in args.defense.split(",")]
    random = any(check_defense(name).stochastic for name in names if name not in ("", "none"))
    try:
        return gradient_attack(
            args.norm, eps_ladder(args.norm)[-1], args.steps, args.eot if random else 1
        )
    except InputError as error:
        raise InputError(f"{error} In the audit: eot 1, or norm linf.") from None


def _curve(playground: Playground, image, args: argparse.Namespace, attack) -> dict:
    with tqdm(total=1, desc="curve", unit="query", disable=args.quiet, file=sys.stderr) as bar:

        def on_progress(done: int, total: int, stage: str) -> None:
            bar.total = total
            bar.update(done - bar.n)

        return robustness_curve(
            playground,
            image,
            args.labels,
            attack,
            threat=args.curve_threat,
            defenses=args.defense.split(","),
            seed=args.seed,
            true_label=args.true_label,
            defense_settings=defense_settings_from_args(args),
            on_progress=on_progress,
        )


def _audit_set(playground, dataset, args: argparse.Namespace, options: dict) -> DatasetAudit:
    total = args.num_images or len(dataset)
    with tqdm(
        total=min(total, len(dataset)), desc="audit", unit="image", disable=args.quiet,
        file=sys.stderr,
    ) as bar:  # fmt: skip
        return audit_dataset(
            playground,
            dataset,
            num_images=args.num_images,
            seed=args.seed,
            on_image=lambda done, _total, _result: bar.update(done - bar.n),
            **options,
        )


def _mark(correct: bool) -> str:
    return "ok" if correct else "x "


def _text(result: AuditResult, curve: dict | None = None) -> str:
    """The threat matrix, the gradients, the checks and the curve as plain text."""
    lines = [f"note: {notice}" for notice in result.notices]
    lines.append(f"true label: {result.true_label}")
    width = 22
    lines.append(
        "condition".ljust(20) + "".join(t[:width].ljust(width + 2) for t in result.models.values())
    )
    for condition in result.conditions:
        row = CONDITIONS[condition].title.ljust(20)
        for model in result.models:
            cell = result.cell(condition, model)
            text = f"{_mark(cell.correct)} {cell.prediction} {cell.probability:.0%}"
            row += text[:width].ljust(width + 2)
        lines.append(row)
    if result.gradients:
        lines.append("pixel gradients (vs the full gradient):")
        for g in result.gradients:
            cos, sign, progress = (
                "-" if value is None else f"{value:.3f}"
                for value in (g.cos_to_full, g.sign_agreement_with_full, g.linf_progress)
            )
            lines.append(
                f"  {g.condition:9} {g.model:14} norm {g.norm:9.2e}  zeros {g.zero_fraction:5.1%}"
                f"  cos {cos:>6}  signs {sign:>6}  L-inf progress {progress:>6}"
            )
    lines.append("checks:")
    lines += [f"  {c.status.upper():4} {c.name}: {c.explanation}" for c in result.checks]
    lines += _curve_text(curve) if curve else []
    lines.append(f"time: {result.timings_ms['total'] / 1000:.1f} s")
    return "\n".join(lines)


def _curve_text(curve: dict) -> list[str]:
    """The curve as rows of P(true label) per eps, one per model."""
    lines = [f"robustness curve ({curve['method']}, threat {curve['threat']}), P(true label):"]
    lines.append("  eps".ljust(18) + "".join(text.rjust(9) for text in curve["eps_text"]))
    for model, series in curve["models"].items():
        cells = (
            f"{_mark(ok)}{p:4.0%}".rjust(9)
            for p, ok in zip(series["true_probability"], series["correct"], strict=True)
        )
        lines.append(f"  {model[:14]:16}" + "".join(cells))
    return lines


def _set_text(report: DatasetAudit) -> str:
    data = report.to_dict()
    lines = [f"note: {notice}" for notice in report.notices]
    lines.append(f"{data['source']}: {data['n_images']} images; accuracy per condition:")
    for row in data["accuracy"]:
        lines.append(
            f"  {row['condition']:9} {row['model']:14} {row['accuracy']:6.1%} "
            f"({row['correct']}/{row['n']})"
        )
    lines.append("checks (pass / warn / fail):")
    for row in data["checks"]:
        subject = ", ".join(x for x in (row["condition"], row["model"]) if x)
        counts = row["counts"]
        lines.append(
            f"  {row['name']} [{subject}]: {counts['pass']} / {counts['warn']} / {counts['fail']}"
        )
    lines.append(f"time: {report.seconds:.1f} s")
    return "\n".join(lines)
