"""Plotly figures from a hand-written result dict (no model is loaded)."""

from __future__ import annotations

import copy

import pytest

from clipure_core.plots import (
    model_title,
    probability_figure,
    top_k_union,
    trajectory_figure,
)

LABELS = ["cat", "dog", "car", "airplane", "coffee mug", "tree"]
PROBS = {
    "clean": {
        "undefended": [0.30, 0.05, 0.40, 0.05, 0.15, 0.05],  # top-2: car, cat
        "clipure_cos": [0.50, 0.05, 0.30, 0.05, 0.05, 0.05],  # top-2: cat, car
    },
    "adversarial": {
        "undefended": [0.05, 0.60, 0.10, 0.05, 0.15, 0.05],  # top-2: dog, coffee mug
        "clipure_cos": [0.35, 0.05, 0.05, 0.05, 0.05, 0.45],  # top-2: tree, cat
    },
}
ADV_TRAJECTORY = [
    {"step": 0, "cos_to_null": 0.21, "cos_to_start": 1.0, "top_class": "dog"},
    {"step": 1, "cos_to_null": 0.35, "cos_to_start": 0.98, "top_class": "dog"},
    {"step": 2, "cos_to_null": 0.52, "cos_to_start": 0.95, "top_class": "cat"},
]
CLEAN_TRAJECTORY = [
    {"step": 0, "cos_to_null": 0.18, "cos_to_start": 1.0, "top_class": "cat"},
    {"step": 1, "cos_to_null": 0.30, "cos_to_start": 0.99, "top_class": "cat"},
    {"step": 2, "cos_to_null": 0.44, "cos_to_start": 0.97, "top_class": "cat"},
]


def make_result(true_label: str = "cat") -> dict:
    return copy.deepcopy(
        {
            "labels": LABELS,
            "true_label": true_label,
            "probabilities": PROBS,
            "diagnostics": {
                "clipure_cos": {
                    "angle_moved_deg": 18.19,
                    "max_angle_deg": 25.04,
                    "trajectory": ADV_TRAJECTORY,
                    "clean": {
                        "angle_moved_deg": 14.07,
                        "max_angle_deg": 14.07,
                        "trajectory": CLEAN_TRAJECTORY,
                    },
                }
            },
        }
    )


def test_model_title_known_and_fallback():
    assert model_title("undefended") == "Undefended CLIP"
    assert model_title("clipure_cos") == "CLIPure-Cos"
    assert model_title("clipure_diff") == "CLIPure-Diff"
    assert model_title("my_defense") == "my_defense"


def test_top_k_union_merges_every_condition_and_model_in_undefended_clean_order():
    result = make_result()
    shown = top_k_union(result, k=2)
    # union {car, cat, dog, coffee mug, tree}; airplane is in no top-2. Ordered by the
    # undefended clean probability: car .40, cat .30, coffee mug .15, then dog and tree
    # tie at .05 and keep index order.
    assert shown == [2, 0, 4, 1, 5]
    assert 3 not in shown
    for per_model in result["probabilities"].values():
        for probs in per_model.values():
            single = sorted(range(len(probs)), key=lambda i: -probs[i])[:2]
            assert set(single) < set(shown)


def test_top_k_union_k1_and_tie_break_by_index():
    # top-1 of each: car, dog, cat, tree; adversarial undefended has no tie at the top.
    assert top_k_union(make_result(), k=1) == [2, 0, 1, 5]
    result = make_result()
    result["probabilities"]["adversarial"]["undefended"] = [0.05, 0.30, 0.10, 0.30, 0.2, 0.05]
    # dog and airplane tie at .30 in the adversarial top-1: the lower index (dog) wins.
    assert top_k_union(result, k=1) == [2, 0, 1, 5]


def test_top_k_union_always_includes_true_label():
    result = make_result(true_label="airplane")
    shown = top_k_union(result, k=2)
    assert shown == [2, 0, 4, 1, 3, 5]
    assert top_k_union(result, k=1) == [2, 0, 1, 3, 5]


def test_top_k_union_rejects_non_positive_k():
    with pytest.raises(ValueError, match="k must be at least 1"):
        top_k_union(make_result(), k=0)


