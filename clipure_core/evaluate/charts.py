"""report.html: accuracy bars per defence and threat model, accuracy vs eps, and the tables.

The page is self-contained (plotly.js is embedded once), so it opens offline.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.graph_objects as go

from ..columns import column_title
from .labels import condition_label

CLEAN_COLOR = "#1f77b4"
THREAT_COLORS = {
    "transfer": "#2ca02c",
    "paper": "#ff7f0e",
    "bpda": "#d62728",
    "full": "#9467bd",
    "release": "#8c564b",
}
FONT_SIZE = 15


def _error_bars(entries: Sequence[dict]) -> dict:
    """Asymmetric error bars from each entry's Wilson interval."""
    return {
        "type": "data",
        "symmetric": False,
        "array": [entry["ci95"][1] - entry["accuracy"] for entry in entries],
        "arrayminus": [entry["accuracy"] - entry["ci95"][0] for entry in entries],
    }


def _eps_text(results: dict, eps: float) -> str:
    return f"{eps:g}/255" if results["settings"]["attack"]["norm"] == "linf" else f"{eps:g} (L2)"


def accuracy_figure(results: dict, eps: float) -> go.Figure:
    """Clean and robust accuracy (95 % intervals) per model, one bar per threat model."""
    models = results["settings"]["models"]
    titles = [column_title(model) for model in models]
    clean = [results["clean"][model] for model in models]
    figure = go.Figure(
        go.Bar(
            x=titles,
            y=[entry["accuracy"] for entry in clean],
            name="clean",
            marker_color=CLEAN_COLOR,
            error_y=_error_bars(clean),
            texttemplate="%{y:.1%}",
            textposition="outside",
        )
    )
    for threat, attack in _conditions(results):
        entries = [_robust(results, eps, threat, attack, model) for model in models]
        figure.add_trace(
            go.Bar(
                x=titles,
                y=[entry["accuracy"] for entry in entries],
                name=f"robust ({condition_label(entries[0], results)})",
                marker_color=THREAT_COLORS.get(threat) if _single_attack(results) else None,
                error_y=_error_bars(entries),
                texttemplate="%{y:.1%}",
                textposition="outside",
            )
        )
    attack = results["settings"]["attack"]
    figure.update_layout(
        title_text=(
            f"Accuracy under {attack['method']} ({attack['steps']} steps), "
            f"eps = {_eps_text(results, eps)}, n = {results['subset']['n']}"
        ),
        barmode="group",
        font_size=FONT_SIZE,
        yaxis={"range": [0, 1.1], "tickformat": ".0%", "title_text": "accuracy"},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
        margin={"t": 120},
        height=520,
    )
    return figure


def eps_figure(results: dict) -> go.Figure:
    """Robust accuracy vs eps per (model, threat); eps = 0 is the clean accuracy."""
    settings = results["settings"]
    eps_values = sorted(settings["attack"]["eps"])
    figure = go.Figure()
    for model in settings["models"]:
        for threat, attack in _conditions(results):
            entries = [results["clean"][model]]
            entries += [_robust(results, eps, threat, attack, model) for eps in eps_values]
            figure.add_trace(
                go.Scatter(
                    x=[0.0, *eps_values],
                    y=[entry["accuracy"] for entry in entries],
                    error_y=_error_bars(entries),
                    mode="lines+markers",
                    name=f"{column_title(model)} ({condition_label(entries[1], results)})",
                    line={
                        "color": THREAT_COLORS.get(threat) if _single_attack(results) else None,
                        "width": 3,
                    },
                    marker={"size": 9},
                    line_dash="solid" if model == "undefended" else "dash",
                )
            )
    units = "/255" if settings["attack"]["norm"] == "linf" else " (L2, pixels in [0, 1])"
    figure.update_layout(
        title_text="Robust accuracy vs eps (eps = 0: clean)",
        font_size=FONT_SIZE,
        xaxis={"title_text": f"eps{units}"},
        yaxis={"range": [0, 1.05], "tickformat": ".0%", "title_text": "accuracy"},
        height=520,
    )
    return figure


def _conditions(results: dict) -> list[tuple[str, str]]:
    """The (threat, attack) pairs of the run, in order."""
    return list(dict.fromkeys((entry["threat"], entry["attack"]) for entry in results["robust"]))


def _single_attack(results: dict) -> bool:
    return len({entry["attack"] for entry in results["robust"]}) == 1


def _robust(results: dict, eps: float, threat: str, attack: str, model: str) -> dict:
    for entry in results["robust"]:
        if (entry["eps"], entry["threat"], entry["attack"], entry["model"]) == (
            eps,
            threat,
            attack,
            model,
        ):
            return entry
    raise KeyError(f"no robust accuracy for eps={eps}, {attack} ({threat}), model={model}.")


