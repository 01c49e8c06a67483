"""The app under load and faults: many clients at once, a full queue, cancelled and abandoned
jobs, out-of-memory errors, and two models served side by side.

Every server here runs in this process with the tiny CLIP model on CPU. The attack's model
queries are counted (`model_queries`), which shows whether a job still runs on the server.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError, Status
from playwright.sync_api import Page, expect

import app.ui
import clipure_core.pipeline as pipeline
from app.catalog import ModelChoice
from app.config import parse_config
from app.jobs import BUSY_MESSAGE, JobFlag, in_worker
from app.ui import build_demo, launch_options
from clipure_core import AttackConfig, Playground, load_backbone

from .conftest import ASSETS, TINY_MODEL, VIEWPORT
from .page import page_inputs, page_outputs
from .test_browser import pick_example

CLIENTS, REQUESTS_PER_CLIENT = 16, 3
# Distinct requests (image, labels, steps, seed); client i sends requests i, i+1, i+2.
REQUESTS = [
    (image, labels, steps, seed)
    for image, labels in (
        ("chelsea.png", "cat, dog, car, airplane"),
        ("coffee.png", "coffee mug, teapot, bowl"),
    )
    for steps, seed in ((1, 0), (2, 0), (1, 7), (2, 123))
]
LONG = {"steps": 1000, "threat": "bpda"}  # 2 x 1000 model queries: tens of seconds here
LONG_QUERIES = 2000
RESULT_TIMEOUT_S = 120


def api_args(image: str, labels: str, steps: int, seed: int, **override) -> dict:
    """Keyword arguments of a /playground call."""
    args = {
        "image": handle_file(str(ASSETS / image)),
        "labels": labels,
        "method": "pgd",
        "norm": "linf",
        "eps": 8,
        "steps": steps,
        "threat": "transfer",
        "defenses": "clipure_cos",
        "seed": seed,
    }
    return {**args, **override}


def long_request(**override) -> dict:
    return api_args("chelsea.png", "cat, dog", seed=0, **{**LONG, **override})


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def settles(queries: list[float], quiet_s: float = 1.0, within_s: float = 10.0) -> bool:
    """Whether the count of model queries stops growing (for `quiet_s`) within `within_s`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        count = len(queries)
        time.sleep(quiet_s)
        if len(queries) == count:
            return True
    return False


@pytest.fixture
def model_queries(monkeypatch) -> list[float]:
    """The times of the attacks' model queries made by the app servers of this process."""
    queries: list[float] = []
    real = pipeline.craft_attack

    def counting(*args, on_query=None, **kwargs):
        def counted(done: int) -> None:
            queries.append(time.monotonic())
            if on_query is not None:
                on_query(done)

        return real(*args, on_query=counted, **kwargs)

    monkeypatch.setattr(pipeline, "craft_attack", counting)
    return queries


def serve(config_args: list[str], choices: list[ModelChoice] | None = None) -> Iterator[str]:
    """Launch a playground of its own (optionally offering `choices`); yield its URL."""
    patch = pytest.MonkeyPatch()
    if choices is not None:
        patch.setattr(app.ui, "model_choices", lambda name, pretrained: choices)
    config = parse_config(["--device", "cpu", "--examples", "lazy", *config_args], environ={})
    demo = build_demo(config)
    patch.undo()
    _, url, _ = demo.launch(
        prevent_thread_lock=True, quiet=True, **{**launch_options(config), "server_port": None}
    )
    yield url
    demo.close()


@pytest.fixture(scope="module")
def two_models(tiny_checkpoint) -> dict[str, ModelChoice]:
    """The tiny architecture with its checkpoint, and with random weights."""
    return {
        "checkpoint": ModelChoice("tiny · checkpoint", TINY_MODEL, str(tiny_checkpoint)),
        "random": ModelChoice("tiny · random", TINY_MODEL, "random"),
    }


@pytest.fixture(scope="module")
def two_model_app(two_models) -> Iterator[str]:
    """A playground offering both tiny models; the checkpoint one is its start-up model."""
    start = two_models["checkpoint"]
    yield from serve(
        ["--model", TINY_MODEL, "--pretrained", start.pretrained], list(two_models.values())
    )


