"""The Gradio app: configuration, the /playground API over HTTP, errors, Stop, start-up."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import gradio as gr
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from app.catalog import CATALOG, model_choices
from app.config import parse_config
from app.gpu import gpu_task, requested_seconds
from app.service import Cancelled, PlaygroundRequest, PlaygroundService, estimated_queries
from app.ui import friendly_errors
from clipure_core import AttackConfig, InputError, ZeroShotClassifier, load_backbone
from clipure_core.pixels import pil_to_pixels

from .conftest import ASSETS, TINY_MODEL, run_without_weights

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


def test_start_model_is_offered_first():
    assert model_choices("ViT-B-32", "openai")[0] is CATALOG[0]
    custom = model_choices(TINY_MODEL, "random")
    assert (custom[0].name, custom[0].pretrained) == (TINY_MODEL, "random")
    assert len(custom) == len(CATALOG) + 1


def test_only_the_playground_endpoint_is_documented(client):
    assert list(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == [
        "/playground"
    ]


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


def test_downloaded_png_reproduces_the_reported_probabilities(client, tiny_checkpoint):
    outputs = client.predict(
        TINY_MODEL + " · " + str(tiny_checkpoint),
        handle_file(str(ASSETS / "coffee.png")),
        "cat, dog, coffee mug",
        "",
        "pgd",
        "linf",
        6,
        4,
        0,
        "",
        "transfer",
        1,
        0,
        True,
        10,
        30.0,
        False,
        10,
        30.0,
        api_name="/run",
    )
    verdict, png, data = outputs[0], outputs[-2], outputs[-1]
    assert "Undefended CLIP" in verdict and "CLIPure-Cos" in verdict
    result = json.loads(Path(data).read_text())
    backbone = load_backbone(TINY_MODEL, str(tiny_checkpoint), device="cpu")
    classifier = ZeroShotClassifier(backbone, result["labels"], "ensemble")
    from PIL import Image

    pixels = pil_to_pixels(Image.open(png)).unsqueeze(0)
    with torch.no_grad():
        probs = classifier(pixels).softmax(dim=-1)[0]
    reported = torch.tensor(result["probabilities"]["adversarial"]["undefended"])
    assert torch.allclose(probs, reported, atol=1e-6)


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

    def on_progress(done, total, desc="attack", unit="queries"):
        if unit == "queries":
            seen.append(done)
        if done == 3 and unit == "queries":
            cancel.set()

    request = PlaygroundRequest(labels="cat, dog", steps=50)
    from PIL import Image

    with pytest.raises(Cancelled):
        service.run(choice, Image.open(ASSETS / "chelsea.png"), request, on_progress, cancel)
    assert seen == [1, 2, 3]


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


def test_progress_totals_and_zerogpu_duration():
    assert estimated_queries(AttackConfig(steps=10), 1, 5) == 10
    assert estimated_queries(AttackConfig(steps=10), 2, 5) == 20
    assert estimated_queries(AttackConfig("apgd-t", steps=10), 1, 5) == 44
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
