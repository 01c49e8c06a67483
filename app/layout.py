"""The page's components, without events. Laid out for a projector: at 1280x720 the photo,
the examples, the labels, Run and the verdict show without scrolling; the comparison (verdict
cards, clean vs adversarial) sits on the right, the threat matrix under it, and the settings in
tabs below. Controls are named by the request field they fill (see `handlers.request_from`).
Whatever carries the class `talk-hidden` is hidden in talk mode."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from clipure_core import CIFAR10_CLASSNAMES, METHODS, THREATS
from clipure_core.purifiers import PURIFIERS, Purifier, Setting

from .catalog import ModelChoice
from .columns import COLUMNS, columns_control
from .results import READY

RESULT_HEIGHT = 250
# Display names; a method or threat of the engine without one is offered by its own name.
METHOD_TITLES = {
    "pgd": "PGD (L-inf)",
    "pgd-l2": "PGD-L2",
    "fgsm": "FGSM",
    "apgd-ce": "APGD-CE",
    "apgd-dlr": "APGD-DLR",
    "apgd-t": "APGD-T",
    "autoattack": "AutoAttack as released: APGD-CE + APGD-T",
    "autoattack-standard": "AutoAttack standard",
    "square": "Square (black box)",
    "noise": "Random noise (control)",
}
THREAT_TITLES = {
    "transfer": "Transfer from the undefended CLIP",
    "release": "As released (fp16)",
    "paper": "Paper (inner gradient constant)",
    "bpda": "BPDA (adaptive)",
    "full": "Full gradient",
}
PRESETS = {"CIFAR-10": ", ".join(CIFAR10_CLASSNAMES), "ImageNet-1k": "imagenet1k"}
CLEAN_PREDICTION, UNTARGETED = "", ""
RANDOM_BANNER = (
    "⚠️ **Random weights**: this model was started with `--pretrained random` for an "
    "offline check. Its predictions are meaningless."
)
SUBTITLE = (
    "Attack a photo; compare zero-shot CLIP with and without CLIPure's latent-space "
    "purification (ICLR 2025)."
)
TALK_HIDDEN = ["talk-hidden"]  # hidden in talk mode (see the CSS in app/ui.py)


def use_key(defense: str) -> str:
    """The control that switches a defence on ('clipure_cos')."""
    return defense


def setting_key(defense: str, setting: Setting) -> str:
    """The control of one defence setting ('clipure_cos.steps')."""
    return f"{defense}.{setting.name}"


def ui_settings(purifier: type[Purifier]) -> tuple[Setting, ...]:
    """The settings the app offers (the others are CLI reproduction options)."""
    return tuple(setting for setting in purifier.settings_spec if not setting.advanced)


@dataclass
class Layout:
    """Every component the events need, by name."""

    controls: dict[str, gr.Component]  # request field or defence key -> its control
    outputs: dict[str, gr.Component]  # result name -> its output
    run: gr.Button
    stop: gr.Button
    compare: gr.Button
    matrix: gr.HTML
    curve: gr.Button
    eps_curve: gr.Plot
    talk: gr.Checkbox
    preset: gr.Radio
    threat_help: gr.Markdown
    model_status: gr.Markdown
    banner: gr.Markdown
    examples_slot: gr.Column


def attack_controls() -> dict[str, gr.Component]:
    """Labels, attack and threat controls (unrendered)."""
    return {
        "labels": gr.Textbox(
            "cat, dog, tiger, fox, rabbit",
            label="Labels (comma-separated)",
            lines=1,
            max_lines=2,
            show_label=False,
            placeholder="Labels (comma-separated), e.g. cat, dog, car",
            elem_id="labels",
            elem_classes=TALK_HIDDEN,
            render=False,
        ),
        "templates": gr.Radio(
            [("80 CLIP prompt templates (the paper)", "ensemble"), ("one template", "single")],
            value="ensemble",
            label="Prompts per label",
            info="one template encodes 80 times fewer prompts (quicker for many new labels)",
            elem_id="templates",
            render=False,
        ),
        # Choices follow the labels box; the engine validates the value itself.
        "true_label": gr.Dropdown(
            [("CLIP's clean prediction", CLEAN_PREDICTION)],
            value=CLEAN_PREDICTION,
            label="True label",
            allow_custom_value=True,
            elem_id="true-label",
            render=False,
        ),
        "method": gr.Dropdown(
            [(METHOD_TITLES.get(name, name), name) for name in METHODS],
            value="pgd",
            label="Attack",
            elem_id="method",
            render=False,
        ),
        "norm": gr.Radio(["linf"], value="linf", label="Norm", interactive=False, render=False),
        "eps": gr.Slider(1, 32, value=4, step=1, label="eps (L-inf, /255)", render=False),
        "steps": gr.Slider(1, 200, value=10, step=1, label="Attack steps", render=False),
        "step_size": gr.Number(0, label="Step size (0 = 2.5 x eps / steps)", render=False),
        "target_label": gr.Dropdown(
            [("untargeted", UNTARGETED)],
            value=UNTARGETED,
            label="Target class",
            allow_custom_value=True,
            render=False,
        ),
        "threat": gr.Radio(
            [(THREAT_TITLES.get(name, name), name) for name in THREATS],
            value="transfer",
            label="Threat model",
            elem_id="threat",
            render=False,
        ),
        "eot_samples": gr.Slider(1, 16, value=1, step=1, label="EOT samples", render=False),
        "seed": gr.Number(0, precision=0, label="Seed", elem_id="seed", render=False),
    }


def defense_controls(unavailable: dict[str, str | None]) -> dict[str, gr.Component]:
    """A switch per registered purifier and a control per setting it offers (unrendered);
    a defence that cannot run on the start-up model is disabled, saying why."""
    controls: dict[str, gr.Component] = {}
    for index, (name, purifier) in enumerate(PURIFIERS.items()):
        reason = unavailable.get(name)
        controls[use_key(name)] = gr.Checkbox(
            index == 0 and reason is None,
            label=purifier.title,
            interactive=reason is None,
            info=f"Disabled: {purifier.title} {reason}" if reason else None,
            elem_id=f"use-{name}",
            render=False,
        )
        for setting in ui_settings(purifier):
            controls[setting_key(name, setting)] = setting_control(purifier, setting)
    return controls


def setting_control(purifier: type[Purifier], setting: Setting) -> gr.Component:
    """The control for one setting: a slider for whole numbers, a number box, a checkbox
    or a dropdown of its choices."""
    label = f"{purifier.title} {setting.title}"
    common = {"label": label, "info": setting.help or None, "render": False}
    if setting.choices:
        return gr.Dropdown(list(setting.choices), value=setting.default, **common)
    if setting.kind is bool:
        return gr.Checkbox(setting.default, **common)
    if setting.kind is int:
        high = setting.ui_maximum or setting.maximum or 100
        return gr.Slider(setting.minimum or 0, high, value=setting.default, step=1, **common)
    return gr.Number(setting.default, **common)


def result_outputs() -> dict[str, gr.Component]:
    """The outputs a run fills (unrendered)."""
    return {
        "verdict": gr.HTML(f'<div class="ready">{READY}</div>', elem_id="verdict", render=False),
        "slider": gr.ImageSlider(
            label="Clean | adversarial (drag)",
            type="filepath",
            interactive=False,
            height=RESULT_HEIGHT,
            elem_id="comparison",
            render=False,
        ),
        "perturbation": gr.Image(
            label="Perturbation",
            interactive=False,
            height=RESULT_HEIGHT,
            elem_id="perturbation",
            render=False,
        ),
        "perturbation_note": gr.Markdown(elem_id="perturbation-note", render=False),
        "probabilities": gr.Plot(
            label="Class probabilities", elem_id="probabilities", render=False
        ),
        "diagnostics": gr.Markdown(render=False),
        **{
            f"trajectory_{name}": gr.Plot(
                label=f"{purifier.title} trajectory",
                elem_id=f"trajectory-{name.removeprefix('clipure_')}",
                render=False,
            )
            for name, purifier in PURIFIERS.items()
        },
        "command": gr.Code(
            label="Reproduce on the command line",
            language="shell",
            elem_id="command",
            render=False,
        ),
        "png": gr.File(label="Adversarial PNG (exactly what was evaluated)", render=False),
        "json": gr.File(label="Settings and result (JSON)", render=False),
    }


def build_layout(
    config_random: bool,
    choices: list[ModelChoice],
    unavailable: dict[str, str | None],
) -> Layout:
    """Lay the page out (call inside `gr.Blocks`)."""
    start = choices[0]
    controls: dict[str, gr.Component] = {
        **photo_controls(choices),
        **attack_controls(),
        **defense_controls(unavailable),
        COLUMNS: columns_control(),
    }
    outputs = result_outputs()
    talk = top_bar()
    banner = gr.Markdown(RANDOM_BANNER, visible=config_random, elem_id="banner")
    run, stop, compare, curve, examples_slot = main_row(controls, outputs)
    matrix = gr.HTML(
        '<div class="ready">Press <b>Threat matrix for this photo</b> to attack it under every '
        "threat model at once.</div>",
        elem_id="threat-matrix",
    )
    eps_curve = gr.Plot(
        label="Robustness curve: the true class's probability against eps", elem_id="eps-curve"
    )
    with gr.Tabs(elem_classes=TALK_HIDDEN):
        threat_help = attack_tab(controls)
        preset = labels_tab(controls)
        defenses_tab(controls)
        with gr.Tab("Model"):
            controls["model"].render()
            model_status = gr.Markdown(f"Start-up model: **{start.label}**")
        details_tab(outputs)
    return Layout(
        controls=controls,
        outputs=outputs,
        run=run,
        stop=stop,
        compare=compare,
        matrix=matrix,
        curve=curve,
        eps_curve=eps_curve,
        talk=talk,
        preset=preset,
        threat_help=threat_help,
        model_status=model_status,
        banner=banner,
        examples_slot=examples_slot,
    )


def photo_controls(choices: list[ModelChoice]) -> dict[str, gr.Component]:
    """The backbone and photo controls (unrendered)."""
    return {
        "model": gr.Dropdown(
            [choice.label for choice in choices],
            value=choices[0].label,
            label="Backbone",
            elem_id="model",
            render=False,
        ),
        "image": gr.Image(
            type="filepath",
            image_mode=None,
            sources=["upload", "webcam", "clipboard"],
            label="Photo",
            height=170,
            elem_id="photo",
            elem_classes=TALK_HIDDEN,
            render=False,
        ),
    }


def top_bar() -> gr.Checkbox:
    """Title, subtitle, the talk-mode toggle (returned) and the deep link."""
    with gr.Row(elem_id="topbar", equal_height=True):
        gr.Markdown("# CLIPure playground", elem_id="title", scale=0, min_width=300)
        gr.Markdown(SUBTITLE, elem_classes=[*TALK_HIDDEN, "subtitle"])
        talk = gr.Checkbox(
            False, label="Talk mode", elem_id="talk", container=False, scale=0, min_width=140
        )
        gr.DeepLinkButton(
            "Copy a link to these settings",
            copied_value="Link copied",
            size="sm",
            scale=0,
            min_width=200,
        )
    return talk


def main_row(
    controls: dict[str, gr.Component], outputs: dict[str, gr.Component]
) -> tuple[gr.Button, gr.Button, gr.Button, gr.Button, gr.Column]:
    """Photo, examples, labels and buttons on the left; the comparison on the right.
    Returns Run, Stop, the threat-matrix and curve buttons and the examples' slot."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=340, elem_id="inputs"):
            controls["image"].render()
            examples_slot = gr.Column(elem_id="examples-slot")
            controls["labels"].render()
            with gr.Row():
                run = gr.Button("Run: attack and purify", variant="primary", elem_id="run")
                stop = gr.Button("Stop", variant="stop", elem_id="stop", scale=0, min_width=80)
            with gr.Row():
                compare = gr.Button(
                    "Threat matrix for this photo", elem_id="compare", scale=3, min_width=0
                )
                curve = gr.Button("Robustness curve", elem_id="curve", scale=2, min_width=0)
        with gr.Column(scale=7, elem_id="results"):
            outputs["verdict"].render()
            with gr.Row(equal_height=True):
                with gr.Column(scale=3, min_width=240):
                    outputs["slider"].render()
                with gr.Column(scale=2, min_width=180):
                    outputs["perturbation"].render()
            outputs["perturbation_note"].render()
    return run, stop, compare, curve, examples_slot


