"""The registry of defences: each purifier class by its name, and building one by name."""

from __future__ import annotations

from collections.abc import Sequence

from ..backbone import Backbone
from ..errors import InputError
from .base import Purifier
from .cos import CosPurifier
from .diff import DiffPurifier

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
