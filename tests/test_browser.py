"""End-to-end tests in a real browser at a projector's 1280x720: a speaker clicks an example,
runs it, opens the threat matrix, shares a link, switches to talk mode.

Chromium is driven by Playwright against the app served in-process by the `running_app`
fixture (tiny random CLIP model). Set CLIPURE_SCREENSHOTS=docs to also keep the README's
screenshots (the main view after a run, the threat matrix, talk mode).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from clipure_core.audit import CONDITIONS

from .conftest import ASSETS

PROJECTOR = {"width": 1280, "height": 720}
RUN_TIMEOUT_MS = 60_000
AUDIT_TIMEOUT_MS = 240_000
UI_TIMEOUT_MS = 15_000
CAT_LABELS = "cat, dog, tiger, fox, rabbit"
OUTCOME = re.compile(r"^(fooled|still right|already wrong|target hit)$")
CACHED_MS = 10_000  # a cached result: no model work, only the page (slow on a busy CI machine)
expect.set_options(timeout=UI_TIMEOUT_MS)  # every expectation: the machine may be busy
CHANGE = re.compile(r"^(cat|dog|tiger|fox|rabbit) \d+% → (cat|dog|tiger|fox|rabbit) \d+%$")


@pytest.fixture
def open_page(browser, running_app):
    """Open the playground (optionally with a URL query) in a fresh 1280x720 tab with its
    own session; fails on uncaught JavaScript errors."""
    contexts, errors = [], []

    def open_(query: str = "", url: str | None = None) -> Page:
        context = browser.new_context(viewport=PROJECTOR)
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=running_app)
        contexts.append(context)
        tab = context.new_page()
        tab.set_default_timeout(UI_TIMEOUT_MS)
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.goto(url or running_app + query)
        heading = tab.get_by_role("heading", name="CLIPure playground")
        expect(heading).to_be_visible(timeout=UI_TIMEOUT_MS)
        return tab

    yield open_
    for context in contexts:
        context.close()
    assert not errors, f"uncaught JavaScript errors in the page: {errors}"


@pytest.fixture
def page(open_page) -> Page:
    return open_page()


def shoot(page: Page, name: str) -> None:
    """Keep a 1280x720 screenshot for the README when CLIPURE_SCREENSHOTS names a folder."""
    page.mouse.move(0, 0)  # no hover highlight in the picture
    folder = os.environ.get("CLIPURE_SCREENSHOTS")
    shot = page.screenshot()
    assert len(shot) > 20_000
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_bytes(shot)


def pick_example(page: Page, photo: str = "chelsea.png") -> None:
    """Click an example's thumbnail and check it filled the photo and the labels."""
    page.locator(f"#examples img[src*='{photo}']").click()
    expect(page.locator("#photo img")).to_have_attribute("src", re.compile(re.escape(photo)))


def expect_verdict_cards(page: Page, timeout: int = RUN_TIMEOUT_MS) -> None:
    """One card per model, each with its outcome and the clean -> adversarial change."""
    cards = page.locator("#verdict .card")
    expect(cards).to_have_count(2, timeout=timeout)
    expect(cards.locator(".model")).to_have_text(["Undefended CLIP", "CLIPure-Cos"])
    for index in range(2):
        expect(cards.nth(index).locator(".outcome")).to_have_text(OUTCOME)
        expect(cards.nth(index).locator(".change")).to_have_text(CHANGE)
    expect(page.locator("#verdict .facts")).to_contain_text("True label: cat")


def above_the_fold(page: Page, selector: str) -> bool:
    box = page.locator(selector).first.bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= PROJECTOR["height"]


def dependency_id(url: str, api_name: str) -> int:
    config = httpx.get(f"{url}config").json()
    return next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)


def test_a_cached_example_shows_its_result_without_a_run(page: Page, running_app) -> None:
    run_id = dependency_id(running_app, "run")
    joined: list[dict] = []
    page.on(
        "request",
        lambda request: (
            joined.append(json.loads(request.post_data or "{}"))
            if "/queue/join" in request.url
            else None
        ),
    )
    expect(page.locator("#verdict")).to_contain_text("Pick an example")
    pick_example(page, "coffee.png")
    cards = page.locator("#verdict .card")
    expect(cards).to_have_count(2, timeout=CACHED_MS)  # computed at start-up: no run
    expect(page.locator("#verdict .facts")).to_contain_text("True label: coffee mug")
    slider = page.locator("#comparison img")
    expect(slider).to_have_count(2)
    assert all(image.evaluate("i => i.complete && i.naturalWidth > 0") for image in slider.all())
    assert joined and all("fn_index" in request for request in joined)  # the cache's event
    assert all(request["fn_index"] != run_id for request in joined)  # never ran


