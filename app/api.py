"""The public endpoints /playground, /audit and /curve (also the MCP tools of `--mcp`).

Each endpoint is one function here: its signature declares the fields (name, type, default)
and its docstring their help, once. `add_endpoints` builds the hidden components that carry
the fields from that signature and binds the functions to the app's `Context`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from clipure_core import InputError

from . import handlers
from .curve import curve_json
from .errors import friendly_errors
from .handlers import Context
from .jobs import cancellable, reporter
from .outputs import result_payload

GPU_QUEUE = "gpu"  # one concurrency group: attacks, audits and model loads run one at a time
FILE_FIELDS = frozenset({"image"})  # uploaded files, handed on as their path
NOT_FIELDS = frozenset({"context", "progress", "cancel"})


def playground(
    context: Context,
    image: str,
    labels: str = "cat, dog",
    method: str = "pgd",
    norm: str = "linf",
    eps: float = 4.0,
    steps: int = 10,
    threat: str = "transfer",
    defenses: str = "clipure_cos",
    seed: int = 0,
    progress: gr.Progress = gr.Progress(),
    cancel: Any = None,
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
        defenses: comma-separated columns: defence names (e.g. clipure_cos) or
            DEFENSE@BACKBONE (none@fare4-b32 is FARE itself); empty for none.
        seed: random seed (0 to 4294967295); the same inputs and seed give the same result.

    Returns:
        The result JSON (probabilities per model, clean and adversarial; settings; command).
    """
    fields = dict(image=image, labels=labels, method=method, norm=norm, eps=eps, steps=steps)
    values = handlers.api_values(defenses, **fields, threat=threat, seed=seed)
    result = handlers.run(context, values, reporter(progress), cancel)
    return result_payload(result, labels, image)


def audit(
    context: Context,
    image: str,
    labels: str = "cat, dog",
    true_label: str = "",
    norm: str = "linf",
    eps: float = 4.0,
    steps: int = 10,
    defenses: str = "clipure_cos",
    seed: int = 0,
    conditions: str = "",
    progress: gr.Progress = gr.Progress(),
    cancel: Any = None,
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
        defenses: comma-separated columns: defence names (e.g. clipure_cos) or
            DEFENSE@BACKBONE (clipure_cos@fare4-b32: CLIPure on FARE).
        seed: random seed (0 to 4294967295).
        conditions: comma-separated subset of the conditions; empty for all of them.

    Returns:
        The audit JSON (the matrix of condition x model; gradients; checks; settings).
    """
    if conditions is not None and not isinstance(conditions, str):
        raise gr.Error(f"conditions: comma-separated names, got {conditions!r}.")
    fields = dict(image=image, labels=labels, true_label=true_label, norm=norm, eps=eps)
    values = handlers.api_values(defenses, **fields, steps=steps, seed=seed)
    chosen = [name.strip() for name in (conditions or "").split(",") if name.strip()]
    return handlers.audit(context, values, chosen or None, reporter(progress), cancel)


def curve(
    context: Context,
    image: str,
    labels: str = "cat, dog",
    method: str = "pgd",
    norm: str = "linf",
    threat: str = "transfer",
    steps: int = 10,
    defenses: str = "clipure_cos",
    true_label: str = "",
    seed: int = 0,
    progress: gr.Progress = gr.Progress(),
    cancel: Any = None,
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
        defenses: comma-separated columns: defence names (e.g. clipure_cos) or
            DEFENSE@BACKBONE (none@fare4-b32 is FARE itself); empty for none.
        true_label: the photo's class (one of the labels); empty: CLIP's clean prediction.
        seed: random seed (0 to 4294967295); the same inputs and seed give the same curve.

    Returns:
        The curve JSON: eps, and per model true_probability, prediction and correct.
    """
    if true_label is not None and not isinstance(true_label, str):
        raise InputError(f"true label must be text, got {true_label!r}.")
    fields = dict(image=image, labels=labels, method=method, norm=norm, threat=threat)
    values = handlers.api_values(defenses, **fields, steps=steps, true_label=true_label, seed=seed)
    return curve_json(context, values, reporter(progress), cancel)


@dataclass(frozen=True)
class Endpoint:
    function: Callable[..., dict]
    prefix: str  # of its hidden components' labels
    output: str  # its JSON output's label


ENDPOINTS = {
    "playground": Endpoint(playground, "", "result"),
    "audit": Endpoint(audit, "audit ", "audit"),
    "curve": Endpoint(curve, "curve ", "curve"),
}


def fields(endpoint: Callable) -> list[inspect.Parameter]:
    """The endpoint's request fields, in order."""
    parameters = inspect.signature(endpoint).parameters.values()
    return [parameter for parameter in parameters if parameter.name not in NOT_FIELDS]


def field_component(parameter: inspect.Parameter, prefix: str) -> gr.Component:
    """The hidden component of one field: a file, a number or a text box, with its default."""
    label = f"{prefix}{parameter.name}".replace("_", " ")
    if parameter.name in FILE_FIELDS:
        return gr.File(label=label, type="filepath")
    if parameter.annotation in ("int", "float"):  # annotations are text (__future__)
        return gr.Number(parameter.default, label=label)
    return gr.Textbox(parameter.default, label=label)


def bind(endpoint: Callable, context: Context) -> Callable:
    """`endpoint` with `context` filled in, as gradio sees it: the fields' signature and the
    docstring stay (the API's parameter names, the MCP tool's description)."""
    signature = inspect.signature(endpoint)

    @functools.wraps(endpoint)
    def bound(*args: Any, **kwargs: Any) -> dict:
        return endpoint(context, *args, **kwargs)

    parameters = [p for name, p in signature.parameters.items() if name != "context"]
    bound.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return cancellable(friendly_errors(bound))


def add_endpoints(context: Context) -> None:
    """Render each endpoint's hidden inputs, output and trigger and connect them (call inside
    the Blocks)."""
    with gr.Column(visible=False):
        for name, endpoint in ENDPOINTS.items():
            inputs = [
                field_component(field, endpoint.prefix) for field in fields(endpoint.function)
            ]
            output = gr.JSON(label=endpoint.output)
            trigger = gr.Button(name)
            handler = bind(endpoint.function, context)
            trigger.click(handler, inputs, output, api_name=name, concurrency_id=GPU_QUEUE)
