"""Training smoke tests on a tiny synthetic dataset (8x8 stripes, two classes): losses fall,
resuming continues where the run stopped, and the outputs load as a bundle."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from guidance import train
from guidance.checkpoints import load, load_bundle
from guidance.data import Dataset

CLASSES = ("horizontal", "vertical")


def stripes(n: int = 32, size: int = 8, seed: int = 0) -> Dataset:
    """Class 0: light grey with every fourth row white; class 1: dark grey with every fourth
    column black; random phase. The brightness keeps the classes apart even under heavy noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = (0.5 - labels.float()).reshape(n, 1, 1, 1).repeat(1, 1, size, size)
    for i in range(n):
        phase = int(torch.randint(4, (1,), generator=gen))
        if labels[i] == 0:
            images[i, :, phase::4, :] = 1
        else:
            images[i, :, :, phase::4] = -1
    return Dataset(images, labels, CLASSES)


def run(kind: str, out: Path, *extra: str, data: Dataset | None = None) -> list[dict]:
    """Train in-process on `data` and return the JSON-lines log."""
    argv = [kind, "--out", str(out), "--device", "cpu", "--batch-size", "16", "--log-every", "5",
            "--base-channels", "8", "--num-timesteps", "100", *extra]
    data = data or stripes()
    train.Trainer(train.parse_args(argv), data, data).run()
    return [json.loads(line) for line in (out / f"train-{kind}.log").read_text().splitlines()]


def losses(log: list[dict]) -> list[float]:
    return [r["loss"] for r in log if "loss" in r]


@pytest.mark.parametrize("kind, steps, batch", [("diffusion", 30, 8), ("classifier", 40, 16)])
def test_loss_falls(tmp_path, kind, steps, batch):
    log = run(kind, tmp_path, "--steps", str(steps), "--batch-size", str(batch), "--lr", "5e-3", "--save-every", "1000")
    curve = losses(log)  # the trainer logs a running mean, which lags the batch losses
    assert len(curve) == steps // 5 and all(np.isfinite(curve))
    assert curve[-1] < 0.85 * curve[0], curve
    assert log[-1]["saved"] and log[-1]["final"] and log[-1]["step"] == steps
    if kind == "classifier":
        assert log[-1]["acc_q0"] > 0.9  # nearly clean images of two easy classes


class Crash(Exception):
    pass


def test_resume_continues_the_run(tmp_path):
    """A 20-step run that dies after its step-10 save and is resumed gives the same classifier as
    20 steps in one go (the classifier has no dropout, and the trainer's generator state is saved)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run("classifier", straight, "--steps", "20", "--save-every", "10")
    argv = ["classifier", "--out", str(resumed), "--device", "cpu", "--batch-size", "16", "--log-every", "5",
            "--base-channels", "8", "--num-timesteps", "100", "--steps", "20", "--save-every", "10"]
    data = stripes()
    trainer = train.Trainer(train.parse_args(argv), data, data)
    save = trainer.finish

    def finish_then_crash(final):
        save(final)
        raise Crash

    trainer.finish = finish_then_crash
    with pytest.raises(Crash):
        trainer.run()
    assert json.loads((resumed / "train-classifier" / "state.json").read_text())["step"] == 10
    train.Trainer(train.parse_args(argv + ["--resume"]), data, data).run()
    log = [json.loads(line) for line in (resumed / "train-classifier.log").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [5, 10, 15, 20]  # not 5 and 10 again
    assert json.loads((resumed / "train-classifier" / "state.json").read_text())["step"] == 20
    a, b = load_file(straight / "classifier.safetensors"), load_file(resumed / "classifier.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)
    assert json.loads((resumed / "classifier.json").read_text())["training"]["steps"] == 20


def test_resume_without_state_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved state"):
        run("classifier", tmp_path, "--steps", "2", "--resume")


def test_outputs_load_as_a_bundle(tmp_path):
    run("diffusion", tmp_path, "--steps", "3", "--schedule", "linear")
    run("classifier", tmp_path, "--steps", "3")
    run("evaluator", tmp_path, "--steps", "2", "--batch-size", "4")
    bundle = load_bundle(tmp_path, need_evaluator=True)
    assert bundle.class_names == CLASSES and (bundle.schedule, bundle.num_timesteps) == ("linear", 100)
    assert bundle.unet.config.image_size == 8 and bundle.unet.config.num_classes == 2
    x = torch.zeros(2, 1, 8, 8)
    assert bundle.unet(x, torch.tensor([0, 99]), torch.tensor([0, 2])).shape == (2, 1, 8, 8)
    assert bundle.classifier(x, torch.tensor([0, 99])).shape == (2, 2)
    assert bundle.evaluator(x).shape == (2, 2)
    _, meta = load(tmp_path, "unet")
    assert meta["training"]["steps"] == 3


def test_main_trains_on_an_image_folder(tmp_path):
    for label, name in enumerate(CLASSES):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i, image in enumerate(stripes(4, 28, seed=label).images[label::2]):
            array = ((image[0] + 1) * 127.5).round().to(torch.uint8).numpy()
            Image.fromarray(array).save(tmp_path / "images" / name / f"{i}.png")
    out = tmp_path / "out"
    code = train.main(["classifier", "--out", str(out), "--image-folder", str(tmp_path / "images"),
                       "--steps", "4", "--batch-size", "4", "--log-every", "2", "--base-channels", "8",
                       "--device", "cpu", "--threads", "1"])
    assert code == 0
    log = [json.loads(line) for line in (out / "train-classifier.log").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [2, 4]
    assert load(out, "classifier")[1]["class_names"] == list(CLASSES)


def test_main_reports_missing_data(tmp_path, capsys):
    code = train.main(["classifier", "--out", str(tmp_path), "--data-dir", str(tmp_path / "nowhere"),
                       "--device", "cpu", "--threads", "1"])
    assert code == 2 and "apt-get install" in capsys.readouterr().err