def test_run_and_the_verdict_are_above_the_fold_after_an_example(page: Page) -> None:
    pick_example(page)
    expect_verdict_cards(page, timeout=CACHED_MS)
    for selector in ("#photo", "#examples", "#labels", "#run", "#verdict", "#comparison"):
        assert above_the_fold(page, selector), selector
    assert page.evaluate("window.scrollY") == 0

    page.locator("#labels textarea").fill("cat, dog, tiger")
    page.locator("#run").click()
    cards = page.locator("#verdict .card")
    expect(cards.first.locator(".change")).to_have_text(
        re.compile(r"^(cat|dog|tiger) \d+% → (cat|dog|tiger) \d+%$"), timeout=RUN_TIMEOUT_MS
    )
    expect(page.locator("#perturbation-note")).to_contain_text("Its size: L-inf")
    expect(page.locator("body")).not_to_contain_text("Traceback")
    shoot(page, "screenshot.png")

    page.get_by_role("tab", name="Details").click()
    trajectory = page.locator("#trajectory-cos .js-plotly-plot")
    expect(trajectory).to_be_visible()
    title = trajectory.locator(".gtitle").bounding_box()
    plot = trajectory.locator("svg.main-svg").first.bounding_box()
    assert title["x"] + title["width"] <= plot["x"] + plot["width"]  # the title is not cut
    expect(page.locator("#command")).to_contain_text("python -m clipure_core predict")


def test_the_threat_matrix_renders_for_an_example(page: Page) -> None:
    pick_example(page)
    page.locator("#compare").click()
    matrix = page.locator("#threat-matrix table.matrix")
    expect(matrix).to_be_visible(timeout=AUDIT_TIMEOUT_MS)
    expect(matrix.locator("thead th")).to_have_text(["attack", "Undefended CLIP", "CLIPure-Cos"])
    rows = matrix.locator("tbody tr")
    expect(rows).to_have_count(len(CONDITIONS))
    titles = [condition.title for condition in CONDITIONS.values()]
    expect(rows.locator("th.condition")).to_contain_text(titles)
    expect(rows.first.locator(".knew")).to_have_text(CONDITIONS["clean"].attacker_knew)
    expect(matrix.locator("td.cell").first).to_have_text(re.compile(r"^[✓✗] \S.* \d+%$"))
    expect(page.locator("#threat-matrix .checks li").first).to_be_visible()
    page.locator("#threat-matrix").scroll_into_view_if_needed()
    page.evaluate("document.querySelector('#threat-matrix').scrollIntoView()")
    shoot(page, "threat-matrix.png")


def test_a_deep_link_restores_every_setting(page: Page, open_page) -> None:
    pick_example(page, "rocket.jpg")
    page.get_by_role("tab", name="Attack").click()
    page.locator("#seed input").fill("7")
    page.locator("#threat").get_by_label("BPDA (adaptive)").check()
    page.locator("#labels textarea").fill("rocket, airplane, bird")
    page.locator("#run").click()
    expect(page.locator("#verdict .facts")).to_contain_text("threat bpda", timeout=RUN_TIMEOUT_MS)

    page.get_by_role("button", name="Copy a link to these settings").click()
    expect(page.get_by_role("button", name="Link copied")).to_be_visible()
    link = page.evaluate("navigator.clipboard.readText()")
    assert "deep_link=" in link

    shared = open_page(url=link)
    expect(shared.locator("#labels textarea")).to_have_value("rocket, airplane, bird")
    expect(shared.locator("#photo img")).to_have_attribute("src", re.compile(r"rocket\.jpg"))
    shared.get_by_role("tab", name="Attack").click()
    expect(shared.locator("#seed input")).to_have_value("7")
    expect(shared.locator("#threat").get_by_label("BPDA (adaptive)")).to_be_checked()
    expect(shared.locator("#verdict .facts")).to_contain_text("threat bpda")


