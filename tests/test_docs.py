"""The docs cannot drift: links and anchors resolve, every module is documented, and every
example in README.md and docs/ runs (with the tiny model, by the substitution table below).
The rules are written down in docs/development.md ("The docs are tested")."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(`{3,})(\S*)\s*$")
LINK = re.compile(r"!?\[((?:[^\]\[]|\[[^\]]*\])*)\]\(([^)\s]+)\)")
NOT_RUN = re.compile(r"^\*Not run by the tests: ([^*]+)\.\*$")
SAVE_AS = re.compile(r"^Save this as `([\w.]+\.py)`")
OUTPUT_MARKER = "<!-- output -->"


# --- Markdown ----------------------------------------------------------------------------------


@dataclass
class Block:
    page: str  # path relative to the repository
    line: int  # line of the opening fence, from 1
    language: str
    text: str
    not_run: str | None  # the reason, when the line before the fence marks it
    output: Block | None = None  # the documented output of this block, if any
    save_as: str | None = None  # a module the page tells the reader to save ("Save this as")


def split_page(text: str) -> tuple[list[str], list[tuple[int, str, str, int]]]:
    """The page's prose lines (code blocks blanked) and its fenced blocks as
    (line of the opening fence, language, text, line of the closing fence)."""
    lines = text.split("\n")
    prose = list(lines)
    blocks = []
    start = None
    for number, line in enumerate(lines):
        match = FENCE.match(line)
        if start is None and match:
            start, fence, language = number, match.group(1), match.group(2)
        elif start is not None and line.strip() == fence:
            blocks.append((start + 1, language, "\n".join(lines[start + 1 : number]), number + 1))
            for blank in range(start, number + 1):
                prose[blank] = ""
            start = None
    return prose, blocks


def paragraph_before(lines: list[str], fence: int) -> str:
    """The paragraph that ends right before the line with index `fence` (blank lines between
    them skipped), as one line."""
    while fence > 0 and not lines[fence - 1].strip():
        fence -= 1
    start = fence
    while start > 0 and lines[start - 1].strip() and not FENCE.match(lines[start - 1]):
        start -= 1
    return " ".join(line.strip() for line in lines[start:fence])


def page_blocks(page: Path) -> list[Block]:
    """The page's bash and python blocks, each with its not-run reason and documented output."""
    text = page.read_text()
    lines = text.split("\n")
    name = str(page.relative_to(ROOT))
    _, fenced = split_page(text)
    found: list[Block] = []
    for index, (line, language, body, end) in enumerate(fenced):
        if language not in ("bash", "python"):
            continue
        before = paragraph_before(lines, line - 1)
        match = NOT_RUN.match(before)
        block = Block(name, line, language, body, match.group(1) if match else None)
        saved = SAVE_AS.match(before)
        block.save_as = saved.group(1) if saved and language == "python" else None
        if index + 1 < len(fenced):
            next_line, next_language, next_body, _ = fenced[index + 1]
            between = lines[end : next_line - 1]
            if OUTPUT_MARKER in between and next_language == "text":
                block.output = Block(name, next_line, "text", next_body, None)
        found.append(block)
    return found


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in page_blocks(page)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation other than `-`
    and `_` removed, spaces turned into `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor the page's headings give (repeats get -1, -2, ... as on GitHub)."""
    prose, _ = split_page(page.read_text())
    seen: dict[str, int] = {}
    found = set()
    for line in prose:
        match = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def link_problems(page: Path, root: Path = ROOT) -> list[str]:
    """Every link of the page that does not resolve inside the repository, or leaves it."""
    prose, _ = split_page(page.read_text())
    problems = []
    for number, line in enumerate(prose, start=1):
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        for match in LINK.finditer(line):
            target = match.group(2)
            where = f"{page.relative_to(root)}:{number}: {target}"
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                if not target.startswith("https://"):
                    problems.append(f"{where}: only https web links are allowed")
                continue
            path, _, anchor = target.partition("#")
            if path.startswith("/") or path.startswith("~"):
                problems.append(f"{where}: an absolute local path")
                continue
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.is_relative_to(root):
                problems.append(f"{where}: leaves the repository")
            elif not resolved.exists():
                problems.append(f"{where}: no such file")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{where}: no heading gives #{anchor}")
            elif anchor and resolved.suffix != ".md":
                problems.append(f"{where}: an anchor into a file that is not Markdown")
    return problems


def test_slug_follows_githubs_rule():
    assert slug("Protocols") == "protocols"
    assert slug("Protocols (`--protocol`)") == "protocols---protocol"
    assert (
        slug("Result JSON (`PlaygroundResult.to_dict()`)") == "result-json-playgroundresultto_dict"
    )
    assert slug("One photo: `predict`, `cache-text` and the Python API") == (
        "one-photo-predict-cache-text-and-the-python-api"
    )
    assert slug("See [the app](app.md)") == "see-the-app"


def test_link_checker_catches_every_kind_of_bad_link(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## Part\n\n## Part\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\n[fine](other.md#part-1) [fine](#page) [fine](https://arxiv.org/abs/1)\n"
        "[missing](gone.md) [anchor](other.md#nothing) [outside](../../notes.md)\n"
        "[absolute](/etc/hosts) [plain](http://example.org) `[code](gone.md)`\n"
        "```text\n[in a block](gone.md)\n```\n"
    )
    problems = link_problems(page, root=tmp_path)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "gone.md: no such file",
        "other.md#nothing: no heading gives #nothing",
        "../../notes.md: leaves the repository",
        "/etc/hosts: an absolute local path",
        "http://example.org: only https web links are allowed",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_links_and_anchors_resolve_inside_the_repository(page):
    assert link_problems(page) == []


def test_docs_name_no_local_path():
    """No page names the folder the checkout sits in, nor the team's notes beside it."""
    outside = str(ROOT.parent) + "/"
    for page in PAGES:
        text = page.read_text()
        assert outside not in text and "shared/notes" not in text, page


def test_development_page_names_every_module():
    documented = (ROOT / "docs" / "development.md").read_text()
    modules = sorted(
        str(path.relative_to(ROOT))
        for package in ("app", "clipure_core")
        for path in (ROOT / package).rglob("*.py")
        if "__pycache__" not in path.parts
    )
    assert len(modules) > 80
    assert [module for module in modules if f"`{module}`" not in documented] == []


def test_readme_is_a_landing_page_with_the_test_command():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.split("\n")) <= 200
    after = readme.split("<!-- test-command -->\n", 1)[1].split("\n")
    assert after[0] == "```" and after[2] == "```"
    assert "python -m pytest -q" in after[1] and "ruff check ." in after[1]


# --- Examples ----------------------------------------------------------------------------------

# Blocks that cannot run here, each marked in its page by `*Not run by the tests: REASON.*`
# on the line before its fence: (page, the block's first line).
NOT_RUN_BLOCKS = {
    ("README.md", "python app.py --model ViT-B-32 --pretrained openai"),
    ("docs/app.md", "python app.py --model ViT-B-32 --pretrained openai"),
    ("docs/app.md", "from gradio_client import Client, handle_file"),
    ("docs/benchmarks.md", "python app.py --model ViT-B-32 --pretrained random --device cpu"),
    ("docs/benchmarks.md", "bash bench/gpu_check.sh"),
    ("docs/custom-defenses.md", "python app.py --defense-module my_defense:NullBlend"),
    ("docs/development.md", "pip install pre-commit"),
    *(
        ("docs/defenses-side-by-side.md", f"python -m clipure_core{command}")
        for command in (
            ' predict assets/chelsea.png --labels "cat, dog, car" '
            "--defense clipure_cos,none@fare4-b32,clipure_cos@fare4-b32",
            ' audit assets/chelsea.png --labels "cat, dog, car" '
            "--defense clipure_cos,none@fare4-b32,clipure_cos@fare4-b32 --json",
            ".evaluate --data cifar10 --n 100 --defense none,none@fare4-b32,clipure_cos@fare4-b32 "
            "--out runs/fare",
        )
    ),
    ("docs/development.md", "python -m pytest -q tests/test_codebase.py"),
    ("docs/webcam-and-curve.md", "from gradio_client import Client, handle_file"),
    (
        "docs/benchmarks.md",
        "python bench/diff_latency.py --model ViT-L-14 --device cpu --repeats 3",
    ),
    (
        "docs/evaluation.md",
        "torchrun --nproc_per_node 4 -m clipure_core.evaluate --data cifar10 --data-root data \\",
    ),
}


@dataclass
class Tiny:
    """What the substitution table puts in: the tiny model folder and a small ImageFolder."""

    model: str
    images: str


# The one substitution rule: applied in order to every block before it runs.
SUBSTITUTIONS = [
    (r"\bViT-(?:B-32|B-16|L-14)\b(?!-)", lambda tiny: f"local-dir:{tiny.model}"),
    (r"--steps \d+", lambda tiny: "--steps 1"),
    (r"\bsteps=\d+", lambda tiny: "steps=1"),
    (r"--num-images \d+", lambda tiny: "--num-images 4"),
    (r"\bnum_images=\d+", lambda tiny: "num_images=2"),
    (r"--square-queries \d+", lambda tiny: "--square-queries 10"),
    (r"\bsquare_queries=\d+", lambda tiny: "square_queries=10"),
    (r"--repeats \d+", lambda tiny: "--repeats 1"),
    (r"--imagenet-sample \d+", lambda tiny: "--imagenet-sample 2"),
    (r"--scaling-n \d+", lambda tiny: "--scaling-n 2 --skip-scaling"),
    (r"--n \d+", lambda tiny: "--n 2"),
    (r"--batch-sizes [\d,]+", lambda tiny: "--batch-sizes 1,2"),
    (r"--epochs \d+", lambda tiny: "--epochs 1"),
    (r"--data cifar10(?: --data-root \S+)?", lambda tiny: f"--data {tiny.images}"),
    (r"(?<=[\s\"'(])photos/?(?=[\s\"')])", lambda tiny: tiny.images),
    (r"--labels cifar10", lambda tiny: '--labels "cat, dog"'),
]


MODEL_COMMAND = re.compile(r"python -m clipure_core\b(?!\.evaluate compare)|python bench/\w+\.py")


def substitute(text: str, tiny: Tiny) -> str:
    """The block as the tests run it: SUBSTITUTIONS applied, and a command of the engine or a
    benchmark that names no model given the tiny one (its default would be ViT-B-32)."""
    for pattern, replacement in SUBSTITUTIONS:
        text = re.sub(pattern, lambda match, make=replacement: make(tiny), text)
    commands = re.split(r"(?<!\\)\n", text)  # lines, continuation lines kept together
    return "\n".join(
        f"{command} --model local-dir:{tiny.model}"
        if MODEL_COMMAND.search(command) and "--model" not in command
        else command
        for command in commands
    )


def test_substitution_makes_a_documented_command_tiny():
    tiny = Tiny(model="/m", images="/i")
    command = (
        "python -m clipure_core.evaluate --data cifar10 --data-root data --model ViT-B-32 "
        "--num-images 1000 --steps 100 --square-queries 5000 --out runs/a"
    )
    assert substitute(command, tiny) == (
        "python -m clipure_core.evaluate --data /i --model local-dir:/m "
        "--num-images 4 --steps 1 --square-queries 10 --out runs/a"
    )
    assert substitute('load_dataset("photos/"), num_images=20, steps=10', tiny) == (
        'load_dataset("/i"), num_images=2, steps=1'
    )
    assert substitute(
        "python -m clipure_core predict a.png \\\n  --eps 4\npython -m clipure_core.evaluate "
        "compare runs/a runs/b\npython bench/latency.py --model ViT-L-14",
        tiny,
    ) == (
        "python -m clipure_core predict a.png \\\n  --eps 4 --model local-dir:/m\n"
        "python -m clipure_core.evaluate compare runs/a runs/b\n"
        "python bench/latency.py --model local-dir:/m"
    )
    assert substitute("--model ViT-B-32-quickgelu --n 64 --scaling-n 128", tiny) == (
        "--model ViT-B-32-quickgelu --n 2 --scaling-n 2 --skip-scaling"
    )


def test_every_not_run_block_is_listed_and_marked_visibly():
    marked = {(b.page, b.text.split("\n")[0]) for b in all_blocks() if b.not_run is not None}
    assert marked == NOT_RUN_BLOCKS


def test_block_extraction_finds_markers_and_outputs(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text(
        "# P\n\n```bash\necho hi\n```\n<!-- output -->\nprints\n```text\nhi\n```\n\n"
        "*Not run by the tests: needs a GPU.*\n```python\nimport torch\n```\n"
        "```json\n{}\n```\nSave this as `mine.py` (or anywhere):\n```python\nX = 1\n```\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    first, second, third = page_blocks(page)
    assert (third.save_as, third.not_run, second.save_as) == ("mine.py", None, None)
    assert (first.language, first.text, first.not_run, first.output.text) == (
        "bash",
        "echo hi",
        None,
        "hi",
    )
    assert (second.language, second.not_run, second.output) == ("python", "needs a GPU", None)


BAR = re.compile(r"^(.*?): *\d+%\|.*\| *\d+/(\d+) ")


def normalise(output: str) -> list[str]:
    """Lines as a terminal finally shows them: empty lines dropped, a progress bar's updates
    (written on new lines or after `\\r` when the output is not a terminal) reduced to the
    last, every number replaced by N, inner spaces squeezed, trailing spaces dropped."""
    lines: list[str] = []
    bar = None
    for line in re.split(r"[\r\n]", output):
        if not line.strip():
            continue
        match = BAR.match(line)
        key = match.groups() if match else None
        if key is not None and key == bar:
            lines.pop()
        bar = key
        lines.append(line)
    return [squeeze(re.sub(r"\d+(?:\.\d+)?", "N", line)) for line in lines]


def squeeze(line: str) -> str:
    """Runs of inner spaces as one space (the indentation kept), trailing spaces dropped."""
    indent = line[: len(line) - len(line.lstrip(" "))]
    return indent + re.sub(r" +", " ", line.strip())


def test_normalise_compares_lines_numbers_aside():
    shown = (
        "\nbar:   0%|  | 0/80 [00:00<?, ?prompt/s]\nbar: 100%|##| 80/80 [00:01, 595.53prompt/s]"
        "\rbar:   0%|  | 0/240 [00:00<?, ?prompt/s]\n\n  time: 335 ms \n"
    )
    assert normalise(shown) == [
        "bar: N%|##| N/N [N:N, Nprompt/s]",
        "bar: N%| | N/N [N:N<?, ?prompt/s]",
        "  time: N ms",
    ]
    assert normalise("cat 54% -> dog 71%") != normalise("cat 54% -> car 71%")


@pytest.fixture
def workdir(tmp_path, tiny_model_dir, image_folder):
    """A fresh folder like the repository root for one example: assets/ and bench/ (linked),
    and the tiny model and a small ImageFolder for the substitution table."""
    folder = tmp_path / "examples"
    folder.mkdir()
    for name in ("assets", "bench"):
        (folder / name).symlink_to(ROOT / name)
    return folder, Tiny(model=str(tiny_model_dir), images=str(image_folder))


def run_block(block: Block, folder: Path, tiny: Tiny, cache: Path) -> subprocess.CompletedProcess:
    code = substitute(block.text, tiny)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "CLIPURE_CACHE_DIR": str(cache),
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "100",
    }
    if block.language == "bash":
        command = ["bash", "-e", "-o", "pipefail", "-c", code]
    else:
        command = [sys.executable, "-c", code]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)


RUNNABLE = [block for block in all_blocks() if block.not_run is None]


@pytest.mark.parametrize(
    "block", RUNNABLE, ids=[f"{block.page}:{block.line}" for block in RUNNABLE]
)
def test_documented_example_runs(block, workdir, tmp_path):
    folder, tiny = workdir
    for saved in all_blocks():
        if saved.page == block.page and saved.save_as:
            (folder / saved.save_as).write_text(substitute(saved.text, tiny))
    result = run_block(block, folder, tiny, tmp_path / "cache")
    assert result.returncode == 0, (
        f"{block.page}:{block.line} failed\n--- run as\n{substitute(block.text, tiny)}\n"
        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )
    if block.output is not None:
        printed = normalise(result.stderr) + normalise(result.stdout)
        assert printed == normalise(block.output.text), (
            f"{block.page}:{block.output.line}: the documented output differs from\n"
            + result.stderr
            + result.stdout
        )


def test_examples_cover_every_page_with_code():
    pages = {block.page for block in RUNNABLE}
    assert {"README.md", "docs/predict.md", "docs/audit.md", "docs/evaluation.md"} <= pages
    assert shutil.which("bash") is not None
