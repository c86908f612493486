"""From a folder of images to a running app: `python -m guidescope.train all` on a tiny generated
RGB folder (three classes, PNGs of assorted sizes) trains the three networks on one held-out
split and evaluates them; `python app.py --checkpoints OUT` then serves the folder's classes in
colour through gradio_client."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_fixtures import UNBOUNDED
from guidescope.training import command as train
from guidescope.training import data

CLASSES = ("blue", "green", "red")  # sorted, as the folder's subfolders are read


def write_folder(root: Path, per_class: int = 8) -> Path:
    """root/<colour>/<i>.png: distinct noisy images, 6 to 20 pixels a side, tinted by their class."""
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        channel = ("red", "green", "blue").index(name)
        for i in range(per_class):
            image = rng.integers(0, 90, (6 + 2 * i, 20 - i, 3), dtype=np.uint8)
            image[..., channel] += 160
            Image.fromarray(image).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(image folder, checkpoint folder) after the one command."""
    root = tmp_path_factory.mktemp("pipeline")
    folder, out = write_folder(root / "images"), root / "checkpoints"
    code = train.main(["all", "--image-folder", str(folder), "--out", str(out), "--image-size", "8",
                       "--holdout", "0.25", "--split-seed", "1", "--steps", "3", "--batch-size", "6",
                       "--base-channels", "8", "--num-timesteps", "100", "--log-every", "1", "--save-every", "100",
                       "--device", "cpu", "--threads", "1"])
    assert code == 0
    return folder, out


def test_all_trains_three_networks_on_one_split(trained):
    folder, out = trained
    metas = {kind: json.loads((out / f"{kind}.json").read_text()) for kind in ("unet", "classifier", "evaluator")}
    records = [meta["data"] for meta in metas.values()]
    assert records[0] == records[1] == records[2]
    record = records[0]
    assert (record["folder"], record["image_size"], record["channels"]) == (str(folder.resolve()), 8, 3)
    assert (record["split"], record["holdout"], record["split_seed"]) == ("holdout", 0.25, 1)
    assert record["counts"] == {"train": 18, "test": 6} and record["class_counts"]["test"] == [2, 2, 2]
    for meta in metas.values():
        assert meta["class_names"] == list(CLASSES) and meta["training"]["steps"] == 3
        assert meta["config"]["in_channels"] == 3 and meta["config"]["image_size"] == 8
    assert [metas[k]["training"]["seed"] for k in ("unet", "classifier", "evaluator")] == [0, 1, 2]
    train_set, test_set = data.from_record(record)
    assert not set(train_set.files) & set(test_set.files)
    assert not ({x.numpy().tobytes() for x in train_set.images} & {x.numpy().tobytes() for x in test_set.images})
    assert len(train_set.files) + len(test_set.files) == 3 * 8


def test_all_writes_the_evaluation(trained):
    _, out = trained
    assert (out / "defaults.json").is_file() and (out / "README.md").is_file()
    assert (out / "evaluation" / "results.json").is_file()


def running_app(checkpoints: Path):
    from scripts.launcher import running_app as launcher

    return launcher(checkpoints, threads=1, extra_args=UNBOUNDED)


def test_the_app_serves_the_folder_in_colour(trained):
    from gradio_client import Client

    _, out = trained
    with running_app(out) as url:
        client = Client(url, verbose=False)
        job = client.submit("red", 2.0, "unconditional", 0.0, 4, "ddim", 0.0, 2, 0, api_name="/generate")
        deadline = time.monotonic() + 120
        while not job.done():
            assert time.monotonic() < deadline, "the run did not finish"
            time.sleep(0.1)
        last = job.outputs()[-1]
    assert "done" in last[2]
    with Image.open(last[0]) as image:
        assert image.mode == "RGB"
        pixels = np.asarray(image, dtype=int)
    assert np.abs(pixels[..., 0] - pixels[..., 1]).max() > 0 and np.abs(pixels[..., 1] - pixels[..., 2]).max() > 0
