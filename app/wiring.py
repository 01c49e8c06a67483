"""The page's events: which handler each button and box calls, through one queue (the
public endpoints are in app/api.py).

Page events take their controls as a set, so a handler gets them by component and names them
through `Layout.controls`; nothing here depends on the order of the controls.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from threading import Event
from typing import Any

import gradio as gr

from clipure_core import THREATS, curve_figure
from clipure_core.purifiers import PURIFIERS

from . import handlers
from .api import GPU_QUEUE, add_endpoints
from .curve import SCROLL_TO_CURVE, SCROLL_TO_DRAWN_CURVE, curve_json, device_task
from .errors import friendly_errors
from .gpu import zero_gpu
from .handlers import Context
from .jobs import StopRegistry, cancellable, reporter, session_of
from .layout import PRESETS, Layout, use_key
from .outputs import result_payload, result_values
from .results import matrix_html
from .service import Progress

UI_ONLY = {"queue": False, "api_visibility": "private"}
ASSETS = Path(__file__).resolve().parents[1] / "assets"
EXAMPLES = (
    ("chelsea.png", "cat, dog, tiger, fox, rabbit"),
    ("coffee.png", "coffee mug, teapot, bowl, plate, spoon"),
    ("astronaut.png", "astronaut, pilot, doctor, soldier, chef"),
    ("rocket.jpg", "rocket, airplane, lighthouse, chimney, bird"),
    ("hubble_deep_field.jpg", "galaxy, starry sky, fireworks, jellyfish, city at night"),
    ("coins.png", "coins, buttons, cookies, medals, bottle caps"),
    ("camera.png", "photographer, painter, soldier, tourist, fisherman"),
)
# Talk mode: `?talk` in the URL or the toggle puts the class `talk` on the page (see CSS).
TALK_FROM_URL = """() => {
  const value = new URLSearchParams(window.location.search).get("talk");
  const on = value !== null && !["0", "false", "no", "off"].includes(value.toLowerCase());
  document.body.classList.toggle("talk", on);
  return on;
}"""
TALK_TOGGLE = "(on) => { document.body.classList.toggle('talk', on); }"


class Page:
    """The page's queued handlers, bound to the app's context and the page's controls."""

    def __init__(self, layout: Layout, context: Context) -> None:
        self.controls, self.outputs = layout.controls, layout.outputs
        self.context = context
        self.stops = StopRegistry()

    def named(self, data: dict[gr.Component, Any]) -> dict[str, Any]:
        """The controls' values by request field."""
        return {name: data[component] for name, component in self.controls.items()}

    def finished(
        self, values: dict[str, Any], on_progress: Progress | None, cancel: Event | None
    ) -> dict[gr.Component, Any]:
        """Run the request `values` and fill every output."""
        result = handlers.run(self.context, values, on_progress, cancel)
        payload = result_payload(result, values.get("labels"), values.get("image"))
        return result_values(self.context.service, self.outputs, result, payload)

    def run(
        self,
        data: dict[gr.Component, Any],
        http: gr.Request,
        progress: gr.Progress = gr.Progress(),
        cancel: Event | None = None,
    ) -> dict[gr.Component, Any]:
        """Run: attack and purify with the page's settings (Stop ends it)."""
        session = session_of(http)
        cancel = self.stops.start(session, cancel)
        try:
            return self.finished(self.named(data), reporter(progress), cancel)
        finally:
            self.stops.finish(session, cancel)

    def run_example(self, *values: Any, cancel: Event | None = None) -> dict[gr.Component, Any]:
        """An example's result (gradio caches it): the controls in `Layout.controls` order."""
        return self.finished(dict(zip(self.controls, values, strict=True)), None, cancel)

    def threat_matrix(
        self,
        data: dict[gr.Component, Any],
        http: gr.Request,
        progress: gr.Progress = gr.Progress(),
        cancel: Event | None = None,
    ) -> str:
        """The threat matrix of the page's photo, as HTML (Stop ends it)."""
        session = session_of(http)
        cancel = self.stops.start(session, cancel)
        try:
            values, on_progress = self.named(data), reporter(progress)
            audit = handlers.audit(self.context, values, None, on_progress, cancel)
        finally:
            self.stops.finish(session, cancel)
        return matrix_html(audit, self.context.service.audit_backend.conditions)

    def curve(
        self,
        data: dict[gr.Component, Any],
        http: gr.Request,
        progress: gr.Progress = gr.Progress(),
        cancel: Event | None = None,
    ) -> Any:
        """The robustness curve of the page's photo, as a figure (Stop ends it)."""
        session = session_of(http)
        cancel = self.stops.start(session, cancel)
        try:
            values, on_progress = self.named(data), reporter(progress)
            return curve_figure(curve_json(self.context, values, on_progress, cancel))
        finally:
            self.stops.finish(session, cancel)

    def load_model(self, label: str, progress: gr.Progress = gr.Progress()) -> tuple:
        """Switch the backbone: its status, the random-weights banner, the defence switches."""
        progress(0.1, desc=f"loading {label}")
        status, banner, switches = handlers.load_model(self.context, label)
        return status, banner, *switches

    def stop(self, http: gr.Request) -> None:
        """Stop this session's running job."""
        self.stops.stop(session_of(http))


