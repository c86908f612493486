"""The sampling command line (run as a subprocess and in-process through runpy) and the library
entry point behind it, guidescope.generation, on tiny checkpoints."""
import importlib
import json
import re
import runpy
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_classifier, tiny_unet
from PIL import Image

import guidescope
from guidescope.bundle import load_bundle
from guidescope.checkpoints import save
from guidescope.generation import generate, stream
from guidescope.guide import Schedule, Threshold
from guidescope.noise import ItemNoise
from guidescope.parsing import class_index
from guidescope.request import Request, Row

ROOT = Path(__file__).resolve().parents[1]
CLASS_NAMES = ["Ant", "Bee", "Cat"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoints")
    diffusion = {"schedule": "linear", "num_timesteps": 50}
    save(tiny_unet(), folder, "unet", class_names=CLASS_NAMES, diffusion=diffusion)
    save(tiny_classifier(), folder, "classifier", class_names=CLASS_NAMES, diffusion=diffusion)
    return folder


@pytest.fixture(scope="module")
def bundle(checkpoints):
    return load_bundle(checkpoints)


@pytest.fixture(scope="module")
def subprocess_runs(checkpoints, tmp_path_factory) -> dict:
    """Two real command-line runs, started together (each spends seconds importing torch)."""
    out = tmp_path_factory.mktemp("cli")
    runs = {"npz": ["--class", "bee", "--scale", "2", "--steps", "4", "--sampler", "ddpm", "--n", "5",
                    "--batch-size", "2", "--seed", "3", "--out", str(out / "bees.npz")],
            "bad": ["--class", "zebra", "--out", str(out / "zebras.npz")]}
    procs = {name: subprocess.Popen([sys.executable, "-m", "guidescope.sample", "--threads", "1", "--device", "cpu", "--backend", "torch",
                                     "--checkpoints", str(checkpoints), *args],
                                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, args in runs.items()}
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        results[name] = (proc.returncode, stdout, stderr, out)
    return results


def cli_with_output(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the command line run in-process with args."""
    monkeypatch.setattr(sys, "argv", ["guidescope.sample", "--threads", "1", "--device", "cpu", "--backend", "torch", *args])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("guidescope.sample", run_name="__main__")
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def cli_in_process(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    code, _, err = cli_with_output(monkeypatch, capsys, *args)
    return code, err


def test_npz_output_matches_the_library(subprocess_runs, bundle):
    code, stdout, stderr, folder = subprocess_runs["npz"]
    assert code == 0, stderr
    assert "wrote 5 images of class 1 (Bee)" in stdout
    assert "12/12" in stderr  # tqdm: 3 batches x 4 steps
    with np.load(folder / "bees.npz") as data:
        images, labels = data["images"], data["labels"]
    assert images.dtype == np.uint8 and images.shape == (5, 8, 8)
    assert labels.dtype == np.int64 and labels.tolist() == [1] * 5
    expected = generate(bundle, Request((Row(1, 2.0),), images_per_row=5, steps=4, sampler="ddpm", seed=3), batch_size=2)
    np.testing.assert_array_equal(images, expected.images[:, 0].numpy())


def test_bad_argument_exits_2_with_a_message(subprocess_runs):
    code, _, stderr, folder = subprocess_runs["bad"]
    assert code == 2
    assert "class must be one of Ant, Bee, Cat" in stderr and "'zebra'" in stderr
    assert not (folder / "zebras.npz").exists()


def test_png_output_is_a_grid(checkpoints, tmp_path, monkeypatch, capsys):
    out = tmp_path / "grid.png"
    code, _ = cli_in_process(monkeypatch, capsys, "--checkpoints", str(checkpoints), "--class", "0",
                             "--cfg-scale", "1.5", "--steps", "3", "--n", "5", "--out", str(out))
    assert code == 0
    with Image.open(out) as image:
        assert image.mode == "L" and image.size == (3 * 10 + 2, 2 * 10 + 2)  # 3 columns of 8px + 2px padding


@pytest.mark.parametrize("args, message", [
    (["--class", "Zebra"], "class must be one of Ant, Bee, Cat"),
    (["--class", "3"], "an index from 0 to 2; got '3'"),
    (["--class", "-1"], "an index from 0 to 2; got '-1'"),
    (["--steps", "-1"], "steps must be an integer from 1 to 50"),
    (["--steps", "0"], "steps must be an integer from 1 to 50"),
    (["--steps", "51"], "steps must be an integer from 1 to 50"),
    (["--eta", "1.5"], "eta must be a number from 0 to 1"),
    (["--eta", "-0.1"], "eta must be a number from 0 to 1"),
    (["--eta", "0.5", "--sampler", "dpm++2m"], "DDIM"),
    (["--scale", "nan"], "classifier guidance w must be a number from 0 to 100"),
    (["--scale", "-1"], "classifier guidance w must be a number from 0 to 100"),
    (["--cfg-scale", "inf"], "w_cfg must be a number from 0 to 30"),
    (["--n", "0"], "number of images must be an integer from 1"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--interval", "40", "10"], "0 <= t_lo <= t_hi <= 49"),
    (["--interval", "0", "50"], "0 <= t_lo <= t_hi <= 49"),
    (["--schedule", "steep"], "invalid choice"),
    (["--threshold", "soft"], "invalid choice"),
    (["--threshold", "dynamic", "--threshold-percentile", "1.5"], "threshold percentile must be a number from 0.5 to 1"),
    (["--out", "images.jpg"], r"\.npz, \.png"),
    (["--out", "images"], r"\.npz, \.png"),
    (["--sampler", "euler"], "invalid choice"),
    (["--steps", "ten"], "invalid int"),
    (["--checkpoints", "/nonexistent/folder"], "does not exist"),
])
def test_bad_arguments(checkpoints, tmp_path, monkeypatch, capsys, args, message):
    flags = {"--checkpoints": str(checkpoints), "--class": "Ant", "--steps": "3", "--out": str(tmp_path / "x.npz")}
    interval = args[args.index("--interval"):args.index("--interval") + 3] if "--interval" in args else []
    pairs = [a for a in args if a not in interval]
    flags.update(zip(pairs[::2], pairs[1::2]))
    code, err = cli_in_process(monkeypatch, capsys, *[item for pair in flags.items() for item in pair], *interval)
    assert code == 2
    assert "usage: python -m guidescope.sample" in err
    assert re.search(message, err), err
    assert not list(tmp_path.iterdir())


def test_missing_checkpoint_file(checkpoints, tmp_path, monkeypatch, capsys):
    for name in ("unet.json", "unet.safetensors"):
        (tmp_path / name).write_bytes((checkpoints / name).read_bytes())
    code, err = cli_in_process(monkeypatch, capsys, "--checkpoints", str(tmp_path), "--class", "0",
                               "--out", str(tmp_path / "x.npz"))
    assert code == 2 and "classifier.json" in err


def test_in_process_run_writes_rgb_free_npz(checkpoints, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cats.NPZ"
    code, _ = cli_in_process(monkeypatch, capsys, "--checkpoints", str(checkpoints), "--class", "CAT",
                             "--steps", "2", "--n", "3", "--out", str(out))
    assert code == 0 and out.is_file() and not Path(str(out) + ".npz").exists()
    with np.load(out) as data:
        assert data["images"].shape == (3, 8, 8) and data["labels"].tolist() == [2, 2, 2]


def test_interval_schedule_and_threshold_reach_the_library(checkpoints, bundle, tmp_path, monkeypatch, capsys):
    out = tmp_path / "x.npz"
    code, err = cli_in_process(monkeypatch, capsys, "--checkpoints", str(checkpoints), "--class", "1", "--scale", "4",
                               "--steps", "4", "--n", "2", "--interval", "10", "40", "--schedule", "ramp-up",
                               "--threshold", "dynamic", "--threshold-percentile", "0.9", "--out", str(out))
    assert code == 0, err
    from guidescope.guide import Threshold
    row = Row(1, 4.0, schedule=Schedule("ramp-up", (10, 40)), threshold=Threshold("dynamic", 0.9))
    expected = generate(bundle, Request((row,), images_per_row=2, steps=4))
    with np.load(out) as data:
        np.testing.assert_array_equal(data["images"], expected.images[:, 0].numpy())
    assert not torch.equal(expected.images, generate(bundle, Request((Row(1, 4.0),), images_per_row=2, steps=4)).images)


CHOSEN = {"scale": 3, "unet": "conditional", "cfg_scale": 1.5, "steps": 4, "sampler": "dpm++2m", "interval": [10, 40],
          "schedule": "ramp-up", "threshold": "dynamic", "threshold_percentile": 0.9, "seed": 2,
          "scale_reason": "why", "fidelity": [0.9, 0.8, 0.95]}  # the last two: notes, no flag's


def chosen_row(**changes) -> Row:
    """CHOSEN's row for class 1 (Bee), with changes."""
    return replace(Row(1, 3.0, 1.5, Schedule("ramp-up", (10, 40)), Threshold("dynamic", 0.9)), **changes)


@pytest.fixture()
def chosen_checkpoints(checkpoints, tmp_path) -> Path:
    """A copy of the tiny checkpoints whose defaults.json holds CHOSEN."""
    folder = tmp_path / "chosen"
    shutil.copytree(checkpoints, folder)
    (folder / "defaults.json").write_text(json.dumps(CHOSEN))
    return folder


def sampled(monkeypatch, capsys, folder: Path, out: Path, *flags: str) -> tuple[np.ndarray, str]:
    """The images (N, H, W) and the last line of a run on class Bee, 3 images, with flags."""
    code, stdout, err = cli_with_output(monkeypatch, capsys, "--checkpoints", str(folder), "--class", "Bee", "--n", "3",
                                        "--out", str(out), *flags)
    assert code == 0, err
    with np.load(out) as data:
        return data["images"], stdout.strip().splitlines()[-1]


def test_unset_flags_take_the_bundles_defaults_json(chosen_checkpoints, bundle, tmp_path, monkeypatch, capsys):
    images, line = sampled(monkeypatch, capsys, chosen_checkpoints, tmp_path / "x.npz")
    expected = generate(bundle, Request((chosen_row(),), images_per_row=3, steps=4, sampler="dpm++2m", seed=2))
    np.testing.assert_array_equal(images, expected.images[:, 0].numpy())
    assert line == (f"wrote 3 images of class 1 (Bee) to {tmp_path / 'x.npz'}: DPM-Solver++(2M) 4 steps, w 3 on the "
                    "conditional UNet with w_cfg 1.5, guidance ramp-up over t 10-40, dynamic threshold at 0.9, seed 2 "
                    "(--scale, --unet, --cfg-scale, --steps, --sampler, --seed, --interval, --schedule, --threshold, "
                    f"--threshold-percentile from {chosen_checkpoints / 'defaults.json'}, other unset flags from the "
                    "library's defaults)")


@pytest.mark.parametrize("flags, row, request_changes", [
    (["--scale", "0", "--steps", "3"], {"scale": 0.0}, {"steps": 3}),
    (["--unet", "unconditional", "--sampler", "ddim", "--eta", "0.5"], {"cfg_scale": None},
     {"sampler": "ddim", "eta": 0.5}),
    (["--cfg-scale", "2", "--interval", "0", "49", "--schedule", "constant", "--threshold", "clip", "--seed", "5"],
     {"cfg_scale": 2.0, "schedule": Schedule("constant", (0, 49)), "threshold": Threshold("clip", 0.9)}, {"seed": 5}),
])
def test_a_flag_given_overrides_defaults_json(chosen_checkpoints, bundle, tmp_path, monkeypatch, capsys, flags, row,
                                              request_changes):
    images, line = sampled(monkeypatch, capsys, chosen_checkpoints, tmp_path / "x.npz", *flags)
    request = Request((chosen_row(**row),), images_per_row=3, **{"steps": 4, "sampler": "dpm++2m", "seed": 2,
                                                                 **request_changes})
    np.testing.assert_array_equal(images, generate(bundle, request).images[:, 0].numpy())
    credited = re.search(r"\((.*) from \S*defaults\.json", line)[1].split(", ")
    assert credited and not set(credited) & {f for f in flags if f.startswith("--")}  # only unset flags are credited


def test_without_defaults_json_the_library_defaults_apply(checkpoints, bundle, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "plain"
    shutil.copytree(checkpoints, folder)
    (folder / "defaults.json").write_text("[1, 2]")  # not an object: as if there were none
    images, line = sampled(monkeypatch, capsys, folder, tmp_path / "x.npz")
    np.testing.assert_array_equal(images, generate(bundle, Request((Row(1),), images_per_row=3)).images[:, 0].numpy())
    assert line.endswith(": DDIM 50 steps (eta 0), w 0 on the unconditional UNet, guidance constant at every step, "
                         "clip threshold, seed 0 (unset flags from the library's defaults: "
                         f"{folder / 'defaults.json'} names none)")


def test_a_bad_value_in_defaults_json_is_a_usage_error_that_says_so(chosen_checkpoints, tmp_path, monkeypatch, capsys):
    (chosen_checkpoints / "defaults.json").write_text(json.dumps({**CHOSEN, "sampler": "euler"}))
    code, err = cli_in_process(monkeypatch, capsys, "--checkpoints", str(chosen_checkpoints), "--class", "Bee",
                               "--out", str(tmp_path / "x.npz"))
    assert code == 2
    assert "sampler must be one of ddim, ddpm, dpm++2m, unipc; got 'euler'" in err and "defaults.json" in err
    code, err = cli_in_process(monkeypatch, capsys, "--checkpoints", str(chosen_checkpoints), "--class", "Bee",
                               "--unet", "unconditional", "--cfg-scale", "1", "--out", str(tmp_path / "x.npz"))
    assert code == 2 and "--cfg-scale needs the class-conditional UNet" in err
    assert not (tmp_path / "x.npz").exists()


def test_upscale_enlarges_the_png_grid_only(checkpoints, tmp_path, monkeypatch, capsys):
    sizes = {}
    for k in (1, 4):
        out = tmp_path / f"grid{k}.png"
        code, err = cli_in_process(monkeypatch, capsys, "--checkpoints", str(checkpoints), "--class", "0",
                                   "--steps", "1", "--n", "5", "--upscale", str(k), "--out", str(out))
        assert code == 0, err
        with Image.open(out) as image:
            sizes[k] = image.size
    assert sizes[1] == (3 * 10 + 2, 2 * 10 + 2) and sizes[4] == (4 * sizes[1][0], 4 * sizes[1][1])
    code, err = cli_in_process(monkeypatch, capsys, "--checkpoints", str(checkpoints), "--class", "0", "--steps", "1",
                               "--n", "2", "--upscale", "4", "--out", str(tmp_path / "x.npz"))
    assert code == 0, err
    with np.load(tmp_path / "x.npz") as data:
        assert data["images"].shape == (2, 8, 8)  # an .npz keeps the native size
    code, err = cli_in_process(monkeypatch, capsys, "--checkpoints", str(checkpoints), "--class", "0",
                               "--upscale", "0", "--out", str(tmp_path / "y.png"))
    assert code == 2 and "--upscale must be positive" in err


def test_help_says_unset_flags_take_defaults_json(monkeypatch, capsys):
    code, stdout, _ = cli_with_output(monkeypatch, capsys, "--help")
    assert code == 0
    text = " ".join(stdout.split())
    assert "An unset sampling flag takes the value the bundle's defaults.json names" in text
    assert "--scale SCALE classifier guidance w (unset: defaults.json, else 0: off)" in text
    assert "--upscale K PNG output: enlarge the grid K times" in text


def test_every_module_imports_and_no_module_hides_a_function():
    import pkgutil

    import demo

    names = [m.name for pkg in (guidescope, demo) for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
    assert {"guidescope.sample", "guidescope.training.loop", "guidescope.networks.adm", "demo.arguments"} <= set(names)
    for name in names:
        importlib.import_module(name)
    assert callable(guidescope.sample_loop) and callable(guidescope.generation.stream)


def _rows(labels, scale=3.0, cfg_scale=1.0):
    """One row per image (each its own noise stream): a request whose images have mixed classes."""
    return tuple(Row(c, scale, cfg_scale, first_image=i) for i, c in enumerate(labels))


@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 0.6), ("ddim", 0.0), ("dpm++2m", 0.0), ("unipc", 0.0)])
def test_results_do_not_depend_on_the_batch_size(bundle, sampler, eta):
    request = Request(_rows([0, 1, 2, 1, 0]), images_per_row=1, steps=5, sampler=sampler, eta=eta, seed=9)
    runs = [generate(bundle, request, batch_size=b).images for b in (1, 2, 5, 64)]
    for other in runs[1:]:
        # Equal but for an occasional 1/255 from batch-size-dependent float32 rounding in the networks.
        assert (other.int() - runs[0].int()).abs().max() <= 1
        assert (other == runs[0]).float().mean() > 0.99
    # A prefix of a longer run is the shorter run.
    longer = generate(bundle, Request(_rows([0, 1, 2, 1, 0, 2, 2]), images_per_row=1, steps=5, sampler=sampler,
                                      eta=eta, seed=9), batch_size=4).images
    assert (longer[:5].int() - runs[0].int()).abs().max() <= 1


def test_rows_with_the_same_first_image_share_their_noise(bundle):
    same = generate(bundle, Request((Row(0, 2.0), Row(0, 2.0)), images_per_row=3, steps=3)).images
    assert torch.equal(same[:3], same[3:])
    offset = generate(bundle, Request((Row(0, 2.0), Row(0, 2.0, first_image=3)), images_per_row=3, steps=3)).images
    assert torch.equal(offset[:3], same[:3])
    assert torch.equal(offset[3:], generate(bundle, Request((Row(0, 2.0),), images_per_row=6, steps=3)).images[3:])


def test_seeds_give_different_images(bundle):
    a, b = (generate(bundle, Request((Row(0),), images_per_row=2, steps=3, seed=s)).images for s in (0, 1))
    assert not torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # images within a run differ too


def test_without_cfg_the_class_reaches_only_the_classifier(bundle):
    """cfg_scale None is the unconditional model: at scale 0 the class changes nothing; with
    cfg_scale 0 (the conditional model) or classifier guidance it does."""
    def run(label, scale=0.0, cfg_scale=None):
        return generate(bundle, Request((Row(label, scale, cfg_scale),), images_per_row=3, steps=3, seed=4)).images

    assert torch.equal(run(0), run(2))
    assert not torch.equal(run(0, cfg_scale=0.0), run(2, cfg_scale=0.0))
    assert not torch.equal(run(0, scale=5.0), run(2, scale=5.0))
    assert not torch.equal(run(0), run(0, cfg_scale=0.0))


def test_generate_labels_and_progress(bundle):
    seen = []
    samples = generate(bundle, Request(_rows([2, 0, 1], 0.0, None), images_per_row=1, steps=4), batch_size=2,
                       on_step=seen.append)
    assert samples.labels.tolist() == [2, 0, 1] and samples.images.dtype == torch.uint8
    assert samples.images.shape == (3, 1, 8, 8)
    assert [s.index for s in seen] == [0, 1, 2, 3] * 2
    with pytest.raises(ValueError, match="batch size must be a positive integer"):
        generate(bundle, Request((Row(0),), images_per_row=2), batch_size=0)


def test_stream_is_every_item_in_one_batch_and_validates_at_once(bundle):
    steps = list(stream(bundle, Request((Row(0, 1.0), Row(1, 0.0, 2.0)), images_per_row=2, steps=3)))
    assert len(steps) == 3 and steps[-1].sample.shape == (4, 1, 8, 8)
    assert steps[-1].guidance_term.shape == (4, 1, 8, 8) and steps[-1].guidance_term[2:].abs().max() == 0
    with pytest.raises(ValueError, match="steps must be an integer from 1 to 50"):
        stream(bundle, Request((Row(0),), steps=0))


def test_item_noise_depends_only_on_seed_and_index():
    whole = ItemNoise(5, range(4))((4, 1, 2, 2), "cpu")
    tail = ItemNoise(5, range(2, 4))((2, 1, 2, 2), "cpu")
    assert torch.equal(whole[2:], tail)
    assert not torch.equal(whole[0], whole[1])
    assert not torch.equal(ItemNoise(6, [0])((1, 1, 2, 2), "cpu"), whole[:1])
    repeated = ItemNoise(5, [1, 1, 0])((3, 1, 2, 2), "cpu")
    assert torch.equal(repeated[0], repeated[1]) and torch.equal(repeated[1], whole[1]) and torch.equal(repeated[2], whole[0])
    with pytest.raises(ValueError, match="batch of 3"):
        ItemNoise(5, range(2))((3, 1, 2, 2), "cpu")


@pytest.mark.parametrize("value, index", [("bee", 1), ("BEE", 1), (" Bee ", 1), ("1", 1), (2, 2), ("0", 0), (2.0, 2)])
def test_class_index(value, index):
    assert class_index(value, CLASS_NAMES) == index


@pytest.mark.parametrize("value", ["zebra", "3", "-1", "", "b", True, None, 1.5, float("nan")])
def test_class_index_rejects(value):
    with pytest.raises(ValueError, match="class must be one of Ant, Bee, Cat or an index from 0 to 2"):
        class_index(value, CLASS_NAMES)
