"""Latent-space purifiers: one module per defence, built by name."""

from __future__ import annotations

from collections.abc import Sequence

from ..backbone import Backbone
from ..errors import InputError
from .base import Purifier, Setting
from .cos import CosPurifier, cos_purify, neg_cos_gradient
from .diff import DiffPurifier
from .flags import add_defense_flags, defense_settings_from_args
from .polar import GRADIENT_MODES, polar_step
from .trace import TrajectoryRecorder

PURIFIERS: dict[str, type[Purifier]] = {
    CosPurifier.name: CosPurifier,
    DiffPurifier.name: DiffPurifier,
}


def check_defense(name: str) -> type[Purifier]:
    if name not in PURIFIERS:
        raise InputError(f"unknown defence {name!r}: use one of {', '.join(PURIFIERS)}.")
    return PURIFIERS[name]


def build_purifier(
    name: str, backbone: Backbone, templates: str | Sequence[str] = "ensemble", **settings
) -> Purifier:
    """A purifier by its name ('clipure_cos'), with its settings (steps, step_size, ...)."""
    check_defense(name)
    try:
        return PURIFIERS[name](backbone, templates, **settings)
    except TypeError as error:
        raise InputError(f"{name}: unsupported setting ({error}).") from error


__all__ = [
    "GRADIENT_MODES",
    "PURIFIERS",
    "CosPurifier",
    "DiffPurifier",
    "Purifier",
    "Setting",
    "TrajectoryRecorder",
    "add_defense_flags",
    "build_purifier",
    "check_defense",
    "cos_purify",
    "defense_settings_from_args",
    "neg_cos_gradient",
    "polar_step",
]
