"""End-to-end tests in a real browser: a person picks an example, attacks it and reads the result.

Chromium is driven by Playwright against the app served in-process by the `running_app`
fixture (tiny random CLIP model). Set CLIPURE_SCREENSHOT=/some/path.png to also keep the
full-page screenshot of a finished run (that is how the README screenshot is made).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from .conftest import VIEWPORT

CAT_LABELS = "cat, dog, tiger, fox, rabbit"
RUN_TIMEOUT_MS = 60_000
UI_TIMEOUT_MS = 15_000


@pytest.fixture
def page(browser, running_app):
    """A fresh browser tab (own cookies, own Gradio session) on the loaded playground."""
    context = browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()
    tab.set_default_timeout(UI_TIMEOUT_MS)
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(running_app)
    expect(tab.get_by_role("heading", name="CLIPure playground")).to_be_visible()
    yield tab
    context.close()
    assert not errors, f"uncaught JavaScript errors in the page: {errors}"


def labels_box(page: Page):
    return page.get_by_label("Labels (comma-separated)", exact=True)


def pick_cat_example(page: Page) -> None:
    """Click the first example (chelsea the cat) and check it filled the inputs."""
    examples = page.locator("#examples")
    expect(examples).to_be_visible()
    cat_row = examples.get_by_role("row").filter(has_text=CAT_LABELS)
    expect(cat_row).to_have_count(1)
    cat_row.get_by_role("gridcell").first.click()
    photo = page.locator("#photo img")
    expect(photo).to_be_visible()
    expect(photo).to_have_attribute("src", re.compile(r"chelsea\.png"))
    expect(labels_box(page)).to_have_value(CAT_LABELS)


def expect_finished_run(page: Page) -> None:
    """Everything a finished run shows: verdict, images and both plots."""
    verdict = page.locator("#verdict")
    expect(verdict).to_contain_text(" -> ", timeout=RUN_TIMEOUT_MS)
    expect(verdict).to_contain_text("Undefended CLIP")
    expect(verdict).to_contain_text("CLIPure-Cos")
    expect(verdict).to_contain_text("True label:")

    probabilities = page.locator("#probabilities .js-plotly-plot")
    expect(probabilities).to_be_visible()
    expect(probabilities.locator("svg.main-svg").first).to_be_visible()
    titles = probabilities.locator("text.annotation-text")
    expect(titles.filter(has_text="Undefended CLIP")).to_be_visible()
    expect(titles.filter(has_text="CLIPure-Cos")).to_be_visible()
    expect(probabilities.locator("g.point").first).to_be_attached()

    # The result images load lazily: scroll to them as a person would.
    page.locator("#adversarial-image").scroll_into_view_if_needed()
    adversarial = page.locator("#adversarial-image img")
    expect(adversarial).to_be_visible()
    assert adversarial.evaluate("img => img.complete && img.naturalWidth > 0")

    trajectory = page.locator("#trajectory .js-plotly-plot")
    expect(trajectory).to_be_visible()
    expect(trajectory.locator("svg.main-svg").first).to_be_visible()


def test_attack_and_purify_the_cat_example(page: Page, tmp_path: Path) -> None:
    pick_cat_example(page)

    run = page.locator("#run")
    expect(run).to_have_text("Attack and purify")
    run.click()
    expect_finished_run(page)
    expect(page.locator("#verdict")).to_contain_text(
        re.compile(r"(cat|dog|tiger|fox|rabbit) \d+% -> (cat|dog|tiger|fox|rabbit) \d+%")
    )
    expect(page.locator("body")).not_to_contain_text("Traceback")

    # Park the mouse in a corner so no hover highlight ends up in the screenshot.
    page.mouse.move(0, 0)
    page.evaluate("window.scrollTo(0, 0)")
    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.is_file()
    assert shot.stat().st_size > 50_000
    if os.environ.get("CLIPURE_SCREENSHOT"):
        target = Path(os.environ["CLIPURE_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


def test_bad_labels_show_a_readable_error_and_the_server_keeps_serving(page: Page) -> None:
    pick_cat_example(page)

    labels_box(page).fill(", ,")
    page.locator("#run").click()
    toast = page.get_by_test_id("toast-body").filter(has_text="at least one class name")
    expect(toast).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(toast).to_contain_text("Error")
    expect(page.locator("body")).not_to_contain_text("Traceback")
    expect(page.locator("#verdict")).not_to_contain_text(" -> ")

    page.get_by_test_id("toast-close").first.click()
    expect(toast).to_have_count(0)

    labels_box(page).fill("cat, dog, tiger")
    page.locator("#run").click()
    expect_finished_run(page)
    expect(page.locator("#verdict")).to_contain_text(re.compile(r"(cat|dog|tiger) \d+% -> "))
    expect(page.get_by_test_id("toast-body")).to_have_count(0)
    expect(page.locator("body")).not_to_contain_text("Traceback")
