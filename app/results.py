"""What a finished request shows: verdict cards, the threat matrix, captions, the command that
reproduces it. Pure functions of the result's JSON; no gradio here."""

from __future__ import annotations

import html
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clipure_core import LABEL_PRESETS, column_title
from clipure_core.purifiers import PURIFIERS, flag_name

ASSETS = Path(__file__).resolve().parents[1] / "assets"
READY = "Pick an example or upload a photo, then press <b>Run</b>."
NO_CHANGE = "The attack found no adversarial example: the image is unchanged."
CHECK_MARKS = {"fail": "✗ fail", "warn": "⚠ warn", "pass": "✓ pass"}


def outcome(clean: str, adversarial: str, true_label: str, target: str | None = None) -> str:
    """The outcome: 'target hit' when a targeted attack reached its class, 'already wrong'
    when the clean prediction was wrong, else 'still right' or 'fooled'."""
    if target is not None and adversarial == target:
        return "target hit"
    if clean != true_label:
        return "already wrong"
    return "still right" if adversarial == true_label else "fooled"


def _top(labels: list[str], probs: list[float]) -> tuple[str, float]:
    best = max(range(len(probs)), key=probs.__getitem__)
    return labels[best], probs[best]


def verdicts(payload: Mapping[str, Any]) -> list[dict]:
    """Per model: its title, outcome, and clean / adversarial top class and probability."""
    labels, truth = payload["labels"], payload["true_label"]
    target_index = payload["settings"]["attack"].get("targeted_label")
    target = labels[target_index] if target_index is not None else None
    cards = []
    for model, clean_probs in payload["probabilities"]["clean"].items():
        clean, clean_p = _top(labels, clean_probs)
        adversarial, adversarial_p = _top(labels, payload["probabilities"]["adversarial"][model])
        cards.append(
            {
                "model": model,
                "title": column_title(model),
                "outcome": outcome(clean, adversarial, truth, target),
                "clean": (clean, clean_p),
                "adversarial": (adversarial, adversarial_p),
            }
        )
    return cards


def verdict_html(payload: Mapping[str, Any]) -> str:
    """The verdict cards: one large coloured card per model, then the true label and attack."""
    cards = []
    for card in verdicts(payload):
        (clean, clean_p), (adversarial, adversarial_p) = card["clean"], card["adversarial"]
        css = card["outcome"].replace(" ", "-")
        cards.append(
            f'<div class="card {css}"><div class="model">{html.escape(card["title"])}</div>'
            f'<div class="outcome">{card["outcome"]}</div>'
            f'<div class="change">{html.escape(clean)} {clean_p:.0%} → '
            f"{html.escape(adversarial)} {adversarial_p:.0%}</div></div>"
        )
    attack = payload["settings"]["attack"]
    size = f"{attack['eps'] * 255:g}/255" if attack["norm"] == "linf" else f"{attack['eps']:g}"
    facts = (
        f"True label: <b>{html.escape(payload['true_label'])}</b> · {attack['method']} "
        f"{attack['norm']} eps {size}, {attack['steps']} steps · threat "
        f"{payload['settings']['threat']}"
    )
    unchanged = payload["perturbation"]["linf"] == 0
    note = f'<div class="note">{NO_CHANGE}</div>' if unchanged else ""
    cards_html = f'<div class="cards">{"".join(cards)}</div>'
    return f'{cards_html}<div class="facts">{facts}</div>{note}{memory_notes(payload)}'


def memory_notes(payload: Mapping[str, Any]) -> str:
    """One line per column on another backbone than the start-up one: its weights' memory."""
    columns = payload["settings"].get("columns", {})
    lines = [
        f"{column_title(name)}: {_backbone_source(entry['backbone'])},"
        f" {entry['backbone']['memory_mb']:.0f} MiB of weights"
        for name, entry in columns.items()
        if entry["backbone"]["spec"] is not None
    ]
    return "".join(f'<div class="memory">{html.escape(line)}</div>' for line in lines)


def _backbone_source(backbone: Mapping[str, Any]) -> str:
    """Where a column's weights came from: a folder by its path, else architecture and tag."""
    if backbone["model"].startswith("local-dir:"):
        return backbone["model"]
    return f"{backbone['model']} ({backbone['pretrained']})"


def perturbation_caption(payload: Mapping[str, Any], gain: float) -> str:
    size = payload["perturbation"]
    if not gain:
        return "No perturbation: the attack left the image unchanged."
    return (
        f"Perturbation shown x{gain:.0f} around grey. Its size: L-inf "
        f"{size['linf'] * 255:.1f}/255, L2 {size['l2']:.3f}."
    )


def diagnostics_markdown(payload: Mapping[str, Any]) -> str:
    """Per defence: how far purification moved the embedding, in the end and on the way."""
    rows = ["| defence | input | ended from start | largest swing |", "|---|---|---|---|"]
    for name, diagnostics in payload["diagnostics"].items():
        for condition, run in (("adversarial", diagnostics), ("clean", diagnostics["clean"])):
            rows.append(
                f"| {column_title(name)} | {condition} | {run['angle_moved_deg']:.1f}° | "
                f"{run['max_angle_deg']:.1f}° |"
            )
    return "\n".join(rows) if len(rows) > 2 else "No defence selected."


