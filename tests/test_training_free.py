"""Training-free guidance (guidescope.guide.training_free) against the TFG repository's own
methods/*.py (tests/data/tfg, written by scripts/tfg_reference.py outside this repo), against
closed forms, and as TFG's special cases; and how a request with it is checked and run."""
from __future__ import annotations

import json
import math
from pathlib import Path

import re

import pytest
import torch
from safetensors.torch import load_file
from tfg_fixtures import make_networks

from app_fixtures import bundle, checkpoint_dir  # noqa: F401
from guidescope.diffusion import GaussianDiffusion
from guidescope.guide import Guidance, Schedule, Threshold, TrainingFree, TrainingFreeGuidance
from guidescope.request import Request, Row, check
from guidescope.samplers import make_solver

DATA = Path(__file__).parent / "data" / "tfg"
REFERENCE = json.loads((DATA / "reference.json").read_text())
TENSORS = load_file(DATA / "reference.safetensors")
STEPS = 10

# The reference's hyperparameters in this project's names (UG's iter_steps counts its forward
# step too: iter_steps - 1 backward steps on x-hat_0, at the same strength).
SETTINGS = {
    "dps": TrainingFree.make("dps", rho=0.5),
    "lgd": TrainingFree.make("lgd", rho=0.5, mc_samples=3),
    "freedom": TrainingFree.make("freedom", rho=0.5, rho_schedule="decrease", recurrences=2),
    "mpgd": TrainingFree.make("mpgd", mu=0.3),
    "ugd": TrainingFree.make("ug", rho=0.2, mu=0.2, recurrences=2, iterations=2),
    "tfg": TrainingFree.make("tfg", rho=0.5, mu=0.25, gamma=0.1, mc_samples=2, iterations=2, recurrences=2,
                             rho_schedule="increase", mu_schedule="decrease", gamma_schedule="decrease"),
}
CASES = {"dps": "dps", "lgd": "lgd", "freedom": "freedom", "mpgd": "mpgd", "ugd": "ugd", "tfg": "tfg",
         "tfg_eta1": "tfg", "tfg_t0": "tfg"}


def method(setting: TrainingFree, guide=None) -> TrainingFreeGuidance:
    unet, classifier = make_networks(REFERENCE["network_seed"])
    return TrainingFreeGuidance(unet, None, guide or classifier, lambda x: x, setting)


def guidance(labels=(0, 1, 2)) -> Guidance:
    """Conditional items at w_cfg 0: the UNet runs once on (x_t, t, c), as the reference's unet(x, t)."""
    return Guidance.make(list(labels), 0.0, cfg_scale=0.0, threshold=Threshold("none"))


class Replay:
    """The reference's recorded draws, in order, as noise(shape, device); its last re-noising draw
    (made after the last repetition and thrown away) is not asked for here."""

    def __init__(self, case: str):
        roles = REFERENCE["cases"][case]["roles"]
        last = max((r for r in roles if r.startswith("renoise")), default=None)
        self.draws = [TENSORS[f"{case}/draw_{k}"] for k, role in enumerate(roles) if role != last]

    def __call__(self, shape, device):
        assert self.draws, "the method asked for more noise than the reference drew"
        draw = self.draws.pop(0)
        assert draw.shape == torch.Size(shape)
        return draw


def one_step(setting: TrainingFree, x: torch.Tensor, index: int, eta: float, noise, labels=(0, 1, 2), guide=None):
    """x_{t-1} from x at position `index` of the sampling order (0: the noisiest step)."""
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, STEPS)
    solver = make_solver("ddim", diffusion, eta)
    return method(setting, guide).step(x, STEPS - 1 - index, solver, guidance(labels), noise, ()).sample


