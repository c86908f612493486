"""The page as a person uses it, in Debian's Chromium (Playwright) against the real server with a
pixel and a latent bundle (tiny random networks, `--live on`, the default frame interval): what
the person sees is read from the page (the charts' lines and legends, the tiles' size on screen,
the row labels' text and place, the images changing during a drag, the controls an example sets,
the order of the page on a narrow screen). No assertion depends on the machine's speed: a count
is compared with what the server says it ran, never with a clock.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
from test_app_browser import COUNT_FRAMES, browser, set_number  # noqa: F401

from app_fixtures import (  # noqa: F401
    CLASS_NAMES,
    NUM_TIMESTEPS,
    RUN_LINE,
    UNBOUNDED,
    Server,
    checkpoint_dir,
    make_latent_checkpoints,
)
from demo import arguments
from demo.settings import COMPARE_CHOICES, DISPLAY, ROW_VALUES, AppDefaults, Settings

LATENT_DEFAULTS = {"sampler": "unipc", "steps": 5, "scale": 3.0,  # the tiny latent bundle's defaults.json
                   "training_free": {"sampler": "ddim", "steps": 4, "threshold": "clip", "interval": "400-999",
                                     "guide": {"method": "tfg", "rho": 2.0, "mu": 2.0, "iterations": 1,
                                               "mu_schedule": "constant"}}}
PIXEL = AppDefaults()  # the tiny pixel bundle has none: the app's own
SIZE = 16  # the tiny bundles' images


@pytest.fixture(scope="module")
def server(checkpoint_dir, tmp_path_factory):  # noqa: F811
    from scripts.launcher import running_app

    latent = tmp_path_factory.mktemp("journey-latent")
    make_latent_checkpoints(latent, evaluator_from=checkpoint_dir)
    (latent / "defaults.json").write_text(json.dumps(LATENT_DEFAULTS))
    log = tmp_path_factory.mktemp("journey-server") / "app.log"
    with running_app([latent, checkpoint_dir], threads=1, extra_args=("--live", "on", *UNBOUNDED), log_path=log) as url:
        yield Server(url, log)


@pytest.fixture
def page(browser, server):  # noqa: F811
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.add_init_script(COUNT_FRAMES)
    page.goto(server.url)
    page.locator("#generate-button").wait_for()
    yield page
    page.close()


def run(page, tab: str) -> str:
    """Press the tab's button and wait for the run to end (the status says done); its status."""
    ends, errors = page.evaluate("[window.__ends, window.__errors.length]")
    page.locator(f"#{tab}-button").click()
    deadline = time.monotonic() + 120  # bounds a broken page only
    while page.evaluate("window.__ends") == ends or "done" not in page.locator(f"#{tab}-status").inner_text():
        failed = page.evaluate(f"window.__errors.slice({errors})")  # a run ended in the server's message
        assert not failed and time.monotonic() < deadline, (page.locator(f"#{tab}-status").inner_text(), failed)
        time.sleep(0.05)
    return page.locator(f"#{tab}-status").inner_text()


def pick_mode(page, mode: str) -> None:
    """Pick a Compare mode as a person does, and wait, as they would, until its example is in the
    box (the page puts it there in the browser; the wait only bounds a broken page)."""
    page.locator("#compare-mode").get_by_label({value: label for label, value in COMPARE_CHOICES}[mode],
                                               exact=True).check()
    box = page.locator("#compare-rows textarea")
    deadline = time.monotonic() + 30
    while box.input_value() != ROW_VALUES[mode].example:
        assert time.monotonic() < deadline, box.input_value()
        time.sleep(0.05)


