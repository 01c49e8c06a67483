"""Threat models: which model the attacker differentiates, and how it sees the purifier."""

from __future__ import annotations

from torch import nn

from .classifier import DefendedClassifier, ZeroShotClassifier
from .errors import InputError
from .purifiers import Purifier

THREATS: dict[str, str] = {
    "transfer": "The attacker targets the undefended CLIP; every defence is then shown the "
    "same adversarial image.",
    "paper": "The attacker targets the defended classifier but treats the purifier's inner "
    "gradient as a constant, as the paper's released evaluation did.",
    "bpda": "The attacker targets the defended classifier and treats purification as the "
    "identity when back-propagating (BPDA, Athalye et al. 2018): an adaptive attack.",
    "full": "The attacker differentiates exactly through every purification step.",
}


def check_threat(threat: str) -> str:
    if threat not in THREATS:
        raise InputError(f"threat model {threat!r}: use one of {', '.join(THREATS)}.")
    return threat


def attacked_model(
    classifier: ZeroShotClassifier, purifier: Purifier | None, threat: str
) -> nn.Module:
    """The module an attack under `threat` differentiates to hurt `purifier`'s predictions
    (the undefended classifier when `purifier` is None or the threat is a transfer)."""
    check_threat(threat)
    if purifier is None or threat == "transfer":
        return classifier
    return DefendedClassifier(classifier, purifier, gradient=threat)
