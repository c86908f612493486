"""The real server with a pixel and a latent bundle (`python app.py --checkpoints PIXEL
--checkpoints LATENT --frame-interval 0 --live on`, tiny random networks): the latent model
streams decoded frames through gradio_client, and live mode in a real browser follows the
slider so that the last position wins.

--live on offers live mode whatever the machine's speed (auto would time a run), so no outcome
here depends on how fast the machine is.
"""
from __future__ import annotations

import json
import time

import pytest
from gradio_client import Client
from test_app_browser import COUNT_FRAMES, browser  # noqa: F401

from app_fixtures import (CLASS_NAMES, RUN_LINE, UNBOUNDED, Server, checkpoint_dir, fetch_image, make_latent_checkpoints,  # noqa: F401
                          pixels_match)
from demo import render, runs
from demo.launch import parse_args
from guidescope.bundle import load_bundle
from guidescope.generation import generate, stream
from guidescope.images import to_uint8
from guidescope.request import Request, Row

GENERATE = ("Sneaker", 3.0, "unconditional", 0.0, 6, "unipc", 0.0, 2, 11, "full", "constant", "clip", 0.995)


@pytest.fixture(scope="module")
def latent_dir(tmp_path_factory, checkpoint_dir):  # noqa: F811
    folder = tmp_path_factory.mktemp("tiny-latent-app")
    make_latent_checkpoints(folder, evaluator_from=checkpoint_dir)
    return folder


@pytest.fixture(scope="module")
def server(checkpoint_dir, latent_dir, tmp_path_factory):  # noqa: F811
    from scripts.launcher import running_app

    log = tmp_path_factory.mktemp("latent-server") / "app.log"
    with running_app([checkpoint_dir, latent_dir], threads=1, extra_args=("--frame-interval", "0", "--live", "on",
                                                                          *UNBOUNDED), log_path=log) as url:
        yield Server(url, log)


def finished(job, timeout_s: float = 120) -> list:
    deadline = time.monotonic() + timeout_s
    while not job.done():
        assert time.monotonic() < deadline, "the job did not finish in time"
        time.sleep(0.05)
    return job.outputs()


def test_the_latent_model_streams_every_step_and_ends_on_its_decoded_samples(server, latent_dir):
    client = Client(server.url, verbose=False, download_files=False, ssl_verify=False)
    outputs = finished(client.submit(*GENERATE, model="latent", api_name="/generate"))
    assert len(outputs) == 1 + 6 and "done" in outputs[-1][2]
    bundle = load_bundle(latent_dir, backend=parse_args([]).backend)  # as the server runs it
    request = Request((Row(CLASS_NAMES.index("Sneaker"), 3.0),), images_per_row=2, steps=6, sampler="unipc", seed=11)
    expected = generate(bundle, request, batch_size=2).images.numpy()
    steps = list(stream(bundle, request))
    with fetch_image(outputs[-1][0]) as image:  # the last x_t: the decoded samples, with their parameters
        assert pixels_match(image, expected, ncols=2)
        assert json.loads(image.text[render.PARAMETERS_KEY])["seed"] == 11
    with fetch_image(outputs[1][0]) as image:  # step 1's x_t: z_t's two channels as maps, at the images' size
        assert pixels_match(image, runs.latent_view(steps[0].sample, 16), ncols=2)
    with fetch_image(outputs[3][1]) as image:  # step 3's x-hat_0, decoded to images
        assert pixels_match(image, to_uint8(bundle.codec.decode(steps[2].pred_xstart)), ncols=2)
    # The same arguments on the pixel model (the default) give other images.
    pixel = finished(client.submit(*GENERATE, api_name="/generate"))
    with fetch_image(pixel[-1][0]) as image:
        assert not pixels_match(image, expected, ncols=2)


WATCH = """() => {
  window.__shown = [];
  const status = document.querySelector("#generate-status");
  new MutationObserver(() => {
    const markdown = status.querySelector("[data-testid=markdown]");
    if (markdown && markdown.innerText) window.__shown.push(markdown.innerText);
  }).observe(status, {subtree: true, childList: true, characterData: true});
}"""


def test_live_mode_ends_on_the_last_slider_value_and_nothing_earlier_arrives_after_it(browser, server):  # noqa: F811
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.add_init_script(COUNT_FRAMES)
    page.goto(server.url)
    page.locator("#model").get_by_label("latent space: z_t").check()
    page.locator("#info", has_text="samples latent z_t").wait_for()  # the page now shows the latent model
    page.locator("#generate-live input[type=checkbox]").check()
    page.evaluate(WATCH)
    slider = page.locator("#scale input[type=range]")
    for w in (1.0, 4.0, 7.5):  # as a hand drags it: the range input's input events, one after another
        slider.fill(str(w))
    deadline = time.monotonic() + 120
    while not any("w=7.5" in text and "done" in text for text in page.evaluate("window.__shown")):
        assert time.monotonic() < deadline, page.evaluate("window.__shown")
        time.sleep(0.1)
    time.sleep(1.0)  # anything still on its way arrives now
    shown = page.evaluate("window.__shown")
    last_value = next(k for k, text in enumerate(shown) if "w=7.5" in text)
    assert all("w=7.5" in text for text in shown[last_value:]), shown
    assert "w=7.5" in page.locator("#generate-status [data-testid=markdown]").inner_text()
    # Every run the server started went to its end: a move never ends the run in flight.
    states = [m[2] for m in RUN_LINE.finditer(server.log.read_text())]
    assert states and set(states) == {"finished"}
    page.close()