def drawn(page, elem_id: str, rows: list[str]) -> tuple[list[str], list[str]]:
    """(the row of each line drawn, sorted; the legend's labels) of a chart, read from its SVG: as
    soon as they show `rows`, or what they show after 30 s (the chart redraws a moment after its
    frame arrives; the wait only bounds a broken page)."""
    script = f"""() => {{
      const root = document.querySelector('#{elem_id}');
      const lines = [...root.querySelectorAll("[aria-roledescription='line mark']")]
        .map(l => ((l.getAttribute('aria-label') || '').match(/row: ([^;]*)/) || [])[1]).sort();
      const legend = [...root.querySelectorAll('.role-legend-label text')].map(t => t.textContent);
      return [lines, legend];
    }}"""
    deadline = time.monotonic() + 30
    while True:
        lines, legend = page.evaluate(script)
        if (lines, legend) == (sorted(rows), rows) or time.monotonic() > deadline:
            return lines, legend
        time.sleep(0.1)


def loaded(page, elem_id: str) -> list[float]:
    """[width on the page, natural width] of an image panel's picture once it has loaded (the page
    loads pictures lazily; the wait only bounds a broken page)."""
    script = f"""() => {{ const i = document.querySelector('#{elem_id} img');
        return i && i.complete && i.naturalWidth ? [i.getBoundingClientRect().width, i.naturalWidth] : null; }}"""
    deadline = time.monotonic() + 30
    while (shown := page.evaluate(script)) is None:
        assert time.monotonic() < deadline, f"no picture in #{elem_id}"
        time.sleep(0.05)
    return shown


def expected_rows(mode: str, strengths: str, **changes) -> list[str]:
    """The row labels the app gives a Compare (demo/arguments.py, on the pixel bundle's classes)."""
    values = {**vars(PIXEL.settings(CLASS_NAMES)), "class_name": "Sneaker", **changes}
    return list(arguments.compare_run(Settings(**values), strengths, mode, class_names=CLASS_NAMES,
                                      num_timesteps=NUM_TIMESTEPS).labels)


def test_five_runs_in_a_row_each_draw_their_own_lines_and_legend(page):
    for w in (8, 4, 2, 6, 3):
        set_number(page, "scale", w)
        set_number(page, "steps", 3)
        run(page, "generate")
        label = f"w={w} (unconditional)"
        for chart in ("generate-chart", "generate-norm-chart"):
            assert drawn(page, chart, [label]) == ([label], [label]), (w, chart)


@pytest.mark.parametrize("mode", ["classifier", "classifier-vs-free", "interval", "schedule", "threshold", "class"])
def test_every_compare_mode_draws_a_line_and_a_legend_entry_per_row(page, mode):
    page.get_by_role("tab", name="Compare").click()
    set_number(page, "steps", 2)
    set_number(page, "images", 1)
    pick_mode(page, mode)
    rows = expected_rows(mode, ROW_VALUES[mode].example, steps=2, num_images=1)
    for _ in range(2):  # twice in a row: the second run draws its own too
        run(page, "compare")
        for chart in ("compare-chart", "compare-norm-chart"):
            assert drawn(page, chart, rows) == (sorted(rows), rows), (mode, chart)


def test_tiles_show_at_four_times_their_pixels_and_row_labels_are_text_beside_their_rows(page):
    set_number(page, "images", 4)
    set_number(page, "steps", 2)
    run(page, "generate")
    shown = loaded(page, "generate-xt")
    assert shown[0] == shown[1] == 2 * (SIZE + DISPLAY.pad) * DISPLAY.upscale + DISPLAY.pad * DISPLAY.upscale  # 2 x 2
    assert DISPLAY.upscale >= 4  # a 28 px Fashion-MNIST image: 112 CSS px or more
    page.get_by_role("tab", name="Compare").click()
    run(page, "compare")
    rows = expected_rows("classifier", ROW_VALUES["classifier"].example, steps=2, num_images=4)
    width, natural = loaded(page, "compare-xt")
    top, height = page.evaluate("""() => { const r = document.querySelector('#compare-xt img').getBoundingClientRect();
        return [r.top, r.height]; }""")
    assert width == natural == 4 * (SIZE + DISPLAY.pad) * DISPLAY.compare_upscale + DISPLAY.pad * DISPLAY.compare_upscale
    assert DISPLAY.compare_upscale >= 2  # 56 CSS px or more for 28 px images
    labels = page.evaluate("""() => [...document.querySelectorAll('#compare-row-labels .row-label')].map(l => {
        const r = l.getBoundingClientRect(); return [l.innerText, r.top + r.height / 2]; })""")
    assert [text for text, _ in labels] == rows
    band = height / len(rows)
    for k, (_, middle) in enumerate(labels):  # each label beside its own row of tiles
        assert top + k * band <= middle <= top + (k + 1) * band


