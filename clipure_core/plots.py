"""Plotly figures built from the JSON of `PlaygroundResult.to_dict()`; no UI imports."""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .columns import column_title
from .purifiers import registry

CONDITION_COLORS = {"clean": "#1f77b4", "adversarial": "#d62728"}
CURVE_COLORS = {"cos_to_null": "#1f77b4", "cos_to_start": "#ff7f0e"}
CURVE_NAMES = {"cos_to_null": "cos to null prompt", "cos_to_start": "cos to start"}
FONT_SIZE = 16
_MAX_LABELLED_STEPS = 15


def model_title(name: str) -> str:
    """Display title of a model ('clipure_cos' -> 'CLIPure-Cos', a loaded defence's own
    `title`; from the defence registry); unknown names unchanged."""
    return registry.model_title(name)


def _true_index(result: dict) -> int | None:
    labels = result["labels"]
    true_label = result.get("true_label")
    return labels.index(true_label) if true_label in labels else None


def _top_k(probs: Sequence[float], k: int) -> list[int]:
    """Indices of the k highest probabilities, highest first, ties by index."""
    return sorted(range(len(probs)), key=lambda i: (-probs[i], i))[:k]


def top_k_union(result: dict, k: int = 5) -> list[int]:
    """Indices of the labels worth showing: the union of the top-k labels of every
    (condition, model), plus the true label, ordered by the undefended model's clean
    probability (highest first, ties by index)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    probabilities = result["probabilities"]
    shown: set[int] = set()
    for per_model in probabilities.values():
        for probs in per_model.values():
            shown.update(_top_k(probs, k))
    true_index = _true_index(result)
    if true_index is not None:
        shown.add(true_index)
    clean = probabilities["clean"]
    reference = clean.get("undefended") or next(iter(clean.values()))
    return sorted(shown, key=lambda i: (-reference[i], i))


def _tick_text(result: dict, index: int) -> str:
    label = result["labels"][index]
    return f"{label} (true)" if index == _true_index(result) else label


def probability_figure(result: dict, k: int = 5) -> go.Figure:
    """Clean vs adversarial probabilities of the shown labels, one bar subplot per model
    (side by side, shared label axis, highest undefended clean probability at the top)."""
    models = list(result["probabilities"]["clean"])
    shown = top_k_union(result, k)
    ticks = [_tick_text(result, i) for i in shown]
    figure = make_subplots(
        rows=1,
        cols=len(models),
        shared_yaxes=True,
        subplot_titles=[column_title(model) for model in models],
        horizontal_spacing=0.06,
    )
    for column, model in enumerate(models, start=1):
        for condition in ("clean", "adversarial"):
            probs = result["probabilities"][condition][model]
            figure.add_trace(
                go.Bar(
                    x=[probs[i] for i in shown],
                    y=ticks,
                    orientation="h",
                    name=condition,
                    legendgroup=condition,
                    showlegend=column == 1,
                    marker_color=CONDITION_COLORS[condition],
                    texttemplate="%{x:.0%}",
                    textposition="auto",
                    textfont_size=FONT_SIZE,
                    cliponaxis=False,
                    hovertemplate=f"%{{y}}: %{{x:.1%}}<extra>{condition}</extra>",
                ),
                row=1,
                col=column,
            )
    figure.update_xaxes(range=[0, 1], tickformat=".0%", dtick=0.25, title_text="probability")
    figure.update_yaxes(
        categoryorder="array", categoryarray=ticks, autorange="reversed", automargin=True
    )
    figure.update_annotations(font_size=FONT_SIZE + 2)
    figure.update_layout(
        barmode="group",
        font_size=FONT_SIZE,
        height=160 + 48 * len(shown),
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.08, "x": 0},
        margin={"t": 110, "b": 60},
    )
    return figure


def _step_texts(trajectory: list[dict]) -> list[str]:
    """Top class printed at each step; on long trajectories only where it changes."""
    classes = [row["top_class"] for row in trajectory]
    if len(classes) <= _MAX_LABELLED_STEPS:
        return classes
    last = len(classes) - 1
    return [
        name if i in (0, last) or name != classes[i - 1] else "" for i, name in enumerate(classes)
    ]


def trajectory_figure(result: dict, defense: str) -> go.Figure:
    """Cosine to the null prompt and to the starting embedding over the purification
    steps of `defense`: adversarial input solid, clean input dashed."""
    diagnostics = result.get("diagnostics", {})
    if defense not in diagnostics:
        known = ", ".join(diagnostics) or "none"
        raise ValueError(f"no diagnostics for defence {defense!r} (available: {known}).")
    runs = {"adversarial": diagnostics[defense]}
    if diagnostics[defense].get("clean"):
        runs["clean"] = diagnostics[defense]["clean"]

    figure = go.Figure()
    for condition, run in runs.items():
        trajectory = run["trajectory"]
        steps = [row["step"] for row in trajectory]
        classes = [row["top_class"] for row in trajectory]
        dash = "solid" if condition == "adversarial" else "dash"
        for key in ("cos_to_null", "cos_to_start"):
            labelled = condition == "adversarial" and key == "cos_to_null"
            figure.add_trace(
                go.Scatter(
                    x=steps,
                    y=[row[key] for row in trajectory],
                    name=f"{CURVE_NAMES[key]} ({condition})",
                    mode="lines+markers+text" if labelled else "lines+markers",
                    line={"color": CURVE_COLORS[key], "dash": dash, "width": 3},
                    marker_size=8,
                    text=_step_texts(trajectory) if labelled else None,
                    textposition="top center",
                    textfont_size=FONT_SIZE - 2,
                    hovertext=classes,
                    hovertemplate=(
                        f"step %{{x}}<br>{CURVE_NAMES[key]}: %{{y:.3f}}<br>"
                        f"top class: %{{hovertext}}<extra>{condition}</extra>"
                    ),
                )
            )

    n_steps = max((row["step"] for row in runs["adversarial"]["trajectory"]), default=0)
    angle = float(runs["adversarial"]["angle_moved_deg"])
    swing = float(runs["adversarial"]["max_angle_deg"])
    figure.update_xaxes(
        title_text="purification step",
        tickmode="linear",
        tick0=0,
        dtick=max(1, math.ceil(n_steps / 10)),
        tickformat="d",
    )
    figure.update_yaxes(title_text="cosine", range=[-1.05, 1.05])
    figure.update_layout(
        title_text=(
            f"{column_title(defense)}: ended {angle:.1f}° from the start, up to {swing:.1f}° "
            "on the way (adversarial input)"
        ),
        font_size=FONT_SIZE,
        height=480,
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0},
        margin={"b": 140},
    )
    _add_denoising_loss(figure, runs["adversarial"]["trajectory"])  # after the cosine axis
    return figure


def _add_denoising_loss(figure: go.Figure, trajectory: list[dict]) -> None:
    """CLIPure-Diff's denoising loss per step on a right-hand axis (absent for Cos)."""
    points = [(row["step"], row["denoising_loss"]) for row in trajectory if "denoising_loss" in row]
    if not points:
        return
    figure.add_trace(
        go.Scatter(
            x=[step for step, _ in points],
            y=[loss for _, loss in points],
            name="denoising loss (adversarial)",
            yaxis="y2",
            mode="lines+markers",
            line={"color": "#7f7f7f", "dash": "dot", "width": 2},
        )
    )
    figure.update_layout(
        yaxis2={"title": "denoising loss", "overlaying": "y", "side": "right", "showgrid": False}
    )


