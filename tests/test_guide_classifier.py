"""The clean-image guide classifier: any timm architecture behind one contract (images in [-1, 1]
-> logits, mapped onto the range and resized to the side the network wants, differentiable), its
checkpoint round trip, the names it refuses, the shipped network's size and family, and a short
run of its training kind on tiny networks."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize
from test_train import SINGLE, read_log, stripes
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from guidescope.checkpoints import CheckpointError, load, save
from guidescope.evaluation import card
from guidescope.networks.guide_classifier import GuideClassifier, GuideClassifierConfig
from guidescope.networks.small import Evaluator, EvaluatorConfig
from guidescope.training import command as train
from guidescope.training.loop import Trainer
from guidescope.training.tasks import TASKS, translate_each

REPO = Path(__file__).resolve().parent.parent

TINY_ARGS = {"patch_size": 1, "depths": (0, 1, 1, 1), "dims": (8, 8, 16, 16)}  # 8x8 -> 8, 4, 2, 1
MAX_MFLOP = 30  # the shipped network runs forward and backward at every guided sampling step


def tiny(seed: int = 0, **config) -> GuideClassifier:
    torch.manual_seed(seed)
    cfg = GuideClassifierConfig(model_args=TINY_ARGS, num_classes=3, image_size=8, **config)
    return GuideClassifier(cfg).eval()


class Recorder(nn.Module):
    """Stands in for the timm network: records what it receives, answers zeros (B, 3)."""

    def forward(self, x):
        self.received = x
        return x.new_zeros(len(x), 3)


def received(model: GuideClassifier, x: torch.Tensor) -> torch.Tensor:
    model.net = Recorder()
    model(x)
    return model.net.received


def test_images_in_the_model_range_give_logits_and_input_gradients():
    model = tiny()
    x = (torch.rand(4, 1, 8, 8) * 2 - 1).requires_grad_(True)
    logits = model(x)
    assert logits.shape == (4, 3) and logits.isfinite().all()
    (grad,) = torch.autograd.grad(logits[:, 1].sum(), x)
    assert grad.shape == x.shape and grad.isfinite().all() and grad.abs().sum() > 0
    # each image's logits are its own: no batch statistics (LayerNorm, not BatchNorm)
    assert torch.allclose(model(x[:1]), logits[:1], atol=1e-6)


@pytest.mark.parametrize("input_range, expected", [((-1, 1), (-1.0, 0.0, 1.0)), ((0, 1), (0.0, 0.5, 1.0)),
                                                   ((0, 255), (0.0, 127.5, 255.0)), ((-2, 3), (-2.0, 0.5, 3.0))])
def test_the_model_range_is_mapped_onto_the_networks(input_range, expected):
    """-1, 0 and 1 land exactly on lo, the midpoint and hi; any x on lo + (x + 1)(hi - lo) / 2."""
    pattern = (torch.arange(64) % 3).reshape(1, 1, 8, 8)  # pixels -1, 0, 1, -1, ...
    x = torch.tensor([-1.0, 0.0, 1.0])[pattern]
    assert torch.equal(received(tiny(input_range=input_range), x), torch.tensor(expected)[pattern])
    lo, hi = input_range
    y = torch.rand(2, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(received(tiny(input_range=input_range), y), lo + (y + 1) * (hi - lo) / 2)


def test_images_are_resized_to_the_networks_side_only_when_it_differs():
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert torch.equal(received(tiny(), x), x)
    assert tiny().config.input_size == 8  # None: the images' side
    bigger = received(tiny(input_size=16), x)
    assert torch.equal(bigger, F.interpolate(x, size=16, mode="bilinear", align_corners=False))
    assert tiny(input_size=16)(x).shape == (2, 3)  # the real network at 16x16


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    model = tiny(seed=3, input_range=(0, 1), input_size=12)
    save(model, tmp_path, "guide_classifier", class_names=["a", "b", "c"])
    meta = json.loads((tmp_path / "guide_classifier.json").read_text())
    assert meta["kind"] == "guide_classifier" and meta["config"]["model_args"]["depths"] == [0, 1, 1, 1]
    loaded, _ = load(tmp_path, "guide_classifier")
    assert isinstance(loaded, GuideClassifier) and loaded.config == model.config  # JSON lists back to tuples
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert torch.equal(loaded(x), model(x))


def test_an_unknown_architecture_is_refused_naming_it_and_its_neighbours(tmp_path):
    with pytest.raises(ValueError, match=r"unknown timm architecture 'convnext_attto'; choose one of "
                                         r"timm.list_models\(\) \(\d+ names\), such as .*convnext_atto"):
        GuideClassifierConfig(architecture="convnext_attto")
    with pytest.raises(ValueError, match=r"timm's convnext_atto refuses the model arguments \{'widths': \(8,\)\}"):
        GuideClassifier(GuideClassifierConfig(model_args={"widths": (8,)}))
    with pytest.raises(ValueError, match=r"input_range must be \(lo, hi\) with lo < hi, got \(1.0, 0.0\)"):
        GuideClassifierConfig(input_range=(1, 0))
    save(tiny(), tmp_path, "guide_classifier")
    record = json.loads((tmp_path / "guide_classifier.json").read_text())
    record["config"]["architecture"] = "no_such_net"
    (tmp_path / "guide_classifier.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="unknown timm architecture 'no_such_net'"):
        load(tmp_path, "guide_classifier")


def test_the_shipped_network_is_small_and_not_the_evaluators_family():
    model = TASKS["guide_classifier"]().build(num_classes=10, image_size=28, channels=1).eval()
    assert model.config == GuideClassifierConfig()  # the task's defaults are the config's
    with FlopCounterMode(display=False) as flops:
        assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    assert flops.get_total_flops() <= MAX_MFLOP * 1e6
    evaluator = Evaluator(EvaluatorConfig(layers=(1, 1, 1, 1), channels=(8, 8, 8, 8)))
    assert type(model.net).__name__ == "ConvNeXt" and not isinstance(model.net, type(evaluator.net))


def test_translate_each_is_a_random_crop_of_the_padded_image():
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).reshape(2, 1, 4, 5)
    shifts = torch.tensor([[1, -2], [0, 2]])
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    # moving by (dy, dx) shows the crop of the padded image that starts at (pad - dy, pad - dx)
    expected = torch.stack([padded[i, :, 2 - dy:2 - dy + 4, 2 - dx:2 - dx + 5]
                            for i, (dy, dx) in enumerate(shifts.tolist())])
    assert torch.equal(translate_each(x, shifts, pad=2, fill=-1.0), expected)
    assert torch.equal(translate_each(x, torch.zeros(2, 2, dtype=torch.long), pad=2, fill=-1.0), x)


def tiny_argv(out, *extra: str) -> list[str]:
    return ["guide_classifier", "--out", str(out), "--device", "cpu", "--batch-size", "16", "--log-every", "5",
            "--model-args", json.dumps(TINY_ARGS), "--save-every", "1000", *extra]


def test_a_short_training_run_learns_and_writes_its_checkpoint(tmp_path):
    (task, loop), = train.read_command_line(tiny_argv(tmp_path, "--steps", "30", "--lr", "5e-3")).plan
    data = stripes()
    Trainer(task, loop, data, data, SINGLE).run()
    log = read_log(tmp_path, "guide_classifier")
    curve = [r["loss"] for r in log if "loss" in r]
    assert len(curve) == 6 and curve[-1] < 0.85 * curve[0], curve
    assert log[-1]["saved"] and log[-1]["final"] and log[-1]["step"] == 30 and log[-1]["test_acc"] == 1.0
    assert {p.name for p in tmp_path.iterdir()} >= {"guide_classifier.safetensors", "guide_classifier.json"}
    model, meta = load(tmp_path, "guide_classifier")
    assert model.config.model_args == TINY_ARGS and model.config.image_size == 8 and model.config.num_classes == 2
    training = meta["training"]
    assert (training["label_smoothing"], training["crop_padding"], training["steps"]) == (0.1, 2, 30)
    assert training["test_acc"] == 1.0 and "--model-args" in training["command"]


def test_the_command_line_sets_the_guide_classifiers_fields(tmp_path, capsys):
    (task, _), = train.read_command_line(tiny_argv(tmp_path, "--architecture", "vit_tiny_patch16_224",
                                                   "--input-size", "32", "--crop-padding", "4")).plan
    assert (task.architecture, task.input_size, task.crop_padding) == ("vit_tiny_patch16_224", 32, 4)
    assert task.model_args == {"patch_size": 1, "depths": [0, 1, 1, 1], "dims": [8, 8, 16, 16]}
    (default, _), = train.read_command_line(["guide_classifier", "--out", str(tmp_path)]).plan
    assert default.architecture is None and default.model_args is None  # the shipped network
    with pytest.raises(SystemExit):
        train.read_command_line(tiny_argv(tmp_path, "--model-args", "[1, 2]"))
    assert "expected a JSON object" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.read_command_line(tiny_argv(tmp_path, "--base-channels", "8"))
    assert "--base-channels do not apply to the guide_classifier" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.read_command_line(tiny_argv(tmp_path, "--label-smoothing", "1"))
    assert "label_smoothing must be in [0, 1), got 1.0" in capsys.readouterr().err


def test_another_architecture_without_model_args_gets_timms_own():
    model = TASKS["guide_classifier"](architecture="resnet10t").build(num_classes=2, image_size=8, channels=1)
    assert model.config.architecture == "resnet10t" and model.config.model_args == {}
    model = TASKS["guide_classifier"](architecture="convnext_atto", model_args=TINY_ARGS).build(2, 8, 1)
    assert model.config.model_args == TINY_ARGS


@pytest.mark.parametrize("bundle", ["fashion-mnist", "fashion-mnist-latent"])
def test_both_bundles_ship_the_clean_guide_and_it_classifies_real_held_out_images(bundle):
    """The trained guide (a ConvNeXt on clean images, not the evaluator's ResNet) is in both
    bundles, the same network, adversarially trained: right on most of the first 1000 held-out
    images, and still on most of them moved by an L2 attack of radius 2, where the plainly trained
    one it was fine-tuned from (checkpoints/candidates) is more accurate clean and nearly always
    wrong."""
    from guidescope.training import data

    folder = REPO / "checkpoints" / bundle
    guide, meta = load(folder, "guide_classifier")
    plain, _ = load(REPO / "checkpoints" / "candidates" / "guide-classifier-plain", "guide_classifier")
    assert isinstance(guide, GuideClassifier) and meta["config"]["architecture"].startswith("convnext")
    assert meta["training"]["adversarial_radius"] > 0
    assert (folder / "guide_classifier.safetensors").read_bytes() == \
        (REPO / "checkpoints" / "fashion-mnist" / "guide_classifier.safetensors").read_bytes()
    _, test = data.load(data.DataSource())
    x, y = test.images[:1000], test.labels[:1000]
    attack = TASKS["guide_classifier"](adversarial_radius=2.0, adversarial_steps=5, label_smoothing=0.0)
    accuracy = {}
    for name, net in (("shipped", guide.requires_grad_(False)), ("plain", plain.requires_grad_(False))):
        moved = attack.adversarial(net, x[:300], y[:300])
        with torch.no_grad():
            accuracy[name] = [float((net(v).argmax(1) == labels).float().mean()) for v, labels in ((x, y), (moved, y[:300]))]
    assert accuracy["shipped"][0] > 0.7 and accuracy["plain"][0] > 0.85, accuracy
    assert accuracy["shipped"][1] > 0.5 and accuracy["plain"][1] < 0.2, accuracy


def test_an_adversarial_move_stays_in_its_ball_and_raises_the_loss():
    task = TASKS["guide_classifier"](adversarial_radius=1.5, adversarial_steps=3)
    net = randomize(tiny(seed=4), seed=4)  # every weight drawn: timm's initialisation (near-identity blocks) varies by version
    torch.manual_seed(5)
    x, y = torch.rand(6, 1, 8, 8) * 2 - 1, torch.randint(0, 3, (6,))
    moved = task.adversarial(net, x, y)
    distance = (moved - x).flatten(1).norm(dim=1)
    assert (distance <= 1.5 + 1e-5).all() and (distance > 0.5).all(), distance
    assert moved.min() >= -1 and moved.max() <= 1 and not moved.requires_grad
    loss = [F.cross_entropy(net(v), y, reduction="none", label_smoothing=0.1) for v in (x, moved)]
    assert loss[1].mean() > loss[0].mean(), loss  # PGD's large steps may overshoot for one image, not for the batch
    # a small step moves each image up its own loss's gradient, so every image's loss rises
    small = TASKS["guide_classifier"](adversarial_radius=0.05, adversarial_steps=1).adversarial(net, x, y)
    nudged = F.cross_entropy(net(small), y, reduction="none", label_smoothing=0.1)
    assert (nudged > loss[0]).all(), (nudged, loss[0])
    assert all(p.grad is None for p in net.parameters())  # the move leaves the weights' gradients alone


def test_adversarial_training_runs_from_the_command_line_and_is_recorded(tmp_path, capsys):
    (task, loop), = train.read_command_line(tiny_argv(tmp_path, "--steps", "10", "--adversarial-radius", "0.5",
                                                      "--adversarial-steps", "2")).plan
    assert (task.adversarial_radius, task.adversarial_steps) == (0.5, 2)
    data = stripes()
    Trainer(task, loop, data, data, SINGLE).run()
    _, meta = load(tmp_path, "guide_classifier")
    assert (meta["training"]["adversarial_radius"], meta["training"]["adversarial_steps"]) == (0.5, 2)
    assert "adversarially" in meta["training"]["loss"]
    (row,) = card._network_rows(tmp_path)  # the model card lists it, with the command that trained it
    assert row.startswith("| guide_classifier.safetensors | clean-image timm classifier") and "--adversarial-radius 0.5" in row
    for bad, message in ((("--adversarial-radius", "-1"), "adversarial_radius must be a finite number >= 0"),
                         (("--adversarial-steps", "0"), "adversarial_steps must be at least 1")):
        with pytest.raises(SystemExit):
            train.read_command_line(tiny_argv(tmp_path, *bad))
        assert message in capsys.readouterr().err
