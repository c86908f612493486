"""Training smoke tests on a tiny synthetic dataset (8x8 stripes, two classes): losses fall,
resuming continues where the run stopped, the outputs load as a bundle, and the command line
trains on an image folder's training split only."""
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from guidescope.bundle import load_bundle
from guidescope.checkpoints import load
from guidescope.evaluation import card
from guidescope.networks.registry import MODELS
from guidescope.training import command as train
from guidescope.training.data import Dataset
from guidescope.training.distributed import Context
from guidescope.training.loop import Trainer
from guidescope.training.tasks import TASKS, roll_each

CLASSES = ("horizontal", "vertical")
SINGLE = Context(0, 1, torch.device("cpu"))


def stripes(n: int = 32, size: int = 8, seed: int = 0, channels: int = 1) -> Dataset:
    """Class 0: light grey with every fourth row white; class 1: dark grey with every fourth
    column black; random phase. The brightness keeps the classes apart even under heavy noise.
    With 3 channels, class 0 is tinted red and class 1 blue."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = (0.5 - labels.float()).reshape(n, 1, 1, 1).repeat(1, 1, size, size)
    for i in range(n):
        phase = int(torch.randint(4, (1,), generator=gen))
        if labels[i] == 0:
            images[i, :, phase::4, :] = 1
        else:
            images[i, :, :, phase::4] = -1
    if channels == 3:
        tint = torch.tensor([[0.0, -0.3, -0.3], [-0.3, -0.3, 0.0]])[labels][:, :, None, None]  # (n, 3, 1, 1)
        images = (images + tint).clamp(-1, 1)
    return Dataset(images, labels, CLASSES)


def argv_for(kind: str, out: Path, *extra: str) -> list[str]:
    return [kind, "--out", str(out), "--device", "cpu", "--batch-size", "16", "--log-every", "5",
            "--base-channels", "8", *(("--num-timesteps", "100") if kind != "evaluator" else ()), *extra]


def trainer(kind: str, out: Path, *extra: str, data: Dataset | None = None) -> Trainer:
    """A trainer for the command line's options, as main reads them, on `data` in this process."""
    (task, loop), = train.read_command_line(argv_for(kind, out, *extra)).plan
    data = data or stripes()
    return Trainer(task, loop, data, data, SINGLE)


def read_log(out: Path, kind: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"train-{kind}.log").read_text().splitlines()]


def run(kind: str, out: Path, *extra: str, data: Dataset | None = None) -> list[dict]:
    """Train in-process on `data` and return the JSON-lines log."""
    trainer(kind, out, *extra, data=data).run()
    return read_log(out, kind)


def losses(log: list[dict]) -> list[float]:
    return [r["loss"] for r in log if "loss" in r]


def test_the_trainer_names_kinds_as_their_checkpoints():
    assert set(TASKS) == {"unet", "classifier", "evaluator", "autoencoder", "guide_classifier"}
    assert set(TASKS) <= set(MODELS)  # ADM ones are converted


@pytest.mark.parametrize("kind, steps, batch", [("unet", 30, 8), ("classifier", 40, 16)])
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


