"""The Gradio app: configuration, the /playground API over HTTP, errors, Stop, start-up."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import ClassVar

import gradio as gr
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from app.catalog import CATALOG, model_choices
from app.config import parse_config
from app.errors import friendly_errors
from app.gpu import gpu_task, requested_seconds
from app.handlers import CLEAN_PREDICTION, label_choices, label_options
from app.service import Cancelled, PlaygroundRequest, PlaygroundService, estimated_queries
from clipure_core import AttackConfig, InputError, ZeroShotClassifier, load_backbone
from clipure_core.pixels import pil_to_pixels

from .conftest import ASSETS, TINY_MODEL, run_without_weights
from .page import page_inputs, page_outputs
from .tolerance import RTOL

API_ARGS = {
    "labels": "cat, dog, car, airplane",
    "method": "pgd",
    "norm": "linf",
    "eps": 8,
    "steps": 4,
    "threat": "bpda",
    "defenses": "clipure_cos",
    "seed": 0,
}


@pytest.fixture(scope="module")
def client(running_app):
    return Client(running_app, verbose=False)


def test_config_binds_to_localhost_without_share_unless_told():
    config = parse_config([], environ={})
    assert (config.host, config.port, config.share) == ("127.0.0.1", 7860, False)
    assert (config.model, config.pretrained) == ("ViT-B-32", "openai")
    env = {
        "CLIPURE_MODEL": "ViT-L-14",
        "CLIPURE_PORT": "9000",
        "CLIPURE_SHARE": "1",
        "GRADIO_SERVER_NAME": "0.0.0.0",
    }
    config = parse_config(["--port", "9100"], environ=env)
    assert (config.model, config.port, config.share, config.host) == (
        "ViT-L-14",
        9100,
        True,
        "0.0.0.0",
    )
    assert parse_config(["--pretrained", "random"], environ={}).random_weights


def test_defense_modules_come_from_the_environment_then_the_command_line():
    """A Space cannot pass flags: CLIPURE_DEFENSE_MODULES names its defences."""
    env = {"CLIPURE_DEFENSE_MODULES": " a.b:C , d:E,"}
    assert parse_config([], environ=env).defense_modules == ("a.b:C", "d:E")
    config = parse_config(["--defense-module", "f.g:H"], environ=env)
    assert config.defense_modules == ("a.b:C", "d:E", "f.g:H")
    assert parse_config([], environ={}).defense_modules == ()


def test_start_model_is_offered_first():
    assert model_choices("ViT-B-32", "openai")[0] is CATALOG[0]
    custom = model_choices(TINY_MODEL, "random")
    assert (custom[0].name, custom[0].pretrained) == (TINY_MODEL, "random")
    assert len(custom) == len(CATALOG) + 1


def test_only_the_playground_audit_and_curve_endpoints_are_documented(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert list(endpoints) == ["/playground", "/audit", "/curve"]
    parameters = [p["parameter_name"] for p in endpoints["/audit"]["parameters"]]
    assert parameters == [
        "image", "labels", "true_label", "norm", "eps", "steps", "defenses", "seed", "conditions"
    ]  # fmt: skip
    parameters = [p["parameter_name"] for p in endpoints["/curve"]["parameters"]]
    assert parameters == [
        "image", "labels", "method", "norm", "threat", "steps", "defenses", "true_label", "seed"
    ]  # fmt: skip


def test_playground_api_returns_the_result_json(client):
    data = client.predict(
        image=handle_file(str(ASSETS / "chelsea.png")), **API_ARGS, api_name="/playground"
    )
    assert data["labels"] == ["cat", "dog", "car", "airplane"]
    for condition in ("clean", "adversarial"):
        for probs in data["probabilities"][condition].values():
            assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert 0 < data["perturbation"]["linf"] <= 8 / 255 + 1e-6
    assert data["settings"]["threat"] == "bpda" and data["settings"]["attack"]["eps_255"] == 8
    assert data["image_for"]["clipure_cos"] == "clipure_cos"


def test_downloaded_png_reproduces_the_reported_probabilities(client, running_app, tiny_checkpoint):
    inputs = page_inputs(
        running_app,
        Backbone=f"{TINY_MODEL} · {tiny_checkpoint}",
        Photo=handle_file(str(ASSETS / "coffee.png")),
        **{"Labels (comma-separated)": "cat, dog, coffee mug", "eps (L-inf, /255)": 6},
        **{"Attack steps": 4},
    )
    outputs = page_outputs(running_app, client.predict(*inputs, api_name="/run"))
    verdict = outputs["verdict"]
    assert "Undefended CLIP" in verdict and "CLIPure-Cos" in verdict
    png = outputs["Adversarial PNG (exactly what was evaluated)"]
    result = json.loads(Path(outputs["Settings and result (JSON)"]).read_text())
    backbone = load_backbone(TINY_MODEL, str(tiny_checkpoint), device="cpu")
    classifier = ZeroShotClassifier(backbone, result["labels"], "ensemble")
    from PIL import Image

    pixels = pil_to_pixels(Image.open(png)).unsqueeze(0)
    with torch.no_grad():
        probs = classifier(pixels).softmax(dim=-1)[0]
    reported = torch.tensor(result["probabilities"]["adversarial"]["undefended"])
    # computed in the server's worker thread: the float32 rule (probabilities near 0: 1e-6)
    torch.testing.assert_close(probs, reported, rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize(
    "override,message",
    [
        ({"labels": " , "}, "at least one class name"),
        ({"eps": -2}, "eps must be in"),
        ({"steps": 100000}, "steps must be an integer from 1 to 1000"),
        ({"method": "deepfool"}, "attack method 'deepfool'"),
        ({"threat": "oracle"}, "threat model 'oracle'"),
        ({"defenses": "clipure_diff"}, "CLIPure-Diff needs a diffusion prior"),
    ],
)
def test_bad_requests_are_readable_errors_and_the_server_keeps_serving(client, override, message):
    with pytest.raises(AppError, match=message):
        client.predict(
            image=handle_file(str(ASSETS / "rocket.jpg")),
            **{**API_ARGS, **override},
            api_name="/playground",
        )
    data = client.predict(
        image=handle_file(str(ASSETS / "rocket.jpg")), **API_ARGS, api_name="/playground"
    )
    assert data["labels"][0] == "cat"


def test_broken_upload_is_a_readable_error(client, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n definitely not an image")
    with pytest.raises(AppError):
        client.predict(image=handle_file(str(broken)), **API_ARGS, api_name="/playground")
    assert client.predict(
        image=handle_file(str(ASSETS / "coins.png")), **API_ARGS, api_name="/playground"
    )["labels"]


def test_stop_really_stops_the_attack(tiny_checkpoint):
    service = PlaygroundService(device="cpu")
    choice = model_choices(TINY_MODEL, str(tiny_checkpoint))[0]
    cancel = threading.Event()
    seen = []

    def on_progress(done, total, description):
        assert description == "attack: model queries"
        seen.append(done)
        if done == 3:
            cancel.set()

    request = PlaygroundRequest(labels="cat, dog", steps=50)
    from PIL import Image

    with pytest.raises(Cancelled):
        service.run(choice, Image.open(ASSETS / "chelsea.png"), request, on_progress, cancel)
    assert seen == [1, 2, 3]


def test_a_request_parses_its_labels_once(tiny_checkpoint, monkeypatch):
    """The service parses at its entry; the pipeline and the classifier get the parsed
    labels and pass them on (before: the service, pipeline and classifier each parsed)."""
    from PIL import Image

    from clipure_core import Labels, prompts

    calls = []

    def counted(labels):
        calls.append(labels)
        return prompts.parse_labels(labels)

    for module in ("app.service", "clipure_core.pipeline", "clipure_core.classifier"):
        monkeypatch.setattr(f"{module}.parse_labels", counted)
    service = PlaygroundService(device="cpu")
    choice = model_choices(TINY_MODEL, str(tiny_checkpoint))[0]
    request = PlaygroundRequest(labels="cat, dog, cat", steps=1)
    result = service.run(choice, Image.open(ASSETS / "chelsea.png"), request)
    assert [labels for labels in calls if not isinstance(labels, Labels)] == ["cat, dog, cat"]
    assert result.labels == ["cat", "dog"]
    assert result.notices == ["1 duplicate label(s) removed."]


def test_missing_image_and_units():
    service = PlaygroundService(device="cpu")
    with pytest.raises(InputError, match="no image"):
        service.run(CATALOG[0], None, PlaygroundRequest(labels="a, b"))
    config = PlaygroundRequest(labels="a", eps=4, step_size=1).attack_config()
    assert config.eps == pytest.approx(4 / 255) and config.step_size == pytest.approx(1 / 255)
    l2 = PlaygroundRequest(labels="a", method="pgd-l2", norm="l2", eps=0.5).attack_config()
    assert l2.eps == 0.5
    with pytest.raises(InputError, match="whole number"):
        PlaygroundRequest(labels="a", steps=2.5).attack_config()
    # the engine's aliases, all of them (the app used to take 'apgd' only)
    assert PlaygroundRequest(labels="a", method="apgd").attack_config().method == "apgd-ce"
    assert PlaygroundRequest(labels="a", method="aa").attack_config().method == "autoattack"
    pgdl2 = PlaygroundRequest(labels="a", method="pgdl2", norm="l2", eps=0.5).attack_config()
    assert pgdl2.method == "pgd-l2"


def test_random_weights_as_load_backbone_reads_them():
    assert parse_config(["--pretrained", "random"], environ={}).random_weights
    assert parse_config(["--pretrained", ""], environ={}).random_weights
    assert not parse_config(["--pretrained", "none"], environ={}).random_weights  # refused


def test_friendly_errors_hide_tracebacks():
    def fail_with(error):
        @friendly_errors
        def handler():
            raise error

        with pytest.raises(gr.Error) as raised:
            handler()
        return str(raised.value.message)

    assert fail_with(InputError("labels: bad")) == "labels: bad"
    assert "Out of memory" in fail_with(torch.OutOfMemoryError("CUDA out of memory"))
    assert "Something went wrong" in fail_with(KeyError("internal detail"))
    assert "internal detail" not in fail_with(KeyError("internal detail"))
    assert fail_with(Cancelled()) == "Stopped."


def test_page_load_offers_the_labels_without_touching_the_true_label():
    # The page's load event reads the inputs as they were when the page opened; an example
    # clicked meanwhile set the true label to "cat", which a value from load would undo.
    true, target = label_options("cat, dog")
    assert "value" not in true and "value" not in target
    assert true["choices"] == [("CLIP's clean prediction", CLEAN_PREDICTION), "cat", "dog"]
    # a change of the labels keeps a true label that is still listed, else resets it
    assert label_choices("cat, dog", "dog", "cat")[0]["value"] == "dog"
    assert label_choices("cat, car", "dog", "cat")[0]["value"] == CLEAN_PREDICTION


def test_progress_totals_and_zerogpu_duration():
    # 10 steps and the judged last iterate, plus 2 forwards probing for randomness
    assert estimated_queries(AttackConfig(steps=10), ["undefended"], 5) == 13
    assert estimated_queries(AttackConfig(steps=10), ["undefended", "clipure_cos"], 5) == 26
    # CLIPure-Diff is stochastic: its run's best point is also judged on 10 fresh draws
    assert estimated_queries(AttackConfig(steps=10), ["undefended", "clipure_diff"], 5) == 36
    # 4 targets x (a clean forward choosing the target + 11 points), plus the probe
    assert estimated_queries(AttackConfig("apgd-t", steps=10), ["undefended"], 5) == 50
    # the lease counts the same queries as the progress bar (they used to differ for APGD-T)
    apgd_t = PlaygroundRequest(labels="a, b, c, d, e", method="apgd-t", steps=10)
    assert requested_seconds(None, None, apgd_t) == int(20 + 0.05 * 50)
    refused = PlaygroundRequest(labels="a, b", steps="ten")  # int() used to fail here
    assert requested_seconds(None, None, refused) == 20
    short = requested_seconds(None, None, PlaygroundRequest(labels="a", steps=10))
    long = requested_seconds(None, None, PlaygroundRequest(labels="a", steps=1000, eot_samples=8))
    assert 0 < short < long <= 300
    cos = PlaygroundRequest(labels="a", steps=50, threat="bpda", defenses=["clipure_cos"])
    diff = PlaygroundRequest(labels="a", steps=50, threat="bpda", defenses=["clipure_diff"])
    assert requested_seconds(None, None, diff) > requested_seconds(None, None, cos)

    def work():
        return 1

    assert gpu_task(work) is work  # without the `spaces` package nothing changes


def test_zerogpu_task_gets_only_picklable_arguments(tiny_checkpoint, monkeypatch):
    """A stand-in for `spaces` that pickles the call, as ZeroGPU does."""
    import pickle

    import app.gpu

    leases = []

    class FakeSpaces:
        @staticmethod
        def GPU(duration):  # the real decorator's name
            def decorate(function):
                def in_other_process(*args):
                    leases.append(duration(*args))
                    return pickle.loads(pickle.dumps(function(*pickle.loads(pickle.dumps(args)))))

                return in_other_process

            return decorate

    monkeypatch.setattr(app.gpu, "spaces", FakeSpaces)
    config = parse_config(
        ["--model", TINY_MODEL, "--pretrained", str(tiny_checkpoint), "--device", "cpu"], environ={}
    )
    from app.ui import build_demo

    demo = build_demo(config)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, server_port=None)
    try:
        data = Client(url, verbose=False).predict(
            image=handle_file(str(ASSETS / "chelsea.png")), **API_ARGS, api_name="/playground"
        )
    finally:
        demo.close()
    assert data["labels"][0] == "cat" and len(leases) == 1 and 20 <= leases[0] <= 300


def test_startup_without_reachable_weights_exits_with_the_options(tmp_path):
    completed = run_without_weights(["app.py"], tmp_path)
    assert completed.returncode == 2
    for option in ("--pretrained random", "HF_HUB_OFFLINE=1", ".safetensors"):
        assert option in completed.stderr
    assert "Traceback" not in completed.stderr


# --- handlers without a server ---------------------------------------------------------------


@pytest.fixture
def context(tiny_checkpoint):
    from app.handlers import Context

    return Context(PlaygroundService("cpu"), model_choices(TINY_MODEL, str(tiny_checkpoint)))


def test_named_controls_build_the_request():
    from app.handlers import request_from

    request = request_from(
        {
            "labels": "cat, dog",
            "eps": 8,
            "seed": 3,
            "clipure_cos": True,
            "clipure_cos.steps": 4.0,
            "clipure_cos.step_size": 2.5,
            "clipure_diff": False,
            "clipure_diff.steps": 7.0,
            "image": "ignored: not a request field",
        }
    )
    assert (request.labels, request.eps, request.seed) == ("cat, dog", 8, 3)
    assert request.method == "pgd" and request.defenses == ["clipure_cos"]
    settings = request.purifier_settings()
    assert settings["clipure_cos"] == {"steps": 4, "step_size": 2.5}
    assert isinstance(settings["clipure_cos"]["steps"], int)
    assert settings["clipure_diff"] == {"steps": 7}


def test_run_handler_without_a_server(context):
    from app.handlers import run

    values = {"image": str(ASSETS / "chelsea.png"), "labels": "cat, dog", "steps": 2}
    seen = []
    result = run(
        context, {**values, "clipure_cos": True, "clipure_cos.steps": 3}, lambda *a: seen.append(a)
    )
    # PGD: 2 forwards probing for randomness, 2 steps, its last iterate judged: all 5 counted
    assert seen[-1] == (5, 5, "attack: model queries")
    assert result.settings["defenses"]["clipure_cos"]["steps"] == 3
    assert result.models == ["undefended", "clipure_cos"]
    with pytest.raises(InputError, match="model 'ViT-H-14'"):
        run(context, {**values, "model": "ViT-H-14"})
    single = run(context, {**values, "templates": "single"})
    assert single.settings["templates"] == "single"  # the Labels tab's "Prompts per label"
    with pytest.raises(InputError, match="templates 'all': use ensemble or single"):
        run(context, {**values, "templates": "all"})


def test_a_new_defense_is_one_class(monkeypatch):
    """Registering a purifier gives it a switch and controls in the app, and flags in the
    predict and evaluate command lines."""
    from app.layout import defense_controls
    from clipure_core import cli
    from clipure_core.evaluate import cli as evaluate_cli
    from clipure_core.purifiers import PURIFIERS, CosPurifier, Setting

    class Toy(CosPurifier):
        name, title, flag_prefix = "toy", "Toy", "toy"
        settings_spec = (*CosPurifier.settings_spec, Setting("width", "width", 3, "", 1, 9))

    monkeypatch.setitem(PURIFIERS, "toy", Toy)
    controls = defense_controls({})
    assert controls["toy"].label == "Toy"
    assert controls["toy.width"].label == "Toy width" and controls["toy.width"].maximum == 9
    assert "toy.batch_coupled" not in controls  # a reproduction option: flags only
    args = cli.build_parser().parse_args(["predict", "x.png", "--labels", "a", "--toy-width", "5"])
    assert cli.defense_settings(args)["toy"] == {
        "steps": 10,
        "step_size": 30.0,
        "width": 5,
        "batch_coupled": False,
    }
    parser = evaluate_cli.build_parser()
    args = parser.parse_args(["--data", "d", "--out", "o", "--toy-batch-coupled"])
    assert evaluate_cli.config_from_args(args).defense_settings["toy"]["batch_coupled"] is True


@pytest.mark.parametrize(
    "clean,adversarial,target,expected",
    [
        ("cat", "dog", None, "fooled"),
        ("cat", "cat", None, "still right"),
        ("dog", "dog", None, "already wrong"),
        ("dog", "cat", None, "already wrong"),
        ("cat", "fox", "fox", "target hit"),
        ("cat", "dog", "fox", "fooled"),
    ],
)
def test_verdict_outcomes(clean, adversarial, target, expected):
    from app.results import outcome

    assert outcome(clean, adversarial, "cat", target) == expected


def test_verdict_cards_escape_labels_and_say_the_outcome(context):
    from app.handlers import run
    from app.results import verdict_html, verdicts

    labels = "<img src=x onerror=alert(1)>, dog"
    result = run(context, {"image": str(ASSETS / "chelsea.png"), "labels": labels, "steps": 1})
    payload = result.to_dict()
    html = verdict_html(payload)
    assert "<img src=x" not in html and "&lt;img src=x" in html
    cards = verdicts(payload)
    assert [card["title"] for card in cards] == ["Undefended CLIP"]
    assert f'class="card {cards[0]["outcome"].replace(" ", "-")}"' in html


def test_the_result_json_is_made_once_and_its_command_reproduces_it(
    context, tiny_checkpoint, monkeypatch, capsys
):
    import shlex

    from app.handlers import run
    from app.outputs import result_payload
    from clipure_core import PlaygroundResult
    from clipure_core.cli import main as cli_main

    calls = []
    original = PlaygroundResult.to_dict
    monkeypatch.setattr(PlaygroundResult, "to_dict", lambda self: calls.append(1) or original(self))
    values = {
        "image": str(ASSETS / "coffee.png"),
        "labels": "cat, coffee mug, teapot",
        "method": "pgd",
        "eps": 6,
        "steps": 3,
        "threat": "bpda",
        "seed": 5,
        "true_label": "teapot",
        "clipure_cos": True,
        "clipure_cos.steps": 4,
    }
    payload = result_payload(run(context, values), values["labels"], values["image"])
    assert len(calls) == 1
    command = payload["reproduce"]["command"]
    args = shlex.split(command)
    assert args[:5] == ["python", "-m", "clipure_core", "predict", "assets/coffee.png"]
    assert "--cos-steps" in args and "--cos-step-size" not in args  # defaults are left out
    args[4] = str(ASSETS / "coffee.png")
    assert cli_main([*args[3:], "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["predictions"] == payload["predictions"]
    assert again["true_label"] == "teapot" and again["settings"]["seed"] == 5
    for condition, per_model in payload["probabilities"].items():
        for model, probs in per_model.items():
            assert again["probabilities"][condition][model] == pytest.approx(probs, abs=1e-5)


class StandInAudit:
    """A small audit with the contract's shape: two conditions, progress per query."""

    class Condition:
        def __init__(self, title: str, knew: str) -> None:
            self.title, self.attacker_knew = title, knew

    conditions: ClassVar[dict] = {
        "clean": Condition("clean", "Nothing."),
        "bpda": Condition("BPDA", "The defended model, purification as identity."),
    }

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def run(self, playground, image, labels, *, on_progress=None, **options):
        self.calls.append({"labels": labels, **options})
        for done in range(1, 4):
            if on_progress is not None:
                on_progress(done, 3, "bpda")
        names = playground.classifier(["cat", "dog"]).labels

        class Result:
            @staticmethod
            def to_dict():
                matrix = [
                    {
                        "condition": c,
                        "model": m,
                        "prediction": names[i],
                        "probability": 0.75,
                        "correct": i == 0,
                    }
                    for i, (c, m) in enumerate([("clean", "undefended"), ("bpda", "clipure_cos")])
                ]
                checks = [
                    {
                        "name": "zero_gradients",
                        "status": "warn",
                        "value": 1.0,
                        "explanation": "The gradient is exactly 0 <here>.",
                    }
                ]
                return {
                    "labels": names,
                    "true_label": "cat",
                    "matrix": matrix,
                    "gradients": [],
                    "checks": checks,
                    "settings": {},
                    "timings_ms": {"total": 1.0},
                }

        return Result()