MODEL_COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
VERDICT_MARKERS = {True: "circle", False: "x"}


def curve_figure(curve: dict) -> go.Figure:
    """Each model's true-class probability against eps (from `robustness_curve`'s JSON): one
    line per model, each thinner than the one before so that equal lines stay visible; a
    circle where the model is right, a cross where it is wrong."""
    ticks = curve["eps_text"]
    figure = go.Figure()
    for index, (model, series) in enumerate(curve["models"].items()):
        color = MODEL_COLORS[index % len(MODEL_COLORS)]
        width = max(2, 8 - 2 * index)
        verdicts = ["right" if ok else "fooled" for ok in series["correct"]]
        figure.add_trace(
            go.Scatter(
                x=ticks,
                y=series["true_probability"],
                name=model_title(model),
                mode="lines+markers",
                line={"color": color, "width": width},
                marker={
                    "symbol": [VERDICT_MARKERS[ok] for ok in series["correct"]],
                    "size": 10 + 2 * width,
                    "line": {"width": 2, "color": color},
                },
                customdata=list(zip(series["prediction"], verdicts, strict=True)),
                hovertemplate=(
                    "eps %{x}: %{y:.0%}<br>predicts %{customdata[0]} (%{customdata[1]})"
                    f"<extra>{model_title(model)}</extra>"
                ),
            )
        )
    for ok, name in ((True, "right"), (False, "wrong (fooled)")):
        figure.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                name=name,
                mode="markers",
                marker={"symbol": VERDICT_MARKERS[ok], "size": 14, "color": "#444"},
                hoverinfo="skip",
            )
        )
    unit = "L-inf" if curve["norm"] == "linf" else "L2, pixel units in [0, 1]"
    figure.update_xaxes(title_text=f"eps ({unit})", type="category")
    figure.update_yaxes(title_text=f"P({curve['true_label']})", range=[-0.03, 1.03])
    figure.update_yaxes(tickformat=".0%", dtick=0.25)
    figure.update_layout(
        title_text=(
            f"P({curve['true_label']}) under {curve['method']}, {curve['steps']} steps, "
            f"threat {curve['threat']}"
        ),
        font_size=FONT_SIZE,
        height=420,
        legend={"orientation": "h", "yanchor": "top", "y": -0.24, "x": 0},
        margin={"t": 60, "b": 110},
    )
    return figure
