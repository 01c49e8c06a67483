"""The docs cannot drift from the command lines: docs/cli.md is the parsers' text, every flag
the docs show after a command exists in it, and gpu_check.sh runs every benchmark."""

from __future__ import annotations

import argparse
import importlib.util
import re

from tools.cli_reference import COMMANDS, DOC, REGENERATE, ROOT, render
from tools.doc_flags import doc_files, documented_flags, stray_flags, unknown_flags

BENCH_HELPERS = {"timing.py", "pass_counter.py"}  # modules the benchmarks import


def test_cli_reference_is_the_parsers_text():
    assert DOC.read_text() == render(), f"docs/cli.md is out of date: run {REGENERATE}"


def test_cli_reference_shows_real_defaults_and_every_flag():
    text = DOC.read_text()
    # defaults worked out from the parsers by hand
    assert "| `--eps` | `4` | comma-separated; L-inf in /255, L2 in [0, 1] |" in text
    assert "| `--defense` | `none,clipure_cos` |" in text  # evaluate's, not predict's
    assert "| `--num-images`, `--n` | `1000` |" in text
    assert "| `--queue-size` | `32` |" in text  # app.py without CLIPURE_QUEUE_SIZE
    assert "| `--diff-t-min` | `900` |" in text
    audit = text.split("## `python -m clipure_core audit`")[1].split("## ")[0]
    for flag in ("--cos-batch-coupled", "--diff-t-max", "--diff-text-encodings", "--prior"):
        assert f"| `{flag}` |" in audit  # the defence flags predict has
    assert "(GPU)" not in text and text.count("fp16 or bf16 (run on CPU too, slower)") == 3


def test_a_changed_parser_makes_the_reference_out_of_date(monkeypatch):
    original = COMMANDS["python -m clipure_core predict"]

    def changed():
        parser = original()
        parser.add_argument("--new-flag", type=int, default=3, help="a new flag")
        return parser

    monkeypatch.setitem(COMMANDS, "python -m clipure_core predict", changed)
    assert "| `--new-flag` | `3` | a new flag |" in render()
    assert render() != DOC.read_text()


def test_documented_flags_exist_in_their_commands():
    assert unknown_flags(doc_files()) == []
    assert stray_flags(doc_files()) == []


def test_the_flag_checker_reads_synopses_and_catches_a_removed_flag(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\n"
        "python -m clipure_core predict IMAGE --labels a,b [--model M]\n"
        "    [--cos-steps 10] [--no-such-flag]\n"
        "torchrun --nproc-per-node 2 -m clipure_core.evaluate --data d \\\n"
        "  --out o --gone\n"
        "python bench/latency.py --repeats 1  # --not-read-in-a-comment\n"
        "```\n"
        "Run `python -m clipure_core audit IMAGE --labels a` and `--nproc-per-node` alone.\n"
    )
    flags = sorted(flag[:2] for flag in documented_flags(page.read_text()))
    assert flags == [
        ("python -m clipure_core audit", "--labels"),
        ("python -m clipure_core predict", "--cos-steps"),
        ("python -m clipure_core predict", "--labels"),
        ("python -m clipure_core predict", "--model"),
        ("python -m clipure_core predict", "--no-such-flag"),
        ("python -m clipure_core.evaluate", "--data"),
        ("python -m clipure_core.evaluate", "--gone"),
        ("python -m clipure_core.evaluate", "--out"),
        ("python bench/latency.py", "--repeats"),
    ]
    assert unknown_flags([page]) == [
        f"{page}: python -m clipure_core predict --no-such-flag",
        f"{page}: python -m clipure_core.evaluate --gone",
    ]
    assert stray_flags([page]) == [
        f"{page}: --gone",
        f"{page}: --no-such-flag",
        f"{page}: --not-read-in-a-comment",
    ]


def test_every_benchmark_is_documented_and_run_by_gpu_check():
    scripts = {p.name for p in (ROOT / "bench").glob("*.py")} - BENCH_HELPERS
    assert scripts == {
        "latency.py",
        "text_embeddings.py",
        "diff_latency.py",
        "audit_latency.py",
        "eval_throughput.py",
    }
    assert {f"python bench/{name}" for name in scripts} <= set(COMMANDS)
    steps = (ROOT / "bench" / "gpu_check.sh").read_text()
    run = set(re.findall(r"^step .*?bench/(\w+\.py)", re.sub(r"\\\n\s*", " ", steps), re.M))
    assert run == scripts


def test_each_benchmark_prints_the_flags_it_ran_with():
    spec = importlib.util.spec_from_file_location("bench_timing", ROOT / "bench" / "timing.py")
    timing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timing)
    args = argparse.Namespace(steps=2, n=64, batch_sizes="1,8,64", device=None, skip_scaling=True)
    assert timing.flags_line("bench/eval_throughput.py", args) == (
        "flags: python bench/eval_throughput.py --steps 2 --n 64 --batch-sizes 1,8,64 "
        "--skip-scaling"
    )
    for script in (ROOT / "bench").glob("*.py"):
        if script.name not in BENCH_HELPERS:  # each main prints it right after parsing its flags
            text = script.read_text()
            assert "args = build_parser().parse_args()\n    print_flags(args)\n" in text


def test_a_defense_of_ones_own_brings_its_flags_to_the_command_line_that_names_it(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "`python -m clipure_core predict x.png --defense clipure_cos,mine:Blend --blend-weight 1`"
        "\nits flags: `--blend-steps`, `--blend-weight`; not `--other-thing`.\n"
        "`python -m clipure_core predict x.png --defense clipure_cos --blend-weight 1`\n"
    )
    assert unknown_flags([page]) == [f"{page}: python -m clipure_core predict --blend-weight"]
    assert stray_flags([page]) == [f"{page}: --other-thing"]
