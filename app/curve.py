"""The robustness curve of the page's photo (button `curve`, plot `eps-curve`, wired in
app/wiring.py; the endpoint /curve is in app/api.py): the engine's curve under the photo's
threat model and attack, refused up front when it would exceed the app's query budget."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from clipure_core import check_curve

from . import gpu
from .catalog import ModelChoice
from .handlers import Context, request_from
from .service import PlaygroundRequest, PlaygroundService, Progress, _seed

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
    return service.curve(choice, image, request, on_progress, cancel, MAX_CURVE_QUERIES)


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
    once per context: the page's wiring makes it at start-up, before the app launches."""
    if id(context) not in _DEVICE_TASKS:

        def task(choice: ModelChoice, image: Any, request: PlaygroundRequest) -> dict:
            return run_curve(context.service, choice, image, request)

        _DEVICE_TASKS[id(context)] = gpu.spaces.GPU(duration=gpu.MAX_SECONDS)(task)
    return _DEVICE_TASKS[id(context)]
