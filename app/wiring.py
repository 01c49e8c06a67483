"""The page's events: which handler each button, box and endpoint calls, through one queue.

Page events take their controls as a set, so a handler gets them by component and names them
through `Layout.controls`; nothing here depends on the order of the controls.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr

from clipure_core import THREATS
from clipure_core.purifiers import PURIFIERS

from . import handlers
from .errors import friendly_errors
from .handlers import Context
from .jobs import cancellable
from .layout import PRESETS, Layout, use_key
from .outputs import result_payload, result_values
from .results import matrix_html
from .service import Progress

GPU_QUEUE = "gpu"  # one concurrency group: attacks, audits and model loads run one at a time
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


class StopRegistry:
    """Cooperative Stop: the running job checks its session's event between model queries."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str, event: threading.Event | None = None) -> threading.Event:
        """Register the running job's cancel flag (a new one if `event` is None)."""
        with self._lock:
            event = self._events[session] = event or threading.Event()
            return event

    def stop(self, session: str) -> None:
        with self._lock:
            if session in self._events:
                self._events[session].set()

    def finish(self, session: str, event: threading.Event) -> None:
        with self._lock:
            if self._events.get(session) is event:
                del self._events[session]


def reporter(progress: gr.Progress | None, interval_s: float = 0.2) -> Progress | None:
    """gradio's progress bar as an `on_progress(done, total, description)` callback, updated
    at most every `interval_s` (an update per model query would flood the page)."""
    if progress is None:
        return None
    last = [float("-inf")]

    def report(done: int, total: int, description: str) -> None:
        now = time.monotonic()
        if now - last[0] >= interval_s or done >= total:
            last[0] = now
            progress((done, total), desc=description, unit="queries")

    return report


def session_of(http: gr.Request | None) -> str:
    return (http.session_hash if http is not None else None) or "anonymous"