def photo_name(image: str | Path | None) -> str:
    """How the reproducing command names the photo: an example's path in the repository,
    else the uploaded file's own name (never a path of the server)."""
    if image is None or not isinstance(image, str | Path):
        return "PHOTO.png"
    path = Path(image)
    if path.resolve().parent == ASSETS:
        return f"assets/{path.name}"
    return path.name or "PHOTO.png"


def reproduce_command(payload: Mapping[str, Any], labels_text: str, photo: str) -> str:
    """The `python -m clipure_core predict` command that reproduces `payload` (the same
    model, weights, labels, attack, threat, defences and seed) on `photo`."""
    settings = payload["settings"]
    attack = settings["attack"]
    scale = 255 if attack["norm"] == "linf" else 1
    preset = labels_text.strip().lower()
    labels = preset if preset in LABEL_PRESETS else ", ".join(payload["labels"])
    args = ["python", "-m", "clipure_core", "predict", photo, "--labels", labels]
    args += ["--model", settings["model"], "--pretrained", settings["pretrained"]]
    templates = settings["templates"]
    if isinstance(templates, str):
        args += ["--templates", templates]
    args += ["--attack", attack["method"], "--norm", attack["norm"]]
    args += ["--eps", f"{attack['eps'] * scale:g}", "--steps", str(attack["steps"])]
    if attack.get("alpha") is not None:
        args += ["--alpha", f"{attack['alpha'] * scale:g}"]
    if attack.get("targeted_label") is not None:
        args += ["--target", payload["labels"][attack["targeted_label"]]]
    args += ["--true-label", payload["true_label"], "--eot", str(attack["eot_samples"])]
    columns = [
        name for name in settings.get("columns", settings["defenses"]) if name != "undefended"
    ]
    args += ["--threat", settings["threat"], "--defense", ",".join(columns)]
    args += _defense_flags(settings["defenses"])
    args += ["--seed", str(settings["seed"])]
    return shlex.join(args)


def _defense_flags(defenses: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Flags for every defence setting that differs from its default (the prior is left
    out: the command finds the same one for the model)."""
    args: list[str] = []
    for name, values in defenses.items():
        purifier = PURIFIERS[name.partition("@")[0]]
        for setting in purifier.settings_spec:
            value = values.get(setting.name, setting.default)
            if setting.name == "prior" or value == setting.default:
                continue
            flag = flag_name(purifier, setting)
            flags = [flag] if setting.kind is bool else [flag, f"{value}"]
            args += [] if flag in args else flags
    return args


def matrix_html(audit: Mapping[str, Any], conditions: Mapping[str, Any]) -> str:
    """The threat matrix: a row per condition (what the attacker knew in one line), a column
    per model, each cell the prediction with a mark and its probability; the audit's flags
    below it."""
    cells: dict[str, dict[str, dict]] = {}
    for entry in audit["matrix"]:
        cells.setdefault(entry["condition"], {})[entry["model"]] = entry
    models = list(dict.fromkeys(entry["model"] for entry in audit["matrix"]))
    head = "".join(f"<th>{html.escape(column_title(model))}</th>" for model in models)
    rows = []
    for name, condition in conditions.items():
        if name not in cells:
            continue
        row = [
            f'<th class="condition">{html.escape(condition.title)}'
            f'<div class="knew">{html.escape(condition.attacker_knew)}</div></th>'
        ]
        for model in models:
            entry = cells[name].get(model)
            if entry is None:
                row.append('<td class="cell">–</td>')
                continue
            mark, css = ("✓", "right") if entry["correct"] else ("✗", "wrong")
            row.append(
                f'<td class="cell {css}">{mark} {html.escape(entry["prediction"])} '
                f"{entry['probability']:.0%}</td>"
            )
        rows.append(f"<tr>{''.join(row)}</tr>")
    table = (
        f'<table class="matrix"><thead><tr><th>attack</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    truth = html.escape(str(audit.get("true_label", "")))
    caption = f'<div class="facts">True label: <b>{truth}</b> · ✓ right, ✗ wrong</div>'
    return caption + table + checks_html(audit.get("checks", []))


def checks_html(checks: list[Mapping[str, Any]]) -> str:
    """The audit's checks, failures and warnings first."""
    order = {"fail": 0, "warn": 1, "pass": 2}
    items = [
        f'<li class="{check["status"]}"><span class="mark">'
        f"{CHECK_MARKS.get(check['status'], '')}</span> "
        f"<b>{html.escape(check['name'].replace('_', ' '))}</b>: "
        f"{html.escape(check['explanation'])}</li>"
        for check in sorted(checks, key=lambda check: order.get(check["status"], 3))
    ]
    return f'<ul class="checks">{"".join(items)}</ul>' if items else ""
