"""The playground's Blocks: layout (app/layout.py), events (app/wiring.py), handlers
(app/handlers.py) and what a result shows (app/results.py, app/outputs.py)."""

from __future__ import annotations

import gradio as gr

from clipure_core import MAX_FILE_BYTES
from clipure_core.purifiers import PURIFIERS

from .catalog import model_choices
from .config import AppConfig, load_defense_modules
from .gpu import zero_gpu
from .handlers import Context
from .jobs import explain_full_queue
from .layout import build_layout
from .service import PlaygroundService
from .wiring import wire

CSS = """
#title h1 {margin: 0; font-size: 1.6rem; white-space: nowrap;}
#topbar {align-items: center; gap: 12px;}
#topbar .subtitle {font-size: 0.85rem; line-height: 1.25;}
#topbar .subtitle p {margin: 0;}
#examples .gallery {gap: 6px; flex-wrap: nowrap;}
#examples .gallery-item .container, #examples .gallery-item img {width: 54px !important;
  height: 54px !important; object-fit: cover;}
#banner {background: #fff3cd; border: 2px solid #d39e00; border-radius: 8px; padding: 4px 12px;}
#verdict .ready {font-size: 1.3rem; padding: 18px 4px;}
#verdict .cards {display: flex; gap: 12px; flex-wrap: wrap;}
#verdict .card {flex: 1 1 0; min-width: 170px; border-radius: 14px; padding: 10px 16px;
  color: #fff; box-shadow: 0 2px 6px rgba(0, 0, 0, 0.25);}
#verdict .card div {color: #fff !important;}
#verdict .card .model {font-size: 1.05rem; font-weight: 600; opacity: 0.95;}
#verdict .card .outcome {font-size: 2rem; font-weight: 800; line-height: 1.15;}
#verdict .card .change {font-size: 1.2rem;}
#verdict .fooled {background: #b42318;}
#verdict .still-right {background: #067647;}
#verdict .already-wrong {background: #475467;}
#verdict .target-hit {background: #6b21a8;}
#verdict .facts, #threat-matrix .facts {margin-top: 8px; font-size: 1rem;}
#verdict .note {margin-top: 4px; font-style: italic;}
#threat-matrix .matrix {width: 100%; border-collapse: collapse; font-size: 1.05rem;}
#threat-matrix .matrix th, #threat-matrix .matrix td {border: 1px solid #d0d5dd;
  padding: 6px 10px; text-align: left; vertical-align: top;}
#threat-matrix .matrix td.cell, #threat-matrix .matrix thead th:not(:first-child) {
  width: 19%; white-space: nowrap;}
#threat-matrix .checks .fail .mark {color: #b42318;}
#threat-matrix .checks .warn .mark {color: #b54708;}
#threat-matrix .checks .pass .mark {color: #067647;}
#compare, #curve {white-space: nowrap; padding-left: 10px; padding-right: 10px;}
#eps-curve:not(:hover) .modebar {opacity: 0 !important;}
#perturbation img {width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated;}
#threat-matrix .knew {font-weight: 400; font-size: 0.85rem; opacity: 0.8;}
#threat-matrix .cell.right {background: #dcfae6; color: #054f31;}
#threat-matrix .cell.wrong {background: #fee4e2; color: #7a271a;}
#threat-matrix .checks {margin-top: 10px; line-height: 1.5;}
body.talk .talk-hidden {display: none !important;}
body.talk, body.talk gradio-app, body.talk .gradio-container, body.talk .main {
  background: #000 !important; color: #fff !important;
  --body-background-fill: #000; --background-fill-primary: #000;
  --background-fill-secondary: #111; --block-background-fill: #000;
  --body-text-color: #fff; --block-label-text-color: #fff; --block-title-text-color: #fff;
  --border-color-primary: #666;}
body.talk #title h1 {font-size: 2.2rem !important; color: #fff !important;}
body.talk #verdict .card .model {font-size: 1.5rem !important;}
body.talk #verdict .card .outcome {font-size: 2.6rem !important;}
body.talk #verdict .card .change {font-size: 1.6rem !important;}
body.talk #verdict .facts, body.talk #verdict .ready {font-size: 1.3rem !important;
  color: #fff !important;}
body.talk #threat-matrix .matrix {font-size: 1.35rem !important;}
body.talk #eps-curve {--block-label-text-color: #1f2937; --block-label-background-fill: #e5e7eb;}
body.talk #threat-matrix .cell.right {background: #067647 !important; color: #fff !important;}
body.talk #threat-matrix .cell.wrong {background: #b42318 !important; color: #fff !important;}
"""


def build_demo(config: AppConfig, service: PlaygroundService | None = None) -> gr.Blocks:
    """The playground's Blocks, queued. Every job that runs a model goes through one queue
    (one job at a time, at most `config.queue_size` waiting) and stops at its next model
    query when Stop is pressed, its client cancels it or its client disconnects."""
    load_defense_modules(config)  # only here: never from a request
    service = service or PlaygroundService(config.device, any_backbone=config.any_backbone)
    context = Context(service, model_choices(config.model, config.pretrained))
    backbone = service.backbone(context.start)
    unavailable = {name: purifier.unavailable(backbone) for name, purifier in PURIFIERS.items()}
    with gr.Blocks(title="CLIPure playground", delete_cache=(3600, 3600)) as demo:
        layout = build_layout(config.random_weights, context.choices, unavailable)
        wire(demo, layout, context, lazy_examples=config.examples == "lazy" or zero_gpu())
    demo.queue(default_concurrency_limit=1, max_size=config.queue_size)
    explain_full_queue(demo)
    return demo


def launch_options(config: AppConfig) -> dict:
    """Keyword arguments of `demo.launch` for this configuration. No `allowed_paths`: gradio
    serves only its own cache (uploads, results, the examples' results) and the app's static
    files."""
    return {
        "server_name": config.host,
        "server_port": config.port,
        "share": config.share,
        "css": CSS,
        "max_file_size": MAX_FILE_BYTES,  # also refused by clipure_core.images.open_image
        "show_error": True,
        "theme": gr.themes.Soft(),
        "mcp_server": config.mcp,
    }