@pytest.fixture(scope="module")
def small_queue_app(tiny_checkpoint) -> Iterator[str]:
    """A playground whose queue holds at most 2 waiting jobs."""
    yield from serve(
        ["--model", TINY_MODEL, "--pretrained", str(tiny_checkpoint), "--queue-size", "2"]
    )


# --- many clients at once --------------------------------------------------------------------


def test_sixteen_clients_get_their_own_results_and_see_their_place(running_app):
    solo = Client(running_app, verbose=False)
    alone = [
        solo.predict(**api_args(*request), api_name="/playground")["probabilities"]
        for request in REQUESTS
    ]
    clients = [Client(running_app, verbose=False) for _ in range(CLIENTS)]
    ranks: list[int] = []
    start = threading.Barrier(CLIENTS)

    def user(number: int) -> list[tuple[int, dict]]:
        start.wait()
        results = []
        for k in range(REQUESTS_PER_CLIENT):
            key = (number + k) % len(REQUESTS)
            job = clients[number].submit(**api_args(*REQUESTS[key]), api_name="/playground")
            while not job.done():
                status = job.status()
                if status.code == Status.IN_QUEUE and status.rank is not None:
                    ranks.append(status.rank)
                time.sleep(0.05)
            results.append((key, job.result(timeout=RESULT_TIMEOUT_S)))
        return results

    began = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = [
            result for results in pool.map(user, range(CLIENTS), timeout=300) for result in results
        ]
    elapsed = time.monotonic() - began
    print(
        f"\n{len(answers)} requests from {CLIENTS} clients in {elapsed:.1f} s "
        f"({len(answers) / elapsed:.1f} requests/s); largest queue rank seen {max(ranks)}"
    )
    assert len(answers) == CLIENTS * REQUESTS_PER_CLIENT  # none lost
    for key, data in answers:
        assert data["probabilities"] == alone[key]  # exactly what the request gets alone
        assert data["settings"]["seed"] == REQUESTS[key][3]
    assert max(ranks) > 0  # clients saw that others were ahead of them
    assert elapsed < 240  # about half a minute on two CPU cores


def test_the_queue_size_is_a_setting_of_at_least_one(capsys):
    assert parse_config([], environ={}).queue_size == 32
    assert parse_config([], environ={"CLIPURE_QUEUE_SIZE": "4"}).queue_size == 4
    assert parse_config(["--queue-size", "8"], environ={}).queue_size == 8
    for bad in ("0", "-3", "many"):
        with pytest.raises(SystemExit):
            parse_config(["--queue-size", bad], environ={})
        assert "--queue-size: must be a whole number >= 1" in capsys.readouterr().err


def test_a_full_queue_turns_requests_away_with_a_busy_message(small_queue_app, model_queries):
    """One job runs and two wait: a fourth is refused, in words, and nothing breaks."""
    running = Client(small_queue_app, verbose=False)
    job = running.submit(**long_request(), api_name="/playground")
    wait_for(lambda: len(model_queries) > 0, "the long job to start")
    waiting = []
    for _ in range(2):
        waiting.append(
            Client(small_queue_app, verbose=False).submit(**long_request(), api_name="/playground")
        )
    wait_for(lambda: all(w.status().code == Status.IN_QUEUE for w in waiting), "two queued jobs")

    with pytest.raises(QueueError, match="Queue is full! Please try again"):  # gradio_client
        Client(small_queue_app, verbose=False).predict(**long_request(), api_name="/playground")
    response = httpx.post(  # any other HTTP client gets the app's own words
        small_queue_app + "gradio_api/call/playground",
        json={"data": [None, "cat, dog", "pgd", "linf", 4, 1, "transfer", "", 0]},
    )
    assert response.status_code == 503
    assert response.json()["detail"] == BUSY_MESSAGE.format(waiting=2)

    for each in (*waiting, job):
        each.cancel()
    assert settles(model_queries) and len(model_queries) < LONG_QUERIES
    data = running.predict(**api_args(*REQUESTS[0]), api_name="/playground")
    assert data["labels"] == ["cat", "dog", "car", "airplane"]


