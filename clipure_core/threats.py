"""Threat models: which model the attacker differentiates, and how it sees the purifier."""

from __future__ import annotations

from torch import nn

from .classifier import DefendedClassifier, ZeroShotClassifier
from .errors import InputError
from .purifiers import Purifier
from .release import ReleaseClassifier
from .resolution import ResizedInput

THREATS: dict[str, str] = {
    "transfer": "The attacker targets the undefended CLIP; every defence is then shown the "
    "same adversarial image.",
    "release": "The attacker targets the defended classifier exactly as the released "
    "evaluation ran it: image encoder weights and input in float16, the purifier's inner "
    "gradient held constant, steps normalised over the batch. The gradient that reaches the "
    "pixels underflows to exactly 0 in float16, so gradient attacks cannot move.",
    "paper": "The attacker targets the defended classifier in float32 with the purifier's "
    "inner gradient held constant, as the released code computed it. That gradient is tiny "
    "(each step divides it by ~30) but not zero, and its signal points the right way (partly "
    "buried in float32 round-off), so sign-based attacks such as PGD can still make progress.",
    "bpda": "The attacker targets the defended classifier and treats purification as the "
    "identity when back-propagating (BPDA, Athalye et al. 2018). Wrong past 88.09 degrees "
    "from the null prompt, where 10 steps of size 30 flip the embedding: report it with full.",
    "full": "The attacker differentiates exactly through every purification step.",
}


def check_threat(threat: str) -> str:
    if threat not in THREATS:
        raise InputError(f"threat model {threat!r}: use one of {', '.join(THREATS)}.")
    return threat


def attacked_model(
    classifier: ZeroShotClassifier,
    purifier: Purifier | None,
    threat: str,
    resize_input: bool = False,
    release_precision: str | None = None,
) -> nn.Module:
    """The module an attack under `threat` differentiates to hurt `purifier`'s predictions
    (the undefended classifier when `purifier` is None or the threat is a transfer; under
    "release" the release's float16 model, with or without the purifier). `resize_input`:
    it takes pixels of any size and resizes them inside as the model's preprocessing would
    (`--attack-resolution native`; model-size pixels pass unchanged). `release_precision`:
    how the release's float16 model runs, "float16" or "emulated" (None: the device's
    default; release.py)."""
    check_threat(threat)
    if threat == "release":
        module: nn.Module = ReleaseClassifier(classifier, purifier, release_precision)
    elif purifier is None or threat == "transfer":
        module = classifier
    else:
        module = DefendedClassifier(classifier, purifier, gradient=threat)
    if not resize_input:
        return module
    backbone = classifier.backbone
    return ResizedInput(module, backbone.image_size, backbone.interpolation)
