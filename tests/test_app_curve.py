"""The robustness curve in the app: the handler, its budget, Stop, and the /curve endpoint."""

from __future__ import annotations

import threading

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from app.catalog import model_choices
from app.curve import MAX_CURVE_QUERIES, curve_json
from app.handlers import Context
from app.service import Cancelled, PlaygroundService
from clipure_core import InputError

from .conftest import ASSETS, TINY_MODEL

PHOTO = str(ASSETS / "chelsea.png")
VALUES = {"image": PHOTO, "labels": "cat, dog, car", "steps": 2, "clipure_cos": True}


@pytest.fixture(scope="module")
def context(tiny_checkpoint):
    return Context(PlaygroundService("cpu"), model_choices(TINY_MODEL, str(tiny_checkpoint)))


def test_the_curve_of_the_page_settings(context):
    calls = []
    data = curve_json(context, {**VALUES, "threat": "bpda"}, lambda *call: calls.append(call))
    assert list(data["models"]) == ["undefended", "clipure_cos"]
    assert data["eps_text"] == ["0", "1/255", "2/255", "4/255", "8/255", "16/255"]
    assert (data["threat"], data["method"], data["steps"]) == ("bpda", "pgd", 2)
    # 2 attacked models x (2 steps + 1 + 2 probe forwards) x 5 eps
    assert calls[-1] == (50, 50, "robustness curve: done")
    l2 = curve_json(context, {**VALUES, "method": "pgd-l2", "norm": "l2", "eps": 0.5})
    assert l2["eps_text"] == ["0", "0.125", "0.25", "0.5", "1", "2"]


def test_the_budget_is_the_longest_gpu_lease():
    assert MAX_CURVE_QUERIES == 5600  # (300 s - 20 s) / 0.05 s a query (app/gpu.py)


def test_a_curve_over_the_budget_is_refused_before_any_model_work(context):
    labels = "cat, dog, car, airplane, ship, frog, horse, bird, deer, truck"
    values = {**VALUES, "image": None, "labels": labels, "method": "apgd-t", "steps": 200}
    # APGD-T: 9 targets x (200 + 2) + 2 probe forwards = 1,820 per attacked model; BPDA
    # attacks undefended CLIP and CLIPure-Cos: 3,640 per eps, 18,200 for 5 eps. No image
    # given: the refusal comes before the photo is even looked at.
    with pytest.raises(InputError) as refused:
        curve_json(context, {**values, "threat": "bpda"})
    assert str(refused.value) == (
        "this robustness curve needs about 18,200 model queries (5 attacks), more than the "
        "5,600 allowed: use fewer attack steps, fewer labels or the transfer threat (one "
        "attacked model)."
    )
    with pytest.raises(InputError, match="about 9,100 model queries"):  # transfer: 1 model
        curve_json(context, {**values, "threat": "transfer"})
    with pytest.raises(InputError, match="no image"):  # PGD x 10: 65 queries, within budget
        curve_json(context, {**values, "threat": "transfer", "method": "pgd", "steps": 10})
    # PGD x 100 under BPDA with CLIPure-Diff too: 1,595 model queries, but each through
    # CLIPure-Diff also runs its prior 10 times: (103 + 103 + 113 x 11) x 5 = 7,245
    diff = {**VALUES, "image": None, "clipure_diff": True, "steps": 100, "threat": "bpda"}
    with pytest.raises(InputError) as refused:
        curve_json(context, diff)
    assert str(refused.value).startswith(
        "this robustness curve needs about 7,245 model queries (5 attacks; a query through "
        "CLIPure-Diff counts as 11), more than the 5,600 allowed"
    )
    # its steps set to 2 on the page: (103 + 103 + 113 x 3) x 5 = 2,725, within the budget
    with pytest.raises(InputError, match="no image"):
        curve_json(context, {**diff, "clipure_diff.steps": 2})


def test_stop_ends_the_curve_at_the_next_query(context):
    cancel, seen = threading.Event(), []

    def on_progress(done, total, description):
        seen.append(done)
        if done == 3:
            cancel.set()

    with pytest.raises(Cancelled):
        curve_json(context, {**VALUES, "steps": 50}, on_progress, cancel)
    assert seen == [1, 2, 3]


@pytest.fixture(scope="module")
def client(running_app):
    return Client(running_app, verbose=False)


CURVE_ARGS = {
    "labels": "cat, dog, car",
    "method": "pgd",
    "norm": "linf",
    "threat": "transfer",
    "steps": 1,
    "defenses": "clipure_cos",
    "true_label": "dog",
    "seed": 0,
}


def test_the_curve_endpoint(client):
    data = client.predict(image=handle_file(PHOTO), **CURVE_ARGS, api_name="/curve")
    assert list(data["models"]) == ["undefended", "clipure_cos"] and data["true_label"] == "dog"
    for series in data["models"].values():
        assert series["correct"] == [p == "dog" for p in series["prediction"]]
        assert all(0 <= p <= 1 for p in series["true_probability"])
    with pytest.raises(AppError, match="threat model 'oracle'"):
        client.predict(
            image=handle_file(PHOTO), **{**CURVE_ARGS, "threat": "oracle"}, api_name="/curve"
        )
    over = {"labels": "a, b, c, d, e, f, g, h, i, j", "true_label": "", "method": "apgd-t"}
    with pytest.raises(AppError, match="needs about 18,200 model queries"):  # as above
        client.predict(
            image=handle_file(PHOTO),
            **{**CURVE_ARGS, **over, "steps": 200, "threat": "bpda"},
            api_name="/curve",
        )
