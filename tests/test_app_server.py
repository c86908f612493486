"""The real server (`python app.py` on tiny checkpoints) driven through gradio_client: named
endpoints, streamed frames, seeded results, server-side validation and cancelling."""
from __future__ import annotations

import json
import time

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from app_fixtures import (CLASS_NAMES, app_url, bundle, checkpoint_dir, library_samples, pixels_match,  # noqa: F401
                          raw_call_events)
from demo import render
from demo.settings import DISPLAY


@pytest.fixture(scope="module")
def client(app_url) -> Client:
    return Client(app_url, verbose=False)


def run(job, timeout_s: float = 60) -> list[tuple]:
    """Every output the job streamed, in order, once it is done."""
    deadline = time.monotonic() + timeout_s
    while not job.done():
        assert time.monotonic() < deadline, "the job did not finish in time"
        time.sleep(0.05)
    return job.outputs()


def test_the_api_names_generate_and_compare(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert sorted(api) == ["/compare", "/generate"]


def test_generate_streams_frames_and_ends_on_the_seeded_samples(client, bundle):
    job = client.submit("Sneaker", 3.0, "unconditional", 0.0, 80, "ddim", 0.0, 2, 11, api_name="/generate")
    outputs = run(job)
    assert len(outputs) >= 3  # x_T, at least one frame mid-run, the samples
    first, last = outputs[0], outputs[-1]
    assert first[1] is None and "x_T" in first[2]
    assert any("running" in out[2] for out in outputs[1:-1])
    assert "done" in last[2] and "step 80 / 80" in last[2]
    expected = library_samples(bundle, CLASS_NAMES.index("Sneaker"), 3.0, steps=80, num_images=2, seed=11)
    with Image.open(last[0]) as image:
        assert image.format == "PNG"
        parameters = json.loads(image.text[render.PARAMETERS_KEY])
        assert pixels_match(image, expected, ncols=2)
    assert parameters["seed"] == 11 and parameters["steps"] == 80
    chart, table = last[3], last[4]
    assert len(chart["data"]) == 80
    assert table["data"][0][0] == "w=3 (unconditional)"


def test_compare_streams_one_row_per_strength(client):
    outputs = run(client.submit("Bag", "0, 2, 8", "classifier", 0.0, "unconditional", 0.0, 6, "ddpm", 0.0, 2, 4,
                                api_name="/compare"))
    table = outputs[-1][4]
    assert [line[0] for line in table["data"]] == ["w=0", "w=2", "w=8"]
    assert table["headers"] == list(render.TABLE_COLUMNS)
    with Image.open(outputs[-1][0]) as image:
        assert image.height == (3 * (16 + DISPLAY.pad) + DISPLAY.pad) * DISPLAY.upscale  # three rows of tiles


@pytest.mark.parametrize("args, message", [
    (("Nope", 1.0, "unconditional", 0.0, 10, "ddim", 0.0, 2, 0), "class must be one of"),
    (("Bag", 1.0, "unconditional", 0.0, 0, "ddim", 0.0, 2, 0), "steps must be an integer from 1 to 1000"),
    (("Bag", 1.0, "unconditional", 0.0, 10.5, "ddim", 0.0, 2, 0), "steps must be an integer from 1 to 1000"),
    (("Bag", 1.0, "unconditional", 0.0, 10, "ddim", 2.0, 2, 0), "eta must be a number from 0 to 1"),
    (("Bag", 1.0, "unconditional", 0.0, 10, "ddim", 0.0, 99, 0), "number of images must be an integer from 1 to 16"),
    (("Bag", 1.0, "unconditional", 0.0, 10, "ddim", 0.0, 2, -4), "seed must be an integer from 0 to"),
    (("Bag", "x", "unconditional", 0.0, 10, "ddim", 0.0, 2, 0), "w must be a number from 0 to 100"),
])
def test_the_server_validates_what_the_api_sends(client, args, message):
    with pytest.raises(AppError) as caught:
        client.predict(*args, api_name="/generate")
    assert message in str(caught.value)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_the_server_refuses_non_finite_numbers_sent_as_raw_json(app_url, value):
    """JSON has no NaN, so clients cannot send one; Python's parser accepts the literal anyway."""
    events = raw_call_events(app_url, "generate", f'["Bag", {value}, "unconditional", 0, 10, "ddim", 0, 2, 0]')
    assert "event: error" in events and "w must be a number from 0 to 100" in events


def test_cancelling_a_run_stops_it_and_frees_the_server(client):
    job = client.submit("Trouser", 1.0, "unconditional", 0.0, 1000, "ddim", 0.0, 1, 0, api_name="/generate")
    deadline = time.monotonic() + 30
    while len(job.outputs()) < 2:  # x_T and one frame mid-run
        assert time.monotonic() < deadline
        time.sleep(0.05)
    job.cancel()
    deadline = time.monotonic() + 10
    while not job.done():
        assert time.monotonic() < deadline, "cancel did not end the job"
        time.sleep(0.05)
    assert not any("done" in out[2] for out in job.outputs())
    # The sampling slot is free again: a short run completes at once.
    started = time.monotonic()
    outputs = run(client.submit("Bag", 0.0, "unconditional", 0.0, 3, "ddim", 0.0, 1, 0, api_name="/generate"))
    assert "done" in outputs[-1][2] and time.monotonic() - started < 10