def test_talk_mode_shows_the_comparison_only(open_page) -> None:
    page = open_page("?talk=1")
    expect(page.locator("body")).to_have_class(re.compile(r"\btalk\b"))
    pick_example(page)
    expect_verdict_cards(page, timeout=CACHED_MS)
    for hidden in ("#photo", "#labels", ".tabs", "#topbar .subtitle"):
        expect(page.locator(hidden).first).to_be_hidden()
    for shown in ("#verdict", "#comparison", "#perturbation", "#run", "#examples"):
        expect(page.locator(shown).first).to_be_visible()
    outcome = page.locator("#verdict .card .outcome").first
    talk_size = float(outcome.evaluate("e => parseFloat(getComputedStyle(e).fontSize)"))
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(0, 0, 0)"
    shoot(page, "talk-mode.png")

    page.locator("#talk input").uncheck()
    expect(page.locator("#labels")).to_be_visible()
    normal_size = float(outcome.evaluate("e => parseFloat(getComputedStyle(e).fontSize)"))
    assert talk_size >= 1.25 * normal_size


def test_a_new_photo_drops_the_examples_true_label(page: Page) -> None:
    pick_example(page)
    page.get_by_role("tab", name="Labels").click()
    true_label = page.locator("#true-label input")
    expect(true_label).to_have_value("cat")
    page.locator("#photo input[type=file]").set_input_files(str(ASSETS / "coins.png"))
    expect(true_label).to_have_value("CLIP's clean prediction")


def test_bad_labels_show_a_readable_error_and_the_server_keeps_serving(page: Page) -> None:
    pick_example(page)
    page.locator("#labels textarea").fill(", ,")
    page.locator("#run").click()
    toast = page.get_by_test_id("toast-body").filter(has_text="at least one class name")
    expect(toast).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(toast).to_contain_text("Error")
    expect(page.locator("body")).not_to_contain_text("Traceback")
    page.get_by_test_id("toast-close").first.click()
    expect(toast).to_have_count(0)

    page.locator("#labels textarea").fill("cat, dog, tiger")
    page.locator("#run").click()
    expect(page.locator("#verdict .card .change").first).to_have_text(
        re.compile(r"^(cat|dog|tiger) \d+% → "), timeout=RUN_TIMEOUT_MS
    )
    expect(page.get_by_test_id("toast-body")).to_have_count(0)


@pytest.fixture(scope="module")
def columns_app(tiny_checkpoint):
    """An app of its own for the columns test: its own queue, and no text-time limit (in a
    full run another test may have measured this backbone's prompts/s on a loaded machine,
    and the app would rightly refuse the other backbone's 400 prompts as too slow)."""
    from app.config import parse_config
    from app.service import PlaygroundService
    from app.ui import build_demo, launch_options

    args = ["--model", "clipure-test-tiny", "--pretrained", str(tiny_checkpoint)]
    config = parse_config([*args, "--device", "cpu", "--any-backbone"], environ={})
    service = PlaygroundService("cpu", text_limit_s=1e9, any_backbone=True)
    demo = build_demo(config, service)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **{
        **launch_options(config), "server_port": None})  # fmt: skip
    yield url
    demo.close()


def test_columns_on_another_backbone_show_as_cards(open_page, columns_app, tiny_model_dir) -> None:
    """FARE beside CLIPure, as a speaker would type it (another tiny model stands in for
    FARE): four cards, each titled with its backbone, within the projector's width."""
    page = open_page(url=columns_app)
    pick_example(page)
    other = f"local-dir:{tiny_model_dir}"
    page.get_by_role("tab", name="Defences").click()
    page.locator("#columns textarea").fill(f"none@{other}, clipure_cos@{other}")
    page.locator("#run").click()
    cards = page.locator("#verdict .card")
    expect(cards).to_have_count(4, timeout=RUN_TIMEOUT_MS)
    expect(cards.locator(".model")).to_have_text(
        [
            "Undefended CLIP",
            "CLIPure-Cos",
            f"Undefended CLIP @ {tiny_model_dir.name}",  # a folder by its name on a card
            f"CLIPure-Cos @ {tiny_model_dir.name}",
        ]
    )
    for index in range(4):
        expect(cards.nth(index).locator(".change")).to_have_text(CHANGE)
        box = cards.nth(index).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PROJECTOR["width"]
    page.locator("#verdict").scroll_into_view_if_needed()
    shoot(page, "columns.png")