def test_audit_handler_with_a_stand_in_audit(tiny_checkpoint):
    from app.handlers import Context, audit
    from app.results import matrix_html
    from app.service import AuditBackend

    stand_in = StandInAudit()
    service = PlaygroundService("cpu", audit=AuditBackend(stand_in.run, stand_in.conditions))
    context = Context(service, model_choices(TINY_MODEL, str(tiny_checkpoint)))
    values = {"image": str(ASSETS / "chelsea.png"), "labels": "cat, dog", "eps": 8, "steps": 3}
    progress = []
    data = audit(context, {**values, "clipure_cos": True}, None, lambda *a: progress.append(a))
    assert progress[-1] == (3, 3, "threat matrix: bpda")
    call = stand_in.calls[0]
    assert call["eps"] == pytest.approx(8 / 255) and call["steps"] == 3
    assert call["defenses"] == ["clipure_cos"] and call["norm"] == "linf"
    html = matrix_html(data, stand_in.conditions)
    assert html.count("<tr>") == 3 and "✓ cat 75%" in html and "✗ dog 75%" in html
    assert "The defended model, purification as identity." in html
    assert "⚠ warn" in html and "&lt;here&gt;" in html
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        audit(context, values, None, None, cancel)
    with pytest.raises(InputError, match="eps must be in"):
        audit(context, {**values, "eps": -1})


