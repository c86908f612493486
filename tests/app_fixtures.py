"""Fixtures for the app tests: a checkpoint folder of tiny random networks (16x16 images, four
classes, a few thousand weights each) and the real server started on it with `python app.py`.

Test modules import the fixtures they use by name from here.
"""
from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from demo.settings import DISPLAY
from guidance.checkpoints import Bundle, load_bundle, save
from guidance.generation import generate
from guidance.images import grid
from guidance.models import (ClassifierConfig, Evaluator, EvaluatorConfig, NoisyClassifier, UNet,
                             UNetConfig)

CLASS_NAMES = ("T-shirt/top", "Trouser", "Sneaker", "Bag")
NUM_TIMESTEPS = 1000
TINY = dict(image_size=16, channel_mults=(1, 2), num_classes=len(CLASS_NAMES))


def _randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Perturb every weight: fresh networks zero their output layers (eps would be 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def make_checkpoints(folder) -> None:
    """unet, classifier and evaluator checkpoints of tiny random networks in folder."""
    torch.manual_seed(0)
    meta = dict(class_names=list(CLASS_NAMES), diffusion={"schedule": "cosine", "num_timesteps": NUM_TIMESTEPS})
    unet = UNet(UNetConfig(**TINY, base_channels=8, num_res_blocks=1, attention_levels=(1,), num_heads=2, dropout=0.0))
    save(_randomized(unet, 1), folder, "unet", **meta)
    save(_randomized(NoisyClassifier(ClassifierConfig(**TINY, base_channels=8)), 2), folder, "classifier", **meta)
    evaluator = Evaluator(EvaluatorConfig(image_size=16, num_classes=len(CLASS_NAMES), layers=(1, 1, 1, 1),
                                          channels=(8, 8, 8, 8), input_size=16))
    save(evaluator, folder, "evaluator", **meta)


def library_samples(bundle: Bundle, class_index: int, scale: float, steps: int, num_images: int, seed: int,
                    sampler: str = "ddim", eta: float = 0.0) -> np.ndarray:
    """The images the command line (`python -m guidance.sample`) draws for the same settings:
    (n, C, H, W) uint8."""
    return generate(bundle, class_index, scale, None, steps, sampler, eta, n=num_images, seed=seed).images.numpy()


def raw_call_events(app_url: str, api_name: str, data_json: str) -> str:
    """Call an endpoint with a hand-written JSON list of arguments (which may hold literals such as
    NaN that gradio_client refuses to send) and return the server's event stream as text."""
    request = urllib.request.Request(f"{app_url}gradio_api/call/{api_name}", data=f'{{"data": {data_json}}}'.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        event_id = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(f"{app_url}gradio_api/call/{api_name}/{event_id}", timeout=30) as response:
        return response.read().decode()


def pixels_match(image: Image.Image, samples: torch.Tensor | np.ndarray, ncols: int, upscale: int = DISPLAY.upscale) -> bool:
    """Whether image is the grid of samples as the app draws it (uint8 rounding may differ by
    one level where thread counts change the last float bit)."""
    expected = np.asarray(grid(samples, ncols=ncols, pad=DISPLAY.pad, upscale=upscale).convert("L"), dtype=int)
    actual = np.asarray(image.convert("L"), dtype=int)
    return actual.shape == expected.shape and np.abs(actual - expected).max() <= 1


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-checkpoints")
    make_checkpoints(folder)
    return folder


@pytest.fixture(scope="session")
def bundle(checkpoint_dir) -> Bundle:
    return load_bundle(checkpoint_dir, "cpu")


@pytest.fixture(scope="module")
def app_url(checkpoint_dir):
    """The real server, `python app.py --checkpoints <tiny> --port <free>`, for one test module."""
    from demo.server import running_app

    with running_app(checkpoint_dir, threads=1) as url:
        yield url
