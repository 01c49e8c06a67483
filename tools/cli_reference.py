"""docs/cli.md, the flag reference of every command, generated from the argparse parsers.

    python -m tools.cli_reference          # rewrite docs/cli.md
    python -m tools.cli_reference --check  # exit 1 when docs/cli.md differs

`tests/test_docs_cli.py` fails when docs/cli.md differs from `render()`, so the reference
cannot drift from the code: a new flag, a changed default or help text means running the
first command above. A new command is one entry in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "cli.md"
REGENERATE = "python -m tools.cli_reference"


def _subcommand(name: str) -> Callable[[], argparse.ArgumentParser]:
    def parser() -> argparse.ArgumentParser:
        from clipure_core.cli import build_parser

        commands = next(
            action
            for action in build_parser()._actions
            if isinstance(action, argparse._SubParsersAction)
        )
        return commands.choices[name]

    return parser


def _evaluate() -> argparse.ArgumentParser:
    from clipure_core.evaluate.cli import build_parser

    return build_parser()


def _compare() -> argparse.ArgumentParser:
    from clipure_core.evaluate.compare import build_compare_parser

    return build_compare_parser()


def _train_prior() -> argparse.ArgumentParser:
    from clipure_core.train_prior import build_parser

    return build_parser()


def _app() -> argparse.ArgumentParser:
    from app.config import build_parser

    return build_parser(environ={})  # the defaults without CLIPURE_* variables


def _bench(script: str) -> Callable[[], argparse.ArgumentParser]:
    def parser() -> argparse.ArgumentParser:
        path = ROOT / "bench" / f"{script}.py"
        spec = importlib.util.spec_from_file_location(f"bench_{script}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.build_parser()

    return parser


# command as typed -> its parser; the order of docs/cli.md
COMMANDS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "python -m clipure_core predict": _subcommand("predict"),
    "python -m clipure_core cache-text": _subcommand("cache-text"),
    "python -m clipure_core audit": _subcommand("audit"),
    "python -m clipure_core.evaluate": _evaluate,
    "python -m clipure_core.evaluate compare": _compare,
    "python -m clipure_core.train_prior": _train_prior,
    "python app.py": _app,
    "python bench/latency.py": _bench("latency"),
    "python bench/text_embeddings.py": _bench("text_embeddings"),
    "python bench/diff_latency.py": _bench("diff_latency"),
    "python bench/audit_latency.py": _bench("audit_latency"),
    "python bench/eval_throughput.py": _bench("eval_throughput"),
}

HEADER = f"""# Command-line reference

Every flag of every command, with its real default. Generated from the argparse parsers
by `{REGENERATE}`; `tests/test_docs_cli.py` fails when this page differs from the
code, and when a README or docs page shows a flag after a command that the command does not
have.
Do not edit by hand: change the parser's help and run the command above.

`python app.py` reads its defaults from `CLIPURE_MODEL`, `CLIPURE_PRETRAINED`,
`CLIPURE_DEVICE`, `CLIPURE_HOST` (else `GRADIO_SERVER_NAME`), `CLIPURE_PORT`, `CLIPURE_SHARE`,
`CLIPURE_QUEUE_SIZE`, `CLIPURE_MCP` and `CLIPURE_EXAMPLES`; the table shows the defaults with
none of them set.

Bad input and missing weights end a command with exit code 2 and one `error: ...` line on
stderr; the missing-weights error adds one `hint: ...` line with the ways out (run once with
internet access, copy the Hugging Face cache, a local checkpoint, or `--pretrained random`).
`--model local-dir:FOLDER` loads a folder with `open_clip_config.json` and its weights;
`--pretrained` is then not read, and the results record the folder with the sha256 of its
files (`settings.weights`, see [output-fields.md](output-fields.md)).

The benchmarks (`python bench/...`) print `flags: ...`, the command with the value of every
flag as it ran, as their first line, so a figure copied from their output carries the settings
that produced it; `bash bench/gpu_check.sh` runs each of them (`--cpu`: small settings, a
check of the script) and keeps that line in its table.
"""


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if isinstance(action, argparse._StoreTrueAction):
        return "off"
    value = action.default
    if value is None:
        return "-"
    if isinstance(value, tuple | list):
        return "`" + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + "`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if action.option_strings:
            name = ", ".join(f"`{flag}`" for flag in action.option_strings)
        else:
            name = f"`{action.dest.upper()}`"
        meaning = (action.help or "").replace("%%", "%")
        if action.choices is not None:
            meaning += f" (one of: {', '.join(map(str, action.choices))})"
        rows.append(f"| {name} | {_cell(_default(action))} | {_cell(meaning.strip())} |")
    return rows


def render() -> str:
    """The text of docs/cli.md."""
    parts = [HEADER]
    for command, make in COMMANDS.items():
        parser = make()
        parts.append(f"## `{command}`\n")
        summary = (parser.description or "").strip().splitlines()
        if summary:
            parts.append(_cell(summary[0]) + "\n")
        parts.append("\n".join(_rows(parser)) + "\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (sys.argv[1:] if argv is None else argv)
    text = render()
    if check:
        same = DOC.exists() and DOC.read_text() == text
        if not same:
            print(f"docs/cli.md is out of date: run {REGENERATE}", file=sys.stderr)
        return 0 if same else 1
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
