"""The defences by name: the built-in purifiers, and those loaded from a user's module.

Everything that names a defence (the app's controls, cards and lease, the CLIs' flags, the
reports' titles) reads it from here. A defence of one's own is named `package.module:Class`;
`load_defense` imports it, and only the command lines call that (the app: `--defense-module`),
so a name in a web request is looked up, never imported.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import re
import sys
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
UNDEFENDED = "undefended"
UNDEFENDED_TITLE = "Undefended CLIP"
_FLAG_PREFIX = re.compile(r"[a-z][a-z0-9-]*")


def is_module_spec(name: str) -> bool:
    """Whether `name` names a defence of one's own (`package.module:Class`)."""
    return ":" in name


def check_defense(name: str) -> type[Purifier]:
    """The purifier class registered as `name` (built in, or loaded by `load_defense`)."""
    if name in PURIFIERS:
        return PURIFIERS[name]
    if is_module_spec(name):
        raise InputError(
            f"defence {name!r} is not loaded: name it on the command line (--defense {name}, "
            f"or python app.py --defense-module {name})."
        )
    raise InputError(
        f"unknown defence {name!r}: use one of {', '.join(PURIFIERS)}, or package.module:Class."
    )


def build_purifier(
    name: str, backbone: Backbone, templates: str | Sequence[str] = "ensemble", **settings
) -> Purifier:
    """A purifier by its name ('clipure_cos'), with its settings (steps, step_size, ...)."""
    purifier = check_defense(name)
    try:  # only the call's arguments: a TypeError raised inside the constructor is a bug
        inspect.signature(purifier).bind(backbone, templates, **settings)
    except TypeError as error:
        raise InputError(f"{name}: unsupported setting ({error}).") from error
    return purifier(backbone, templates, **settings)


def model_title(name: str) -> str:
    """Display title of a model ('clipure_cos' -> 'CLIPure-Cos'); unknown names unchanged."""
    if name == UNDEFENDED:
        return UNDEFENDED_TITLE
    purifier = PURIFIERS.get(name)
    return (purifier.title or name) if purifier is not None else name


def load_defense(spec: str) -> type[Purifier]:
    """Import `package.module:Class`, check that it is a `Purifier` whose name and flags
    clash with no other defence, and register it under `spec` (again: nothing happens)."""
    spec = spec.strip()
    if spec in PURIFIERS:
        return PURIFIERS[spec]
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise InputError(f"defence {spec!r}: write it as package.module:ClassName.")
    try:  # what it prints at import goes to stderr: stdout may be a command's --json
        with contextlib.redirect_stdout(sys.stderr):
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise InputError(
            f"defence {spec!r}: no module named {error.name!r} (is its folder on PYTHONPATH?)."
        ) from error
    purifier = getattr(module, class_name, None)
    if purifier is None:
        raise InputError(f"defence {spec!r}: module {module_name!r} has no {class_name!r}.")
    if not (isinstance(purifier, type) and issubclass(purifier, Purifier)):
        raise InputError(
            f"defence {spec!r}: {class_name} is not a subclass of clipure_core.purifiers.Purifier."
        )
    _check_clashes(spec, purifier)
    PURIFIERS[spec] = purifier
    return purifier


def _check_clashes(spec: str, purifier: type[Purifier]) -> None:
    if not _FLAG_PREFIX.fullmatch(purifier.flag_prefix or ""):
        raise InputError(
            f"defence {spec!r}: set its flag_prefix (lower-case letters, digits and '-', e.g. "
            "'mine'): its settings become the flags --{flag_prefix}-{setting}."
        )
    for name, other in PURIFIERS.items():
        if purifier.name and purifier.name == name:
            raise InputError(
                f"defence {spec!r}: its name {name!r} is taken by {other.__name__}; give the "
                "class a name of its own."
            )
        if other.flag_prefix == purifier.flag_prefix:
            raise InputError(
                f"defence {spec!r}: its flag_prefix {purifier.flag_prefix!r} is {name}'s "
                "already; choose another."
            )


def load_defenses(names: Sequence[str]) -> None:
    """Load every `package.module:Class` among `names` (entries of a --defense list; a
    column's defence is the part before '@')."""
    for name in names:
        defense = name.strip().partition("@")[0]
        if is_module_spec(defense):
            load_defense(defense)
