"""The robustness curve on the page (button `curve`, plot `eps-curve`) and as the API endpoint
/curve: the engine's curve (clipure_core.curve) of the page's photo under its threat model and
attack, refused up front when it would exceed the app's query budget."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from clipure_core import InputError
from clipure_core.curve import check_curve, robustness_curve
from clipure_core.plots import curve_figure
from clipure_core.text_embeddings import text_progress

from . import gpu
from .catalog import ModelChoice
from .errors import friendly_errors
from .handlers import Context, api_values, request_from
from .jobs import cancellable
from .layout import Layout
from .service import Cancelled, PlaygroundRequest, PlaygroundService, Progress, _seed

if TYPE_CHECKING:
    from .wiring import StopRegistry

# The longest GPU lease the app asks for covers this many model queries (app/gpu.py): a curve
# estimated above it is refused before any model work.
MAX_CURVE_QUERIES = int((gpu.MAX_SECONDS - gpu.BASE_SECONDS) / gpu.SECONDS_PER_QUERY)
SCROLL_TO_CURVE = (
    "() => document.getElementById('eps-curve').scrollIntoView({behavior: 'smooth', "
    "block: 'start'})"
)
# Again once plotly has drawn it: on a short page (talk mode) the empty plot was as far as the
# page could scroll, and the page shrinks for a moment while the plot is replaced.
SCROLL_TO_DRAWN_CURVE = """() => {
  const started = Date.now();
  const scroll = () => {
    if (document.querySelector('#eps-curve .js-plotly-plot .main-svg')) {
      document.getElementById('eps-curve').scrollIntoView({behavior: 'smooth', block: 'start'});
    } else if (Date.now() - started < 10000) {
      setTimeout(scroll, 100);
    }
  };
  setTimeout(scroll, 300);
}"""
UI_ONLY = {"queue": False, "api_visibility": "private"}
_DEVICE_TASKS: dict[int, Callable] = {}  # id(context) -> its ZeroGPU task


def check_budget(request: PlaygroundRequest) -> None:
    """Refuse, before any model work, a curve the engine would refuse or whose estimated
    model queries, weighed by what a query through each defence costs, exceed
    MAX_CURVE_QUERIES."""
    request.check()
    check_curve(
        request.labels,
        request.attack_config(),
        request.threat,
        [name for name in request.defenses or () if name],
        _seed(request.seed),
        request.true_label or None,
        request.target_label or None,
        MAX_CURVE_QUERIES,
        request.purifier_settings(),
    )


def run_curve(
    service: PlaygroundService,
    choice: ModelChoice,
    image: str | Path | Image.Image | None,
    request: PlaygroundRequest,
    on_progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> dict:
    """The curve's JSON (clipure_core.curve.robustness_curve) for `request`'s photo, threat
    model and attack (its eps replaced by the ladder); `cancel` ends it at the next query."""
    check_budget(request)
    job = service._prepare(choice, image, request, on_progress, cancel)

    def report(done: int, total: int, stage: str) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled
        if on_progress is not None:
            on_progress(done, total, stage)

    with text_progress(service._text_progress(on_progress, cancel)):
        return robustness_curve(
            job.playground,
            job.image,
            request.labels,
            job.attack,
            threat=request.threat,
            defenses=job.defenses,
            seed=job.seed,
            true_label=request.true_label or None,
            target_label=request.target_label or None,
            defense_settings=request.purifier_settings(),
            on_progress=report,
            max_queries=MAX_CURVE_QUERIES,
        )


def curve_json(
    context: Context,
    values: Mapping[str, Any],
    on_progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> dict:
    """The robustness curve of the photo `values["image"]` with the settings in `values`.
    Under ZeroGPU it runs in the GPU process (no live progress; Stop cancels the event)."""
    choice = context.choice(values.get("model"))
    request = request_from(values)
    if gpu.zero_gpu():
        return device_task(context)(choice, values.get("image"), request)
    return run_curve(context.service, choice, values.get("image"), request, on_progress, cancel)


def device_task(context: Context) -> Callable:
    """run_curve in a ZeroGPU lease of the longest duration (MAX_CURVE_QUERIES fits it), made
    once per context: `wire_curve` makes it at start-up, before the app launches."""
    if id(context) not in _DEVICE_TASKS:

        def task(choice: ModelChoice, image: Any, request: PlaygroundRequest) -> dict:
            return run_curve(context.service, choice, image, request)

        _DEVICE_TASKS[id(context)] = gpu.spaces.GPU(duration=gpu.MAX_SECONDS)(task)
    return _DEVICE_TASKS[id(context)]


def wire_curve(
    layout: Layout,
    context: Context,
    stops: StopRegistry,
    named: Callable[[dict], dict],
    reporter: Callable,
    session_of: Callable,
    queue: str,
) -> Any:
    """The button's event (returned, for Stop's `cancels`)."""
    if gpu.zero_gpu():
        device_task(context)

    @cancellable
    @friendly_errors
    def page_curve(data: dict, http: gr.Request, progress=gr.Progress(), cancel=None):
        session = session_of(http)
        cancel = stops.start(session, cancel)
        try:
            return curve_figure(curve_json(context, named(data), reporter(progress), cancel))
        finally:
            stops.finish(session, cancel)

    layout.curve.click(None, None, None, js=SCROLL_TO_CURVE, **UI_ONLY)
    event = layout.curve.click(
        page_curve,
        set(layout.controls.values()),
        layout.eps_curve,
        concurrency_id=queue,
        api_name="robustness_curve",
        api_visibility="undocumented",
    )
    event.success(None, None, None, js=SCROLL_TO_DRAWN_CURVE, **UI_ONLY)
    return event


def add_curve_endpoint(context: Context, reporter: Callable, queue: str) -> None:
    """The public /curve endpoint (and MCP tool `curve`): hidden inputs and a trigger."""
    endpoint = curve_endpoint(context, reporter)
    with gr.Column(visible=False):
        inputs = [
            gr.File(label="curve image", type="filepath"),
            gr.Textbox("cat, dog", label="curve labels"),
            gr.Textbox("pgd", label="curve method"),
            gr.Textbox("linf", label="curve norm"),
            gr.Textbox("transfer", label="curve threat"),
            gr.Number(10, label="curve steps"),
            gr.Textbox("clipure_cos", label="curve defenses"),
            gr.Textbox("", label="curve true label"),
            gr.Number(0, label="curve seed"),
        ]
        trigger, output = gr.Button("curve"), gr.JSON(label="curve")
    trigger.click(endpoint, inputs, output, api_name="curve", concurrency_id=queue)


def curve_endpoint(context: Context, reporter: Callable) -> Callable:
    """The public /curve endpoint (and MCP tool)."""

    @cancellable
    @friendly_errors
    def curve(
        image: str,
        labels: str,
        method: str,
        norm: str,
        threat: str,
        steps: int,
        defenses: str,
        true_label: str,
        seed: int,
        progress=gr.Progress(),
        cancel=None,
    ) -> dict:
        """The robustness curve of a photo: each model's probability of the true class, and
        whether it is still right, against the attack's size: L-inf eps 0, 1, 2, 4, 8,
        16/255 or L2 eps 0, 0.125, 0.25, 0.5, 1, 2 (one attack per eps; eps 0 is the clean
        prediction).

        Args:
            image: the photo (PNG, JPEG, WebP, GIF, BMP or TIFF; at most 20 MB).
            labels: comma-separated class names, e.g. "cat, dog, car", or cifar10 / imagenet1k.
            method: attack: pgd, pgd-l2, fgsm, apgd-ce, apgd-dlr, apgd-t, autoattack, ...
            norm: linf or l2 (picks the eps ladder).
            threat: what the attacker differentiates: transfer, paper, bpda or full, ...
            steps: attack iterations (1 to 1000).
            defenses: comma-separated defence names (e.g. clipure_cos); empty for none.
            true_label: the photo's class (one of the labels); empty: CLIP's clean prediction.
            seed: random seed (0 to 4294967295); the same inputs and seed give the same curve.

        Returns:
            The curve JSON: eps, and per model true_probability, prediction and correct.
        """
        if true_label is not None and not isinstance(true_label, str):
            raise InputError(f"true label must be text, got {true_label!r}.")
        values = api_values(
            defenses,
            image=image,
            labels=labels,
            method=method,
            norm=norm,
            threat=threat,
            steps=steps,
            true_label=true_label,
            seed=seed,
        )
        return curve_json(context, values, reporter(progress), cancel)

    return curve  # its name is the MCP tool's