# --- cancelled and abandoned jobs stop on the server -------------------------------------------


def test_client_cancel_stops_the_attack_on_the_server(two_model_app, model_queries):
    client = Client(two_model_app, verbose=False)
    job = client.submit(**long_request(), api_name="/playground")
    wait_for(lambda: len(model_queries) >= 10, "the long job's first queries")
    job.cancel()
    assert settles(model_queries), "the attack went on after the client cancelled it"
    assert len(model_queries) < LONG_QUERIES
    began = time.monotonic()
    data = client.predict(**api_args(*REQUESTS[1]), api_name="/playground")
    assert data["labels"] and time.monotonic() - began < 60  # the queue is free again


def test_a_lost_connection_stops_the_attack_on_the_server(two_model_app, model_queries):
    """A browser that closes drops its event stream, as this raw HTTP client does."""
    base = two_model_app + "gradio_api/"
    dependencies = httpx.get(two_model_app + "config").json()["dependencies"]
    fn_index = next(d["id"] for d in dependencies if d.get("api_name") == "playground")
    with (ASSETS / "chelsea.png").open("rb") as file:
        uploaded = httpx.post(base + "upload", files={"files": ("c.png", file, "image/png")})
    image = {"path": uploaded.json()[0], "meta": {"_type": "gradio.FileData"}}
    session = uuid.uuid4().hex
    data = [image, "cat, dog", "pgd", "linf", 4, LONG["steps"], LONG["threat"], "clipure_cos", 0]
    joined = httpx.post(
        base + "queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session}
    )
    assert joined.status_code == 200
    with httpx.stream("GET", base + "queue/data", params={"session_hash": session}) as stream:
        for _ in stream.iter_lines():
            if len(model_queries) >= 10:
                break  # leaving the block closes the connection mid-job
    assert settles(model_queries), "the attack went on after its client went away"
    assert len(model_queries) < LONG_QUERIES


def start_long_run_in_a_page(browser, url: str, queries: list[float]) -> Page:
    """A tab that runs 200 steps x 16 EOT samples x 2 attacked models (6400 queries)."""
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(15_000)
    page.goto(url)
    pick_example(page)
    page.get_by_role("tab", name="Attack").click()
    page.get_by_label("number input for Attack steps", exact=True).fill("200")
    page.get_by_label("number input for EOT samples", exact=True).fill("16")
    page.get_by_label("BPDA (adaptive)").check()
    page.locator("#run").click()
    wait_for(lambda: len(queries) >= 10, "the long run's first queries")
    expect(page.get_by_text(re.compile(r"/6\.4k queries")).first).to_be_visible()  # really long
    return page


def test_the_stop_button_stops_the_attack_on_the_server(browser, running_app, model_queries):
    page = start_long_run_in_a_page(browser, running_app, model_queries)
    page.locator("#stop").click()
    assert settles(model_queries), "the attack went on after Stop"
    assert len(model_queries) < 6400
    page.get_by_label("number input for Attack steps", exact=True).fill("1")
    page.get_by_label("number input for EOT samples", exact=True).fill("1")
    page.locator("#run").click()  # the queue is free: the next run goes through
    expect(page.locator("#verdict .facts")).to_contain_text("1 steps", timeout=60_000)
    page.close()


def test_closing_the_tab_stops_the_attack_on_the_server(browser, running_app, model_queries):
    page = start_long_run_in_a_page(browser, running_app, model_queries)
    page.close()
    assert settles(model_queries), "the attack went on after its tab was closed"
    assert len(model_queries) < 6400


def test_a_cancelled_handler_lets_go_only_once_its_worker_stopped():
    """The queue must not start the next job while the cancelled one still computes."""
    flag, finished = threading.Event(), threading.Event()

    def work() -> str:
        flag.wait(timeout=30)  # a job checks its flag at every model query
        time.sleep(0.2)  # the rest of the model query in flight
        finished.set()
        return "too late"

    async def cancel_midway() -> None:
        task = asyncio.ensure_future(in_worker(work, flag))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert flag.is_set() and finished.is_set()

    with ThreadPoolExecutor(1) as pool:  # a loop of its own (Playwright may hold this thread's)
        pool.submit(asyncio.run, cancel_midway()).result(timeout=60)


