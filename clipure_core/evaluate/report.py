"""The final outputs of a run: results.json, per_image.csv and report.html, and a text summary."""

from __future__ import annotations

import csv
import io
import platform
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
import torchattacks
import torchvision

from .aggregate import (
    ROW_FIELDS,
    WORST_CASE,
    clean_accuracy,
    image_rows,
    paired_comparison,
    robust_accuracy,
    stage_seconds,
    worst_case,
)
from .charts import report_html
from .labels import condition_label
from .store import write_json_atomic, write_text_atomic

SCHEMA = "clipure-eval/1"
RESULTS_FILE = "results.json"
ROWS_FILE = "per_image.csv"
REPORT_FILE = "report.html"


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "open_clip": open_clip.__version__,
        "torchattacks": torchattacks.__version__,
    }


def build_results(
    settings: dict,
    records: Sequence[dict],
    rows: Sequence[dict],
    invocation: dict,
    notices: Sequence[str] = (),
) -> dict:
    """The results.json document (see docs/evaluation.md)."""
    classes = settings["data"]["classes"]
    per_class = [0] * len(classes)
    for record in records:
        for target in record["targets"]:
            per_class[target] += 1
    stages = stage_seconds(records)
    process_s = sum(stages.values())
    n = sum(per_class)
    return {
        "schema": SCHEMA,
        "settings": settings,
        "versions": versions(),
        "subset": {"n": n, "per_class": per_class},
        "clean": clean_accuracy(records, settings["models"]),
        "robust": robust_accuracy(rows),
        "worst_case": worst_case(rows),
        "paired": paired_comparison(records, rows),
        "timings": {
            "stages_s": stages,
            "process_s": process_s,
            "images_per_process_s": n / process_s if process_s else None,
            "this_invocation": invocation,
        },
        "notices": list(notices),
    }


def write_outputs(
    out: Path,
    settings: dict,
    records: Sequence[dict],
    invocation: dict,
    notices: Sequence[str] = (),
) -> dict:
    """Write the three output files into `out` and return the results document."""
    rows = image_rows(records, settings["data"]["classes"], settings["attack"]["method"])
    results = build_results(settings, records, rows, invocation, notices)
    write_text_atomic(out / ROWS_FILE, rows_csv(rows))
    write_text_atomic(out / REPORT_FILE, report_html(results))
    write_json_atomic(out / RESULTS_FILE, results, indent=2)  # last: its presence = complete
    return results


def rows_csv(rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def summary_lines(results: dict) -> list[str]:
    """A short human-readable summary: accuracies with their 95 % intervals, the worst case
    per image, and the paired comparison with the undefended model."""
    attack = results["settings"]["attack"]
    units = "/255" if attack["norm"] == "linf" else ""
    rows = [("clean", model, _percent(summary)) for model, summary in results["clean"].items()]
    for entry in results["robust"]:
        text = _percent(entry)
        if "seeds" in entry:
            spread = entry["seeds"]
            text += f"  seeds: {spread['mean']:.2%} +- {spread['std']:.2%}"
        rows.append(
            (f"{condition_label(entry, results)} eps={entry['eps']:g}{units}", entry["model"], text)
        )
    if len(results["robust"]) > len(results["worst_case"]):
        rows += [
            (f"{WORST_CASE} eps={entry['eps']:g}{units}", entry["model"], _percent(entry))
            for entry in results["worst_case"]
        ]
    first = max(len(row[0]) for row in rows)
    second = max(len(row[1]) for row in rows)
    protocol = results["settings"]["protocol"]
    lines = [
        f"{results['subset']['n']} images, {attack['method']} ({attack['steps']} steps), "
        f"protocol {protocol}, {_resolution(results['settings'])}"
    ]
    lines += [f"  {a:<{first}}  {b:<{second}}  {text}" for a, b, text in rows]
    for entry in results["paired"]:
        if entry["threat"] == WORST_CASE:
            lines.append(
                f"  paired eps={entry['eps']:g}{units}: {entry['defense']} robust where the "
                f"undefended model is not on {entry['defense_only']} images, the reverse on "
                f"{entry['undefended_only']}; exact McNemar p = {entry['p_value']:.3g}"
            )
    speed = results["timings"]["this_invocation"].get("images_per_s")
    if speed:
        lines.append(f"  {speed:.3g} images/s in this invocation")
    return lines


def _resolution(settings: dict) -> str:
    """Which pixels were attacked, e.g. 'attacked at native resolution (32x32)'."""
    size = settings["attack_image_size"]
    return (
        f"attacked at {settings['attack_resolution']} resolution "
        f"({size['width']}x{size['height']}; linf/l2 in these pixels)"
    )


def _percent(summary: dict) -> str:
    low, high = summary["ci95"]
    counts = f"({summary['correct']}/{summary['n']})"
    return f"{summary['accuracy']:7.2%}  [{low:.1%}, {high:.1%}]  {counts}"