def queued(method: Callable) -> Callable:
    """A page handler gradio can queue and Stop: friendly errors, cancellable, and the
    signature gradio inspects (without `self`, already bound)."""
    return cancellable(friendly_errors(method))


def wire(demo: gr.Blocks, layout: Layout, context: Context, lazy_examples: bool) -> None:
    """Connect every event of the page (call inside `demo`, where `layout` was built)."""
    page = Page(layout, context)
    add_examples(layout, queued(page.run_example), lazy_examples)
    wire_run(layout, page)
    wire_controls(demo, layout, page)
    add_endpoints(context)


def wire_run(layout: Layout, page: Page) -> None:
    """Run, the threat matrix and Stop."""
    inputs, outputs = set(layout.controls.values()), list(layout.outputs.values())
    run_event = layout.run.click(
        queued(page.run),
        inputs,
        outputs,
        show_progress_on=layout.outputs["verdict"],  # one bar, where the verdict will be
        concurrency_id=GPU_QUEUE,
        api_name="run",
        api_visibility="undocumented",
    )
    audit_event = layout.compare.click(
        queued(page.threat_matrix),
        inputs,
        layout.matrix,
        concurrency_id=GPU_QUEUE,
        api_name="threat_matrix",
        api_visibility="undocumented",
    )
    curve_event = wire_curve(layout, page)
    cancels = [run_event, audit_event, curve_event]
    layout.stop.click(page.stop, None, None, cancels=cancels, **UI_ONLY)


def wire_curve(layout: Layout, page: Page) -> Any:
    """The robustness curve's button: scroll to the plot, draw it, scroll again once drawn.
    Returns the drawing event (for Stop's `cancels`)."""
    if zero_gpu():
        device_task(page.context)  # its ZeroGPU task is made at start-up, before the launch
    layout.curve.click(None, None, None, js=SCROLL_TO_CURVE, **UI_ONLY)
    event = layout.curve.click(
        queued(page.curve),
        set(layout.controls.values()),
        layout.eps_curve,
        concurrency_id=GPU_QUEUE,
        api_name="robustness_curve",
        api_visibility="undocumented",
    )
    event.success(None, None, None, js=SCROLL_TO_DRAWN_CURVE, **UI_ONLY)
    return event


def wire_controls(demo: gr.Blocks, layout: Layout, page: Page) -> None:
    """Controls that update other controls: labels, presets, attack, model, talk mode."""
    controls = layout.controls
    labels, true_label, target = (controls[k] for k in ("labels", "true_label", "target_label"))
    layout.preset.change(lambda p: PRESETS.get(p, gr.skip()), layout.preset, labels, **UI_ONLY)
    label_inputs = [labels, true_label, target]
    labels.change(handlers.label_choices, label_inputs, [true_label, target], **UI_ONLY)
    demo.load(handlers.label_options, [labels], [true_label, target], **UI_ONLY)
    controls["image"].input(handlers.new_photo, None, true_label, **UI_ONLY)
    method, norm, threat = (controls[k] for k in ("method", "norm", "threat"))
    method.change(handlers.method_changed, method, norm, **UI_ONLY)
    norm.change(handlers.norm_changed, norm, controls["eps"], **UI_ONLY)
    threat.change(lambda name: THREATS[name], threat, layout.threat_help, **UI_ONLY)
    controls["model"].change(
        friendly_errors(page.load_model),
        controls["model"],
        [layout.model_status, layout.banner, *(controls[use_key(name)] for name in PURIFIERS)],
        concurrency_id=GPU_QUEUE,
        api_visibility="private",
    )
    layout.talk.change(None, layout.talk, None, js=TALK_TOGGLE, **UI_ONLY)
    demo.load(None, None, layout.talk, js=TALK_FROM_URL, **UI_ONLY)


def add_examples(layout: Layout, run_example, lazy: bool) -> gr.Examples:
    """The example photos, each with every setting: clicking one shows its finished result
    (gradio's example cache, computed at start-up for the start-up model, or at the first
    click when `lazy`). The cache lives as long as the process: results of an earlier start,
    perhaps with another model, are removed."""
    names = list(layout.controls)
    defaults = {name: control.value for name, control in layout.controls.items()}
    rows = [
        [
            {
                **defaults,
                "image": str(ASSETS / photo),
                "labels": labels,
                "true_label": labels.split(",")[0],
            }[name]
            for name in names
        ]
        for photo, labels in EXAMPLES
    ]
    with layout.examples_slot:
        examples = gr.Examples(
            rows,
            inputs=list(layout.controls.values()),
            outputs=list(layout.outputs.values()),
            fn=run_example,
            cache_examples=True,
            cache_mode="lazy" if lazy else "eager",
            visible_columns=[names.index("image")],
            examples_per_page=len(EXAMPLES),
            label="Examples: click one for a finished result",
            elem_id="examples",
        )
    shutil.rmtree(examples.cached_folder, ignore_errors=True)
    return examples