def attack_tab(controls: dict[str, gr.Component]) -> gr.Markdown:
    """The attack's settings; returns the threat model's help text."""
    with gr.Tab("Attack"):
        with gr.Row():
            for name in ("method", "norm", "threat"):
                controls[name].render()
        threat_help = gr.Markdown(THREATS["transfer"])
        with gr.Row():
            for name in ("eps", "steps", "step_size", "eot_samples", "seed"):
                controls[name].render()
    return threat_help


def labels_tab(controls: dict[str, gr.Component]) -> gr.Radio:
    """Label presets, prompt templates, true and target label; returns the presets."""
    with gr.Tab("Labels"):
        preset = gr.Radio(["Custom", *PRESETS], value="Custom", label="Class labels")
        controls["templates"].render()
        with gr.Row():
            controls["true_label"].render()
            controls["target_label"].render()
    return preset


def defenses_tab(controls: dict[str, gr.Component]) -> None:
    """A row per defence: its switch and its settings; then the box of more columns."""
    with gr.Tab("Defences"):
        for name, purifier in PURIFIERS.items():
            with gr.Row():
                controls[use_key(name)].render()
                for setting in ui_settings(purifier):
                    controls[setting_key(name, setting)].render()
        controls[COLUMNS].render()


def details_tab(outputs: dict[str, gr.Component]) -> None:
    """Probabilities, diagnostics, trajectories, the command and the downloads."""
    with gr.Tab("Details"):
        outputs["probabilities"].render()
        outputs["diagnostics"].render()
        for name in PURIFIERS:
            outputs[f"trajectory_{name}"].render()
        outputs["command"].render()
        with gr.Row():
            outputs["png"].render()
            outputs["json"].render()
