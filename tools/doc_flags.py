"""Flags written in the docs after a known command, checked against that command's parser.

`tests/test_docs_cli.py` runs `unknown_flags` over README.md and docs/*.md: a flag shown after
`python -m clipure_core predict` (or any command of `cli_reference.COMMANDS`) that the parser
does not have fails the suite, so removing or renaming a flag cannot leave the docs behind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from .cli_reference import COMMANDS, ROOT

# how each command appears in text (after `python`, `torchrun ... `, or alone): the module or
# script, longest first so that `clipure_core.evaluate compare` wins over `clipure_core.evaluate`
_SPELLINGS: dict[str, str] = {
    r"-m\s+clipure_core\s+predict\b": "python -m clipure_core predict",
    r"-m\s+clipure_core\s+cache-text\b": "python -m clipure_core cache-text",
    r"-m\s+clipure_core\s+audit\b": "python -m clipure_core audit",
    r"-m\s+clipure_core\.evaluate\s+compare\b": "python -m clipure_core.evaluate compare",
    r"-m\s+clipure_core\.evaluate\b(?!\s+compare)": "python -m clipure_core.evaluate",
    r"-m\s+clipure_core\.train_prior\b": "python -m clipure_core.train_prior",
    r"\bpython3?\s+app\.py\b": "python app.py",
    **{
        rf"\bbench/{re.escape(command.split('/')[-1])}": command
        for command in COMMANDS
        if command.startswith("python bench/")
    },
}
# a command's flags run to the end of its line (continuations joined), a closing backtick, a
# comment, or the next command of a pipeline
_END = re.compile(r"`|\n|\s#|&&|\|\||;|\s\|\s")
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")
# flags the docs may show that belong to no parser of ours: torchrun's, gpu_check.sh's own
# (`--cpu`), this checker's generator's (`--check`) and Chromium's (the webcam tests)
OTHER_FLAGS = {"--nproc_per_node", "--nproc-per-node", "--nnodes", "--cpu", "--check"}
OTHER_FLAGS |= {"--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"}
_CUSTOM_DEFENSE = re.compile(r"--defense[ =][^ ]*[\w.]+:\w+")


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md and every page under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def documented_flags(text: str) -> Iterable[tuple[str, str, bool]]:
    """(command, flag, custom) for every flag written after a known command in `text`;
    `custom`: the command names a defence of one's own (`--defense ...package.module:Class`),
    whose class brings flags no parser has until it is imported."""
    text = re.sub(r"\\\n\s*", " ", text)  # shell line continuations
    text = re.sub(r"\n[ \t]+(?=\[|--)", " ", text)  # a synopsis's indented option lines
    for pattern, command in _SPELLINGS.items():
        for match in re.finditer(pattern, text):
            rest = text[match.end() :]
            end = _END.search(rest)
            span = rest[: end.start() if end else len(rest)]
            for flag in _FLAG.findall(span):
                yield command, flag, bool(_CUSTOM_DEFENSE.search(span))


def parser_flags(command: str) -> set[str]:
    """Every option string of the command's parser (with -h/--help)."""
    return {flag for action in COMMANDS[command]()._actions for flag in action.option_strings}


def _checked(files: Iterable[Path]) -> tuple[list[str], set[str]]:
    """(unknown 'FILE: COMMAND FLAG', the flags custom defences bring on documented lines)."""
    known: dict[str, set[str]] = {}
    found, custom = [], set()
    for path in files:
        for command, flag, brings_flags in documented_flags(path.read_text()):
            if command not in known:
                known[command] = parser_flags(command)
            if flag in known[command]:
                continue
            if brings_flags:  # a flag of the named defence of one's own
                custom.add(flag)
            else:
                found.append(f"{_name(path)}: {command} {flag}")
    return sorted(set(found)), custom


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def unknown_flags(files: Iterable[Path]) -> list[str]:
    """'FILE: COMMAND FLAG' for each documented flag its command does not have (a line that
    names a defence of one's own may show that defence's flags)."""
    return _checked(files)[0]


def stray_flags(files: Iterable[Path]) -> list[str]:
    """'FILE: FLAG' for each flag anywhere in the text that no command has (prose included;
    a defence of one's own brings its flags: those with the prefix of one that a documented
    command line shows, e.g. `--blend-steps` beside `--blend-weight`)."""
    files = list(files)
    every = set(OTHER_FLAGS).union(*(parser_flags(command) for command in COMMANDS))
    custom = _checked(files)[1]
    prefixes = tuple(flag[: flag.index("-", 2) + 1] for flag in custom if "-" in flag[2:])
    found = []
    for path in files:
        for flag in set(_FLAG.findall(path.read_text())) - every - custom:
            if not flag.startswith(prefixes):
                found.append(f"{_name(path)}: {flag}")
    return sorted(found)
