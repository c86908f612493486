"""Fixtures for the app tests: checkpoint folders of tiny random networks (16x16 images, four
classes, a few thousand weights each; grey, and a colour one) and the real server started on the
grey one with `python app.py --frame-interval 0`, so it streams every step whatever the
machine's speed.

Test modules import the fixtures they use by name from here.
"""
from __future__ import annotations

import io
import json
import re
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image

from demo.settings import DISPLAY
from guidescope.bundle import Bundle, load_bundle
from guidescope.checkpoints import save
from guidescope.generation import generate
from guidescope.images import grid
from guidescope.networks.small import ClassifierConfig, Evaluator, EvaluatorConfig, NoisyClassifier, UNet, UNetConfig
from guidescope.request import Request, Row

CLASS_NAMES = ("T-shirt/top", "Trouser", "Sneaker", "Bag")
NUM_TIMESTEPS = 1000
TINY = dict(image_size=16, channel_mults=(1, 2), num_classes=len(CLASS_NAMES))
RUN_LINE = re.compile(r"demo\.handlers: run (\S+): (\w+) after step (\d+) of (\d+)(?:; Stop came after step (\d+))?")


def _randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Perturb every weight: fresh networks zero their output layers (eps would be 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def make_checkpoints(folder, channels: int = 1) -> None:
    """unet, classifier and evaluator checkpoints of tiny random networks in folder."""
    torch.manual_seed(0)
    meta = dict(class_names=list(CLASS_NAMES), diffusion={"schedule": "cosine", "num_timesteps": NUM_TIMESTEPS})
    unet = UNet(UNetConfig(**TINY, in_channels=channels, base_channels=8, num_res_blocks=1, attention_levels=(1,),
                           num_heads=2, dropout=0.0))
    save(_randomized(unet, 1), folder, "unet", **meta)
    classifier = NoisyClassifier(ClassifierConfig(**TINY, in_channels=channels, base_channels=8))
    save(_randomized(classifier, 2), folder, "classifier", **meta)
    evaluator = Evaluator(EvaluatorConfig(image_size=16, in_channels=channels, num_classes=len(CLASS_NAMES),
                                          layers=(1, 1, 1, 1), channels=(8, 8, 8, 8), input_size=16))
    save(evaluator, folder, "evaluator", **meta)
    save_guide_classifier(folder, channels)


TINY_GUIDE_ARGS = {"patch_size": 1, "depths": (0, 1, 1, 1), "dims": (8, 8, 8, 8)}


def save_guide_classifier(folder, channels: int = 1) -> None:
    """A tiny clean classifier of the 16x16 images (a timm ConvNeXt), for training-free guidance."""
    from guidescope.networks.guide_classifier import GuideClassifier, GuideClassifierConfig

    torch.manual_seed(0)
    guide = GuideClassifier(GuideClassifierConfig(model_args=TINY_GUIDE_ARGS, num_classes=len(CLASS_NAMES),
                                                  in_channels=channels, image_size=16))
    save(_randomized(guide, 6), folder, "guide_classifier", class_names=list(CLASS_NAMES))


LATENT_SCALE = 1.25   # the tiny latent bundle's scale factor (any positive number does for random networks)


def make_latent_checkpoints(folder, evaluator_from=None) -> None:
    """A tiny latent bundle in folder: an autoencoder of 16x16 grey images to 2x8x8 latents, a
    UNet and a classifier on those latents carrying the autoencoder's latent record, and (from
    evaluator_from, a pixel folder) the evaluator, which judges decoded images."""
    from guidescope.checkpoints import file_digest
    from guidescope.networks.small import Autoencoder, AutoencoderConfig

    torch.manual_seed(0)
    folder = Path(folder)
    meta = dict(class_names=list(CLASS_NAMES), diffusion={"schedule": "cosine", "num_timesteps": NUM_TIMESTEPS})
    autoencoder = Autoencoder(AutoencoderConfig(image_size=16, base_channels=8, channel_mults=(1, 2), latent_channels=2))
    save(_randomized(autoencoder, 3), folder, "autoencoder", class_names=list(CLASS_NAMES))
    latent = {"autoencoder": "autoencoder", "sha256": file_digest(folder / "autoencoder.safetensors"),
              "scale_factor": LATENT_SCALE, "shape": [2, 8, 8], "clip_bound": 3.0}
    unet = UNet(UNetConfig(image_size=8, in_channels=2, channel_mults=(1, 2), num_classes=len(CLASS_NAMES),
                           base_channels=8, num_res_blocks=1, attention_levels=(1,), num_heads=2, dropout=0.0))
    save(_randomized(unet, 4), folder, "unet", latent=latent, **meta)
    classifier = NoisyClassifier(ClassifierConfig(image_size=8, in_channels=2, channel_mults=(1, 2),
                                                  num_classes=len(CLASS_NAMES), base_channels=8))
    save(_randomized(classifier, 5), folder, "classifier", latent=latent, **meta)
    save_guide_classifier(folder)
    if evaluator_from is not None:
        for suffix in (".json", ".safetensors"):
            (folder / f"evaluator{suffix}").write_bytes((Path(evaluator_from) / f"evaluator{suffix}").read_bytes())


def library_samples(bundle: Bundle, class_index: int, scale: float, steps: int, num_images: int, seed: int,
                    sampler: str = "ddim", eta: float = 0.0, **row) -> np.ndarray:
    """The images the command line (`python -m guidescope.sample`) draws for the same settings, on the
    unconditional UNet unless row says otherwise (Row fields): (n, C, H, W) uint8."""
    request = Request((Row(class_index, scale, **row),), images_per_row=num_images, steps=steps, sampler=sampler,
                      eta=eta, seed=seed)
    return generate(bundle, request).images.numpy()


def raw_call_events(app_url: str, api_name: str, data_json: str) -> str:
    """Call an endpoint with a hand-written JSON list of arguments (which may hold literals such as
    NaN that gradio_client refuses to send) and return the server's event stream as text."""
    request = urllib.request.Request(f"{app_url}gradio_api/call/{api_name}", data=f'{{"data": {data_json}}}'.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        event_id = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(f"{app_url}gradio_api/call/{api_name}/{event_id}", timeout=30) as response:
        return response.read().decode()


def fetch_file(file: dict, timeout_s: float = 60) -> bytes:
    """The bytes of a file output as a client with download_files=False sees it ({"url": ...}).
    Clients here never download files themselves: gradio_client turns a failed download into an
    output holding only the exception."""
    with urllib.request.urlopen(file["url"], timeout=timeout_s) as response:
        return response.read()


def fetch_image(file: dict) -> Image.Image:
    return Image.open(io.BytesIO(fetch_file(file)))


def pixels_match(image: Image.Image, samples: torch.Tensor | np.ndarray, ncols: int, upscale: int = DISPLAY.upscale) -> bool:
    """Whether image is the grid of samples as the app draws it (uint8 rounding may differ by
    one level where thread counts change the last float bit)."""
    drawn = grid(samples, ncols=ncols, pad=DISPLAY.pad, upscale=upscale)
    expected = np.asarray(drawn, dtype=int)
    actual = np.asarray(image.convert(drawn.mode), dtype=int)
    return actual.shape == expected.shape and np.abs(actual - expected).max() <= 1


class RunEnd(NamedTuple):
    """One run's line in the server log (demo.handlers), such as
    `run 1a2b3c4d: stopped after step 13 of 1000; Stop came after step 12`."""
    state: str                  # finished, stopped, failed or closed (cancelled, or the client went away)
    steps_done: int
    steps: int
    stop_came: int | None       # steps done when Stop came


class Server(NamedTuple):
    url: str
    log: Path

    def runs(self, session: str) -> list[RunEnd]:
        """The runs of a session that have ended, in order."""
        ends = []
        for match in RUN_LINE.finditer(self.log.read_text(errors="replace")):
            if match[1] == session[:8]:
                stop = None if match[5] is None else int(match[5])
                ends.append(RunEnd(match[2], int(match[3]), int(match[4]), stop))
        return ends

    def wait_for_end(self, session: str, count: int = 1, timeout_s: float = 60) -> RunEnd:
        """The count-th run of session to end, once the server has logged it (timeout_s only
        bounds a broken server)."""
        deadline = time.monotonic() + timeout_s
        while len(ends := self.runs(session)) < count:
            assert time.monotonic() < deadline, f"no end of run {count} of session {session[:8]} in the log"
            time.sleep(0.05)
        return ends[count - 1]


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-checkpoints")
    make_checkpoints(folder)
    return folder


@pytest.fixture(scope="session")
def bundle(checkpoint_dir) -> Bundle:
    return load_bundle(checkpoint_dir, "cpu")


@pytest.fixture(scope="session")
def served_bundle(checkpoint_dir) -> Bundle:
    """The tiny checkpoints as `python app.py` loads them (its default backend), so the images the
    server sends can be compared with the library's for the same UNet runtime."""
    from demo.launch import parse_args

    return load_bundle(checkpoint_dir, "cpu", backend=parse_args([]).backend)


@pytest.fixture(scope="session")
def colour_bundle(tmp_path_factory) -> Bundle:
    folder = tmp_path_factory.mktemp("tiny-colour-checkpoints")
    make_checkpoints(folder, channels=3)
    return load_bundle(folder, "cpu")


UNBOUNDED = ("--max-seconds", "3600")  # the tests' servers: where a run ends never depends on the machine's speed


@pytest.fixture(scope="module")
def app_server(checkpoint_dir, tmp_path_factory) -> Server:
    """The real server, `python app.py --checkpoints <tiny> --port <free> --frame-interval 0`, for
    one test module, with its log. No time bound (UNBOUNDED): a long run that Stop ends must not be
    cut first on a slow machine."""
    from scripts.launcher import running_app

    log = tmp_path_factory.mktemp("server") / "app.log"
    with running_app(checkpoint_dir, threads=1, extra_args=("--frame-interval", "0", *UNBOUNDED), log_path=log) as url:
        yield Server(url, log)


@pytest.fixture(scope="module")
def app_url(app_server) -> str:
    return app_server.url


def chart_spec(value) -> dict:
    """The Vega-Lite spec of a chart output: as the API sends it (a dict, the JSON under "plot"),
    or as a handler returns it (gr.Plot's PlotData)."""
    return json.loads(value["plot"] if isinstance(value, dict) else value.plot)


def chart_points(value) -> list[dict]:
    """The points of a chart output: one dict per point, {"step", "probability" or "norm", "row"}."""
    return [point for points in chart_spec(value)["datasets"].values() for point in points]


def chart_table(value):
    """The points of a chart output as a DataFrame, in the order the chart holds them."""
    import pandas as pd

    return pd.DataFrame(chart_points(value))
