"""Bad input against the real server (`python app.py` on tiny checkpoints), through gradio_client
as any caller of a public Space may send it: every argument of both endpoints checked again on
the server with a gr.Error naming the valid range, a seeded fuzz of malformed calls after which a
normal call still succeeds, paths that must never be served, and the extreme strengths the limits
allow, which must give images (no NaN, not black)."""
from __future__ import annotations

import concurrent.futures
import json
import random
import re
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from app_fixtures import CLASS_NAMES, NUM_TIMESTEPS, app_server, app_url, checkpoint_dir, fetch_image, raw_call_events  # noqa: F401
from bad_arguments import BAD_COMPARE
from demo import arguments
from demo.handlers import Handlers
from demo.settings import COMPARE_ROWS, DISPLAY, LIMITS, Settings
from guidescope.bundle import load_bundle
from guidescope.messages import choice
from guidescope.request import MAX_CFG_SCALE, MAX_SCALE, MAX_SEED

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "checkpoints" / "fashion-mnist"
BATCH = 12  # calls in flight at once: below the queue's maximum size, so none is turned away

# The smallest valid calls; each case below changes one argument.
GUIDANCE = dict(interval="full", schedule="constant", threshold="clip", threshold_percentile=0.995, guide="noise-aware",
                method="tfg", rho=2.0, mu=2.0, recurrences=1, iterations=1, strength_schedule="increase", gamma=0.0,
                stop_at=1.0, model=None)
GENERATE = dict(class_name="Bag", scale=1.0, unet="unconditional", cfg_scale=0.0, steps=2, sampler="ddim",
                eta=0.0, num_images=1, seed=0, **GUIDANCE)
COMPARE = dict(class_name="Bag", strengths="0, 2", mode="classifier", scale=0.0, unet="unconditional",
               cfg_scale=0.0, steps=2, sampler="ddim", eta=0.0, num_images=1, seed=0, **GUIDANCE)
ENDPOINTS = {"/generate": GENERATE, "/compare": COMPARE}

CLASS = "class must be one of T-shirt/top, Trouser, Sneaker, Bag or an index from 0 to 3"
W = f"classifier guidance w must be a number from 0 to {MAX_SCALE:g}"
W_CFG = f"classifier-free scale w_cfg must be a number from 0 to {MAX_CFG_SCALE:g}"
STEPS = f"steps must be an integer from 1 to {NUM_TIMESTEPS}"
IMAGES = f"number of images must be an integer from 1 to {LIMITS.max_images_per_row}"
SEED = f"seed must be an integer from 0 to {MAX_SEED}"
ETA = "eta must be a number from 0 to 1"
INTERVAL = "a guidance interval is 'full' or two timesteps like '200-800'"
SCHEDULE = "schedule must be one of constant, ramp-up, ramp-down"
THRESHOLD = "threshold must be one of clip, dynamic, none"
PERCENTILE = "threshold percentile must be a number from 0.5 to 1"
MODEL = "model must be one of pixel"  # the tiny server offers its one bundle
GUIDE = "guide must be one of noise-aware, training-free"
METHOD = "training-free method must be one of tfg, dps, lgd, freedom, mpgd, ug"
RHO, MU = "rho must be a number from 0 to 10000", "mu must be a number from 0 to 10000"
RECUR, ITER = "recurrences must be an integer from 1 to 16", "iterations must be an integer from 0 to 16"
STRENGTH_SCHEDULE = "strength schedule must be one of constant, increase, decrease"
GAMMA = "gamma must be a number from 0 to 10000"
STOP_AT = "stop at must be a number from 0.01 to 1"

