"""The real server (`python app.py --frame-interval 0` on tiny checkpoints) driven through
gradio_client: named endpoints, every step streamed, seeded results, the push and the guidance
norm, callers of the first release's arguments, server-side validation and cancelling."""
from __future__ import annotations

import json
import time

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from app_fixtures import (CLASS_NAMES, app_server, app_url, chart_points, checkpoint_dir, fetch_image, library_samples,  # noqa: F401
                          pixels_match, raw_call_events, served_bundle)
from demo import render
from demo.settings import DISPLAY
from guidescope.diffusion import respace_timesteps
from guidescope.guide import Schedule, Threshold

GENERATE = ("Sneaker", 3.0, "unconditional", 0.0, 12, "ddim", 0.0, 2, 11)  # the first release's arguments


def connect(url: str) -> Client:
    # Files are fetched by the tests (fetch_image); plain http on loopback: ssl_verify=False only
    # spares httpx loading the CA bundle on every request.
    return Client(url, verbose=False, download_files=False, ssl_verify=False)


@pytest.fixture(scope="module")
def client(app_url) -> Client:
    return connect(app_url)


def run(job, timeout_s: float = 120) -> list[tuple]:
    """Every output the job streamed, in order, once it is done (timeout_s only bounds a broken server)."""
    deadline = time.monotonic() + timeout_s
    while not job.done():
        assert time.monotonic() < deadline, "the job did not finish in time"
        time.sleep(0.05)
    return job.outputs()


def where(status: str) -> str:
    return status.split("**")[1]