def test_a_drag_in_live_mode_shows_every_run_it_finishes_and_ends_on_the_last_value(page, server):
    page.locator("#model").get_by_label("latent space: z_t").check()
    page.locator("#info", has_text="samples latent z_t").wait_for()
    page.locator("#generate-live input[type=checkbox]").check()
    page.evaluate("""() => { window.__updates = 0; const box = document.querySelector('#generate-xt');
        new MutationObserver(() => { const i = box.querySelector('img'); const s = i && i.getAttribute('src');
          if (s && s !== window.__src) { window.__src = s; window.__updates += 1; } })
        .observe(box, {subtree: true, childList: true, attributes: true}); }""")
    runs_before = len(RUN_LINE.findall(server.log.read_text()))
    track = page.locator("#scale input[type=range]").bounding_box()
    y = track["y"] + track["height"] / 2
    page.mouse.move(track["x"] + 0.1 * track["width"], y)
    page.mouse.down()
    for k in range(1, 13):  # a hand dragging: a move each 150 ms
        page.mouse.move(track["x"] + (0.1 + 0.03 * k) * track["width"], y)
        page.wait_for_timeout(150)
    page.mouse.up()
    last = float(page.locator("#scale input[type=number]").input_value())
    deadline = time.monotonic() + 60
    while f"w={last:g} (" not in page.locator("#generate-status").inner_text() or \
            "done" not in page.locator("#generate-status").inner_text():
        assert time.monotonic() < deadline, page.locator("#generate-status").inner_text()
        time.sleep(0.05)
    time.sleep(1.0)  # nothing else is on its way now
    ran = RUN_LINE.findall(server.log.read_text())[runs_before:]
    assert ran and all(state == "finished" for _, state, *_ in ran)  # no move ended a run in flight
    assert page.evaluate("window.__updates") == len(ran)  # the page showed every run the server finished
    assert f"w={last:g} (" in page.locator("#generate-status").inner_text()


def test_an_example_loads_the_settings_of_the_model_shown(page):
    for model, steps, sampler in (("latent space: z_t", LATENT_DEFAULTS["steps"], "UniPC"),
                                  ("pixel space: x_t", PIXEL.steps, "DDIM")):
        page.locator("#model").get_by_label(model).check()
        page.locator("#info", has_text="samples latent" if "latent" in model else "samples pixels").wait_for()
        page.get_by_role("tab", name="Understand").click()
        page.get_by_role("button", name="Strength sweep").click()
        page.locator("#compare-button").wait_for(state="visible")  # the example opened its tab
        assert page.locator("#steps input[type=number]").input_value() == str(steps), model
        assert page.locator("#sampler").get_by_label(sampler, exact=True).is_checked(), model


def test_on_a_narrow_screen_the_run_button_and_the_images_come_before_the_settings(browser, server):  # noqa: F811
    page = browser.new_page(viewport={"width": 420, "height": 900})
    page.goto(server.url)
    button = page.locator("#generate-button").bounding_box()
    images = page.locator("#generate-xt").bounding_box()
    settings = page.locator("#class").bounding_box()
    assert button["y"] < settings["y"] and images["y"] < settings["y"]
    assert button["y"] < 900  # on the first screen
    page.locator("#generate-button").click()
    page.locator("#generate-status").get_by_text("done").wait_for(timeout=120_000)
    for elem_id in ("generate-stop", "generate-xt", "generate-x0", "generate-push"):  # nothing runs off the screen
        box = page.locator(f"#{elem_id}").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 420, elem_id
    for elem_id in ("generate-chart", "generate-norm-chart"):  # each chart whole in its panel, below the panel's label
        panel = page.locator(f"#{elem_id}").bounding_box()
        chart = page.locator(f"#{elem_id} svg.marks").bounding_box()
        label = page.locator(f"#{elem_id} label").first.bounding_box()
        highest = page.locator(f"#{elem_id} .role-axis-label text").evaluate_all(
            "texts => Math.min(...texts.map(t => t.getBoundingClientRect().top))")
        assert chart["x"] >= panel["x"] and chart["x"] + chart["width"] <= panel["x"] + panel["width"], elem_id
        assert highest >= label["y"] + label["height"], elem_id
    page.close()


