"""Calling the page's own endpoints (/run, /threat_matrix) over HTTP, as the browser does:
their inputs are the page's controls, found by label in the app's /config."""

from __future__ import annotations

from typing import Any

import httpx


def page_inputs(url: str, api_name: str = "run", **by_label: Any) -> list:
    """The positional inputs of the page endpoint `api_name`: every control's start value,
    with the controls named in `by_label` (by their label) set."""
    config = httpx.get(f"{url.rstrip('/')}/config").json()
    components = {component["id"]: component for component in config["components"]}
    (dependency,) = [d for d in config["dependencies"] if d.get("api_name") == api_name]
    labels = [components[i]["props"].get("label") for i in dependency["inputs"]]
    unknown = set(by_label) - set(labels)
    assert not unknown, f"no control labelled {unknown}; labels: {labels}"
    return [
        by_label[label] if label in by_label else components[i]["props"].get("value")
        for i, label in zip(dependency["inputs"], labels, strict=True)
    ]


def page_outputs(url: str, outputs: list, api_name: str = "run") -> dict[str, Any]:
    """The outputs of a page endpoint by their component's elem_id or label."""
    config = httpx.get(f"{url.rstrip('/')}/config").json()
    components = {component["id"]: component for component in config["components"]}
    (dependency,) = [d for d in config["dependencies"] if d.get("api_name") == api_name]
    named = {}
    for i, value in zip(dependency["outputs"], outputs, strict=True):
        props = components[i]["props"]
        named[props.get("elem_id") or props.get("label")] = value
    return named
