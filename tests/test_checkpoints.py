"""Checkpoints: safetensors + JSON round trips, load_bundle, and clean failures that name the file.
Nothing is ever unpickled: the pickles below would leave a marker file if they were."""
import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import tiny_classifier, tiny_unet

from guidescope import checkpoints
from guidescope.bundle import load_bundle
from guidescope.checkpoints import CheckpointError, load, save
from guidescope.networks.small import Evaluator, EvaluatorConfig

CLASS_NAMES = ["ant", "bee", "cat"]
DIFFUSION = {"schedule": "linear", "num_timesteps": 50}


def write_folder(folder: Path, evaluator: bool = False) -> Path:
    save(tiny_unet(), folder, "unet", class_names=CLASS_NAMES, diffusion=DIFFUSION)
    save(tiny_classifier(), folder, "classifier", class_names=CLASS_NAMES, diffusion=DIFFUSION)
    if evaluator:
        torch.manual_seed(0)
        save(Evaluator(EvaluatorConfig(image_size=8, num_classes=3, layers=(1, 1, 1, 1), channels=(8, 8, 16, 16),
                                       input_size=16)), folder, "evaluator", class_names=CLASS_NAMES)
    return folder


class Marker:
    """Unpickling this creates `path`, so a test can tell whether anything was unpickled."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').close()",))


def test_round_trip_gives_identical_outputs(tmp_path):
    unet, classifier = tiny_unet(), tiny_classifier()
    save(unet, tmp_path, "unet", class_names=CLASS_NAMES, diffusion=DIFFUSION)
    save(classifier, tmp_path, "classifier")
    assert (tmp_path / "unet.safetensors").is_file() and (tmp_path / "unet.json").is_file()
    loaded, meta = load(tmp_path, "unet")
    assert meta["kind"] == "unet" and meta["class_names"] == CLASS_NAMES and meta["diffusion"] == DIFFUSION
    assert loaded.config == unet.config and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    x = torch.randn(2, 1, 8, 8)
    t, y = torch.tensor([3, 40]), torch.tensor([1, 3])
    assert torch.equal(loaded(x, t, y), unet(x, t, y))
    loaded_classifier, _ = load(tmp_path, "classifier")
    assert torch.equal(loaded_classifier(x, t), classifier(x, t))


def test_load_bundle(tmp_path):
    bundle = load_bundle(write_folder(tmp_path, evaluator=True))
    assert bundle.class_names == tuple(CLASS_NAMES)
    assert (bundle.schedule, bundle.num_timesteps) == ("linear", 50)
    assert bundle.evaluator is not None and bundle.evaluator(torch.zeros(1, 1, 8, 8)).shape == (1, 3)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0, 49])
    assert torch.equal(bundle.unet(x, t, torch.tensor([0, 3])), tiny_unet()(x, t, torch.tensor([0, 3])))
    diffusion = bundle.diffusion(steps=10)
    assert diffusion.num_timesteps == 10 and int(diffusion.timesteps[-1]) == 49
    assert load_bundle(write_folder(tmp_path / "plain")).evaluator is None


def test_load_bundle_insists_on_the_evaluator_when_asked(tmp_path):
    with pytest.raises(CheckpointError, match="evaluator.json"):
        load_bundle(write_folder(tmp_path), need_evaluator=True)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["unet.safetensors", "unet.json", "classifier.safetensors", "classifier.json"])
def test_missing_file_is_named(tmp_path, name):
    folder = write_folder(tmp_path)
    (folder / name).unlink()
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")) as err:
        load_bundle(folder)
    kind = name.split(".")[0]
    assert f"python -m guidescope.train {kind} --out" in str(err.value)  # a command that exists


@pytest.mark.parametrize("keep", [0, 7, 100, 0.5, -1])
def test_truncated_safetensors_is_named(tmp_path, keep):
    folder = write_folder(tmp_path)
    path = folder / "unet.safetensors"
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match=r"unet\.safetensors"):
        load_bundle(folder)


def test_weights_that_do_not_fit_the_config(tmp_path):
    folder = write_folder(tmp_path)
    meta = json.loads((folder / "unet.json").read_text())
    meta["config"]["base_channels"] = 16
    (folder / "unet.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"unet\.safetensors.*do not fit.*unet\.json"):
        load_bundle(folder)


def test_classifier_weights_in_the_unet_slot(tmp_path):
    folder = write_folder(tmp_path)
    (folder / "unet.safetensors").write_bytes((folder / "classifier.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"unet\.safetensors"):
        load_bundle(folder)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"kind": "unet"}', '{"kind": "robot", "config": {}}',
                                  '{"kind": "unet", "config": {"wings": 2}}', "\udcff"])
def test_invalid_json_is_named(tmp_path, text):
    folder = write_folder(tmp_path)
    (folder / "unet.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError, match=r"unet\.json"):
        load_bundle(folder)


def test_disagreeing_class_counts(tmp_path):
    folder = write_folder(tmp_path)
    meta = json.loads((folder / "unet.json").read_text())
    meta["class_names"] = ["ant", "bee"]
    (folder / "unet.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="class counts disagree"):
        load_bundle(folder)


def test_pickle_masquerading_as_safetensors_is_refused_unopened(tmp_path):
    folder = write_folder(tmp_path)
    marker = tmp_path / "unpickled"
    torch.save({"weight": Marker(marker)}, folder / "unet.safetensors")
    with pytest.raises(CheckpointError, match=r"unet\.safetensors"):
        load_bundle(folder)
    (folder / "classifier.safetensors").write_bytes(pickle.dumps(Marker(marker)))
    with pytest.raises(CheckpointError, match=r"safetensors"):
        load(folder, "classifier")
    assert not marker.exists()
    pickle.loads(pickle.dumps(Marker(marker)))  # the marker works: unpickling does create it
    assert marker.exists()


def test_pickles_beside_the_checkpoint_are_ignored(tmp_path):
    folder = write_folder(tmp_path)
    marker = tmp_path / "unpickled"
    for name in ("unet.pt", "unet.pth", "classifier.ckpt", "unet.bin", "evaluator.pt"):
        torch.save({"weight": Marker(marker)}, folder / name)
    bundle = load_bundle(folder)
    assert bundle.evaluator is None and not marker.exists()


def test_save_writes_config_json_beside_weights(tmp_path):
    path = save(tiny_classifier(), tmp_path, "classifier", training={"steps": 3})
    assert path == tmp_path / "classifier.safetensors"
    meta = json.loads((tmp_path / "classifier.json").read_text())
    assert meta["kind"] == "classifier" and meta["training"] == {"steps": 3}
    assert meta["config"]["base_channels"] == 8 and meta["config"]["channel_mults"] == [1, 2]
    assert checkpoints.read_config(tmp_path, "classifier") == meta


def test_disagreeing_image_sizes(tmp_path):
    folder = write_folder(tmp_path)
    meta = json.loads((folder / "classifier.json").read_text())
    meta["config"]["image_size"] = 16  # the weights fit: convolutions do not depend on the size
    (folder / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="image sizes disagree"):
        load_bundle(folder)


@pytest.mark.parametrize("record", [{"schedule": "cosine", "num_timesteps": 50}, {"schedule": "linear", "num_timesteps": 100}])
def test_a_classifier_on_another_schedule_is_refused_naming_both_files(tmp_path, record):
    folder = write_folder(tmp_path)
    meta = json.loads((folder / "classifier.json").read_text())
    meta["diffusion"] = record
    (folder / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="noise schedules disagree") as err:
        load_bundle(folder)
    message = str(err.value)
    assert str(folder / "unet.json") in message and str(folder / "classifier.json") in message
    assert f"{record['schedule']} with T = {record['num_timesteps']}" in message and "linear with T = 50" in message


def test_a_checkpoint_without_a_schedule_record_is_refused(tmp_path):
    folder = write_folder(tmp_path)
    meta = json.loads((folder / "classifier.json").read_text())
    del meta["diffusion"]
    (folder / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"classifier\.json records no noise schedule"):
        load_bundle(folder)


def test_the_bundle_knows_its_device_folder_and_image_shape(tmp_path):
    bundle = load_bundle(write_folder(tmp_path))
    assert bundle.folder == tmp_path and bundle.device == torch.device("cpu")
    assert bundle.image_shape == (1, 8, 8) and bundle.backend == "torch"
    assert (bundle.schedule, bundle.num_timesteps) == ("linear", 50)
