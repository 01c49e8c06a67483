"""The app's handlers at module level: each takes the `Context` (the service and the models on
offer) and plain values named by request field, so tests call them without a server. The
engine validates; these only pick the model and turn controls into a request."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import gradio as gr

from clipure_core import METHODS, InputError, PlaygroundResult, parse_labels
from clipure_core.purifiers import PURIFIERS

from .catalog import ModelChoice
from .columns import requested
from .gpu import gpu_task, zero_gpu
from .layout import CLEAN_PREDICTION, RANDOM_BANNER, UNTARGETED, setting_key, ui_settings, use_key
from .service import PlaygroundRequest, PlaygroundService, Progress

LOGGER = logging.getLogger("app.ui")
# The request's own fields that a control of the same name fills.
REQUEST_FIELDS = tuple(
    f.name for f in fields(PlaygroundRequest) if f.name not in ("defenses", "defense_settings")
)


@dataclass
class Context:
    """What every handler needs: the service and the models on offer (the start-up model
    first)."""

    service: PlaygroundService
    choices: list[ModelChoice]
    by_label: dict[str, ModelChoice] = field(init=False)

    def __post_init__(self) -> None:
        self.by_label = {choice.label: choice for choice in self.choices}
        self.run_on_device = gpu_task(self._run_on_device)

    @property
    def start(self) -> ModelChoice:
        return self.choices[0]

    def choice(self, label: str | None) -> ModelChoice:
        """The model offered under `label` (the start-up model when None)."""
        if label is None:
            return self.start
        if label not in self.by_label:
            raise InputError(f"model {label!r}: choose one of {', '.join(self.by_label)}.")
        return self.by_label[label]

    def _run_on_device(self, choice: ModelChoice, image, request: PlaygroundRequest):
        """The GPU-bound part, with picklable arguments only (see app/gpu.py)."""
        return self.service.run(choice, image, request)


def request_from(values: Mapping[str, Any]) -> PlaygroundRequest:
    """The request that named controls describe: each request field from the control of
    that name, the defences switched on (`use_key`; or a list under "defenses", as the API
    gives them) and their settings (`setting_key`)."""
    settings = {
        name: {
            setting.name: values[setting_key(name, setting)]
            for setting in ui_settings(purifier)
            if setting_key(name, setting) in values
        }
        for name, purifier in PURIFIERS.items()
    }
    switched_on = [name for name in PURIFIERS if values.get(use_key(name))]
    return PlaygroundRequest(
        **{name: values[name] for name in REQUEST_FIELDS if name in values},
        defenses=values.get("defenses", requested(values, switched_on)),
        defense_settings={name: chosen for name, chosen in settings.items() if chosen},
    )


def run(
    context: Context,
    values: Mapping[str, Any],
    on_progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> PlaygroundResult:
    """Attack and purify the photo `values["image"]` with the settings in `values`; logs
    counts and timings, never labels or images."""
    choice = context.choice(values.get("model"))
    request = request_from(values)
    if zero_gpu():  # another process: no live progress, Stop only cancels the event
        result = context.run_on_device(choice, values.get("image"), request)
    else:
        result = context.service.run(choice, values.get("image"), request, on_progress, cancel)
    settings = result.settings
    LOGGER.info(
        "request done: %d labels, %s x %d steps, %d defences, %.0f ms",
        len(result.labels),
        settings["attack"]["method"],
        settings["attack"]["steps"],
        len(settings["defenses"]),
        result.timings_ms["total"],
    )
    return result


def audit(
    context: Context,
    values: Mapping[str, Any],
    conditions: Sequence[str] | None = None,
    on_progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> dict:
    """The threat matrix of the photo `values["image"]` (the audit's JSON)."""
    choice = context.choice(values.get("model"))
    data = context.service.audit(
        choice, values.get("image"), request_from(values), conditions, on_progress, cancel
    )
    LOGGER.info(
        "audit done: %d labels, %d cells, %.0f ms",
        len(data["labels"]),
        len(data["matrix"]),
        data.get("timings_ms", {}).get("total", 0.0),
    )
    return data


def api_values(defenses: str | None, **fields: Any) -> dict[str, Any]:
    """Named values as the page's controls would give them, from an API call's fields
    (defences as comma-separated text)."""
    if defenses is not None and not isinstance(defenses, str):
        raise InputError(f"defenses: comma-separated names, got {defenses!r}.")
    return {**fields, "defenses": [name.strip() for name in (defenses or "").split(",")]}


def label_choices(labels: str, current_true: str, current_target: str) -> tuple[dict, dict]:
    """Offer the labels in the dropdowns: a true or target label that still exists is kept,
    else the true label is CLIP's clean prediction and the attack untargeted."""
    listed = _listed(labels)
    true, target = label_options(labels)
    return (
        true | {"value": current_true if current_true in listed else CLEAN_PREDICTION},
        target | {"value": current_target if current_target in listed else UNTARGETED},
    )


def label_options(labels: str) -> tuple[dict, dict]:
    """The dropdowns' choices for `labels`, their values untouched: at page load, whose inputs
    may predate an example a quick visitor has already clicked (a value set from them would
    undo the example's true label)."""
    listed = _listed(labels)
    return (
        gr.update(choices=[("CLIP's clean prediction", CLEAN_PREDICTION), *listed]),
        gr.update(choices=[("untargeted", UNTARGETED), *listed]),
    )


def _listed(labels: str) -> list[str]:
    try:
        return parse_labels(labels)[0]
    except InputError:
        return []


def new_photo() -> str:
    """A photo of the user's own: its true label is no longer an example's."""
    return CLEAN_PREDICTION


def method_changed(method: str) -> dict:
    """The norms the chosen attack supports."""
    norms = METHODS[method]
    return gr.update(choices=list(norms), value=norms[0], interactive=len(norms) > 1)


def norm_changed(norm: str) -> dict:
    """eps in the chosen norm's units."""
    if norm == "l2":
        return gr.update(
            minimum=0.05, maximum=8.0, value=0.5, step=0.05, label="eps (L2, in [0, 1] pixel units)"
        )
    return gr.update(minimum=1, maximum=32, value=4, step=1, label="eps (L-inf, /255)")


def load_model(context: Context, label: str) -> tuple[str, dict, list[dict]]:
    """Load the chosen backbone: a status line, the random-weights banner, and each
    defence's switch (off; disabled with the reason where it cannot run on this model)."""
    choice = context.choice(label)
    backbone = context.service.backbone(choice)
    switches = []
    for purifier in PURIFIERS.values():
        reason = purifier.unavailable(backbone)
        switches.append(
            gr.update(
                value=False,
                interactive=reason is None,
                info=f"Disabled: {purifier.title} {reason}" if reason else None,
            )
        )
    status = f"Loaded **{choice.label}** on {backbone.info.device}."
    banner = gr.update(value=RANDOM_BANNER, visible=backbone.info.random_weights)
    return status, banner, switches