def figures(results: dict) -> list[go.Figure]:
    """The report's charts: bars for each eps, then accuracy vs eps if several were run."""
    eps_values = results["settings"]["attack"]["eps"]
    charts = [accuracy_figure(results, eps) for eps in eps_values]
    if len(eps_values) > 1:
        charts.append(eps_figure(results))
    return charts


def report_html(results: dict) -> str:
    """The whole report page."""
    parts = [
        figure.to_html(full_html=False, include_plotlyjs=index == 0)
        for index, figure in enumerate(figures(results))
    ]
    settings = results["settings"]
    title = f"CLIPure evaluation: {settings['model']} on {settings['data']['source']}"
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{_settings_table(results)}{_accuracy_table(results)}"
        f"{_worst_case_table(results)}{_paired_table(results)}"
        + "".join(parts)
        + "</body></html>\n"
    )


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table of escaped cells."""
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _settings_table(results: dict) -> str:
    settings = results["settings"]
    attack = settings["attack"]
    protocol = settings["evaluation"]
    rows = [
        ("protocol", settings["protocol"]),
        ("model", settings["model"]),
        ("weights", f"{settings['weights']}, {settings['precision']}"),
        (
            "data",
            f"{settings['data']['source']}: {results['subset']['n']} images, seed "
            f"{settings['seed']}",
        ),
        (
            "attack",
            f"{attack['method']}, {attack['norm']}, eps {attack['eps']} "
            f"({attack['eps_units']}), {attack['steps']} steps, {_eot(attack, protocol)}",
        ),
        ("threat models", ", ".join(settings["threats"])),
        ("attack resolution", _attack_resolution(settings)),
        ("EOT samples per model", _per_model(protocol.get("eot_samples"))),
        ("evaluation draws per model (robust = right in all)", _per_model(protocol.get("draws"))),
        ("attack seeds", protocol.get("attack_seeds", 1)),
        ("models", ", ".join(settings["models"])),
        ("versions", ", ".join(f"{k} {v}" for k, v in results["versions"].items())),
    ]
    return "<h2>Settings</h2>" + html_table(("setting", "value"), rows)


def _eot(attack: dict, protocol: dict) -> str:
    """One EOT count, or the per-model counts where the protocol sets them per model."""
    if attack["eot_samples"] is not None:
        return f"EOT {attack['eot_samples']}"
    return f"EOT per model: {_per_model(protocol.get('eot_samples'))}"


def _attack_resolution(settings: dict) -> str:
    size = settings["attack_image_size"]
    return f"{settings['attack_resolution']}: {size['width']}x{size['height']} pixels perturbed"


def _per_model(values: dict | None) -> str:
    return ", ".join(f"{model} {value}" for model, value in (values or {}).items()) or "-"


def _accuracy_table(results: dict) -> str:
    rows = [("clean", "", "", model, _cell(entry), "") for model, entry in results["clean"].items()]
    for entry in results["robust"]:
        spread = entry.get("seeds")
        seeds = (
            f"{spread['mean']:.2%} +- {spread['std']:.2%} [{spread['min']:.1%}, "
            f"{spread['max']:.1%}]"
            if spread
            else ""
        )
        rows.append(
            (
                entry["threat"],
                entry["attack"],
                f"{entry['eps']:g}",
                entry["model"],
                _cell(entry),
                seeds,
            )
        )
    header = (
        "threat",
        "attack",
        "eps",
        "model",
        "accuracy [95 % interval] (correct/n)",
        "over attack seeds: mean +- sd [min, max]",
    )
    return "<h2>Accuracy</h2>" + html_table(header, rows)


def _worst_case_table(results: dict) -> str:
    rows = [
        (f"{entry['eps']:g}", entry["model"], entry["conditions"], _cell(entry))
        for entry in results["worst_case"]
    ]
    header = ("eps", "model", "conditions", "robust under all [95 % interval] (correct/n)")
    return "<h2>Worst case per image</h2>" + html_table(header, rows)


def _paired_table(results: dict) -> str:
    if not results["paired"]:
        return ""
    rows = [
        (
            entry["threat"] if entry["eps"] is None else f"{entry['eps']:g}",
            "" if entry["eps"] is None else entry["threat"],
            entry["attack"] or "",
            entry["defense"],
            entry["both"],
            entry["defense_only"],
            entry["undefended_only"],
            entry["neither"],
            f"{entry['p_value']:.3g}",
        )
        for entry in results["paired"]
    ]
    header = (
        "eps",
        "threat",
        "attack",
        "defence",
        "both right",
        "defence only",
        "undefended only",
        "neither",
        "exact McNemar p",
    )
    return "<h2>Each defence vs the undefended model, same images</h2>" + html_table(header, rows)


def _cell(entry: dict) -> str:
    low, high = entry["ci95"]
    return f"{entry['accuracy']:.2%} [{low:.1%}, {high:.1%}] ({entry['correct']}/{entry['n']})"