AUDIT_ARGS = {
    "labels": "cat, dog, car, airplane",
    "true_label": "cat",
    "norm": "linf",
    "eps": 8,
    "steps": 2,
    "defenses": "clipure_cos",
    "seed": 0,
    "conditions": "",
}


def test_audit_api_returns_the_audit_json(client):
    from clipure_core.audit import CONDITIONS

    data = client.predict(
        image=handle_file(str(ASSETS / "chelsea.png")), **AUDIT_ARGS, api_name="/audit"
    )
    assert data["labels"] == ["cat", "dog", "car", "airplane"] and data["true_label"] == "cat"
    cells = {(cell["condition"], cell["model"]): cell for cell in data["matrix"]}
    assert {condition for condition, _ in cells} == set(CONDITIONS)
    assert {model for _, model in cells} == {"undefended", "clipure_cos"}
    for cell in cells.values():
        assert 0 <= cell["probability"] <= 1
        assert cell["correct"] == (cell["prediction"] == "cat")
    assert {check["status"] for check in data["checks"]} <= {"pass", "warn", "fail"}
    assert all(check["explanation"] for check in data["checks"])


@pytest.mark.parametrize(
    "override,message",
    [
        ({"eps": -2}, "eps must be in"),
        ({"conditions": "oracle"}, "unknown audit condition 'oracle'"),
        ({"defenses": "jpeg"}, "unknown defence 'jpeg'"),
        ({"labels": " , "}, "at least one class name"),
        ({"seed": 2**40}, "seed must be an integer from 0 to 4294967295"),
    ],
)
def test_bad_audit_requests_are_readable_errors_and_the_server_keeps_serving(
    client, override, message
):
    photo = handle_file(str(ASSETS / "rocket.jpg"))
    with pytest.raises(AppError, match=message) as raised:
        client.predict(image=photo, **{**AUDIT_ARGS, **override}, api_name="/audit")
    assert "Traceback" not in str(raised.value)
    cheap = {**AUDIT_ARGS, "conditions": "clean, noise"}
    data = client.predict(image=photo, **cheap, api_name="/audit")
    assert {cell["condition"] for cell in data["matrix"]} == {"clean", "noise"}