@pytest.mark.parametrize("kind", ["classifier", "unet"])
def test_resume_continues_the_run(tmp_path, kind):
    """A 20-step run that dies after its step-10 save and is resumed gives the same network as
    20 steps in one go: the state holds weights, EMA, optimizer and the batch generator, and the
    dropout generator restarts from (seed, step) at every save."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    options = ("--steps", "20", "--save-every", "10")
    run(kind, straight, *options)
    crashing = trainer(kind, resumed, *options)
    save = crashing.finish

    def finish_then_crash(final):
        save(final)
        raise Crash

    crashing.finish = finish_then_crash
    with pytest.raises(Crash):
        crashing.run()
    assert json.loads((resumed / f"train-{kind}" / "state.json").read_text())["step"] == 10
    trainer(kind, resumed, *options, "--resume").run()
    log = read_log(resumed, kind)
    assert [r["step"] for r in log if "loss" in r] == [5, 10, 15, 20]  # not 5 and 10 again
    assert json.loads((resumed / f"train-{kind}" / "state.json").read_text())["step"] == 20
    for name in (f"{kind}.safetensors", f"train-{kind}/state.safetensors"):
        a, b = load_file(straight / name), load_file(resumed / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=f"{name}: {key}")
    assert json.loads((resumed / f"{kind}.json").read_text())["training"]["steps"] == 20


def test_the_state_file_keeps_its_keys(tmp_path):
    """States written by earlier versions still resume: the keys stay model.NAME, ema.NAME,
    opt.INDEX.NAME and rng."""
    t = trainer("unet", tmp_path, "--steps", "2")
    t.run()
    keys = set(load_file(tmp_path / "train-unet" / "state.safetensors"))
    names = set(t.model.state_dict())
    assert {k for k in keys if k.startswith(("model.", "ema."))} == {f"{s}.{n}" for s in ("model", "ema") for n in names}
    params = len(list(t.model.parameters()))
    assert {k for k in keys if k.startswith("opt.")} == {f"opt.{i}.{n}" for i in range(params)
                                                         for n in ("step", "exp_avg", "exp_avg_sq")}
    assert keys - {k for k in keys if k.startswith(("model.", "ema.", "opt."))} == {"rng"}
    assert set(json.loads((tmp_path / "train-unet" / "state.json").read_text())) == {"step", "elapsed", "param_groups"}


def test_resume_without_state_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved state"):
        run("classifier", tmp_path, "--steps", "2", "--resume")


def test_time_budget_stops_the_run(tmp_path):
    log = run("classifier", tmp_path, "--steps", "50", "--minutes", "0")
    assert [(r["step"], r.get("final")) for r in log] == [(0, True)]  # no step taken, the model still saved
    assert json.loads((tmp_path / "classifier.json").read_text())["training"]["steps"] == 0


def test_rgb_outputs_load_as_a_bundle(tmp_path):
    rgb = stripes(channels=3)
    run("unet", tmp_path, "--steps", "3", "--schedule", "linear", data=rgb)
    run("classifier", tmp_path, "--steps", "3", "--schedule", "linear", data=rgb)
    run("evaluator", tmp_path, "--steps", "2", "--batch-size", "4", data=rgb)
    bundle = load_bundle(tmp_path, need_evaluator=True)
    assert bundle.class_names == CLASSES and (bundle.schedule, bundle.num_timesteps) == ("linear", 100)
    for network in (bundle.unet, bundle.classifier, bundle.evaluator):
        assert (network.config.image_size, network.config.in_channels, network.config.num_classes) == (8, 3, 2)
    x = torch.zeros(2, 3, 8, 8)
    assert bundle.unet(x, torch.tensor([0, 99]), torch.tensor([0, 2])).shape == (2, 3, 8, 8)
    assert bundle.classifier(x, torch.tensor([0, 99])).shape == (2, 2)
    assert bundle.evaluator(x).shape == (2, 2)
    _, meta = load(tmp_path, "unet")
    assert meta["training"]["steps"] == 3 and meta["training"]["p_uncond"] == 0.2
    assert load(tmp_path, "evaluator")[1]["config"]["channels"] == [8, 16, 32, 64]  # --base-channels 8


def test_roll_each_rolls_every_image_by_its_own_shift():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    shifts = torch.tensor([[1, -2], [0, 2]])
    expected = torch.stack([torch.roll(x[i], tuple(shifts[i].tolist()), dims=(1, 2)) for i in range(2)])
    assert torch.equal(roll_each(x, shifts), expected)


def write_stripes_folder(root: Path, per_class: int = 4) -> Path:
    """root/<class>/<i>.png: 28x28 grey stripes as in stripes(), image i at phase i (so all differ)."""
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            array = np.full((28, 28), 191 if label == 0 else 64, np.uint8)
            if label == 0:
                array[i::4, :] = 255
            else:
                array[:, i::4] = 0
            Image.fromarray(array).save(root / name / f"{i}.png")
    return root


def test_main_trains_on_the_training_split_of_an_image_folder(tmp_path):
    images = write_stripes_folder(tmp_path / "images")
    out = tmp_path / "out"
    code = train.main(["classifier", "--out", str(out), "--image-folder", str(images), "--image-size", "28",
                       "--holdout", "0.25", "--steps", "4", "--batch-size", "4", "--log-every", "2",
                       "--base-channels", "8", "--device", "cpu", "--threads", "1"])
    assert code == 0
    assert [r["step"] for r in read_log(out, "classifier") if "loss" in r] == [2, 4]
    meta = load(out, "classifier")[1]
    assert meta["class_names"] == list(CLASSES) and meta["config"]["in_channels"] == 1
    record = meta["data"]
    assert (record["source"], record["split"], record["holdout"]) == ("image-folder", "holdout", 0.25)
    assert record["counts"] == {"train": 6, "test": 2} and record["class_counts"]["test"] == [1, 1]
    assert "--holdout 0.25" in meta["training"]["command"]


def test_every_task_field_has_an_option():
    assert set(train.NETWORK_OPTIONS) == {f.name for cls in TASKS.values() for f in fields(cls)}


def test_main_rejects_options_of_other_kinds(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(["classifier", "--out", str(tmp_path), "--p-uncond", "0.1", "--dropout", "0"])
    assert exit_.value.code == 2
    assert "--dropout, --p-uncond do not apply to the classifier" in capsys.readouterr().err


def test_main_rejects_a_network_that_does_not_fit_the_images(tmp_path, capsys):
    images = write_stripes_folder(tmp_path / "images", per_class=2)
    code = train.main(["unet", "--out", str(tmp_path / "out"), "--image-folder", str(images), "--image-size", "10",
                       "--attention-levels", "3", "--steps", "1", "--device", "cpu"])
    assert code == 2 and "attention levels (3,) must be among the levels 0..2" in capsys.readouterr().err


def test_main_reports_missing_data(tmp_path, capsys):
    code = train.main(["classifier", "--out", str(tmp_path), "--data-dir", str(tmp_path / "nowhere"),
                       "--device", "cpu", "--threads", "1"])
    assert code == 2 and "apt-get install" in capsys.readouterr().err


def test_the_classifiers_noise_weighting_tilts_its_timesteps_toward_the_noisy_end():
    uniform = TASKS["classifier"](num_timesteps=1000)
    g = torch.Generator().manual_seed(0)
    t, _ = uniform.draw(20000, (20000, 1, 2, 2), g)
    # noise_power 0 draws exactly what the uniform task always drew, so old runs resume the same
    assert torch.equal(t, torch.randint(1000, (20000,), generator=torch.Generator().manual_seed(0)))
    tilted, _ = TASKS["classifier"](num_timesteps=1000, noise_power=1.0).draw(20000, (20000, 1, 2, 2), g)
    # density 2t/T: mean 2T/3, and 7/16 of the draws in the noisiest quarter (uniform: 1/4)
    assert abs(float(tilted.float().mean()) - 666.7) < 10 and int(tilted.max()) <= 999
    assert abs(float((tilted >= 750).float().mean()) - 7 / 16) < 0.02
    with pytest.raises(ValueError, match="noise_power"):
        TASKS["classifier"](noise_power=-1.0)
    plan = train.read_command_line(["classifier", "--noise-power", "1", "--out", "x"]).plan
    assert plan[0][0].noise_power == 1.0


def test_a_new_head_is_trained_on_a_kept_encoder(tmp_path):
    """--init with another --pool and --train-only head: the encoder's tensors are the init
    folder's, bit for bit; the attention head starts fresh, learns, and is named in the record;
    the mean head's tensors are left out."""
    first, second = tmp_path / "mean", tmp_path / "attention"
    run("classifier", first, "--steps", "10", "--save-every", "1000")
    log = run("classifier", second, "--steps", "40", "--lr", "5e-3", "--save-every", "1000", "--init", str(first),
              "--pool", "attention", "--train-only", "head")
    before, after = load_file(first / "classifier.safetensors"), load_file(second / "classifier.safetensors")
    record = json.loads((second / "classifier.json").read_text())
    assert record["config"]["pool"] == "attention" and record["training"]["trained_only"] == "head"
    assert set(record["training"]["new_tensors"]) == after.keys() - before.keys()
    assert {n.split(".")[2] for n in record["training"]["new_tensors"]} == {"positional_embedding", "qkv_proj", "c_proj"}
    assert not [n for n in before.keys() & after.keys() if not n.startswith("head.")
                if not torch.equal(before[n], after[n])]
    assert not torch.equal(before["head.0.weight"], after["head.0.weight"])  # the head's norm is trained too
    assert losses(log)[-1] < 0.85 * losses(log)[0]
    assert load(second, "classifier")[0].config.pool == "attention"
    # the record keeps the stage it started from, and the model card shows both stages
    first_training = json.loads((first / "classifier.json").read_text())["training"]
    assert record["training"]["init"] == {"folder": str(first), "training": first_training}
    assert card.stages(record["training"]) == [first_training, record["training"]]
    (row,) = card._network_rows(second)
    assert f"`{first_training['command']}`; then `{record['training']['command']}`" in row
    assert f"| {first_training['steps']} + 40 |" in row


def test_fine_tuning_options_are_checked(tmp_path, capsys):
    run("classifier", tmp_path / "small", "--steps", "2", "--save-every", "1000")
    with pytest.raises(SystemExit):
        train.read_command_line(argv_for("classifier", tmp_path, "--train-only", "head"))
    assert "needs the rest from --init" in capsys.readouterr().err
    with pytest.raises(ValueError, match="'tail' names no part of the network; its parts: encoder, head"):
        trainer("classifier", tmp_path / "x", "--init", str(tmp_path / "small"), "--train-only", "tail")
    with pytest.raises(ValueError, match="is another network: .* differ in shape"):
        trainer("classifier", tmp_path / "y", "--init", str(tmp_path / "small"), "--base-channels", "16")
    with pytest.raises(ValueError, match="unknown pool 'max'; choose one of"):
        trainer("classifier", tmp_path / "z", "--pool", "max")