def test_probability_figure_layout_and_bar_values():
    result = make_result()
    figure = probability_figure(result, k=2)
    layout = figure.layout

    titles = [annotation.text for annotation in layout.annotations]
    assert titles == ["Undefended CLIP", "CLIPure-Cos"]
    assert layout.xaxis2 is not None and "xaxis3" not in layout.to_plotly_json()
    assert layout.yaxis2.matches == "y"  # shared label axis

    shown = [2, 0, 4, 1, 5]
    ticks = ["car", "cat (true)", "coffee mug", "dog", "tree"]
    bars = figure.data
    assert len(bars) == 4
    expected = [
        ("undefended", "clean", "x"),
        ("undefended", "adversarial", "x"),
        ("clipure_cos", "clean", "x2"),
        ("clipure_cos", "adversarial", "x2"),
    ]
    for bar, (model, condition, xaxis) in zip(bars, expected, strict=True):
        assert bar.type == "bar" and bar.orientation == "h"
        assert bar.name == condition and bar.xaxis == xaxis
        assert list(bar.x) == [PROBS[condition][model][i] for i in shown]
        assert list(bar.y) == ticks
        assert "%" in bar.texttemplate
    assert bars[0].marker.color == "#1f77b4" and bars[1].marker.color == "#d62728"
    assert [bar.showlegend for bar in bars] == [True, True, False, False]

    # highest first: categories in shown order on a reversed axis, true label marked
    assert list(layout.yaxis.categoryarray) == ticks
    assert layout.yaxis.autorange == "reversed"
    assert [t for t in ticks if "(true)" in t] == ["cat (true)"]
    assert tuple(layout.xaxis.range) == (0, 1) and layout.xaxis.tickformat == ".0%"
    assert layout.font.size >= 16
    assert layout.height == 160 + 48 * len(shown)


def test_probability_figure_height_grows_with_labels():
    result = make_result()
    small = probability_figure(result, k=1)
    large = probability_figure(result, k=6)
    assert len(large.data[0].y) == 6 and len(small.data[0].y) == 4
    assert large.layout.height > small.layout.height


def test_trajectory_figure_traces_and_title():
    figure = trajectory_figure(make_result(), "clipure_cos")
    traces = {trace.name: trace for trace in figure.data}
    assert set(traces) == {
        "cos to null prompt (adversarial)",
        "cos to start (adversarial)",
        "cos to null prompt (clean)",
        "cos to start (clean)",
    }
    for condition, trajectory in (("adversarial", ADV_TRAJECTORY), ("clean", CLEAN_TRAJECTORY)):
        for key, name in (("cos_to_null", "cos to null prompt"), ("cos_to_start", "cos to start")):
            trace = traces[f"{name} ({condition})"]
            assert list(trace.x) == [0, 1, 2]
            assert list(trace.y) == [row[key] for row in trajectory]
            assert list(trace.hovertext) == [row["top_class"] for row in trajectory]
            assert trace.line.dash == ("solid" if condition == "adversarial" else "dash")

    labelled = traces["cos to null prompt (adversarial)"]
    assert "text" in labelled.mode and list(labelled.text) == ["dog", "dog", "cat"]
    assert all(trace.text is None for trace in figure.data if trace is not labelled)

    layout = figure.layout
    assert layout.title.text == (
        "CLIPure-Cos: ended 18.2° from the start, up to 25.0° on the way (adversarial input)"
    )
    assert layout.xaxis.title.text == "purification step"
    assert layout.xaxis.dtick == 1 and layout.xaxis.tickformat == "d"
    assert layout.yaxis.title.text == "cosine"
    assert tuple(layout.yaxis.range) == (-1.05, 1.05)
    assert layout.font.size >= 16


def test_trajectory_figure_long_run_labels_only_class_changes():
    result = make_result()
    classes = ["dog"] * 10 + ["cat"] * 10 + ["cat"]
    result["diagnostics"]["clipure_cos"]["trajectory"] = [
        {"step": i, "cos_to_null": 0.1, "cos_to_start": 1.0, "top_class": name}
        for i, name in enumerate(classes)
    ]
    figure = trajectory_figure(result, "clipure_cos")
    labelled = next(t for t in figure.data if t.name == "cos to null prompt (adversarial)")
    assert [(i, s) for i, s in enumerate(labelled.text) if s] == [
        (0, "dog"),
        (10, "cat"),
        (20, "cat"),
    ]
    assert list(labelled.hovertext) == classes
    assert figure.layout.xaxis.dtick == 2


def test_trajectory_figure_unknown_defense_raises():
    with pytest.raises(ValueError, match=r"clipure_diff.*available: clipure_cos"):
        trajectory_figure(make_result(), "clipure_diff")


def test_trajectory_figure_adds_the_denoising_loss_when_present():
    result = make_result()
    diagnostics = result["diagnostics"]["clipure_cos"]
    assert all(
        trace.yaxis in (None, "y") for trace in trajectory_figure(result, "clipure_cos").data
    )
    for step, row in enumerate(diagnostics["trajectory"][:-1]):
        row["denoising_loss"] = 0.5 - 0.1 * step
    figure = trajectory_figure(result, "clipure_cos")
    loss = [trace for trace in figure.data if trace.yaxis == "y2"]
    assert len(loss) == 1 and loss[0].name == "denoising loss (adversarial)"
    assert list(loss[0].y) == pytest.approx([0.5 - 0.1 * s for s in range(len(loss[0].y))])
    assert figure.layout.yaxis2.title.text == "denoising loss"
