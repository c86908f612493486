"""The page in a real browser: Debian's Chromium (/usr/bin/chromium) driven by Playwright, against
`python app.py --frame-interval 0`, which streams every step.

What the page received is counted exactly: a script that runs before the page's own wraps
`fetch` and counts the frames (`process_generating` messages) and the ends of runs
(`process_completed`) in the page's event streams, so no count depends on how fast the browser
draws. What the page shows is read from its elements.

Where the browser or Playwright is missing these tests skip, except under CI (the CI variable
set), where they fail: CI installs Chromium, so a missing one is a broken setup.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from app_fixtures import app_server, app_url, checkpoint_dir  # noqa: F401
from demo.settings import ROW_VALUES

CHROMIUM = Path("/usr/bin/chromium")
COUNT_FRAMES = """
window.__frames = 0;
window.__ends = 0;
window.__errors = [];
window.__sessions = [];
const pageFetch = window.fetch;
window.fetch = async (...args) => {
  const response = await pageFetch(...args);
  const url = String(args[0] instanceof Request ? args[0].url : args[0]);
  if (!url.includes("/queue/data") || !response.body) return response;
  window.__sessions.push(new URL(url, location.href).searchParams.get("session_hash"));
  const [counted, passed] = response.body.tee();
  (async () => {
    const reader = counted.getReader(), decoder = new TextDecoder();
    let text = "";
    for (;;) {
      const {done, value} = await reader.read();
      if (done) return;
      text += decoder.decode(value, {stream: true});
      const events = text.split("\\n\\n");
      text = events.pop();
      window.__frames += events.filter(e => e.includes('"msg":"process_generating"')).length;
      for (const e of events.filter(e => e.includes('"msg":"process_completed"'))) {
        window.__ends += 1;
        try {  // a run that failed: its message, kept (the page's toast fades)
          const data = JSON.parse(e.slice(e.indexOf("{")));
          if (data.success === false) window.__errors.push((data.output && data.output.error) || "(no message)");
        } catch (error) { window.__errors.push("(unreadable: " + e.slice(0, 200) + ")"); }
      }
    }
  })();
  return new Response(passed, {status: response.status, statusText: response.statusText, headers: response.headers});
};
"""
# Every text the generate status shows, in order (its first part: "step k / N (denoised from t = ...)").
WATCH_STATUS = """() => {
  window.__shown = [];
  const status = document.querySelector("#generate-status");
  new MutationObserver(() => {
    const markdown = status.querySelector("[data-testid=markdown]");
    const text = markdown ? markdown.innerText.split(" · ")[0] : "";
    if (text && window.__shown[window.__shown.length - 1] !== text) window.__shown.push(text);
  }).observe(status, {subtree: true, childList: true, characterData: true});
}"""


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
    page.add_init_script(COUNT_FRAMES)
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


def source(page, elem_id: str) -> str | None:
    image = page.locator(f"#{elem_id} img")
    return image.get_attribute("src") if image.count() else None


def wait_until(page, until, timeout_s: float = 120) -> str:
    """The status once until(status) holds (timeout_s only bounds a broken page)."""
    deadline = time.monotonic() + timeout_s
    while not until(text := status(page)):
        assert time.monotonic() < deadline, f"timed out; status: {text!r}"
        time.sleep(0.05)
    return text


def generate(page, until, timeout_s: float = 120) -> tuple[str, int]:
    """Press Generate and wait until the run has ended and its status satisfies until. Returns
    that status and the number of frames the page received (timeout_s only bounds a broken page)."""
    frames, ends = page.evaluate("[window.__frames, window.__ends]")
    page.evaluate(WATCH_STATUS)
    page.locator("#generate-button").click()
    text = wait_until(page, until, timeout_s)
    deadline = time.monotonic() + timeout_s
    while page.evaluate("window.__ends") == ends:  # the counting reader may trail the page's own
        assert time.monotonic() < deadline, "the run's stream did not end"
        time.sleep(0.05)
    page.get_by_role("button", name="Download denoising (GIF)").wait_for(timeout=timeout_s * 1000)
    return text, page.evaluate("window.__frames") - frames


def norm_line(page) -> tuple[int, str]:
    """(points, first point's label) of the guidance norm chart's line."""
    line = page.locator("#generate-norm-chart [aria-roledescription='line mark']").first
    return line.get_attribute("d").count("L") + 1, line.get_attribute("aria-label")


def test_generate_streams_every_step_and_shows_the_push_and_its_norm(page):
    page.locator("#class input").click()
    page.get_by_role("option", name="Bag").click()
    set_number(page, "steps", 12)
    set_number(page, "images", 2)
    set_number(page, "scale", 3)
    assert source(page, "generate-push") is None
    final, frames = generate(page, lambda text: "done" in text)
    assert frames == 1 + 12  # x_T, then one frame per step: the page received every one
    assert "step 12 of 12" in final and "class Bag" in final
    expected = ["x_T, before step 1"] + [f"step {k} of 12" for k in range(1, 13)]
    shown = [text.split(" (")[0] for text in page.evaluate("window.__shown")]
    assert shown[-1] == expected[-1] and shown == [text for text in expected if text in shown]  # in order
    assert page.get_by_role("button", name="Download samples (PNG with parameters)").is_visible()
    assert page.locator("#generate-scrub input[type=range]").get_attribute("max") == "12"
    # The push column and its scale, and the norm chart with one point per step.
    first_push, note = source(page, "generate-push"), page.locator("#generate-push-scale").inner_text()
    assert first_push and re.search(r"s = \d", note)
    points, label = norm_line(page)
    assert points == 12 and "row: w=3 (unconditional)" in label
    # Another run replaces all three.
    set_number(page, "scale", 0)
    set_number(page, "steps", 4)
    final, frames = generate(page, lambda text: "done" in text and "step 4 of 4" in text)
    assert frames == 1 + 4
    assert source(page, "generate-push") != first_push
    assert "no classifier guidance" in page.locator("#generate-push-scale").inner_text()
    points, label = norm_line(page)
    assert points == 4 and "row: w=0 (unconditional)" in label and "‖k_t w(t) g‖: 0;" in label


def test_stop_ends_a_run_midway_and_nothing_moves_after(page, app_server):
    set_number(page, "steps", 1000)
    set_number(page, "images", 1)
    page.evaluate(WATCH_STATUS)
    page.locator("#generate-button").click()
    wait_until(page, lambda text: "running" in text and "step" in text)
    page.locator("#generate-stop").click()
    stopped = wait_until(page, lambda text: "stopped" in text)
    session = page.evaluate("window.__sessions")[-1]
    end = app_server.wait_for_end(session)
    # Stop sends two requests at once: one asks the run to end after its current step, the other
    # cancels it through Gradio at its next frame (every step here). Which reaches the server first
    # depends on the machine's load. When the request reaches the run first, the log says when and
    # the run ended within one step of it; when the cancel wins, the run was closed at a frame before
    # the request came, and the request found nothing to stop.
    assert end.steps_done < 1000
    if end.stop_came is not None:
        assert end.state == "stopped" and end.steps_done - end.stop_came <= 1
    else:
        assert end.state == "closed"
    # The page shows the step the run stopped after, and the scrubber every step it recorded.
    assert f"step {end.steps_done} of 1000" in stopped
    page.locator("#generate-scrub").wait_for(timeout=60_000)
    assert page.locator("#generate-scrub input[type=range]").get_attribute("max") == str(end.steps_done)
    assert f"step {end.steps_done} of 1000" in page.evaluate("window.__shown")[-1]
    # The app is free again: a short run goes through.
    set_number(page, "steps", 5)
    _, frames = generate(page, lambda text: "done" in text and "step 5 of 5" in text)
    assert frames == 1 + 5


def test_choosing_what_compare_rows_vary_rewrites_the_text_box(page):
    from playwright.sync_api import expect
    page.get_by_role("tab", name="Compare").click()
    rows = page.locator("#compare-rows textarea")
    assert rows.input_value() == ROW_VALUES["classifier"].example
    # The label and the example come by two events of the click: wait for both (else a late example
    # would overwrite what is typed next).
    page.get_by_role("radio", name="guidance interval").click()
    page.get_by_label(ROW_VALUES["interval"].label).wait_for(timeout=10_000)
    expect(rows).to_have_value(ROW_VALUES["interval"].example, timeout=10_000)
    page.get_by_role("radio", name="target class").click()
    page.get_by_label(ROW_VALUES["class"].label).wait_for(timeout=10_000)
    expect(rows).to_have_value(ROW_VALUES["class"].example, timeout=10_000)
    rows.fill("Bag, sneaker")
    set_number(page, "steps", 3)
    set_number(page, "images", 1)
    page.locator("#compare-button").click()
    first_column = page.locator("#compare-table [data-testid^=cell-][data-testid$='-0']")
    first_column.filter(has_text="Sneaker").wait_for(timeout=120_000)
    assert first_column.all_inner_texts() == ["Bag", "Sneaker"]  # a row per class, named as the checkpoint does


def test_an_example_loads_its_settings_and_opens_its_tab(page):
    page.get_by_role("tab", name="Understand").click()
    page.get_by_role("button", name="Classifier-free sweep").click()
    page.get_by_role("tab", name="Compare", selected=True).wait_for(timeout=10_000)
    page.get_by_label(ROW_VALUES["classifier-free"].label).wait_for(timeout=10_000)
    assert page.locator("#compare-rows textarea").input_value() == "0, 1, 3, 6"  # the example's, not the mode's
    assert page.get_by_role("radio", name="class-conditional ε(x_t, c)").is_checked()
    assert page.get_by_role("radio", name="classifier-free w_cfg").is_checked()
