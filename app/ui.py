"""The Gradio Blocks of the playground: inputs on the left, results on the right."""

from __future__ import annotations

import functools
import gc
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path

import gradio as gr
import torch
from PIL import Image

from clipure_core import THREATS, InputError, PlaygroundResult, WeightsUnavailableError
from clipure_core.attacks import METHODS
from clipure_core.images import MAX_FILE_BYTES
from clipure_core.pixels import amplified_perturbation
from clipure_core.plots import model_title, probability_figure, trajectory_figure
from clipure_core.prompts import CIFAR10_CLASSNAMES, parse_labels

from .catalog import ModelChoice, model_choices
from .config import AppConfig
from .gpu import gpu_task, zero_gpu
from .jobs import cancellable, explain_full_queue
from .service import ATTACK_PROGRESS, Cancelled, PlaygroundRequest, PlaygroundService

LOGGER = logging.getLogger(__name__)
ASSETS = Path(__file__).resolve().parents[1] / "assets"
RESULT_HEIGHT = 240
GPU_QUEUE = "gpu"  # one concurrency group: attacks and model loads run one at a time
EXAMPLES = (
    ("chelsea.png", "cat, dog, tiger, fox, rabbit"),
    ("coffee.png", "coffee mug, teapot, bowl, plate, spoon"),
    ("astronaut.png", "astronaut, pilot, doctor, soldier, chef"),
    ("rocket.jpg", "rocket, airplane, lighthouse, chimney, bird"),
    ("hubble_deep_field.jpg", "galaxy, starry sky, fireworks, jellyfish, city at night"),
    ("coins.png", "coins, buttons, cookies, medals, bottle caps"),
    ("camera.png", "photographer, painter, soldier, tourist, fisherman"),
)
METHOD_CHOICES = [
    ("PGD (L-inf)", "pgd"),
    ("PGD-L2", "pgd-l2"),
    ("FGSM", "fgsm"),
    ("APGD-CE", "apgd-ce"),
    ("APGD-DLR", "apgd-dlr"),
    ("APGD-T", "apgd-t"),
    ("AutoAttack: APGD-CE + APGD-T (paper)", "autoattack"),
]
THREAT_CHOICES = [
    ("Transfer from the undefended CLIP", "transfer"),
    ("As in the paper", "paper"),
    ("BPDA (adaptive)", "bpda"),
    ("Full gradient", "full"),
]
PRESETS = {"CIFAR-10": ", ".join(CIFAR10_CLASSNAMES), "ImageNet-1k": "imagenet1k"}
CLEAN_PREDICTION, UNTARGETED = "", ""
RANDOM_BANNER = (
    "⚠️ **Random weights**: this model was started with `--pretrained random` for an "
    "offline check. Its predictions are meaningless."
)


def diff_note(prior: str | None) -> str:
    """Why CLIPure-Diff is on offer or not, for the chosen backbone."""
    if prior is None:
        return (
            "Disabled: CLIPure-Diff needs a diffusion prior over this backbone's image "
            "embeddings. Only ViT-L/14 (OpenAI) has a public one; train one with "
            "`python -m clipure_core.train_prior` and put it in CLIPURE_PRIORS_DIR."
        )
    return f"Prior: {prior}"


CSS = """
#verdict {font-size: 1.35rem; line-height: 1.6;}
#banner {background: #fff3cd; border: 2px solid #d39e00; border-radius: 8px; padding: 4px 12px;}
"""


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


OUT_OF_MEMORY = (
    "Out of memory: try fewer attack steps, fewer EOT samples, fewer labels or a smaller model."
)
UNEXPECTED = (
    "Something went wrong on the server (it has been logged). Please try again, perhaps with "
    "other settings."
)


def _readable(message: str) -> gr.Error:
    """The error the user sees. gradio prints no traceback of it: its message may quote the
    user's input, and the server log holds no user data."""
    return gr.Error(message, print_exception=False)


def free_memory() -> None:
    """Give memory back after an out-of-memory error: collect the failed request's tensors,
    then return PyTorch's cached CUDA blocks (a no-op where CUDA was never initialised)."""
    gc.collect()
    torch.cuda.empty_cache()


