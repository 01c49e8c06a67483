"""A finished run onto the page's outputs: images and downloads handed to gradio's cache,
figures, cards and the reproducing command, keyed by output component."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import gradio as gr
import plotly.graph_objects as go
from PIL import Image

from clipure_core import (
    PlaygroundResult,
    amplified_perturbation,
    probability_figure,
    trajectory_figure,
)
from clipure_core.purifiers import PURIFIERS

from .results import (
    diagnostics_markdown,
    perturbation_caption,
    photo_name,
    reproduce_command,
    verdict_html,
)
from .service import PlaygroundService


def hand_over(component: gr.Component, path: Path) -> str:
    """Move a file into gradio's cache (emptied by `delete_cache`), removing ours."""
    try:
        return component.move_resource_to_block_cache(path)
    finally:
        path.unlink(missing_ok=True)


def view(service: PlaygroundService, component: gr.Component, image: Image.Image) -> str:
    """`image` as a PNG of its own in gradio's cache. (gradio would store a returned PIL
    image as a lossy WebP at a path shared by every identical image, rewriting it in place:
    a user downloading it while another request returns the same image could get a cut
    file.)"""
    path = service.output_dir / f"view-{uuid.uuid4().hex[:12]}.png"
    image.save(path, format="PNG")
    return hand_over(component, path)


def not_run(title: str) -> go.Figure:
    """A small empty figure for a defence that was not selected (gradio's example cache
    cannot store an empty plot)."""
    figure = go.Figure()
    figure.add_annotation(text=f"{title} was not selected.", showarrow=False, font_size=16)
    figure.update_layout(height=140, xaxis_visible=False, yaxis_visible=False)
    return figure


def result_payload(result: PlaygroundResult, labels_text: str, image: Any) -> dict:
    """The result's JSON (computed once per request) with the command that reproduces it."""
    payload = result.to_dict()
    command = reproduce_command(payload, labels_text or "", photo_name(image))
    payload["reproduce"] = {"command": command}
    return payload


def result_values(
    service: PlaygroundService,
    outputs: dict[str, gr.Component],
    result: PlaygroundResult,
    payload: dict,
) -> dict[gr.Component, Any]:
    """Every output of a finished run, keyed by its component."""
    png, data = service.save_downloads(result, payload)
    perturbation, gain = amplified_perturbation(result.clean_image, result.adversarial_image)
    slider = outputs["slider"]
    values = {
        "verdict": verdict_html(payload),
        "slider": (
            view(service, slider, result.clean_image),
            view(service, slider, result.adversarial_image),
        ),
        "perturbation": view(service, outputs["perturbation"], perturbation),
        "perturbation_note": perturbation_caption(payload, gain),
        "probabilities": probability_figure(payload),
        "diagnostics": diagnostics_markdown(payload),
        **{
            f"trajectory_{name}": trajectory_figure(payload, name)
            if name in result.diagnostics
            else not_run(purifier.title)
            for name, purifier in PURIFIERS.items()
        },
        "command": payload["reproduce"]["command"],
        "png": hand_over(outputs["png"], png),
        "json": hand_over(outputs["json"], data),
    }
    return {outputs[name]: value for name, value in values.items()}