# (argument, bad value, what the error must say), for the arguments both endpoints take.
SHARED_CASES = [
    ("class_name", "Nope", CLASS), ("class_name", 4, CLASS), ("class_name", -1, CLASS), ("class_name", 1.5, CLASS),
    ("class_name", "../../etc/passwd", CLASS), ("class_name", "/etc/passwd", CLASS), ("class_name", "bags", CLASS),
    ("class_name", None, CLASS), ("class_name", True, CLASS), ("class_name", ["Bag"], CLASS),
    ("class_name", {"name": "Bag"}, CLASS), ("class_name", "x" * 100_000, CLASS),
    ("scale", -0.5, W), ("scale", MAX_SCALE + 0.01, W), ("scale", 1e308, W), ("scale", 10**400, W),
    ("scale", "2", W), ("scale", None, W), ("scale", [1.0], W), ("scale", False, W),
    ("unet", "both", "unet must be one of unconditional, conditional"), ("unet", None, "unet must be one of"),
    ("unet", "../unet", "unet must be one of"),
    ("cfg_scale", 2.0, "needs the class-conditional UNet"), ("cfg_scale", -1, W_CFG), ("cfg_scale", "0", W_CFG),
    ("steps", 0, STEPS), ("steps", -5, STEPS), ("steps", 2.5, STEPS), ("steps", NUM_TIMESTEPS + 1, STEPS),
    ("steps", 10**30, STEPS), ("steps", "10", STEPS), ("steps", None, STEPS),
    ("sampler", "euler", "sampler must be one of ddim, ddpm, dpm++2m, unipc"), ("sampler", "DDIM", "sampler must be one of"),
    ("sampler", 0, "sampler must be one of"),
    ("eta", -0.1, ETA), ("eta", 1.5, ETA), ("eta", "0", ETA), ("eta", None, ETA),
    ("num_images", 0, IMAGES), ("num_images", -1, IMAGES), ("num_images", LIMITS.max_images_per_row + 1, IMAGES),
    ("num_images", 1.5, IMAGES), ("num_images", "1", IMAGES),
    ("seed", -1, SEED), ("seed", MAX_SEED + 1, SEED), ("seed", 0.5, SEED), ("seed", "0", SEED),
    ("seed", [0], SEED),
    ("interval", "", INTERVAL), ("interval", "200", INTERVAL), ("interval", "-1-5", INTERVAL),
    ("interval", "0.5-8", INTERVAL), ("interval", [0, 500], INTERVAL), ("interval", None, INTERVAL),
    ("interval", "500-100", "a guidance interval needs 0 <= t_lo <= t_hi <= 999"),
    ("interval", f"0-{NUM_TIMESTEPS}", "t_hi <= 999"), ("interval", "9" * 5000 + "-1", "at most 200 characters"),
    ("schedule", "linear", SCHEDULE), ("schedule", "Constant", SCHEDULE), ("schedule", None, SCHEDULE),
    ("threshold", "static", THRESHOLD), ("threshold", ["clip"], THRESHOLD),
    ("threshold_percentile", 0.49, PERCENTILE), ("threshold_percentile", 1.01, PERCENTILE),
    ("threshold_percentile", "0.9", PERCENTILE), ("threshold_percentile", None, PERCENTILE),
    ("model", "latent", MODEL), ("model", "../pixel", MODEL), ("model", 0, MODEL), ("model", ["pixel"], MODEL),
    ("guide", "both", GUIDE), ("guide", None, GUIDE), ("guide", "Training-Free", GUIDE),
    ("method", "dpm", METHOD), ("method", None, METHOD), ("method", ["tfg"], METHOD),
    ("rho", -0.5, RHO), ("rho", 1e5, RHO), ("rho", "2", RHO), ("rho", None, RHO),
    ("mu", -1, MU), ("mu", 10**400, MU), ("mu", [1.0], MU),
    ("recurrences", 0, RECUR), ("recurrences", 17, RECUR), ("recurrences", 1.5, RECUR), ("recurrences", "2", RECUR),
    ("iterations", -1, ITER), ("iterations", 17, ITER), ("iterations", None, ITER),
    ("strength_schedule", "linear", STRENGTH_SCHEDULE), ("strength_schedule", None, STRENGTH_SCHEDULE),
    ("strength_schedule", ["constant"], STRENGTH_SCHEDULE),
    ("gamma", -0.1, GAMMA), ("gamma", 1e5, GAMMA), ("gamma", "0.1", GAMMA), ("gamma", None, GAMMA),
    ("stop_at", 0, STOP_AT), ("stop_at", 1.5, STOP_AT), ("stop_at", "0.5", STOP_AT), ("stop_at", None, STOP_AT),
]
# Cases that need more than one argument changed: (changes, what the error must say).
GENERATE_CASES = [
    (dict(unet="conditional", cfg_scale=MAX_CFG_SCALE + 1), W_CFG),
    (dict(guide="training-free", sampler="unipc"), "TFG re-noises one step at a time (its recurrence), so it runs "
                                                   "with the DDIM or DDPM sampler; got unipc"),
    (dict(guide="training-free", scale=-1.0), W),
    (dict(sampler="dpm++2m", eta=0.5), "eta applies to the DDIM sampler only"),
    (dict(num_images=16, steps=LIMITS.max_image_steps // 16 + 1),
     f"images x steps must be at most {LIMITS.max_image_steps}"),
]
# A rejected call's message is one of the library's or demo/arguments.py's; never Gradio's generic "an exception".
VALIDATION_MESSAGE = re.compile(r"must be|must differ|is not a number|is empty|at most|needs the class-conditional|"
                                r"applies to the DDIM|a guidance interval (is|needs)|runs with the DDIM or DDPM sampler|takes .*; got")


@pytest.fixture(scope="module")
def client(app_url) -> Client:
    # Plain http on loopback: ssl_verify=False only spares httpx loading the CA bundle on every
    # request (a tenth of a second of CPU each, which would dominate these tests).
    return Client(app_url, verbose=False, download_files=False, ssl_verify=False)


def outcomes(client: Client, calls: list[tuple[str, dict]], timeout_s: float = 60) -> list[str | tuple]:
    """Each call's gr.Error message, or its last output when it succeeded; BATCH calls at a time."""
    results = []
    for start in range(0, len(calls), BATCH):
        batch = calls[start:start + BATCH]
        jobs = [client.submit(*args.values(), api_name=api_name) for api_name, args in batch]
        results += [answer(client, call, job, timeout_s) for call, job in zip(batch, jobs)]
    return results


def answer(client: Client, call: tuple[str, dict], job, timeout_s: float, asks: int = 3) -> str | tuple:
    """The server's answer to one submitted call: its gr.Error message or its last output. Where
    gradio_client's shared event stream closed before the answer reached this job (its reader's
    race when calls in flight finish together, seen on a loaded machine as CancelledError), the
    call is asked again, at most `asks` times in all: the server's answer is what is checked."""
    api_name, args = call
    for ask in range(asks):
        try:
            return job.result(timeout=timeout_s)
        except AppError as err:
            return str(err)
        except concurrent.futures.CancelledError:
            if ask == asks - 1:
                raise
            job = client.submit(*args.values(), api_name=api_name)


def every_case() -> list[tuple[str, dict, str]]:
    """(endpoint, arguments, expected message): every shared case on /generate and the first one
    of each argument on /compare (both run the same checks), then each endpoint's own cases."""
    cases = [("/generate", {**GENERATE, name: value}, message) for name, value, message in SHARED_CASES]
    firsts = {name: (value, message) for name, value, message in reversed(SHARED_CASES)}
    cases += [("/compare", {**COMPARE, name: value}, message) for name, (value, message) in firsts.items()]
    cases += [("/generate", {**GENERATE, **changes}, message) for changes, message in GENERATE_CASES]
    cases += [("/compare", {**COMPARE, **changes}, message) for changes, message in BAD_COMPARE]
    return cases


def finished(outputs) -> bool:
    return isinstance(outputs, tuple) and "done" in outputs[2]


def test_the_cases_cover_every_argument_of_both_endpoints(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert sorted(api) == sorted(ENDPOINTS)
    for api_name, base in ENDPOINTS.items():
        names = [p["parameter_name"] for p in api[api_name]["parameters"]]
        assert names == list(base), "the argument order changed: update GENERATE / COMPARE"
        covered = {name for name, _, _ in SHARED_CASES}
        covered |= {name for changes, _ in (GENERATE_CASES if api_name == "/generate" else BAD_COMPARE)
                    for name in changes}
        assert covered == set(names)


def test_every_bad_argument_gets_a_message_naming_the_valid_range(client):
    cases = every_case()
    results = outcomes(client, [(api_name, args) for api_name, args, _ in cases])
    wrong = [(api_name, {k: str(v)[:40] for k, v in args.items()}, message, str(got)[:200])
             for (api_name, args, message), got in zip(cases, results)
             if not isinstance(got, str) or message not in got]
    assert not wrong, f"{len(wrong)} of {len(cases)} bad calls not rejected as expected: {wrong[:5]}"
    assert max(len(got) for got in results) < 400  # a rejected value is quoted back only in part
    # The valid calls the cases were cut from still run.
    assert all(finished(out) for out in outcomes(client, list(ENDPOINTS.items())))


@pytest.mark.parametrize("api_name, position", [("generate", 1), ("generate", 6), ("generate", 12), ("generate", 15),
                                                ("compare", 3)])
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_in_raw_json_are_refused(app_url, api_name, position, literal):
    """JSON has no NaN or Infinity and gradio_client will not send them; a raw request can, and
    Python's parser accepts them (1e999 parses as inf)."""
    values = [json.dumps(v) for v in ENDPOINTS[f"/{api_name}"].values()]
    values[position] = literal
    events = raw_call_events(app_url, api_name, f"[{', '.join(values)}]")
    assert "event: error" in events and re.search(r"must be a number from [\d.]+ to \d+", events)


BAD_VALUES = [1.7976931348623157e308, -1, -1e-9, 0, 1e308, 10**30, 10**400, 2**31, 1001, 17, 3.5, -0.0,
              "", " ", "0", "1e3", "nan", "Bag ", "../../etc/passwd", "/etc/passwd", "C:\\Windows\\win.ini",
              "file:///etc/passwd", "http://127.0.0.1/", "%s%s%n", "{0}", "<script>alert(1)</script>",
              "\x00", "Bag\x00", "ddim\n", "0,,1", "1;2", "x" * 5000, None, True, False, [], [1, 2], {},
              {"path": "/etc/passwd"}, {"__type__": "update"}, [[0]]]


def malformed_calls(count: int, seed: int) -> list[tuple[str, dict]]:
    """count calls, each with one to three arguments replaced by a random bad value."""
    rng = random.Random(seed)
    calls = []
    for _ in range(count):
        api_name = rng.choice(sorted(ENDPOINTS))
        args = dict(ENDPOINTS[api_name])
        for name in rng.sample(sorted(args), rng.randint(1, 3)):
            args[name] = rng.choice(BAD_VALUES)
        calls.append((api_name, args))
    return calls


def expected_error(api_name: str, args: dict) -> str | None:
    """What demo/arguments.py says about args in this process (None: a valid call)."""
    check = arguments.generate_run if api_name == "/generate" else arguments.compare_run
    args = dict(args)
    model = args.pop("model")
    try:
        if model is not None:  # the handler picks the model first (demo/handlers.py Handlers.pick)
            choice(model, "model", ("pixel",))
        own = [args.pop(name) for name in COMPARE_ROWS if name in args]
        check(Settings(**args), *own, class_names=CLASS_NAMES, num_timesteps=NUM_TIMESTEPS)
    except ValueError as err:
        return str(err)
    return None


def test_a_fuzz_of_malformed_calls_gets_clear_errors_and_the_server_keeps_serving(client):
    calls = malformed_calls(300, seed=20240605)
    expected = [expected_error(api_name, args) for api_name, args in calls]
    assert sum(e is not None for e in expected) > 0.8 * len(calls)  # the fuzz is mostly malformed calls
    assert all(VALIDATION_MESSAGE.search(e) for e in expected if e is not None)
    results = outcomes(client, calls)
    # The server says exactly what demo/arguments.py says; the few calls that happen to be valid (w=3.5,
    # 17 steps) ran to the end.
    wrong = [(api_name, str(args)[:200], e, str(got)[:200])
             for (api_name, args), e, got in zip(calls, expected, results)
             if (got != e if e is not None else not finished(got))]
    assert not wrong, f"{len(wrong)} of {len(calls)} calls answered unexpectedly, e.g. {wrong[:3]}"
    # And a normal call still succeeds.
    outputs = client.predict(*{**GENERATE, "steps": 4}.values(), api_name="/generate")
    assert "done" in outputs[2] and "step 4 of 4" in outputs[2]


# -- paths ---------------------------------------------------------------------------------------

def status_of(url: str, data: bytes | None = None, headers: dict | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.parametrize("path", [
    "/etc/passwd", str(REPO / "app.py"), str(REPO / "demo" / "settings.py"), "app.py", "requirements.txt",
    str(SHIPPED / "unet.json"), "checkpoints/fashion-mnist/unet.json", "{checkpoints}/unet.safetensors",
    "../../../../etc/passwd", "%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/proc/self/environ",
])
def test_no_file_outside_the_apps_own_outputs_is_served(app_url, checkpoint_dir, path):
    """allowed_paths is unset: the app's own files, its checkpoints and the system's stay private."""
    assert status_of(f"{app_url}gradio_api/file={path.format(checkpoints=checkpoint_dir)}") in (403, 404)


def test_uploads_are_capped(app_url):
    def upload(size: int) -> int:
        boundary = "----hardening"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.bin\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n")
        body = head.encode() + b"\0" * size + f"\r\n--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        return status_of(f"{app_url}gradio_api/upload", body, headers)

    assert upload(1000) == 200  # the cap is what refuses the large one, not uploads as such
    assert upload(2 * 1024 * 1024) == 413


# -- extreme but allowed strengths ----------------------------------------------------------------

def tiles(image: Image.Image, n: int, ncols: int, size: int = 16) -> np.ndarray:
    """The n tiles of a grid drawn with Display's pad, at the upscale its height shows, (n, size,
    size) at 1x."""
    pad = DISPLAY.pad
    up = image.height // (-(-n // ncols) * (size + pad) + pad)
    array = np.asarray(image.convert("L"))[::up, ::up]
    array = array[:, array.shape[1] - (ncols * (size + pad) + pad):]
    return np.stack([array[pad + r * (size + pad):pad + r * (size + pad) + size,
                           pad + q * (size + pad):pad + q * (size + pad) + size]
                     for r, q in (divmod(k, ncols) for k in range(n))])


def assert_images(outcome, n: int, ncols: int, size: int, read) -> None:
    """outcome: the last streamed output of a finished run (not an error). Every image must be visible."""
    assert isinstance(outcome, tuple) and "done" in outcome[2], f"not a finished run: {str(outcome)[:300]}"
    with read(outcome[0]) as image:
        samples = tiles(image, n, ncols, size)
    assert (samples.reshape(n, -1).max(1) > 0).all(), "a black image"
    assert (samples.reshape(n, -1).std(1) > 0).all(), "a flat image"


def test_the_strongest_allowed_guidance_gives_images_not_nan_or_black(client):
    top = min(MAX_SCALE, MAX_CFG_SCALE)
    calls = [
        ("/generate", {**GENERATE, "scale": MAX_SCALE, "steps": 12, "num_images": 4}),
        ("/generate", {**GENERATE, "scale": MAX_SCALE, "unet": "conditional", "cfg_scale": MAX_CFG_SCALE,
                       "steps": 12, "sampler": "ddpm", "num_images": 4}),
        ("/generate", {**GENERATE, "scale": MAX_SCALE, "steps": 1, "eta": 1.0, "num_images": 4}),
        ("/generate", {**GENERATE, "scale": MAX_SCALE, "steps": 12, "sampler": "dpm++2m", "threshold": "none",
                       "num_images": 4}),
        ("/compare", {**COMPARE, "strengths": f"{top:g}", "mode": "classifier-vs-free", "steps": 12, "num_images": 2}),
        ("/compare", {**COMPARE, "strengths": "all", "mode": "threshold", "scale": MAX_SCALE, "steps": 12,
                      "threshold_percentile": 0.5, "num_images": 2}),
    ]
    layouts = [(4, 2)] * 5 + [(6, 2)]  # (images, columns): 4 images in a 2 x 2 block; rows x 2
    for outcome, (n, ncols) in zip(outcomes(client, calls), layouts):
        assert_images(outcome, n, ncols, 16, fetch_image)


@pytest.mark.skipif(not (SHIPPED / "unet.safetensors").is_file(), reason="no shipped checkpoints")
def test_the_shipped_model_at_the_strongest_allowed_guidance_gives_images(tmp_path):
    handlers = Handlers(load_bundle(SHIPPED), downloads=tmp_path)
    sneaker = "Sneaker" if "Sneaker" in handlers.bundle.class_names else 0
    size = handlers.bundle.unet.config.image_size
    for unet, cfg_scale, sampler in (("unconditional", 0.0, "ddim"), ("conditional", MAX_CFG_SCALE, "ddpm"),
                                     ("unconditional", 0.0, "dpm++2m")):
        *_, last = handlers.generate(sneaker, MAX_SCALE, unet, cfg_scale, 6, sampler, 0.0, 2, 0)
        assert_images((last.x_t, None, last.status), 2, 2, size, lambda image: image)