def friendly_errors(function: Callable) -> Callable:
    """Turn every failure into a readable gr.Error. The server log gets the outcome, the time
    taken and, for unexpected errors, the exception's type and stack (code locations only,
    never its message nor the request's labels or image)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        except gr.Error:
            raise
        except Cancelled:
            _log_outcome(function, "stopped", started)
            raise _readable("Stopped.") from None
        except (InputError, WeightsUnavailableError) as error:
            _log_outcome(function, f"refused ({type(error).__name__})", started)
            raise _readable(str(error)) from None
        except torch.OutOfMemoryError:
            pass  # handled below, out of this block: its traceback holds the request's tensors
        except Exception as error:
            stack = "".join(traceback.format_tb(error.__traceback__))
            outcome = f"failed ({type(error).__name__}; its message is not logged)"
            _log_outcome(function, outcome, started, logging.ERROR, stack)
            raise _readable(UNEXPECTED) from None
        _log_outcome(function, "out of memory", started, logging.WARNING)
        free_memory()
        raise _readable(OUT_OF_MEMORY)

    return wrapper


def _log_outcome(
    function: Callable, outcome: str, started: float, level: int = logging.INFO, stack: str = ""
) -> None:
    """One log line per request that did not finish: handler, outcome, time (and a stack)."""
    elapsed_ms = (time.perf_counter() - started) * 1000
    LOGGER.log(
        level,
        "%s: %s after %.0f ms%s",
        function.__name__,
        outcome,
        elapsed_ms,
        stack and ":\n" + stack,
    )


def verdict_markdown(result: PlaygroundResult) -> str:
    """One line per model: a mark (still right or fooled), its title and its verdict."""
    adversarial = result.predictions()["adversarial"]
    lines = []
    for model, line in zip(result.models, result.verdicts(), strict=True):
        outcome = "still right" if adversarial[model] == result.true_label else "fooled"
        lines.append(f"**{model_title(model)}** ({outcome}): {line.partition(': ')[2]}")
    if result.to_dict()["perturbation"]["linf"] == 0:
        lines.append("_The attack found no adversarial example: the image is unchanged._")
    return "\n\n".join([f"True label: **{result.true_label}**", *lines])


def diagnostics_markdown(result: PlaygroundResult) -> str:
    """Per defence: how far purification moved the embedding, in the end and on the way."""
    rows = [
        "| defence | input | ended from start | largest swing |",
        "|---|---|---|---|",
    ]
    for name, diagnostics in result.diagnostics.items():
        for condition, run in (("adversarial", diagnostics), ("clean", diagnostics["clean"])):
            rows.append(
                f"| {model_title(name)} | {condition} | {run['angle_moved_deg']:.1f}° | "
                f"{run['max_angle_deg']:.1f}° |"
            )
    if len(rows) == 2:
        return "No defence selected."
    return "\n".join(rows)


def build_demo(config: AppConfig, service: PlaygroundService | None = None) -> gr.Blocks:
    """The playground's Blocks, queued. Every job that runs a model goes through one queue
    (`GPU_QUEUE`, one job at a time, at most `config.queue_size` waiting) and stops at its next
    model query when Stop is pressed, its client cancels it or its client disconnects."""
    service = service or PlaygroundService(config.device)
    choices = model_choices(config.model, config.pretrained)
    by_label: dict[str, ModelChoice] = {choice.label: choice for choice in choices}
    start = choices[0]
    stops = StopRegistry()

    @gpu_task
    def run_on_device(choice: ModelChoice, image, request: PlaygroundRequest):
        """The GPU-bound part, with picklable arguments only (see app/gpu.py)."""
        return service.run(choice, image, request)

    def run_request(choice, image, request, on_progress=None, cancel=None) -> PlaygroundResult:
        """One request on `choice`; logs its counts and timings, never its labels or image."""
        if zero_gpu():  # another process: no live progress, Stop only cancels the event
            result = run_on_device(choice, image, request)
        else:
            result = service.run(choice, image, request, on_progress, cancel)
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

    def hand_over(component: gr.Component, path: Path) -> str:
        """Move a file into gradio's cache (emptied by `delete_cache`), removing ours."""
        try:
            return component.move_resource_to_block_cache(path)
        finally:
            path.unlink(missing_ok=True)

    def view(component: gr.Image, image: Image.Image) -> str:
        """`image` as a PNG of its own in gradio's cache. (gradio would store a returned PIL
        image as a lossy WebP at a path shared by every identical image, rewriting it in
        place: a user downloading it while another request returns the same image could
        get a cut file.)"""
        path = service.output_dir / f"view-{uuid.uuid4().hex[:12]}.png"
        image.save(path, format="PNG")
        return hand_over(component, path)

    @cancellable
    @friendly_errors
    def run(
        model_label,
        image,
        labels,
        true_label,
        method,
        norm,
        eps,
        steps,
        step_size,
        target,
        threat,
        eot,
        seed,
        use_cos,
        cos_steps,
        cos_step_size,
        use_diff,
        diff_steps,
        diff_step_size,
        http: gr.Request,
        progress=gr.Progress(),
        cancel: threading.Event | None = None,
    ):
        session = http.session_hash or "anonymous"
        cancel = stops.start(session, cancel)
        request = PlaygroundRequest(
            labels=labels,
            method=method,
            norm=norm,
            eps=eps,
            steps=steps,
            step_size=step_size or None,
            threat=threat,
            defenses=[
                name for name, on in (("clipure_cos", use_cos), ("clipure_diff", use_diff)) if on
            ],
            seed=seed,
            true_label=true_label or None,
            target_label=target or None,
            eot_samples=eot,
            cos_steps=cos_steps,
            cos_step_size=cos_step_size,
            diff_steps=diff_steps,
            diff_step_size=diff_step_size,
        )

        def on_progress(done, total, desc=ATTACK_PROGRESS[0], unit=ATTACK_PROGRESS[1]):
            progress((done, total), desc=desc, unit=unit)  # text embeddings, then the attack

        try:
            result = run_request(by_label[model_label], image, request, on_progress, cancel)
        finally:
            stops.finish(session, cancel)
        png, data = service.save_downloads(result)
        png, data = hand_over(png_file, png), hand_over(json_file, data)
        perturbation, gain = amplified_perturbation(result.clean_image, result.adversarial_image)
        payload = result.to_dict()
        size = payload["perturbation"]
        caption = (
            f"Perturbation shown x{gain:.0f} around grey. Its size: L-inf "
            f"{size['linf'] * 255:.1f}/255, L2 {size['l2']:.3f}."
            if gain
            else "No perturbation: the attack left the image unchanged."
        )
        trajectories = [
            trajectory_figure(payload, name) if name in result.diagnostics else None
            for name in ("clipure_cos", "clipure_diff")
        ]
        return (
            verdict_markdown(result),
            view(clean_view, result.clean_image),
            view(adversarial_view, result.adversarial_image),
            view(perturbation_view, perturbation),
            caption,
            probability_figure(payload),
            diagnostics_markdown(result),
            *trajectories,
            png,
            data,
        )

    @cancellable
    @friendly_errors
    def api_playground(
        image,
        labels,
        method,
        norm,
        eps,
        steps,
        threat,
        defenses,
        seed,
        progress=gr.Progress(),
        cancel: threading.Event | None = None,
    ):
        request = PlaygroundRequest(
            labels=labels,
            method=method,
            norm=norm,
            eps=eps,
            steps=steps,
            threat=threat,
            defenses=[d.strip() for d in (defenses or "").split(",") if d.strip()],
            seed=seed,
        )

        def on_progress(done, total, desc=ATTACK_PROGRESS[0], unit=ATTACK_PROGRESS[1]):
            progress((done, total), desc=desc, unit=unit)  # text embeddings, then the attack

        return run_request(start, image, request, on_progress, cancel).to_dict()

    @friendly_errors
    def load_model(model_label, progress=gr.Progress()):
        choice = by_label[model_label]
        progress(0.1, desc=f"loading {choice.label}")
        backbone = service.backbone(choice)
        prior = service.diff_prior(choice)
        return (
            f"Loaded **{choice.label}** on {backbone.info.device}.",
            gr.Markdown(RANDOM_BANNER, visible=backbone.info.random_weights),
            gr.Checkbox(value=False, interactive=prior is not None, info=diff_note(prior)),
        )

    def label_choices(labels, current_true, current_target):
        """Offer the labels in the dropdowns: the true label is an example's own when one was
        picked, else CLIP's clean prediction; a target that still exists is kept."""
        try:
            names, _ = parse_labels(labels)
        except InputError:
            names = []
        return (
            gr.Dropdown(
                choices=[("CLIP's clean prediction", CLEAN_PREDICTION), *names],
                value=current_true if current_true in names else CLEAN_PREDICTION,
            ),
            gr.Dropdown(
                choices=[("untargeted", UNTARGETED), *names],
                value=current_target if current_target in names else UNTARGETED,
            ),
        )

    def method_changed(method):
        norms = METHODS[method]
        return gr.Radio(choices=list(norms), value=norms[0], interactive=len(norms) > 1)

    def norm_changed(norm):
        if norm == "l2":
            return gr.Slider(
                minimum=0.05,
                maximum=8.0,
                value=0.5,
                step=0.05,
                label="eps (L2, in [0, 1] pixel units)",
            )
        return gr.Slider(minimum=1, maximum=32, value=4, step=1, label="eps (L-inf, /255)")

    with gr.Blocks(title="CLIPure playground", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# CLIPure playground\nAttack a photo, then compare CLIP's zero-shot predictions "
            "with and without purification in CLIP's latent space (CLIPure, ICLR 2025)."
        )
        banner = gr.Markdown(RANDOM_BANNER, visible=config.random_weights, elem_id="banner")
        with gr.Row():
            with gr.Column(scale=2):
                image = gr.Image(
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    label="Photo",
                    height=300,
                    elem_id="photo",
                )
                labels = gr.Textbox(
                    EXAMPLES[0][1], label="Labels (comma-separated)", lines=2, render=False
                )
                # Choices follow the labels box; the engine validates the value itself.
                true_label = gr.Dropdown(
                    [("CLIP's clean prediction", CLEAN_PREDICTION)],
                    value=CLEAN_PREDICTION,
                    label="True label",
                    allow_custom_value=True,
                    render=False,
                )
                example_truth = gr.Textbox(visible=False, label="True label")  # of an example
                gr.Examples(
                    [[str(ASSETS / name), text, text.split(",")[0]] for name, text in EXAMPLES],
                    inputs=[image, labels, example_truth],
                    cache_examples=False,
                    label="Examples (the first label is the true one)",
                    elem_id="examples",
                )
                preset = gr.Radio(["Custom", *PRESETS], value="Custom", label="Class labels")
                labels.render()
                true_label.render()
                with gr.Row():
                    run_button = gr.Button("Attack and purify", variant="primary", elem_id="run")
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
                with gr.Accordion("Model", open=False):
                    model = gr.Dropdown(
                        [c.label for c in choices], value=start.label, label="Backbone"
                    )
                    model_status = gr.Markdown(f"Start-up model: **{start.label}**")
                with gr.Accordion("Attack", open=True):
                    method = gr.Dropdown(METHOD_CHOICES, value="pgd", label="Method")
                    norm = gr.Radio(["linf"], value="linf", label="Norm", interactive=False)
                    eps = gr.Slider(1, 32, value=4, step=1, label="eps (L-inf, /255)")
                    steps = gr.Slider(1, 200, value=10, step=1, label="Steps")
                    step_size = gr.Number(0, label="Step size (0 = 2.5 x eps / steps)")
                    target = gr.Dropdown(
                        [("untargeted", UNTARGETED)],
                        value=UNTARGETED,
                        label="Target class",
                        allow_custom_value=True,
                    )
                    threat = gr.Radio(THREAT_CHOICES, value="transfer", label="Threat model")
                    threat_help = gr.Markdown(THREATS["transfer"])
                    eot = gr.Slider(1, 16, value=1, step=1, label="EOT samples")
                    seed = gr.Number(0, precision=0, label="Seed")
                with gr.Accordion("Defences", open=True):
                    use_cos = gr.Checkbox(True, label="CLIPure-Cos")
                    cos_steps = gr.Slider(0, 50, value=10, step=1, label="CLIPure-Cos steps")
                    cos_step_size = gr.Number(30.0, label="CLIPure-Cos step size (paper: 30)")
                    start_prior = service.diff_prior(start)
                    use_diff = gr.Checkbox(
                        False,
                        label="CLIPure-Diff",
                        interactive=start_prior is not None,
                        info=diff_note(start_prior),
                    )
                    diff_steps = gr.Slider(0, 50, value=10, step=1, label="CLIPure-Diff steps")
                    diff_step_size = gr.Number(30.0, label="CLIPure-Diff step size (paper: 30)")
            with gr.Column(scale=3):
                verdict = gr.Markdown(
                    "Pick an example or upload a photo, then press **Attack and purify**.",
                    elem_id="verdict",
                )
                with gr.Row():
                    clean_view = gr.Image(
                        label="Clean (model input)", interactive=False, height=RESULT_HEIGHT
                    )
                    adversarial_view = gr.Image(
                        label="Adversarial",
                        interactive=False,
                        elem_id="adversarial-image",
                        height=RESULT_HEIGHT,
                    )
                    perturbation_view = gr.Image(
                        label="Perturbation", interactive=False, height=RESULT_HEIGHT
                    )
                perturbation_note = gr.Markdown(elem_id="perturbation-note")
                probabilities = gr.Plot(label="Class probabilities", elem_id="probabilities")
                with gr.Accordion("Purification diagnostics", open=True):
                    diagnostics = gr.Markdown()
                    trajectory = gr.Plot(label="CLIPure-Cos trajectory", elem_id="trajectory")
                    trajectory_diff = gr.Plot(
                        label="CLIPure-Diff trajectory", elem_id="trajectory-diff"
                    )
                with gr.Row():
                    png_file = gr.File(label="Adversarial PNG (exactly what was evaluated)")
                    json_file = gr.File(label="Settings and result (JSON)")

        with gr.Column(visible=False):
            api_inputs = [
                gr.File(label="image", type="filepath"),
                gr.Textbox("cat, dog", label="labels"),
                gr.Textbox("pgd", label="method"),
                gr.Textbox("linf", label="norm"),
                gr.Number(4.0, label="eps"),
                gr.Number(10, label="steps"),
                gr.Textbox("transfer", label="threat"),
                gr.Textbox("clipure_cos", label="defenses"),
                gr.Number(0, label="seed"),
            ]
            api_output = gr.JSON(label="result")
            api_trigger = gr.Button("api")

        ui_only = {"queue": False, "api_visibility": "private"}
        preset.change(lambda p: PRESETS.get(p, gr.skip()), preset, labels, **ui_only)
        label_inputs = [labels, example_truth, target]
        labels.change(label_choices, label_inputs, [true_label, target], **ui_only)
        example_truth.change(label_choices, label_inputs, [true_label, target], **ui_only)
        demo.load(label_choices, label_inputs, [true_label, target], **ui_only)
        method.change(method_changed, method, norm, **ui_only)
        norm.change(norm_changed, norm, eps, **ui_only)
        threat.change(lambda t: THREATS[t], threat, threat_help, **ui_only)
        model.change(
            load_model,
            model,
            [model_status, banner, use_diff],
            concurrency_id=GPU_QUEUE,
            api_visibility="private",
        )
        run_event = run_button.click(
            run,
            [
                model,
                image,
                labels,
                true_label,
                method,
                norm,
                eps,
                steps,
                step_size,
                target,
                threat,
                eot,
                seed,
                use_cos,
                cos_steps,
                cos_step_size,
                use_diff,
                diff_steps,
                diff_step_size,
            ],
            [
                verdict,
                clean_view,
                adversarial_view,
                perturbation_view,
                perturbation_note,
                probabilities,
                diagnostics,
                trajectory,
                trajectory_diff,
                png_file,
                json_file,
            ],
            concurrency_id=GPU_QUEUE,
            api_name="run",
            api_visibility="undocumented",
        )

        def stop(http: gr.Request) -> None:
            stops.stop(http.session_hash or "anonymous")

        stop_button.click(stop, None, None, cancels=[run_event], **ui_only)
        api_trigger.click(
            api_playground, api_inputs, api_output, api_name="playground", concurrency_id=GPU_QUEUE
        )
    demo.queue(default_concurrency_limit=1, max_size=config.queue_size)
    explain_full_queue(demo)
    return demo


def launch_options(config: AppConfig) -> dict:
    """Keyword arguments of `demo.launch` for this configuration. No `allowed_paths`: gradio
    serves only its own cache (uploads, results) and the app's static files."""
    return {
        "server_name": config.host,
        "server_port": config.port,
        "share": config.share,
        "css": CSS,
        "max_file_size": MAX_FILE_BYTES,  # also refused by clipure_core.images.open_image
        "show_error": True,
        "theme": gr.themes.Soft(),
    }