@pytest.mark.parametrize("case", list(CASES))
def test_each_method_takes_the_reference_repositorys_step(case):
    spec = REFERENCE["cases"][case]
    noise = Replay(case)
    out = one_step(SETTINGS[CASES[case]], TENSORS["x"], spec["t_index"], spec["eta"], noise)
    expected = TENSORS[f"{case}/x_prev"]
    assert not noise.draws, "the method drew less noise than the reference"
    # tfg_t0 is ill-conditioned (1 / sqrt(alpha-bar) ~ 157): its float32 error against float64 is 3e-3 on ~131.
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    unguided = one_step(TrainingFree(), TENSORS["x"], spec["t_index"], 0.0, lambda *_: torch.zeros(3, 1, 4, 4))
    if spec["eta"] == 0 and spec["n_draws"] == 0:  # the comparison could fail: the guidance moves x_{t-1}
        assert (expected - unguided).abs().max() > 100 * 1e-4 * float(expected.abs().max())


def test_the_references_parameters_were_this_projects():
    for case, name in CASES.items():
        used = REFERENCE["cases"][case]["hyperparameters"]
        setting = SETTINGS[name]
        strength = used.get("guidance_strength")
        if name in ("dps", "lgd", "freedom"):
            assert setting.rho == strength
        if name == "mpgd":
            assert setting.mu == strength
        if name == "ugd":
            assert setting.rho == setting.mu == strength and setting.iterations == used["iter_steps"] - 1
        if name == "tfg":
            assert (setting.rho, setting.mu, setting.gamma, setting.mc_samples, setting.iterations, setting.recurrences) == (
                used["rho"], used["mu"], used["sigma"], used["eps_bsz"], used["iter_steps"], used["recur_steps"])


# -- closed forms ----------------------------------------------------------------------------------

def _closed_form_parts(index: int):
    unet, classifier = make_networks(REFERENCE["network_seed"])
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, STEPS)
    i = STEPS - 1 - index
    abar, abar_prev = float(diffusion.alphas_cumprod[i]), float(diffusion.alphas_cumprod_prev[i])
    labels = torch.tensor([0, 1, 2])
    timestep = diffusion.timesteps[i].repeat(3)

    def log_f(x0):
        return torch.log_softmax(classifier(x0), -1).gather(1, labels[:, None])[:, 0]

    def x0_of(x):
        return (x - math.sqrt(1 - abar) * unet(x, timestep)) / math.sqrt(abar)
    return unet, log_f, x0_of, abar, abar_prev, timestep


def test_mpgd_is_one_step_on_x0_with_eps_kept():
    """x_{t-1} = sqrt(alpha-bar_{t-1}) (x0 + s grad_x0 log f(c | x0)) + sqrt(1 - alpha-bar_{t-1}) eps."""
    unet, log_f, x0_of, _, abar_prev, timestep = _closed_form_parts(4)
    x = TENSORS["x"]
    eps, x0 = unet(x, timestep), x0_of(x)
    x0_in = x0.clone().requires_grad_(True)
    grad = torch.autograd.grad(log_f(x0_in).sum(), x0_in)[0]
    expected = math.sqrt(abar_prev) * (x0 + 0.3 * grad) + math.sqrt(1 - abar_prev) * eps
    torch.testing.assert_close(one_step(TrainingFree.make("mpgd", mu=0.3), x, 4, 0.0, None), expected)


def test_dps_divides_the_gradient_through_the_unet_by_the_log_probability():
    """x_{t-1} = DDIM(x_t, eps) + s grad_{x_t} log f(c | x0(x_t)) / |log f(c | x0(x_t))| (Chung et al.)."""
    unet, log_f, x0_of, _, abar_prev, timestep = _closed_form_parts(4)
    x = TENSORS["x"].clone().requires_grad_(True)
    value = log_f(x0_of(x))
    grad = torch.autograd.grad(value.sum(), x)[0]
    x = x.detach()
    ddim = math.sqrt(abar_prev) * x0_of(x) + math.sqrt(1 - abar_prev) * unet(x, timestep)
    expected = ddim + 0.5 * grad / value.detach().abs()[:, None, None, None]
    torch.testing.assert_close(one_step(TrainingFree.make("dps", rho=0.5), x, 4, 0.0, None), expected)