def wire(demo: gr.Blocks, layout: Layout, context: Context, lazy_examples: bool) -> None:
    """Connect every event of the page (call inside `demo`, where `layout` was built)."""
    controls, outputs = layout.controls, layout.outputs
    stops = StopRegistry()

    def named(data: dict[gr.Component, Any]) -> dict[str, Any]:
        return {name: data[component] for name, component in controls.items()}

    def finished(values: dict[str, Any], on_progress, cancel) -> dict[gr.Component, Any]:
        result = handlers.run(context, values, on_progress, cancel)
        payload = result_payload(result, values.get("labels"), values.get("image"))
        return result_values(context.service, outputs, result, payload)

    @cancellable
    @friendly_errors
    def run(data: dict, http: gr.Request, progress=gr.Progress(), cancel=None):
        session = session_of(http)
        cancel = stops.start(session, cancel)
        try:
            return finished(named(data), reporter(progress), cancel)
        finally:
            stops.finish(session, cancel)

    @cancellable
    @friendly_errors
    def run_example(*values, cancel=None):
        """An example's result (gradio caches it): the controls in `Layout.controls` order."""
        return finished(dict(zip(controls, values, strict=True)), None, cancel)

    @cancellable
    @friendly_errors
    def threat_matrix(data: dict, http: gr.Request, progress=gr.Progress(), cancel=None):
        session = session_of(http)
        cancel = stops.start(session, cancel)
        try:
            audit = handlers.audit(context, named(data), None, reporter(progress), cancel)
        finally:
            stops.finish(session, cancel)
        return matrix_html(audit, context.service.audit_backend.conditions)

    @cancellable
    @friendly_errors
    def playground(
        image: str,
        labels: str,
        method: str,
        norm: str,
        eps: float,
        steps: int,
        threat: str,
        defenses: str,
        seed: int,
        progress=gr.Progress(),
        cancel=None,
    ) -> dict:
        """Attack a photo and compare what zero-shot CLIP predicts with and without CLIPure's
        latent-space purification.

        Args:
            image: the photo (PNG, JPEG, WebP, GIF, BMP or TIFF; at most 20 MB).
            labels: comma-separated class names, e.g. "cat, dog, car", or cifar10 / imagenet1k.
            method: attack: pgd, pgd-l2, fgsm, apgd-ce, apgd-dlr, apgd-t, autoattack, ...
            norm: linf or l2 (the attack's threat model norm).
            eps: attack size: L-inf in units of 1/255 (4 means 4/255), L2 in [0, 1] pixel units.
            steps: attack iterations (1 to 1000).
            threat: what the attacker differentiates: transfer, paper, bpda or full, ...
            defenses: comma-separated columns: a defence (clipure_cos; package.module:Class) or
                DEFENSE@BACKBONE (none@fare4-b32 is FARE itself); empty for none.
            seed: random seed (0 to 4294967295); the same inputs and seed give the same result.

        Returns:
            The result JSON (probabilities per model, clean and adversarial; settings; command).
        """
        values = handlers.api_values(
            defenses,
            image=image,
            labels=labels,
            method=method,
            norm=norm,
            eps=eps,
            steps=steps,
            threat=threat,
            seed=seed,
        )
        result = handlers.run(context, values, reporter(progress), cancel)
        return result_payload(result, labels, image)

    @cancellable
    @friendly_errors
    def audit(
        image: str,
        labels: str,
        true_label: str,
        norm: str,
        eps: float,
        steps: int,
        defenses: str,
        seed: int,
        conditions: str,
        progress=gr.Progress(),
        cancel=None,
    ) -> dict:
        """The threat matrix of a photo: attack it under every threat model (clean, random
        noise, transfer, as released, paper, BPDA, full gradient, Square) against every model,
        measure the gradients, and run the standard sanity checks of a robustness claim.

        Args:
            image: the photo (PNG, JPEG, WebP, GIF, BMP or TIFF; at most 20 MB).
            labels: comma-separated class names, e.g. "cat, dog, car", or cifar10 / imagenet1k.
            true_label: the photo's class (one of the labels); empty: CLIP's clean prediction.
            norm: linf or l2.
            eps: attack size: L-inf in units of 1/255 (4 means 4/255), L2 in [0, 1] pixel units.
            steps: iterations of each attack (Square: its query budget).
            defenses: comma-separated columns: defence names (e.g. clipure_cos) or DEFENSE@BACKBONE.
            seed: random seed (0 to 4294967295).
            conditions: comma-separated subset of the conditions; empty for all of them.

        Returns:
            The audit JSON (the matrix of condition x model; gradients; checks; settings).
        """
        if conditions is not None and not isinstance(conditions, str):
            raise gr.Error(f"conditions: comma-separated names, got {conditions!r}.")
        values = handlers.api_values(
            defenses,
            image=image,
            labels=labels,
            true_label=true_label,
            norm=norm,
            eps=eps,
            steps=steps,
            seed=seed,
        )
        chosen = [name.strip() for name in (conditions or "").split(",") if name.strip()]
        return handlers.audit(context, values, chosen or None, reporter(progress), cancel)

    @friendly_errors
    def load_model(label, progress=gr.Progress()):
        progress(0.1, desc=f"loading {label}")
        status, banner, switches = handlers.load_model(context, label)
        return status, banner, *switches

    def stop(http: gr.Request) -> None:
        stops.stop(session_of(http))

    add_examples(layout, run_example, lazy_examples)
    inputs = set(controls.values())
    run_event = layout.run.click(
        run,
        inputs,
        list(outputs.values()),
        show_progress_on=outputs["verdict"],  # one progress bar, where the verdict will be
        concurrency_id=GPU_QUEUE,
        api_name="run",
        api_visibility="undocumented",
    )
    audit_event = layout.compare.click(
        threat_matrix,
        inputs,
        layout.matrix,
        concurrency_id=GPU_QUEUE,
        api_name="threat_matrix",
        api_visibility="undocumented",
    )
    layout.stop.click(stop, None, None, cancels=[run_event, audit_event], **UI_ONLY)

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
        load_model,
        controls["model"],
        [layout.model_status, layout.banner, *(controls[use_key(name)] for name in PURIFIERS)],
        concurrency_id=GPU_QUEUE,
        api_visibility="private",
    )
    layout.talk.change(None, layout.talk, None, js=TALK_TOGGLE, **UI_ONLY)
    demo.load(None, None, layout.talk, js=TALK_FROM_URL, **UI_ONLY)

    for name, endpoint in (("playground", playground), ("audit", audit)):
        api_inputs, api_output, trigger = layout.api[name]
        trigger.click(endpoint, api_inputs, api_output, api_name=name, concurrency_id=GPU_QUEUE)


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
