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
# (`--cpu`) and this checker's generator's (`--check`)
OTHER_FLAGS = {"--nproc_per_node", "--nproc-per-node", "--nnodes", "--cpu", "--check"}


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md and every page under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def documented_flags(text: str) -> Iterable[tuple[str, str]]:
    """(command, flag) for every flag written after a known command in `text`."""
    text = re.sub(r"\\\n\s*", " ", text)  # shell line continuations
    text = re.sub(r"\n[ \t]+(?=\[|--)", " ", text)  # a synopsis's indented option lines
    for pattern, command in _SPELLINGS.items():
        for match in re.finditer(pattern, text):
            rest = text[match.end() :]
            end = _END.search(rest)
            for flag in _FLAG.findall(rest[: end.start() if end else len(rest)]):
                yield command, flag


def parser_flags(command: str) -> set[str]:
    """Every option string of the command's parser (with -h/--help)."""
    return {flag for action in COMMANDS[command]()._actions for flag in action.option_strings}


def unknown_flags(files: Iterable[Path]) -> list[str]:
    """'FILE: COMMAND FLAG' for each documented flag its command does not have."""
    known: dict[str, set[str]] = {}
    found = []
    for path in files:
        for command, flag in documented_flags(path.read_text()):
            if command not in known:
                known[command] = parser_flags(command)
            if flag not in known[command]:
                name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                found.append(f"{name}: {command} {flag}")
    return sorted(set(found))


def stray_flags(files: Iterable[Path]) -> list[str]:
    """'FILE: FLAG' for each flag anywhere in the text that no command has (prose included)."""
    every = set(OTHER_FLAGS).union(*(parser_flags(command) for command in COMMANDS))
    found = []
    for path in files:
        for flag in set(_FLAG.findall(path.read_text())) - every:
            name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            found.append(f"{name}: {flag}")
    return sorted(found)