@pytest.mark.parametrize("index", [1, 4, 8])
def test_tfg_special_cases_are_the_named_methods(index):
    """TFG with only mu and one iteration is MPGD; with only rho (at rho sqrt(alpha_t): TFG divides
    Delta_t by sqrt(alpha_t)) it is FreeDoM, with one repetition or two (the same draws), and with
    gamma-bar 1 shrinking as sqrt(1 - alpha-bar_t) over n draws (at rho sqrt(alpha_t) / n) it is LGD.
    DPS divides by each image's |log f| and Universal Guidance shifts eps: no constant rho gives those."""
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, STEPS)
    i = STEPS - 1 - index
    alpha = float(diffusion.alphas[i])
    x = TENSORS["x"]
    torch.testing.assert_close(one_step(TrainingFree.make("tfg", mu=0.3, iterations=1), x, index, 0.0, None),
                               one_step(TrainingFree.make("mpgd", mu=0.3), x, index, 0.0, None))
    for repeats in (1, 2):
        draws = [torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(k)) for k in range(4)]
        tfg = one_step(TrainingFree.make("tfg", rho=0.5 * math.sqrt(alpha), recurrences=repeats), x, index, 0.0,
                       lambda *_, d=list(draws): d.pop(0))
        freedom = one_step(TrainingFree.make("freedom", rho=0.5, recurrences=repeats), x, index, 0.0,
                           lambda *_, d=list(draws): d.pop(0))
        torch.testing.assert_close(tfg, freedom)
    draws = [torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    tfg = one_step(TrainingFree.make("tfg", rho=0.5 * math.sqrt(alpha) / 3, gamma=1.0, gamma_schedule="decrease",
                                     mc_samples=3), x, index, 0.0, lambda *_, d=list(draws): d.pop(0))
    lgd = one_step(TrainingFree.make("lgd", rho=0.5, mc_samples=3), x, index, 0.0, lambda *_, d=list(draws): d.pop(0))
    torch.testing.assert_close(tfg, lgd)


@pytest.mark.parametrize("index", [4, 7, 8])  # where x-hat_0 of these tiny networks moves the classifier
def test_stop_at_leaves_an_image_the_guide_believes_alone_and_pushes_the_others_as_tfg(index):
    """With stop_at between the items' f(c | x-hat_0), the step on x-hat_0 is TFG's for those below
    it and none for those above: min(log f, log stop_at) has no gradient there."""
    unet, log_f, x0_of, *_ = _closed_form_parts(index)
    x = TENSORS["x"]
    p = log_f(x0_of(x)).exp()
    stop_at = float(p.sort().values[1:].mean())  # between the middle item's and the highest's
    below = p < stop_at
    assert below.any() and not below.all()
    tfg, plain = (one_step(TrainingFree.make("tfg", mu=0.3, iterations=1), x, index, 0.0, None),
                  one_step(TrainingFree(), x, index, 0.0, None))
    stopped = one_step(TrainingFree.make("tfg", mu=0.3, iterations=1, stop_at=stop_at), x, index, 0.0, None)
    torch.testing.assert_close(stopped[below], tfg[below])
    torch.testing.assert_close(stopped[~below], plain[~below])
    assert not torch.allclose(tfg[~below], plain[~below])  # TFG's own step does push them
    assert torch.equal(one_step(TrainingFree.make("tfg", mu=0.3, iterations=1, stop_at=1.0), x, index, 0.0, None), tfg)


def test_no_strength_is_the_unguided_step():
    x = TENSORS["x"]
    plain = one_step(TrainingFree(), x, 4, 0.0, None)
    for name, setting in SETTINGS.items():
        zero = TrainingFree(**{**setting.__dict__, "rho": 0.0, "mu": 0.0})
        assert torch.equal(one_step(zero, x, 4, 0.0, None), plain), name


# -- settings and requests -------------------------------------------------------------------------

@pytest.mark.parametrize("method, params, message", [
    ("dps", {"recurrences": 2}, "DPS takes rho; got recurrences"),
    ("nope", {}, "training-free method must be one of tfg, dps, lgd, freedom, mpgd, ug; got 'nope'"),
    ("tfg", {"rho": -1}, "rho must be a number from 0 to 10000, got -1"),
    ("tfg", {"recurrences": 0}, "recurrences must be an integer from 1 to 16, got 0"),
    ("tfg", {"rho_schedule": "up"}, "rho schedule must be one of constant, increase, decrease; got 'up'"),
    ("mpgd", {"mu": 1.0, "speed": 2}, "MPGD takes mu; got speed"),
    ("tfg", {"stop_at": 0}, "stop at must be a number from 0.01 to 1, got 0"),
    ("tfg", {"stop_at": 1.5}, "stop at must be a number from 0.01 to 1, got 1.5"),
    ("mpgd", {"mu": 1.0, "stop_at": 0.5}, "MPGD takes mu; got stop_at"),
])
def test_a_bad_method_or_parameter_is_refused_with_one_message(method, params, message):
    with pytest.raises(ValueError) as err:
        TrainingFree.make(method, **params)
    assert str(err.value) == message


def test_a_fixed_parameter_is_refused_when_built_directly():
    with pytest.raises(ValueError, match="MPGD fixes rho = 0.0; it takes mu"):
        TrainingFree("mpgd", rho=1.0, mu=1.0, iterations=1)


@pytest.mark.parametrize("sampler", ["dpm++2m", "unipc"])
def test_a_multistep_sampler_is_refused(sampler):
    request = Request((Row(0, guide=SETTINGS["tfg"]),), sampler=sampler)
    with pytest.raises(ValueError) as err:
        check(request, 10, 1000)
    assert str(err.value) == ("TFG re-noises one step at a time (its recurrence), so it runs with the DDIM or DDPM "
                              f"sampler; got {sampler}")


def test_noise_aware_w_on_a_training_free_row_is_refused():
    with pytest.raises(ValueError, match="set w to 0, got w=3"):
        check(Request((Row(0, scale=3.0, guide=SETTINGS["mpgd"]),)), 10, 1000)


# -- through the library's entry point, on a bundle --------------------------------------------------

def _images(bundle, rows, **request):  # noqa: F811
    from guidescope.generation import generate
    return generate(bundle, Request(tuple(rows), **{"images_per_row": 2, "steps": 4, **request})).images


def test_rows_of_different_methods_in_one_request_are_each_as_alone(bundle):  # noqa: F811
    """Methods run as separate sample loops in lockstep (generation._groups), merged in item order:
    every row is what it is alone, from the same noise."""
    rows = [Row(0, scale=2.0), Row(1, guide=SETTINGS["mpgd"]), Row(2, guide=TrainingFree.make("tfg", rho=1.0)),
            Row(3, scale=0.0)]
    together = _images(bundle, rows)
    alone = torch.cat([_images(bundle, [row]) for row in rows])
    assert torch.equal(together, alone)
    assert not torch.equal(together[2:4], together[6:8])  # guided by the clean classifier, not left alone


def test_rows_of_their_own_sampler_and_steps_are_each_as_alone_from_the_same_noise(bundle):  # noqa: F811
    """Each method at its own setting (the page's matched comparison): a noise-aware row on UniPC at
    3 steps beside a training-free row on DDPM at 5 and another at 1, in one request, is each what
    it is alone; the stream has the longest row's steps, and a shorter row advances by progress."""
    from guidescope.generation import stream
    rows = [Row(0, scale=2.0, sampler="unipc", steps=3), Row(1, guide=SETTINGS["tfg"]),
            Row(1, guide=SETTINGS["tfg"], steps=1)]
    together = _images(bundle, rows, sampler="ddpm", steps=5)
    alone = [_images(bundle, [Row(0, scale=2.0)], sampler="unipc", steps=3),
             _images(bundle, [rows[1]], sampler="ddpm", steps=5), _images(bundle, [rows[1]], sampler="ddpm", steps=1)]
    assert torch.equal(together, torch.cat(alone))
    request = Request(tuple(rows), images_per_row=2, steps=5, sampler="ddpm")
    assert [[request.step_of(row, k) for k in range(5)] for row in rows] == [
        [0, 1, 1, 2, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]]
    steps = list(stream(bundle, request))
    assert [step.index for step in steps] == [0, 1, 2, 3, 4]
    assert not torch.equal(steps[0].sample[:2], steps[1].sample[:2])
    assert torch.equal(steps[1].sample[:2], steps[2].sample[:2])  # the 3-step row waits a step
    assert all(torch.equal(steps[0].sample[4:], step.sample[4:]) for step in steps)  # the 1-step row is done
    seconds = steps[-1].seconds
    assert seconds.shape == (6,) and (seconds > 0).all() and seconds[2] > seconds[4]  # 5 recurrent steps cost more than 1


@pytest.mark.parametrize("request_fields, row_fields, message", [
    ({"steps": 4}, {"steps": 5}, "a row's steps must be an integer from 1 to 4, got 5"),
    ({"steps": 4}, {"steps": 0}, "a row's steps must be an integer from 1 to 4, got 0"),
    ({}, {"sampler": "euler"}, "sampler must be one of"),
    ({"sampler": "ddpm"}, {"sampler": "unipc", "guide": TrainingFree.make("mpgd", mu=1.0)},
     "runs with the DDIM or DDPM sampler; got unipc"),
    ({"sampler": "ddim", "eta": 0.5}, {"sampler": "ddpm"}, "eta applies to the DDIM sampler only"),
])
def test_a_rows_own_sampler_or_steps_is_checked(request_fields, row_fields, message):
    from guidescope.request import check
    with pytest.raises(ValueError, match=re.escape(message)):
        check(Request((Row(0, **row_fields),), **request_fields), 3, 1000)
    check(Request((Row(0, **{**row_fields, "sampler": "ddim"}) if "eta" in request_fields else Row(0),),
                  **request_fields), 3, 1000)  # eta with a row on DDIM is taken


def test_a_training_free_row_at_no_strength_is_the_unguided_row(bundle):  # noqa: F811
    unguided = _images(bundle, [Row(1, scale=0.0)], eta=0.5)
    for name, setting in SETTINGS.items():
        zero = TrainingFree(**{**setting.__dict__, "rho": 0.0, "mu": 0.0})
        assert torch.equal(_images(bundle, [Row(1, guide=zero)], eta=0.5), unguided), name


def test_the_stream_merges_the_charts_quantities(bundle):  # noqa: F811
    from guidescope.generation import stream
    rows = (Row(0, scale=2.0), Row(1, guide=SETTINGS["freedom"]))
    steps = list(stream(bundle, Request(rows, images_per_row=2, steps=3)))
    assert len(steps) == 3
    for step in steps:
        assert step.sample.shape == (4, *bundle.sample_shape) and step.log_prob.shape == (4,)
        assert torch.isfinite(step.log_prob).all() and (step.guidance_norm[:2] > 0).all()
    # the clean classifier's gradient through a clipped x-hat_0 can vanish at the noisiest step
    assert (torch.stack([step.guidance_norm[2:] for step in steps]).sum(0) > 0).all()


def test_the_noisy_classifiers_belief_is_charted_outside_a_training_free_rows_interval_too(bundle):  # noqa: F811
    """The page's p(c | x_t) line of a training-free row runs to the last step, as a noise-aware
    row's does, where its guidance interval ends earlier; the images are those of no diagnostics."""
    from guidescope.generation import stream
    hi = bundle.num_timesteps - 1
    row = Row(1, guide=SETTINGS["tfg"], schedule=Schedule("constant", (hi // 2, hi)))
    request = Request((row,), images_per_row=2, steps=4, sampler="ddpm")
    steps = list(stream(bundle, request))
    guided = [step.guidance_norm is not None and bool((step.guidance_norm > 0).all()) for step in steps]
    assert guided == [True, True, False, False]  # the interval covers the first half of the steps
    assert all(torch.isfinite(step.log_prob).all() for step in steps)
    quiet = list(stream(bundle, request, diagnostics=False))
    assert torch.equal(quiet[-1].sample, steps[-1].sample)


def test_a_bundle_without_a_clean_classifier_refuses_training_free_rows_at_once(checkpoint_dir, tmp_path):  # noqa: F811
    from guidescope.bundle import load_bundle
    from guidescope.generation import stream
    for name in ("unet", "classifier", "evaluator"):
        for suffix in (".json", ".safetensors"):
            (tmp_path / f"{name}{suffix}").write_bytes((checkpoint_dir / f"{name}{suffix}").read_bytes())
    without = load_bundle(tmp_path)
    assert without.guide_classifier is None
    with pytest.raises(ValueError, match="has no clean guide classifier .* give one with --guide-classifier DIR"):
        stream(without, Request((Row(0, guide=SETTINGS["mpgd"]),)))
    with_guide = load_bundle(tmp_path, guide_classifier_folder=checkpoint_dir)
    assert with_guide.guide_classifier is not None


def test_a_guide_classifier_folder_without_one_is_refused(checkpoint_dir, tmp_path):  # noqa: F811
    from guidescope.bundle import load_bundle
    from guidescope.checkpoints import CheckpointError
    with pytest.raises(CheckpointError, match="holds no guide classifier"):
        load_bundle(checkpoint_dir, guide_classifier_folder=tmp_path)


def test_a_latent_bundle_guides_through_its_decoder(tmp_path, checkpoint_dir):  # noqa: F811
    from app_fixtures import make_latent_checkpoints
    from guidescope.bundle import load_bundle
    make_latent_checkpoints(tmp_path, evaluator_from=checkpoint_dir)
    latent = load_bundle(tmp_path)
    plain = _images(latent, [Row(0, threshold=Threshold("dynamic"))])
    guided = _images(latent, [Row(0, threshold=Threshold("dynamic"), guide=TrainingFree.make("tfg", rho=4.0, mu=4.0, iterations=1))])
    assert plain.shape == guided.shape == (2, 1, 16, 16) and not torch.equal(plain, guided)


# -- the command line ----------------------------------------------------------------------------------

def _cli(folder, *extra):
    from guidescope import sample
    return sample.main(["--checkpoints", str(folder), "--class", "1", "--n", "2", "--steps", "3", "--backend", "torch",
                        "--threads", "1", *extra])


def test_the_command_line_samples_at_the_bundles_training_free_setting(checkpoint_dir, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "bundle"
    folder.mkdir()
    for f in checkpoint_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    chosen = TrainingFree.make("freedom", rho=0.7, recurrences=2)
    (folder / "defaults.json").write_text(json.dumps({"scale": 5, "sampler": "unipc", "interval": [0, 500], "training_free": {
        "sampler": "ddpm", "steps": 3, "threshold": "none", "guide": chosen.__dict__}}))
    assert _cli(folder, "--guide", "training-free", "--out", str(tmp_path / "a.npz"), "--seed", "3") == 0
    line = capsys.readouterr().out
    assert "DDPM 3 steps, FreeDoM rho 0.7 N_recur 2 (clean classifier through x-hat_0)" in line
    assert "guidance constant at every step, none threshold" in line  # not the noise-aware interval
    from guidescope.bundle import load_bundle
    from guidescope.generation import generate
    expected = generate(load_bundle(folder), Request((Row(1, guide=chosen, threshold=Threshold("none")),),
                                                     images_per_row=2, steps=3, sampler="ddpm", seed=3)).images
    import numpy as np
    assert np.array_equal(np.load(tmp_path / "a.npz")["images"], expected.numpy()[:, 0])
    assert _cli(folder, "--guide", "training-free", "--rho", "0.9", "--out", str(tmp_path / "b.npz")) == 0
    assert "FreeDoM rho 0.9 N_recur 2" in capsys.readouterr().out
    assert _cli(folder, "--guide", "training-free", "--method", "mpgd", "--mu", "2", "--out", str(tmp_path / "c.npz")) == 0
    assert "MPGD mu 2 (clean" in capsys.readouterr().out
    # the record's guidance interval (the search's) is the training-free run's own
    record = json.loads((folder / "defaults.json").read_text())
    record["training_free"].update(schedule="constant", interval="40-99")
    (folder / "defaults.json").write_text(json.dumps(record))
    assert _cli(folder, "--guide", "training-free", "--out", str(tmp_path / "d.npz"), "--seed", "3") == 0
    assert "guidance constant over t 40-99, none threshold" in capsys.readouterr().out
    later = generate(load_bundle(folder), Request((Row(1, guide=chosen, threshold=Threshold("none"),
                                                      schedule=Schedule("constant", (40, 99))),),
                                                  images_per_row=2, steps=3, sampler="ddpm", seed=3)).images
    assert np.array_equal(np.load(tmp_path / "d.npz")["images"], later.numpy()[:, 0])
    assert not np.array_equal(later.numpy(), expected.numpy())


@pytest.mark.parametrize("extra, message", [
    (("--rho", "2"), "--rho set the training-free guidance: add --guide training-free"),
    (("--guide", "training-free", "--method", "dps", "--mu", "1"), "DPS takes rho; got mu"),
    (("--guide", "training-free", "--scale", "3"), "--scale is the noise-aware classifier's strength"),
    (("--guide", "training-free", "--sampler", "unipc"), "runs with the DDIM or DDPM sampler; got unipc"),
    (("--guide", "training-free", "--recurrences", "0"), "recurrences must be an integer from 1 to 16, got 0"),
    (("--guide", "training-free", "--method", "tfg", "--stop-at", "0"), "stop at must be a number from 0.01 to 1, got 0"),
])
def test_the_command_line_refuses_a_bad_training_free_flag(checkpoint_dir, tmp_path, capsys, extra, message):  # noqa: F811
    with pytest.raises(SystemExit) as exit_:
        _cli(checkpoint_dir, *extra, "--out", str(tmp_path / "x.png"))
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_the_app_estimates_a_clean_classifier_row_at_its_step_cost():
    """The request time bound (demo/timing.py) counts a training-free row at TrainingFree.step_cost
    plain steps: a gradient through the UNet about 4, each step on x-hat_0 about 1.5, N_recur times."""
    from demo.arguments import compare_run
    from demo.settings import DISPLAY, AppDefaults
    from demo.timing import Timings

    assert TrainingFree.make("tfg", rho=1.0, mu=1.0, iterations=2, recurrences=3).step_cost() == 3 * (4 + 1.5)
    assert TrainingFree.make("mpgd", mu=1.0).step_cost() == 1 + 1.5 and TrainingFree().step_cost() == 1
    names = ("a", "b", "c")
    settings = AppDefaults(sampler="ddim", steps=10, num_images=2).settings(names)
    run = compare_run(settings, "noise-aware, tfg, mpgd", "methods", class_names=names, num_timesteps=1000)
    timings = Timings([], DISPLAY, None)
    timings.batch_step_seconds["m"] = 0.5
    costs = [1.0, *(row.guide.step_cost() for row in run.request.rows[1:])]
    assert timings.seconds("m", run) == 0.5 * sum(costs) * 2 * 10


@pytest.mark.parametrize("index", [7, 8, 9])
def test_the_step_on_x0_raises_the_clean_classifiers_log_probability(index):
    """The sign test: x-hat_0 after MPGD's small step is more of the target class, to the clean
    classifier, than the unguided x-hat_0, for every item and target (at the clean end, where
    x-hat_0 of these tiny networks is not so far out that the classifier's tanh is flat)."""
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, STEPS)
    solver = make_solver("ddim", diffusion)
    unet, classifier = make_networks(REFERENCE["network_seed"])
    for labels in ((0, 1, 2), (2, 0, 1)):
        targets = torch.tensor(labels)

        def log_f(x0):
            return torch.log_softmax(classifier(x0), -1).gather(1, targets[:, None])[:, 0]
        moves = [method(setting).step(TENSORS["x"], STEPS - 1 - index, solver, guidance(labels), None, ())
                 for setting in (TrainingFree(), TrainingFree.make("mpgd", mu=0.05))]
        plain, guided = (move.prediction.pred_xstart for move in moves)
        assert (log_f(guided) > log_f(plain)).all()


def test_the_page_starts_its_training_free_settings_from_the_bundles_record(tmp_path):
    from demo.settings import AppDefaults, app_defaults

    from demo.arguments import training_free_of_page

    chosen = TrainingFree.make("tfg", rho=4.0, mu=8.0, recurrences=4, iterations=2, gamma=0.1,
                               gamma_schedule="decrease", stop_at=0.6)
    (tmp_path / "defaults.json").write_text(json.dumps({"scale": 8, "sampler": "unipc", "interval": "0-500",
                                                        "training_free": {
        "sampler": "ddpm", "steps": 30, "threshold": "dynamic", "schedule": "constant", "interval": "400-999",
        "guide": chosen.__dict__}}))
    d = app_defaults(tmp_path)
    assert (d.scale, d.sampler, d.guide, d.interval) == (8.0, "unipc", "noise-aware", "0-500")  # opens on noise-aware
    assert (d.method, d.rho, d.mu, d.recurrences, d.iterations, d.gamma, d.stop_at) == ("tfg", 4.0, 8.0, 4, 2, 0.1, 0.6)
    assert (d.training_free_sampler, d.training_free_steps, d.training_free_threshold, d.training_free_interval,
            d.training_free_schedule) == ("ddpm", 30, "dynamic", "400-999", "constant")
    assert training_free_of_page(d.settings(("a", "b"))) == chosen  # the page's numbers are the evaluated setting
    assert app_defaults(tmp_path / "none") == AppDefaults()


@pytest.mark.parametrize("shipped", ["fashion-mnist", "fashion-mnist-latent"])
def test_the_pages_sliders_reach_each_shipped_bundles_evaluated_setting(shipped):
    """The method group's sliders open at the bundle's evaluated training-free setting, so each
    value lies within its slider (a value past a slider's top would be refused when it is sent)."""
    from demo.settings import DISPLAY, app_defaults
    d = app_defaults(Path(__file__).resolve().parents[1] / "checkpoints" / shipped)
    assert d.training_free_sampler == "ddpm"  # the record is there: the values below are the evaluated ones
    assert max(d.rho, d.mu) <= DISPLAY.strength_slider_max and d.gamma <= DISPLAY.gamma_slider_max
    assert 1 <= d.recurrences <= DISPLAY.repeat_slider_max and d.iterations <= DISPLAY.repeat_slider_max


def test_a_setting_as_another_method_keeps_what_that_method_takes():
    page = TrainingFree.make("tfg", rho=3.0, mu=4.0, recurrences=2, iterations=3, rho_schedule="increase")
    assert page.as_method("dps") == TrainingFree.make("dps", rho=3.0)
    assert page.as_method("freedom") == TrainingFree.make("freedom", rho=3.0, recurrences=2, rho_schedule="increase")
    assert page.as_method("mpgd") == TrainingFree.make("mpgd", mu=4.0)
    assert page.as_method("tfg") == page
    with pytest.raises(ValueError, match="training-free method must be one of tfg, dps, lgd, freedom, mpgd, ug; got 'x'"):
        page.as_method("x")
