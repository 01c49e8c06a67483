"""Backbones as columns in the app: the text box of extra columns (`DEFENSE@BACKBONE`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gradio as gr

from clipure_core import BACKBONE_ALIASES

COLUMNS = "columns"  # the control's name in `Layout.controls` and the request values


def columns_control() -> gr.Textbox:
    """Extra columns, comma-separated (unrendered)."""
    return gr.Textbox(
        "",
        label="More columns (DEFENSE@BACKBONE)",
        info="e.g. none@fare4-b32, clipure_cos@fare4-b32: FARE itself, and CLIPure on FARE. "
        f"Backbones: {', '.join(BACKBONE_ALIASES)}, ARCH:PRETRAINED or local-dir:FOLDER.",
        placeholder="none@fare4-b32, clipure_cos@fare4-b32",
        elem_id="columns",
        render=False,
    )


def requested(values: Mapping[str, Any], switched_on: Sequence[str]) -> list[str]:
    """The defences switched on, then the extra columns typed in the box."""
    extra = values.get(COLUMNS) or ""
    if not isinstance(extra, str):
        extra = ",".join(map(str, extra))
    return [*switched_on, *(spec.strip() for spec in extra.split(",") if spec.strip())]