def tiles(page, elem_id: str, rows: int, upscale: int = DISPLAY.compare_upscale) -> list[list[int]]:
    """The pixels of the first tile of each row of an image panel's picture as the page shows it
    (drawn into a canvas), one flat list per row."""
    pad, pitch, side = DISPLAY.pad * upscale, (SIZE + DISPLAY.pad) * upscale, SIZE * upscale
    script = f"""(rows) => {{ const i = document.querySelector('#{elem_id} img');
        const c = document.createElement('canvas'); c.width = i.naturalWidth; c.height = i.naturalHeight;
        const g = c.getContext('2d'); g.drawImage(i, 0, 0);
        return [...Array(rows).keys()].map(r => [...g.getImageData({pad}, {pad} + r * {pitch}, {side}, {side}).data]); }}"""
    return page.evaluate(script, rows)


def test_the_guide_comparison_sets_each_guide_on_the_same_noise_and_draws_its_charts(page):
    """Compare -> guide: the noise-aware classifier and clean-classifier methods as rows, each line
    and legend entry drawn in the three charts (p(c | x_t), p(c | x-hat_0) of the clean classifier,
    the push), the rows' labels beside them, and x_T, scrubbed back to, the same in every row."""
    page.locator("#model").get_by_label("latent space: z_t").check()  # its default sampler, UniPC, is multistep
    page.locator("#info", has_text="samples latent z_t").wait_for()
    page.locator("#model").get_by_label("pixel space: x_t").check()
    page.locator("#info", has_text="samples pixels").wait_for()
    page.locator("#sampler").get_by_label("UniPC", exact=True).check()
    page.get_by_role("tab", name="Compare").click()
    set_number(page, "steps", 2)
    set_number(page, "images", 1)
    pick_mode(page, "methods")
    deadline = time.monotonic() + 30  # comparing guides puts the sampler back to one they run with
    while not page.locator("#sampler").get_by_label("DDIM", exact=True).is_checked():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rows = expected_rows("methods", ROW_VALUES["methods"].example, steps=2, num_images=1)
    assert rows[0].startswith("noise-aware") and len(rows) == 3
    for _ in range(2):
        status = run(page, "compare")
        assert "s per image" in status
        for chart in ("compare-chart", "compare-clean-chart", "compare-norm-chart"):
            assert drawn(page, chart, rows) == (sorted(rows), rows), chart
    labels = page.evaluate("() => [...document.querySelectorAll('#compare-row-labels .row-label')].map(l => l.innerText)")
    assert labels == rows
    final = tiles(page, "compare-xt", len(rows))
    assert final[0] != final[1] and final[0] != final[2]  # the guides made different images
    set_number(page, "compare-scrub", 0)
    page.locator("#compare-status").get_by_text("x_T").wait_for()
    loaded(page, "compare-xt")
    start = tiles(page, "compare-xt", len(rows))
    assert start[0] == start[1] == start[2]  # from the same noise