def test_the_api_names_generate_and_compare_with_the_new_arguments_last(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert sorted(api) == ["/compare", "/generate"]
    names = [p["parameter_name"] for p in api["/generate"]["parameters"]]
    assert names == ["class_name", "scale", "unet", "cfg_scale", "steps", "sampler", "eta", "num_images", "seed",
                     "interval", "schedule", "threshold", "threshold_percentile", "guide", "method", "rho", "mu",
                     "recurrences", "iterations", "strength_schedule", "gamma", "stop_at", "model"]
    assert [p["parameter_name"] for p in api["/compare"]["parameters"]] == names[:1] + ["strengths", "mode"] + names[1:]


def test_generate_streams_x_T_and_every_step_and_ends_on_the_seeded_samples(client, served_bundle):
    outputs = run(client.submit(*GENERATE, "200-900", "ramp-down", "dynamic", 0.9, api_name="/generate"))
    timesteps = respace_timesteps(1000, 12).flip(0).tolist()
    assert [where(out[2]) for out in outputs] == ["x_T, before step 1"] + [
        f"step {k} of 12 (denoised from t = {t})" for k, t in enumerate(timesteps, 1)]
    assert all("running" in out[2] for out in outputs[:-1]) and "done" in outputs[-1][2]
    first, last = outputs[0], outputs[-1]
    assert first[1] is None and first[5] is None
    expected = library_samples(served_bundle, CLASS_NAMES.index("Sneaker"), 3.0, steps=12, num_images=2, seed=11,
                               schedule=Schedule("ramp-down", (200, 900)),
                               threshold=Threshold("dynamic", 0.9))
    with fetch_image(last[0]) as image:
        assert image.format == "PNG"
        parameters = json.loads(image.text[render.PARAMETERS_KEY])
        assert pixels_match(image, expected, ncols=2)
        size = image.size
    assert parameters["seed"] == 11 and parameters["steps"] == 12
    assert parameters["rows"][0]["schedule"] == {"shape": "ramp-down", "interval": [200, 900]}
    chart, table, norms = last[3], last[4], last[7]
    assert len(chart_points(chart)) == len(chart_points(norms)) == 12
    assert table["data"][0][0] == "w=3 (unconditional)"
    # The push and its size, step by step: none where the ramp is 0 (outside 200-900, and at 200).
    guided = [Schedule("ramp-down", (200, 900)).factor(t) > 0 for t in timesteps]
    assert 0 < sum(guided) < len(guided)
    assert [not out[6].startswith("no classifier guidance") for out in outputs[1:-1]] == guided[:-1]
    assert "the run's largest push" in outputs[-1][6]  # after the run: the step whose push shows most
    assert [point["norm"] > 0 for point in chart_points(norms)] == guided
    with fetch_image(last[5]) as push:
        assert push.mode == "RGB" and push.size == size


def test_callers_of_the_first_release_get_the_pages_defaults_for_the_new_arguments(client, served_bundle):
    outputs = run(client.submit(*GENERATE, api_name="/generate"))
    assert len(outputs) == 1 + 12 and "done" in outputs[-1][2]
    expected = library_samples(served_bundle, CLASS_NAMES.index("Sneaker"), 3.0, steps=12, num_images=2, seed=11)
    with fetch_image(outputs[-1][0]) as image:
        assert pixels_match(image, expected, ncols=2)
    outputs = run(client.submit("Bag", "0, 2", "classifier", 0.0, "unconditional", 0.0, 3, "ddim", 0.0, 1, 4,
                                api_name="/compare"))
    assert len(outputs) == 1 + 3 and [line[0] for line in outputs[-1][4]["data"]] == ["w=0", "w=2"]


def test_compare_streams_one_row_per_strength(client):
    outputs = run(client.submit("Bag", "0, 2, 8", "classifier", 0.0, "unconditional", 0.0, 6, "ddpm", 0.0, 2, 4,
                                api_name="/compare"))
    assert len(outputs) == 1 + 6
    table = outputs[-1][4]
    assert [line[0] for line in table["data"]] == ["w=0", "w=2", "w=8"]
    assert table["headers"] == list(render.TABLE_COLUMNS)
    with fetch_image(outputs[-1][0]) as image:
        assert image.height == (3 * (16 + DISPLAY.pad) + DISPLAY.pad) * DISPLAY.compare_upscale  # three rows of tiles


@pytest.mark.parametrize("mode, rows, labels", [
    ("interval", "full, 0-500", ["full", "0-500"]),
    ("schedule", "all", ["constant", "ramp-up", "ramp-down"]),
    ("threshold", "clip, none", ["clip", "none"]),
    ("class", "bag, Trouser", ["Bag", "Trouser"]),
    ("classifier-vs-free", "2", ["classifier w=2", "free w_cfg=2"]),
])
def test_compare_rows_vary_through_the_api(client, mode, rows, labels):
    outputs = run(client.submit("Sneaker", rows, mode, 2.0, "unconditional", 0.0, 3, "dpm++2m", 0.0, 1, 4, "full",
                                "constant", "clip", 0.995, api_name="/compare"))
    assert len(outputs) == 1 + 3
    assert [line[0] for line in outputs[-1][4]["data"]] == labels
    assert sorted({point["row"] for point in chart_points(outputs[-1][7])}) == sorted(labels)


@pytest.mark.parametrize("args, message", [
    (("Nope", 1.0, "unconditional", 0.0, 10, "ddim", 0.0, 2, 0), "class must be one of"),
    (("Bag", 1.0, "unconditional", 0.0, 0, "ddim", 0.0, 2, 0), "steps must be an integer from 1 to 1000"),
    (("Bag", 1.0, "unconditional", 0.0, 10.5, "ddim", 0.0, 2, 0), "steps must be an integer from 1 to 1000"),
    (("Bag", 1.0, "unconditional", 0.0, 10, "ddim", 2.0, 2, 0), "eta must be a number from 0 to 1"),
    (("Bag", 1.0, "unconditional", 0.0, 10, "ddpm", 0.5, 2, 0), "eta applies to the DDIM sampler only"),
    (("Bag", 1.0, "unconditional", 0.0, 10, "ddim", 0.0, 99, 0), "number of images must be an integer from 1 to 16"),
    (("Bag", 1.0, "unconditional", 0.0, 10, "ddim", 0.0, 2, -4), "seed must be an integer from 0 to"),
    (("Bag", "x", "unconditional", 0.0, 10, "ddim", 0.0, 2, 0), "w must be a number from 0 to 100"),
    (("Bag", 1.0, "unconditional", 0.0, 10, "ddim", 0.0, 2, 0, "9-1"), "needs 0 <= t_lo <= t_hi <= 999"),
    (("Bag", 1.0, "unconditional", 0.0, 10, "ddim", 0.0, 2, 0, "full", "cosine"), "schedule must be one of"),
    (("Bag", 1.0, "unconditional", 0.0, 10, "ddim", 0.0, 2, 0, "full", "constant", "dynamic", 2),
     "threshold percentile must be a number from 0.5 to 1"),
])
def test_the_server_validates_what_the_api_sends(client, args, message):
    with pytest.raises(AppError) as caught:
        client.predict(*args, api_name="/generate")
    assert message in str(caught.value)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_the_server_refuses_non_finite_numbers_sent_as_raw_json(app_url, value):
    """JSON has no NaN, so clients cannot send one; Python's parser accepts the literal anyway."""
    events = raw_call_events(app_url, "generate", f'["Bag", {value}, "unconditional", 0, 10, "ddim", 0, 2, 0, '
                                                  f'"full", "constant", "clip", 0.995, "noise-aware", "tfg", 2, 2, 1, 1, "increase", 0, '
                                                  '1, null]')
    assert "event: error" in events and "w must be a number from 0 to 100" in events


def test_cancelling_a_run_stops_it_and_frees_the_server(app_server):
    client = connect(app_server.url)  # a session of its own, whose runs the log lists
    job = client.submit("Trouser", 1.0, "unconditional", 0.0, 1000, "ddim", 0.0, 1, 0, api_name="/generate")
    deadline = time.monotonic() + 60
    while len(job.outputs()) < 2:  # x_T and one frame mid-run
        assert time.monotonic() < deadline
        time.sleep(0.05)
    job.cancel()
    end = app_server.wait_for_end(client.session_hash)
    assert end.state == "closed" and end.steps_done < end.steps == 1000
    assert not any("done" in out[2] for out in job.outputs())
    # The sampling slot is free again: a short run goes through.
    outputs = run(client.submit("Bag", 0.0, "unconditional", 0.0, 3, "ddim", 0.0, 1, 0, api_name="/generate"))
    assert "done" in outputs[-1][2] and app_server.wait_for_end(client.session_hash, count=2).state == "finished"
