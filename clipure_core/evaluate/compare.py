"""`python -m clipure_core.evaluate compare DIR_A DIR_B [--html FILE]`: two finished runs side
by side (typically `--protocol release` and `--protocol adaptive` on the same images): clean
and worst-case robust accuracy per model and eps, and, when both runs evaluated the same
images, an exact McNemar test of the worst-case outcomes per image."""

from __future__ import annotations

import argparse
import csv
import html
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from .charts import html_table
from .report import RESULTS_FILE, ROWS_FILE
from .stats import mcnemar_exact
from .store import write_text_atomic

# Settings two runs should share for a fair comparison (the protocols differ on purpose).
SAME_SETTINGS = ("model", "weights_id", "pretrained", "templates", "seed", "attack_resolution")


def load_run(folder: Path) -> tuple[dict, list[dict]]:
    """results.json and per_image.csv of a finished run."""
    path = Path(folder) / RESULTS_FILE
    if not path.is_file():
        raise InputError(f"{path} not found: give the --out folder of a finished run.")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        with open(Path(folder) / ROWS_FILE, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, json.JSONDecodeError, csv.Error) as error:
        raise InputError(f"cannot read the run in {folder}: {error}") from error
    return results, rows


def _worst_by_image(rows: Sequence[dict]) -> dict[tuple[float, str], dict[str, bool]]:
    """(eps, model) -> {image id: robust under every condition}."""
    worst: dict[tuple[float, str], dict[str, bool]] = {}
    for row in rows:
        by_image = worst.setdefault((float(row["eps"]), row["model"]), {})
        by_image[row["image"]] = by_image.get(row["image"], True) and row["robust"] == "True"
    return worst


def compare_runs(first: tuple[dict, list[dict]], second: tuple[dict, list[dict]]) -> dict:
    """Side-by-side numbers of two runs: `clean` and `worst_case` lines per model (and eps),
    each with the accuracy of both runs, and `paired` McNemar tests when the runs share their
    images (`same_images`)."""
    (results_a, rows_a), (results_b, rows_b) = first, second
    digest_a = results_a["settings"]["data"]["subset_sha256"]
    same_images = digest_a == results_b["settings"]["data"]["subset_sha256"]
    clean = [
        {"model": model, "a": entry, "b": results_b["clean"].get(model)}
        for model, entry in results_a["clean"].items()
    ]
    worst_b = {(e["eps"], e["model"]): e for e in results_b["worst_case"]}
    worst_case = [
        {"eps": e["eps"], "model": e["model"], "a": e, "b": worst_b.get((e["eps"], e["model"]))}
        for e in results_a["worst_case"]
    ]
    paired = []
    if same_images:
        images_a, images_b = _worst_by_image(rows_a), _worst_by_image(rows_b)
        for key, robust_a in images_a.items():
            robust_b = images_b.get(key)
            if robust_b is None:
                continue
            only_a = sum(robust_a[i] and not robust_b[i] for i in robust_a)
            only_b = sum(robust_b[i] and not robust_a[i] for i in robust_a)
            paired.append(
                {
                    "eps": key[0],
                    "model": key[1],
                    "robust_in_a_only": only_a,
                    "robust_in_b_only": only_b,
                    "p_value": mcnemar_exact(only_a, only_b),
                }
            )
    differing = [
        key
        for key in SAME_SETTINGS
        if results_a["settings"].get(key) != results_b["settings"].get(key)
    ]
    return {
        "a": _describe(results_a),
        "b": _describe(results_b),
        "same_images": same_images,
        "differing_settings": differing,
        "clean": clean,
        "worst_case": worst_case,
        "paired": paired,
    }


def _describe(results: dict) -> str:
    settings = results["settings"]
    return (
        f"protocol {settings.get('protocol', 'custom')}, {settings['attack']['method']}, "
        f"threats {', '.join(settings['threats'])}"
    )


def _accuracy(entry: dict | None) -> str:
    if entry is None:
        return "-"
    low, high = entry["ci95"]
    return f"{entry['accuracy']:.1%} [{low:.1%}, {high:.1%}]"


def table_rows(comparison: dict) -> list[tuple[str, str, str, str]]:
    """(what, model, run A, run B) lines of the comparison."""
    rows = [
        ("clean", c["model"], _accuracy(c["a"]), _accuracy(c["b"])) for c in comparison["clean"]
    ]
    rows += [
        (f"worst case eps={w['eps']:g}", w["model"], _accuracy(w["a"]), _accuracy(w["b"]))
        for w in comparison["worst_case"]
    ]
    return rows


def comparison_lines(comparison: dict, names: Sequence[str]) -> list[str]:
    lines = [f"A: {names[0]} ({comparison['a']})", f"B: {names[1]} ({comparison['b']})"]
    rows = [("", "model", "A", "B"), *table_rows(comparison)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines += ["  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    if comparison["differing_settings"]:
        lines.append(f"note: the runs differ in {', '.join(comparison['differing_settings'])}.")
    if not comparison["same_images"]:
        lines.append("the runs evaluated different images: no paired test.")
    for entry in comparison["paired"]:
        lines.append(
            f"  eps={entry['eps']:g} {entry['model']}: robust in A only on "
            f"{entry['robust_in_a_only']} images, in B only on {entry['robust_in_b_only']}; "
            f"exact McNemar p = {entry['p_value']:.3g}"
        )
    return lines


def comparison_html(comparison: dict, names: Sequence[str]) -> str:
    header = ("", "model", f"A: {names[0]}", f"B: {names[1]}")
    paired = [
        (
            f"{e['eps']:g}",
            e["model"],
            e["robust_in_a_only"],
            e["robust_in_b_only"],
            f"{e['p_value']:.3g}",
        )
        for e in comparison["paired"]
    ]
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>CLIPure runs compared"
        "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        "<h1>Two evaluation runs side by side</h1>"
        f"<p>A: {html.escape(comparison['a'])}<br>B: {html.escape(comparison['b'])}</p>"
        + html_table(header, table_rows(comparison))
        + "<h2>Worst case per image, A vs B (exact McNemar)</h2>"
        + (
            html_table(("eps", "model", "robust in A only", "robust in B only", "p"), paired)
            if comparison["same_images"]
            else "<p>The runs evaluated different images: no paired test.</p>"
        )
        + "</body></html>\n"
    )


def build_compare_parser() -> argparse.ArgumentParser:
    """The options of `python -m clipure_core.evaluate compare`."""
    parser = argparse.ArgumentParser(
        prog="python -m clipure_core.evaluate compare",
        description="Two finished evaluation runs side by side (e.g. release vs adaptive).",
    )
    parser.add_argument("first", type=Path, help="--out folder of run A")
    parser.add_argument("second", type=Path, help="--out folder of run B")
    parser.add_argument("--html", type=Path, default=None, help="also write an HTML page here")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    return parser


def compare_main(argv: Sequence[str]) -> int:
    args = build_compare_parser().parse_args(argv)
    try:
        comparison = compare_runs(load_run(args.first), load_run(args.second))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    names = (str(args.first), str(args.second))
    if args.json:
        print(json.dumps(comparison, indent=2))
    else:
        print("\n".join(comparison_lines(comparison, names)))
    if args.html is not None:
        write_text_atomic(args.html, comparison_html(comparison, names))
    return 0
