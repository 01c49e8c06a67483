"""In Chromium at 1280x720 with a fake camera: a webcam frame runs, and the robustness curve
draws for the current photo. CLIPURE_SCREENSHOTS=docs keeps docs/webcam.png and
docs/eps-curve.png (see tests/test_browser.py)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from .conftest import ASSETS, CHROMIUM, CHROMIUM_ARGS
from .test_browser import (
    RUN_TIMEOUT_MS,
    expect_verdict_cards,
    open_page,  # noqa: F401 (a fixture)
    pick_example,
    shoot,
)
from .test_load import model_queries, settles, wait_for  # noqa: F401 (a fixture)

# Chromium's stand-in camera (a moving test pattern), allowed without a permission prompt.
FAKE_CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
CURVE_TIMEOUT_MS = 120_000  # 5 attacks of the tiny model on a busy machine


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, *FAKE_CAMERA]
        )
        yield chromium
        chromium.close()


def test_a_webcam_frame_runs(open_page) -> None:  # noqa: F811
    page: Page = open_page()
    pick_example(page)  # its true label (cat) goes when the webcam's frame comes
    photo = page.locator("#photo")
    photo.get_by_role("button", name="Capture from camera").click()
    photo.get_by_role("button", name="Click to Access Webcam").click()
    video = photo.locator("video")
    expect(video).to_be_visible()
    page.wait_for_function(
        "() => { const v = document.querySelector('#photo video'); "
        "return v && v.readyState >= 2 && v.videoWidth > 0; }"
    )
    photo.get_by_role("button", name="capture photo").click()
    frame = photo.locator("img")
    expect(frame).to_have_attribute("src", re.compile(r"\.(png|webp|jpe?g)"))
    assert frame.evaluate("i => i.complete && i.naturalWidth > 0")
    page.get_by_role("tab", name="Labels").click()
    expect(page.locator("#true-label input")).to_have_value("CLIP's clean prediction")
    page.locator("#run").click()
    cards = page.locator("#verdict .card")
    expect(cards).to_have_count(2, timeout=RUN_TIMEOUT_MS)
    expect(cards.locator(".model")).to_have_text(["Undefended CLIP", "CLIPure-Cos"])
    expect(page.locator("#verdict .facts")).to_contain_text("True label:")
    expect(page.locator("body")).not_to_contain_text("Traceback")
    shoot(page, "webcam.png")


def test_the_robustness_curve_draws_for_the_current_photo(open_page) -> None:  # noqa: F811
    page: Page = open_page()
    pick_example(page)
    expect_verdict_cards(page, timeout=RUN_TIMEOUT_MS)
    page.locator("#photo input[type=file]").set_input_files(str(ASSETS / "coins.png"))
    expect(page.locator("#photo img")).to_have_attribute("src", re.compile(r"coins\.png"))
    page.locator("#labels textarea").fill("coins, buttons, cookies")
    page.get_by_role("tab", name="Attack").click()
    page.locator("#threat").get_by_label("BPDA (adaptive)").check()
    page.locator("#curve").click()
    plot = page.locator("#eps-curve .js-plotly-plot")
    expect(plot).to_be_visible(timeout=CURVE_TIMEOUT_MS)
    ticks = plot.locator(".xtick text")
    expect(ticks).to_have_text(["0", "1/255", "2/255", "4/255", "8/255", "16/255"])
    legend = plot.locator(".legendtext")
    expect(legend).to_have_text(["Undefended CLIP", "CLIPure-Cos", "right", "wrong (fooled)"])
    title = re.compile(r"^P\((coins|buttons|cookies)\) under pgd, 10 steps, threat bpda$")
    expect(plot.locator(".gtitle")).to_have_text(title)
    box = plot.bounding_box()  # the button scrolled the page to the curve
    assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 720
    page.mouse.move(640, 700)  # off the plot: plotly fades its tool bar out
    shoot(page, "eps-curve.png")


def test_stop_stops_the_curve_on_the_server(open_page, model_queries) -> None:  # noqa: F811
    page: Page = open_page()
    pick_example(page)
    page.get_by_role("tab", name="Attack").click()
    page.get_by_label("number input for Attack steps", exact=True).fill("200")
    page.get_by_label("BPDA (adaptive)").check()
    page.locator("#curve").click()  # 2 models x (200 + 3) queries x 5 eps = 2,030 queries
    expect(page.get_by_text(re.compile(r"/2\.0k queries")).first).to_be_visible()
    wait_for(lambda: len(model_queries) >= 10, "the curve's first queries")
    page.locator("#stop").click()
    assert settles(model_queries), "the curve went on after Stop"
    assert len(model_queries) < 2030
    expect(page.locator("#eps-curve .js-plotly-plot")).to_have_count(0)
    page.get_by_label("number input for Attack steps", exact=True).fill("1")
    page.locator("#run").click()  # the queue is free: the next run goes through
    expect(page.locator("#verdict .facts")).to_contain_text("1 steps", timeout=RUN_TIMEOUT_MS)


def test_in_talk_mode_the_drawn_curve_is_in_view(open_page) -> None:  # noqa: F811
    """Talk mode hides the settings, so the page is short: the button scrolls again once the
    plot is drawn (the empty plot was as far as the page could scroll)."""
    page: Page = open_page("?talk=1")
    pick_example(page)
    page.locator("#curve").click()
    plot = page.locator("#eps-curve .js-plotly-plot")
    expect(plot).to_be_visible(timeout=CURVE_TIMEOUT_MS)
    in_view = (
        "() => { const r = document.querySelector('#eps-curve .js-plotly-plot')"
        ".getBoundingClientRect(); return r.top >= 0 && r.bottom <= window.innerHeight; }"
    )
    page.wait_for_function(in_view)  # before the scroll its bottom was below the window
    assert page.evaluate("window.scrollY") > 0
