"""docs/output-fields.md against real output: every key documented, every documented key made.

Path notation (the first column of the page's tables):
  `settings.attack.eps`   nested object keys, joined by dots;
  `matrix[].condition`    `[]`: each element of a list of objects;
  `probabilities.clean.<model>`  `<...>`: a key that is a name (a model, a label, a stage),
                          not a fixed word; the text says which names appear;
  `checks[].value.*`      `.*`: an object whose keys are documented elsewhere (the page
                          links there); its keys are not checked here.
A list of plain values (strings, numbers) is one path, as is a CSV column (its header).

Each table follows a marker line `<!-- fields: NAME ... -->` (a table shared by several
outputs names each); `tests/test_output_fields.py`
produces each output NAME with the tiny test models and compares both ways. A branch that adds
a key documents it in the right table (the test names the missing row).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "output-fields.md"
_MARKER = re.compile(r"<!-- fields: ([\w -]+?) -->")
_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|")


def documented_fields(text: str) -> dict[str, list[str]]:
    """{output name: its documented paths} from the page's marked tables."""
    fields: dict[str, list[str]] = {}
    names: list[str] = []
    rows = 0
    for line in text.splitlines():
        marker = _MARKER.fullmatch(line.strip())
        if marker:
            names, rows = marker.group(1).split(), 0
            for name in names:
                fields.setdefault(name, [])
            continue
        row = _ROW.match(line)
        if names and row:
            rows += 1
            for name in names:
                fields[name].append(row.group(1))
        elif names and rows and not line.startswith("|"):
            names = []  # the table ended
    return fields


def _prefixes(path: str) -> Iterable[str]:
    parts = path.split(".")
    for i in range(1, len(parts) + 1):
        head = ".".join(parts[:i])
        if head.endswith("[]"):
            yield head[:-2]
        yield head


def compare(value: object, documented: Iterable[str]) -> tuple[list[str], list[str]]:
    """(undocumented paths found in `value`, documented paths `value` never made)."""
    known = {prefix for path in documented for prefix in _prefixes(path)}
    seen: set[str] = set()
    undocumented: set[str] = set()
    _walk(value, "", known, seen, undocumented)
    missing = sorted(path for path in documented if path not in seen)
    return sorted(undocumented), missing


def _walk(value: object, at: str, known: set[str], seen: set[str], unknown: set[str]) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            literal = f"{at}.{key}" if at else str(key)
            if literal in known:
                path = literal
            elif f"{at}.*" in known:
                seen.add(f"{at}.*")
                return
            else:
                named = sorted(p for p in known if re.fullmatch(rf"{re.escape(at)}\.?<[^.]+>", p))
                if not named:
                    unknown.add(literal)
                    continue
                path = named[0]
            seen.add(path)
            _walk(child, path, known, seen, unknown)
    elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
        seen.add(f"{at}[]")
        for item in value:
            _walk(item, f"{at}[]", known, seen, unknown)
