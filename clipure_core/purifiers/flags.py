"""Command-line flags for every purifier's settings, built from the registry (`PURIFIERS`):
a new defence class brings its flags to `predict`, `audit` and `evaluate` by itself."""

from __future__ import annotations

import argparse

from .base import Purifier, Setting
from .registry import PURIFIERS


def flag_name(purifier: type[Purifier], setting: Setting) -> str:
    """`--cos-steps`, `--diff-step-size`, or the setting's own flag (`--prior`)."""
    return setting.flag or f"--{purifier.flag_prefix}-{setting.name.replace('_', '-')}"


def _dest(purifier: type[Purifier], setting: Setting) -> str:
    return flag_name(purifier, setting).removeprefix("--").replace("-", "_")


def add_defense_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """One flag per setting of every registered purifier, with its default and help."""
    for purifier in PURIFIERS.values():
        for setting in purifier.settings_spec:
            text = f"{purifier.title} {setting.title}"
            if setting.help:
                text += f": {setting.help}"
            if setting.kind is bool:
                parser.add_argument(
                    flag_name(purifier, setting), action="store_true", help=_escaped(text)
                )
                continue
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