def test_job_flag_is_set_by_stop_or_by_a_lost_client():
    gone = False
    flag = JobFlag(lambda: gone)
    assert not flag.is_set()
    gone = True
    assert flag.is_set() and flag.is_set()
    stopped = JobFlag()
    stopped.set()
    assert stopped.is_set()


def test_a_request_leaves_every_module_in_the_mode_it_found(backbone, cat_photo):
    """torchattacks switches the module it attacks to train mode when it is done: the first
    request would then differ from all later ones (and a prior's dropout would switch on)."""
    playground = Playground(backbone)
    modules = [*backbone.model.modules(), *playground.classifier(["cat", "dog"]).modules()]
    modes = [module.training for module in modules]
    request = {"labels": "cat, dog", "attack": AttackConfig(steps=1), "threat": "bpda"}
    first = playground.run(cat_photo, **request).probabilities
    assert [module.training for module in modules] == modes
    assert playground.run(cat_photo, **request).probabilities == first


# --- faults ----------------------------------------------------------------------------------


def test_out_of_memory_is_a_readable_error_and_the_next_request_works(running_app, monkeypatch):
    client = Client(running_app, verbose=False)
    held: list[weakref.ref] = []
    freed_first: list[bool] = []

    def out_of_memory(*args, **kwargs):
        tensors = torch.zeros(1024)  # what a failed attack leaves in its frames
        held.append(weakref.ref(tensors))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "craft_attack", out_of_memory)
        patch.setattr(torch.cuda, "empty_cache", lambda: freed_first.append(held[0]() is None))
        with pytest.raises(AppError, match="Out of memory: try fewer attack steps") as raised:
            client.predict(**api_args(*REQUESTS[0]), api_name="/playground")
    assert "smaller model" in str(raised.value) and "Traceback" not in str(raised.value)
    assert freed_first == [True]  # the request's tensors were gone before the cache emptied
    data = client.predict(**api_args(*REQUESTS[0]), api_name="/playground")
    assert data["labels"] == ["cat", "dog", "car", "airplane"]


def test_interleaved_models_never_mix_results(two_model_app, two_models, tmp_path):
    """Jobs for two models queued in turn: each result comes from the model it asked for."""
    expected = {
        key: load_backbone(choice.name, choice.pretrained, device="cpu").info.weights_id
        for key, choice in two_models.items()
    }
    assert expected["checkpoint"] != expected["random"]

    def run_args(key: str, seed: int) -> list:
        """The page's /run endpoint: its controls, by label."""
        return page_inputs(
            two_model_app,
            Backbone=two_models[key].label,
            Photo=handle_file(str(ASSETS / "chelsea.png")),
            **{"Labels (comma-separated)": "cat, dog, car", "eps (L-inf, /255)": 8},
            **{"Attack steps": 2, "Seed": seed, "CLIPure-Cos steps": 5},
        )

    images: list[str] = []

    def result(key: str, seed: int) -> dict:
        outputs = page_outputs(
            two_model_app,
            Client(two_model_app, verbose=False).predict(*run_args(key, seed), api_name="/run"),
        )
        clean, adversarial = outputs["comparison"]
        images.extend(Path(path).name for path in (clean, adversarial, outputs["perturbation"]))
        return json.loads(Path(outputs["Settings and result (JSON)"]).read_text())

    alone = {(key, seed): result(key, seed) for key in two_models for seed in (0, 1)}
    order = [(key, seed) for seed in (0, 1) for key in two_models] * 3

    with ThreadPoolExecutor(len(order)) as pool:
        together = list(pool.map(lambda request: (request, result(*request)), order, timeout=300))

    assert len(set(images)) == len(images)  # no two requests share (and rewrite) a file
    for (key, seed), data in together:
        assert data["settings"]["weights_id"] == expected[key]
        assert data["settings"]["pretrained"] == two_models[key].pretrained
        assert data["probabilities"] == alone[(key, seed)]["probabilities"]
