"""One seeding rule through every door: for the same seed and settings, class 0's images from the
evaluation (guidescope/evaluation/measure.py), the command line (`python -m guidescope.sample`, in a
child process) and the real app's /generate endpoint (through gradio_client) are the same bytes,
when each samples the same batch: the n images of one class."""
from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client
from PIL import Image

from app_fixtures import CLASS_NAMES, app_server, app_url, bundle, checkpoint_dir  # noqa: F401
from demo.settings import DISPLAY
from guidescope.evaluation.measure import Setting, draw
from guidescope.images import grid

REPO = Path(__file__).resolve().parent.parent
N, SEED, STEPS, SCALE = 4, 7, 6, 2.0   # guided, so the classifier's gradient is part of what must agree


@pytest.fixture(scope="module")
def evaluation_images(bundle) -> np.ndarray:  # noqa: F811
    """Class 0's images as the evaluation draws them, one class per batch: uint8 (N, C, H, W)."""
    samples = draw(bundle, Setting("ddim", STEPS, SCALE), N, SEED, batch_size=N)
    assert samples.labels[:N].tolist() == [0] * N and samples.labels[N:].ne(0).all()
    return samples.images[:N].numpy()


def test_classes_start_from_different_images(bundle):  # noqa: F811
    """Class c's images are images c*n.. of the seed: at w = 0 no class repeats another's."""
    unguided = draw(bundle, Setting("ddim", STEPS, 0.0), N, SEED).images
    per_class = unguided.reshape(len(CLASS_NAMES), N, -1)
    assert not any(np.array_equal(per_class[a], per_class[b]) for a in range(len(CLASS_NAMES)) for b in range(a))


def test_the_command_line_draws_the_evaluations_images(checkpoint_dir, evaluation_images, tmp_path):  # noqa: F811
    out = tmp_path / "x.npz"
    command = [sys.executable, "-m", "guidescope.sample", "--checkpoints", str(checkpoint_dir), "--class", "0",
               "--n", str(N), "--batch-size", str(N), "--seed", str(SEED), "--scale", str(SCALE), "--steps",
               str(STEPS), "--out", str(out), "--backend", "torch", "--device", "cpu", "--threads", "1"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    images = np.load(out)["images"]  # (N, H, W): one channel
    assert images.dtype == np.uint8 and np.array_equal(images, evaluation_images[:, 0])


def test_the_app_shows_the_evaluations_images(app_url, evaluation_images):  # noqa: F811
    client = Client(app_url, verbose=False)
    job = client.submit(class_name=CLASS_NAMES[0], scale=SCALE, unet="unconditional", cfg_scale=0.0, steps=STEPS,
                        sampler="ddim", eta=0.0, num_images=N, seed=SEED, api_name="/generate")
    deadline = time.monotonic() + 120
    while not job.done():
        assert time.monotonic() < deadline, "the app did not finish in time"
        time.sleep(0.05)
    final_x_t = job.outputs()[-1][0]
    # A single row is drawn as a near-square block of tiles (demo/render.py).
    expected = grid(evaluation_images, ncols=math.ceil(N / math.isqrt(N)), pad=DISPLAY.pad, upscale=DISPLAY.upscale)
    with Image.open(final_x_t) as image:
        assert image.format == "PNG"
        actual = np.asarray(image.convert("L"))
    assert np.array_equal(actual, np.asarray(expected.convert("L")))
