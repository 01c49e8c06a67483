"""Command-line flags for every purifier's settings, built from the registry (`PURIFIERS`):
a new defence class brings its flags to `predict`, `audit` and `evaluate` by itself.

A command line is parsed in two passes: `defense_arguments` finds the `--defense` lists
first, `load_defenses` registers the `package.module:Class` defences named there, and only
then is the parser built, with their flags."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from ..errors import InputError
from .base import Purifier, Setting
from .registry import PURIFIERS, load_defenses

DEFENSE_FLAG = "--defense"


def flag_name(purifier: type[Purifier], setting: Setting) -> str:
    """`--cos-steps`, `--diff-step-size`, or the setting's own flag (`--prior`)."""
    return setting.flag or f"--{purifier.flag_prefix}-{setting.name.replace('_', '-')}"


def _dest(purifier: type[Purifier], setting: Setting) -> str:
    return flag_name(purifier, setting).removeprefix("--").replace("-", "_")


def defense_arguments(argv: Sequence[str]) -> list[str]:
    """Every entry of the `--defense` lists in `argv` (`--defense a,b` or `--defense=a,b`)."""
    values = []
    for index, arg in enumerate(argv):
        if arg == DEFENSE_FLAG and index + 1 < len(argv):
            values.append(argv[index + 1])
        elif arg.startswith(DEFENSE_FLAG + "="):
            values.append(arg.partition("=")[2])
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def parser_for(
    argv: Sequence[str], build_parser: Callable[[], argparse.ArgumentParser]
) -> argparse.ArgumentParser:
    """The parser of a command line that may name defences of one's own: those in its
    `--defense` lists are loaded first, so `build_parser` adds their flags (an InputError,
    e.g. a flag the parser has already, leaves none of them registered)."""
    before = dict(PURIFIERS)
    try:
        load_defenses(defense_arguments(argv))
        return build_parser()
    except InputError:
        for name in set(PURIFIERS) - set(before):
            del PURIFIERS[name]
        raise


def add_defense_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """One flag per setting of every registered purifier, with its default and help (a
    loaded defence whose flag the parser has already is refused)."""
    for name, purifier in PURIFIERS.items():
        for setting in purifier.settings_spec:
            try:
                _add_flag(parser, purifier, setting)
            except argparse.ArgumentError as error:
                raise InputError(
                    f"defence {name!r}: its flag {flag_name(purifier, setting)} is taken "
                    "already; change its flag_prefix or the setting's flag."
                ) from error


def _add_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    purifier: type[Purifier],
    setting: Setting,
) -> None:
    text = f"{purifier.title} {setting.title}"
    if setting.help:
        text += f": {setting.help}"
    if setting.kind is bool:
        parser.add_argument(flag_name(purifier, setting), action="store_true", help=_escaped(text))
        return
    if setting.default is not None:
        text += f" (default {setting.default})"
    parser.add_argument(
        flag_name(purifier, setting),
        type=setting.kind,
        default=setting.default,
        choices=setting.choices or None,
        help=_escaped(text),
    )


def _escaped(text: str) -> str:
    """argparse formats help with %: a literal one is doubled."""
    return text.replace("%", "%%")


def defense_settings_from_args(args: argparse.Namespace) -> dict[str, dict]:
    """{defence: {setting: value}} from flags added by `add_defense_flags` (unset ones, and
    any a parser did not declare, left out: the purifier picks its own default)."""
    settings = {}
    for name, purifier in PURIFIERS.items():
        values = {s.name: getattr(args, _dest(purifier, s), None) for s in purifier.settings_spec}
        settings[name] = {key: value for key, value in values.items() if value is not None}
    return settings