def test_each_guide_at_its_evaluated_setting_runs_beside_the_others_and_charts_its_own_steps(page, tmp_path):
    """Compare -> each at its evaluated setting, on the latent bundle: the noise-aware default (UniPC 5),
    the training-free default (DDIM 4) and the latter at equal time, as rows from the same noise; each
    line drawn in the three charts at the steps its row takes, and each row's seconds per image in
    the table, twice in a row."""
    from demo.settings import app_defaults
    (tmp_path / "defaults.json").write_text(json.dumps(LATENT_DEFAULTS))
    page.locator("#model").get_by_label("latent space: z_t").check()
    page.locator("#info", has_text="samples latent z_t").wait_for()
    page.get_by_role("tab", name="Compare").click()
    set_number(page, "images", 1)
    pick_mode(page, "evaluated")
    evaluated = app_defaults(tmp_path)
    rows = list(arguments.compare_run(replace(evaluated, num_images=1).settings(CLASS_NAMES), ROW_VALUES["evaluated"].example,
                                      "evaluated", class_names=CLASS_NAMES, num_timesteps=NUM_TIMESTEPS,
                                      evaluated=evaluated).labels)
    assert rows[0] == "UniPC 5, noise-aware w=3" and rows[1].startswith("DDIM 4, TFG")
    assert rows[2].startswith("DDIM 1, ≈ equal time: TFG")
    for _ in range(2):
        status = run(page, "compare")
        assert "step 5 of 5" in status
        for chart in ("compare-chart", "compare-clean-chart", "compare-norm-chart"):
            assert drawn(page, chart, rows) == (sorted(rows), rows), chart
        points = page.evaluate("""() => [...document.querySelectorAll("#compare-chart [aria-roledescription='line mark']")]
            .map(l => (l.getAttribute('d') || '').split(/[ML]/).filter(Boolean).length)""")
        assert sorted(points) == [1, 4, 5]  # each row's line has a point per step it took
        table = page.evaluate("""() => { const t = document.querySelector('#compare-table');
            const col = [...t.querySelectorAll('th[title]')].map(h => h.getAttribute('title')).indexOf('s / image');
            return [...t.querySelectorAll('[role=row].virtual-row')]
              .map(r => r.querySelector(`[role=gridcell][data-col="${col}"]`).innerText.trim()); }""")
        assert len(table) == 3 and all(float(value) > 0 for value in table), table
    assert page.evaluate("() => [...document.querySelectorAll('#compare-row-labels .row-label')].map(l => l.innerText)") == rows


def test_choosing_the_clean_classifier_shows_its_parameters_and_a_one_step_sampler(page):
    assert not page.locator(".method-group").first.is_visible()
    page.locator("#model").get_by_label("latent space: z_t").check()
    page.locator("#info", has_text="samples latent z_t").wait_for()
    assert page.locator("#sampler").get_by_label("UniPC", exact=True).is_checked()
    page.locator("#guide").get_by_label("clean classifier through x̂_0 (training-free)").check()
    page.locator(".method-group").first.wait_for(state="visible")
    page.locator("#sampler").get_by_label("DDIM", exact=True).wait_for()
    deadline = time.monotonic() + 30
    while not page.locator("#sampler").get_by_label("DDIM", exact=True).is_checked():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # the evaluated training-free setting: its interval and strength schedule, beside the sampler
    assert page.locator("#interval textarea, #interval input").first.input_value() == "400-999"
    assert page.locator("#strength-schedule").get_by_label("constant", exact=True).is_checked()
    set_number(page, "steps", 3)
    set_number(page, "rho", 3)
    set_number(page, "gamma", 0.2)
    set_number(page, "stop-at", 0.7)
    status = run(page, "generate")
    label = status.split(" · ")[4]
    assert label == "TFG ρ=3 μ=2 γ̄=0.2 stop at p=0.7 (unconditional)" and "DDIM" in status
    for chart in ("generate-chart", "generate-clean-chart"):  # the whole name in the legend, uncut
        assert drawn(page, chart, [label]) == ([label], [label]), chart
    page.locator("#guide").get_by_label("noise-aware classifier p(c | x_t, t)").check()
    page.locator(".method-group").first.wait_for(state="hidden")
    assert page.locator("#sampler").get_by_label("UniPC", exact=True).is_checked()
    assert page.locator("#interval textarea, #interval input").first.input_value() == "full"
