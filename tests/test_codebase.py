"""The code's shape: no function over 80 lines, no import circle, and app/ using only the
engine's public face. Each rule is shown to fail on a small made-up case first."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 80
ARGPARSE_BUILDERS = {"build_parser"}  # argparse builders may run long: one flag a few lines


def source_files() -> list[Path]:
    app, engine = (
        sorted((ROOT / "app").rglob("*.py")),
        sorted((ROOT / "clipure_core").rglob("*.py")),
    )
    return [ROOT / "app.py", *app, *engine]


def long_functions(tree: ast.AST, where: str) -> list[str]:
    """'where:Class.function (N lines)' for each function over MAX_LINES lines."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lines = child.end_lineno - child.lineno + 1
                    key = f"{where}:{name}"
                    exempt = child.name in ARGPARSE_BUILDERS
                    if lines > MAX_LINES and not exempt:
                        found.append(f"{key} ({lines} lines)")
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """Every module of `modules` that `module` imports, at module level or inside functions:
    `from x import y` counts as x.y where that is a module, else as x."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                name = f"{base}.{alias.name}"
                names.add(name if name in modules else base)
    return names & modules


def import_graph(files: dict[str, tuple[ast.AST, bool]]) -> dict[str, set[str]]:
    """module -> the modules of `files` it imports."""
    modules = set(files)
    return {
        module: imported(tree, module, package, modules) - {module}
        for module, (tree, package) in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def parsed() -> dict[str, tuple[ast.AST, bool]]:
    files = {}
    for path in source_files()[1:]:  # app.py, the entry point, is imported by nothing
        files[module_name(path)] = (ast.parse(path.read_text()), path.name == "__init__.py")
    return files


def test_a_long_function_is_found_and_an_argparse_builder_is_not():
    body = "\n".join(f"    x{i} = {i}" for i in range(80))  # 80 lines of body + the def line
    tree = ast.parse(f"class A:\n  def f():\n{body}\n\ndef build_parser():\n{body}\n")
    assert long_functions(tree, "m.py") == ["m.py:A.f (81 lines)"]
    assert long_functions(ast.parse(f"def f():\n{body[:-12]}\n"), "m.py") == []


def test_no_function_is_over_80_lines():
    found = []
    for path in source_files():
        found += long_functions(ast.parse(path.read_text()), str(path.relative_to(ROOT)))
    assert found == []


def test_a_circle_through_a_function_level_import_is_found():
    files = {
        "pkg": (ast.parse(""), True),
        "pkg.a": (ast.parse("from . import b\n"), False),
        "pkg.b": (ast.parse("def f():\n    from .c import g\n"), False),
        "pkg.c": (ast.parse("from pkg.a import h\n"), False),
    }
    assert find_cycle(import_graph(files)) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    files["pkg.c"] = (ast.parse("import os\n"), False)
    assert find_cycle(import_graph(files)) is None


def test_no_import_circle():
    cycle = find_cycle(import_graph(parsed()))
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


ENGINE_FACES = {"clipure_core"} | {
    module_name(path.parent) for path in (ROOT / "clipure_core").glob("*/__init__.py")
}


def deep_imports(tree: ast.AST) -> set[str]:
    """The engine modules imported that are not the package or a subpackage's `__init__`."""
    modules = {module_name(path) for path in (ROOT / "clipure_core").rglob("*.py")}
    return imported(tree, "app.x", False, modules) - ENGINE_FACES


def test_a_deep_engine_import_is_found():
    tree = ast.parse("from clipure_core.attacks import METHODS\nfrom clipure_core import X\n")
    assert deep_imports(tree) == {"clipure_core.attacks"}
    assert deep_imports(ast.parse("from clipure_core.purifiers import PURIFIERS\n")) == set()


def test_the_app_uses_only_the_engines_public_face():
    found = {}
    for path in [ROOT / "app.py", *sorted((ROOT / "app").rglob("*.py"))]:
        if deep := deep_imports(ast.parse(path.read_text())):
            found[str(path.relative_to(ROOT))] = sorted(deep)
    assert found == {}


def test_pre_commit_formats_the_code_folders_only_and_checks_everything():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}
    assert hooks["ruff-format"]["entry"] == "ruff format"
    assert hooks["ruff-check"]["entry"] == "ruff check" and "files" not in hooks["ruff-check"]
    formatted = re.compile(hooks["ruff-format"]["files"])
    for path in ("app.py", "app/api.py", "bench/gpu_check.py", "clipure_core/cli.py", "tests/x.py"):
        assert formatted.search(path), path
    for path in ("README.md", "docs/development.md", "apps/x.py", "myapp.py"):
        assert not formatted.search(path), path
