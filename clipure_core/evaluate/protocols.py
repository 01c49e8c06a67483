"""Evaluation protocols: `release` (the authors' released evaluation), `adaptive` (an honest
adaptive evaluation) and `custom` (the flags as given). A protocol fixes the settings that
define it; the command line refuses a flag that contradicts them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

PROTOCOLS: dict[str, str] = {
    "custom": "the attack, threat models and settings given on the command line.",
    "release": "the authors' released evaluation: threat 'release' (fp16 backbone parts, inner "
    "gradient constant, Cos/Diff batch-coupled), batch size 2 paired as the release's "
    "AutoAttack pairs images, its AutoAttack (APGD-CE with 5 restarts, then APGD-T on the "
    "images still robust), its prompt templates, one evaluation draw.",
    "adaptive": "fp32, per-sample purification steps, every image attacked by AutoAttack "
    "under the transfer, bpda and full threats, plus Square and the random-noise control; EOT "
    "and the worst of several evaluation draws for stochastic defences; an image counts as "
    "robust only if it survives every attack.",
}

# Attacks whose torchattacks implementation averages gradients over EOT samples.
EOT_METHODS = ("pgd", "fgsm", "apgd-ce", "apgd-dlr", "apgd-t", "autoattack")

ADAPTIVE_EOT = 20  # gradient samples per step against a stochastic defence
ADAPTIVE_DRAWS = 10  # evaluation draws of a stochastic defence; robust = correct in all
ADAPTIVE_THREATS = ("transfer", "bpda", "full")
ADAPTIVE_EXTRA_ATTACKS = (
    "square",
    "noise",
)  # Square: AutoAttack's 5000 queries  # they query the defended model's outputs only
EXTRA_ATTACK_THREAT = "full"  # the threat recorded for them: the exact defended model
NOISE_STEPS = 1  # one draw

RELEASE_BATCH_SIZE = 2
RELEASE_THREAT = "release"
RELEASE_STAGES = ("apgd-ce", "apgd-t")  # the release's AutoAttack, version='custom'
RELEASE_CIFAR_DATA = ("cifar10", "cifar100")

# The release's prompt templates for CIFAR-10 and CIFAR-100 (the "cifar10"/"cifar100" lists of
# CLIP_eval/zeroshot-templates.json in the authors' CLIPure repository). Its "imagenet1k" list
# is the CLIP paper's 80 ImageNet templates, the "ensemble" preset here.
RELEASE_CIFAR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
)


@dataclass(frozen=True)
class ProtocolDefaults:
    """What a protocol fixes (None: the flag is free)."""

    attack: str | None = None
    threats: tuple[str, ...] | None = None
    batch_size: int | None = None
    precision: str | None = None
    eot: int | None = None
    eval_draws: int | None = None
    attack_seeds: int | None = None
    cos_batch_coupled: bool | None = None


FIXED: dict[str, ProtocolDefaults] = {
    "custom": ProtocolDefaults(),
    "release": ProtocolDefaults(
        attack="autoattack",
        threats=(RELEASE_THREAT,),
        batch_size=RELEASE_BATCH_SIZE,
        precision="fp32",  # the release threat casts its own copy to float16
        eot=1,
        eval_draws=1,
        attack_seeds=1,
        cos_batch_coupled=False,  # the release threat couples the batch itself
    ),
    "adaptive": ProtocolDefaults(
        attack="autoattack",
        threats=ADAPTIVE_THREATS,
        precision="fp32",
        cos_batch_coupled=False,
    ),
}

# Why a protocol fixes a setting where its value reads like a contradiction of the protocol's
# own description; said in the refusal.
FIXED_BECAUSE: dict[tuple[str, str], str] = {
    ("release", "precision"): "the run's model stays float32; the release threat casts its own "
    "copy of the backbone parts to float16",
    ("release", "cos_batch_coupled"): "the release threat runs the batch-coupled purification "
    "itself, on its own copy; the flag would couple the run's own model too",
    ("adaptive", "cos_batch_coupled"): "the adaptive protocol purifies every image on its own",
}
# How a fixed setting is named in a refusal (default: its name with spaces)
FIXED_NAMES = {"cos_batch_coupled": "batch coupling (--cos-batch-coupled, --diff-batch-coupled)"}

CUSTOM_DEFAULTS = {"attack": "autoattack", "threats": ("paper",), "batch_size": 64, "eot": 1}


def check_protocol(name: str) -> str:
    if name not in PROTOCOLS:
        raise InputError(f"protocol {name!r}: use one of {', '.join(PROTOCOLS)}.")
    return name


def release_templates(data: str) -> tuple[str, ...] | str:
    """The release's templates for a dataset: its CIFAR list, else the 80 ImageNet ones."""
    return RELEASE_CIFAR_TEMPLATES if data.lower() in RELEASE_CIFAR_DATA else "ensemble"


def release_attack_resolution(data: str) -> str | None:
    """What the release perturbed: CIFAR's own 32 x 32 pixels, resized inside its model
    (`native`); elsewhere nothing is fixed (the release resized ImageNet outside)."""
    return "native" if data.lower() in RELEASE_CIFAR_DATA else None


def resolve(protocol: str, given: dict) -> dict:
    """The settings `given` (None: not given) completed by the protocol; raises InputError when
    a given value contradicts what the protocol fixes."""
    fixed = FIXED[check_protocol(protocol)]
    resolved = dict(given)
    for name, value in vars(fixed).items():
        if value is None:
            continue
        if given.get(name) is not None and given[name] != value:
            shown = FIXED_NAMES.get(name, name.replace("_", " "))
            because = FIXED_BECAUSE.get((protocol, name))
            raise InputError(
                f"--protocol {protocol} fixes {shown} = {_show(value)}"
                + (f" ({because})" if because else "")
                + "; drop that flag or use --protocol custom."
            )
        resolved[name] = value
    for name, value in CUSTOM_DEFAULTS.items():
        if resolved.get(name) is None:
            resolved[name] = value
    return resolved


def _show(value: object) -> str:
    return ",".join(value) if isinstance(value, tuple) else str(value)