def test_mcp_serves_the_playground_the_audit_and_the_curve_as_tools(tiny_checkpoint):
    """`python app.py --mcp`: gradio's MCP server, with the endpoints' docstrings as the
    tools' descriptions (needs gradio[mcp], in requirements-dev.txt)."""
    import httpx

    from app.ui import build_demo, launch_options

    model = ["--model", TINY_MODEL, "--pretrained", str(tiny_checkpoint), "--device", "cpu"]
    config = parse_config([*model, "--examples", "lazy", "--mcp"], environ={})
    assert launch_options(config)["mcp_server"] is True
    demo = build_demo(config)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, server_port=None, mcp_server=True)
    try:
        tools = httpx.get(f"{url}gradio_api/mcp/schema", timeout=30).json()
    finally:
        demo.close()
    by_name = {tool["name"]: tool for tool in tools}
    assert sorted(by_name) == ["audit", "curve", "playground"]
    assert "with and without CLIPure" in by_name["playground"]["description"]
    assert "robustness curve of a photo" in by_name["curve"]["description"]
    assert "threat matrix" in by_name["audit"]["description"]
    eps = by_name["playground"]["inputSchema"]["properties"]["eps"]
    assert "units of 1/255" in eps["description"]


def test_progress_reaches_the_page_at_most_five_times_a_second():
    from app.wiring import reporter

    shown = []
    report = reporter(lambda fraction, desc, unit: shown.append(fraction), interval_s=60)
    for done in range(1, 101):
        report(done, 100, "attack: model queries")
    assert shown == [(1, 100), (100, 100)]  # the first update, then the last one
