"""The page in a real browser: Debian's Chromium (/usr/bin/chromium) driven by Playwright.

Where the browser or Playwright is missing these tests skip, except under CI (the CI variable
set), where they fail: CI installs Chromium, so a missing one is a broken setup.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from app_fixtures import app_url, checkpoint_dir  # noqa: F401

CHROMIUM = Path("/usr/bin/chromium")


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must provide it (apt-get install chromium, pip install playwright)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    if not CHROMIUM.is_file():
        _unavailable(f"no browser at {CHROMIUM}")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app_url):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_url)
    yield page
    page.close()


def set_number(page, elem_id: str, value) -> None:
    """Type into the number box beside a slider."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def status(page) -> str:
    """The status line itself, without the progress text Gradio lays over it."""
    return page.locator("#generate-status [data-testid=markdown]").inner_text()


def frame_source(page) -> str | None:
    image = page.locator("#generate-xt img")
    return image.get_attribute("src") if image.count() else None


def watch(page, until, timeout_s: float) -> tuple[set[str], str]:
    """Poll the x_t image and the status until until(status) holds; returns the distinct image
    sources seen and the last status."""
    sources, deadline = set(), time.monotonic() + timeout_s
    while True:
        text, source = status(page), frame_source(page)
        if source:
            sources.add(source)
        if until(text):
            return sources, text
        assert time.monotonic() < deadline, f"timed out; status: {text!r}"
        time.sleep(0.05)


def test_generate_streams_frames_until_the_run_finishes(page):
    page.locator("#class input").click()
    page.get_by_role("option", name="Bag").click()
    set_number(page, "steps", 150)
    set_number(page, "images", 2)
    page.locator("#generate-button").click()
    sources, final = watch(page, lambda text: "done" in text, timeout_s=90)
    assert len(sources) >= 4  # x_T, several frames mid-run, the samples
    assert "step 150 / 150" in final and "class Bag" in final
    page.get_by_role("button", name="Download denoising (GIF)").wait_for(timeout=15_000)
    assert page.get_by_role("button", name="Download samples (PNG with parameters)").is_visible()


def test_stop_ends_a_run_midway(page):
    set_number(page, "steps", 1000)
    set_number(page, "images", 1)
    page.locator("#generate-button").click()
    watch(page, lambda text: "running" in text and "step" in text, timeout_s=30)
    page.locator("#generate-stop").click()
    _, stopped = watch(page, lambda text: "stopped" in text, timeout_s=15)
    step = int(stopped.split("step ")[1].split(" /")[0])
    assert step < 1000
    source = frame_source(page)
    time.sleep(1.5)
    assert frame_source(page) == source and status(page) == stopped  # nothing moves after Stop
    # The app is free again: a short run goes through.
    set_number(page, "steps", 5)
    page.locator("#generate-button").click()
    watch(page, lambda text: "done" in text and "step 5 / 5" in text, timeout_s=30)


def test_an_example_loads_its_settings_and_opens_its_tab(page):
    page.get_by_role("tab", name="Understand").click()
    page.get_by_role("button", name="Classifier-free sweep").click()
    page.get_by_role("tab", name="Compare", selected=True).wait_for(timeout=10_000)
    assert page.get_by_label("strengths, one row each").input_value() == "0, 1, 3, 6"
    assert page.get_by_role("radio", name="class-conditional ε(x_t, c)").is_checked()
    assert page.get_by_role("radio", name="classifier-free w_cfg").is_checked()
