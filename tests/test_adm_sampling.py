"""A converted ADM bundle samples through the library's own path (guidescope.generation), with the
guidance applied after the networks have run: DDPM shifts its mean by the model's own Sigma_theta,
and the other samplers use eps. The reference is guided-diffusion's ddim_sample_loop /
p_sample_loop with classifier_sample.py's cond_fn (tests/data/adm, scripts/adm_reference.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file
from test_adm import RUN, TINY, tiny_network

from adm_fixtures import DATA, random_weights, shapes_of
from guidescope import checkpoints, convert
from guidescope.bundle import load_bundle
from guidescope.checkpoints import CheckpointError
from guidescope.generation import stream
from guidescope.guide import NoiseAwareGuidance, Threshold
from guidescope.networks.backend import BackendError, select_unet
from guidescope.request import Request, Row
from guidescope.samplers import final, sample_loop

CLASS_NAMES = [f"class {i}" for i in range(TINY["networks"][RUN["unet"]]["config"]["num_classes"])]


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(DATA / "tiny.safetensors")


def converted_folder(folder, classifier: torch.nn.Module | None = None):
    """The tiny fixture's networks written as guidescope.convert writes a bundle, with the diffusion
    record the converter makes from the run's flags."""
    flags = convert.parse_flags(f"--noise_schedule {RUN['noise_schedule']} --diffusion_steps {RUN['diffusion_steps']} "
                                "--learn_sigma True")
    record = convert.diffusion_record(flags)
    checkpoints.save(tiny_network(RUN["unet"]), folder, "adm_unet", "unet", class_names=CLASS_NAMES, diffusion=record)
    checkpoints.save(classifier or tiny_network(RUN["classifier"]), folder, "adm_classifier", "classifier",
                     class_names=CLASS_NAMES, diffusion=record)
    return folder


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(converted_folder(tmp_path_factory.mktemp("adm")), backend="torch")


@dataclass(frozen=True)
class Replayed(Request):
    """A request whose noise is given: x_T first, then one draw per call, as the reference drew them."""
    draws: tuple = ()

    def noise(self, items):
        draws = iter(self.draws)
        return lambda shape, device: next(draws).reshape(shape).to(device)


def reference_request(reference, sampler: str, scale: float = RUN["classifier_scale"],
                      threshold: Threshold = Threshold("clip")) -> Replayed:
    """The reference run as a request: its classes, scale and x_T, and the noise its DDPM drew."""
    labels = reference["run/y"].tolist()
    draws = (reference["run/x_T"], *(reference["ddpm/noise"] if sampler == "ddpm" else ()))
    # The class-conditional UNet without CFG; clipped, as classifier_sample.py's clip_denoised=True.
    rows = tuple(Row(label, scale, cfg_scale=0.0, threshold=threshold) for label in labels)
    return Replayed(rows, images_per_row=1, steps=int(RUN["timestep_respacing"]), sampler=sampler, draws=draws)


def test_a_converted_folder_loads_as_a_learned_variance_bundle_in_guided_diffusions_order(bundle):
    assert (bundle.variance, bundle.guidance_order) == ("learned", "threshold-then-guide")
    assert bundle.sample_shape == (3, 8, 8) and bundle.class_names == tuple(CLASS_NAMES)
    # A class-conditional ADM has no null label: conditional rows only, and no classifier-free guidance.
    assert bundle.unet.null_label is None and tuple(bundle.conditioning) == (False, True)
    assert torch.equal(bundle.diffusion(10).timesteps, torch.tensor([0, 11, 22, 33, 44, 55, 66, 77, 88, 99]))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_generation_follows_the_reference_sample_loop_step_by_step(bundle, reference, sampler):
    """Every x_{t-1} of guidescope.generation.stream against guided-diffusion's, within 1e-3 (float32
    rounding grows over the steps, differently at each thread count: up to 3e-4 after 10 DDIM
    steps): DDIM with condition_score, DDPM with the learned variance and condition_mean."""
    steps = list(stream(bundle, reference_request(reference, sampler)))
    expected = reference[f"{sampler}/samples"]
    assert len(steps) == len(expected)
    for k, step in enumerate(steps):
        torch.testing.assert_close(step.sample, expected[k], atol=1e-3, rtol=0, msg=f"{sampler} step {k}")
    # The guidance moves the images far beyond the tolerance, so the comparison checks it.
    unguided = final(stream(bundle, reference_request(reference, sampler, scale=0.0))).sample
    assert (unguided - expected[-1]).abs().max() > 1e-2


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_the_reference_needs_guided_diffusions_order_where_the_clip_acts(bundle, reference, sampler):
    """With this project's order (x-hat_0 of the guided eps is clipped) the run leaves the reference:
    the tiny model's x-hat_0 lies far outside [-1, 1], so the order is what the fixture tests."""
    request = reference_request(reference, sampler)
    method = NoiseAwareGuidance(bundle.unet, bundle.classifier, bundle.unet.null_label, "guide-then-threshold")
    run = sample_loop(method, bundle.diffusion(request.steps), (2, *bundle.sample_shape),
                      request.guidance(range(2)), request.noise(range(2)), sampler, variance="learned")
    assert (final(run).sample - reference[f"{sampler}/samples"][-1]).abs().max() > 1e-2


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m", "unipc"])
def test_the_two_orders_agree_where_no_threshold_acts(bundle, reference, sampler):
    """Unclipped, x-hat_0(eps - k_t w g) = x-hat_0(eps) + sqrt(1/alpha-bar_t - 1) k_t w g: the eps form of
    the shift equals guided-diffusion's; for DDPM, k_t = c_t Sigma_theta (per pixel, from the UNet's v)
    moves the mean by exactly w Sigma_theta g (condition_mean)."""
    request = reference_request(reference, sampler, threshold=Threshold("none"))
    runs = [list(sample_loop(NoiseAwareGuidance(bundle.unet, bundle.classifier, bundle.unet.null_label, order),
                             bundle.diffusion(request.steps), (2, *bundle.sample_shape),
                             request.guidance(range(2)), request.noise(range(2)), sampler, variance="learned"))
            for order in ("guide-then-threshold", "threshold-then-guide")]
    for a, b in zip(*runs):
        scale = b.sample.abs().max()
        torch.testing.assert_close(a.sample / scale, b.sample / scale, atol=1e-5, rtol=0)
        assert a.guidance_norm.min() > 0


@pytest.mark.parametrize("row, message", [
    (Row(1, 1.0), "no unconditional mode"),
    (Row(1, 1.0, cfg_scale=2.0), "classifier-free guidance needs a UNet trained with a null label"),
])
def test_an_adm_bundle_refuses_what_its_unet_cannot_do_at_once(bundle, row, message):
    with pytest.raises(ValueError, match=message):
        stream(bundle, Request((row,), images_per_row=1, steps=2))


def test_an_unconditional_adm_unet_refuses_conditional_rows():
    from guidescope.request import Conditioning, check
    unet = tiny_network("unet_legacy")  # class_cond False: ignores y
    assert unet.null_label == 0
    with pytest.raises(ValueError, match="unconditional"):
        check(Request((Row(1, 1.0, cfg_scale=0.0),), images_per_row=1, steps=2), 5, 100,
              Conditioning(unet.null_label is not None, unet.config.class_cond))


def test_a_classifier_of_another_image_size_is_refused(tmp_path):
    config = {**TINY["networks"][RUN["classifier"]]["config"], "image_size": 16}
    classifier = convert.ADMClassifier(convert.ADMClassifierConfig(**config))
    classifier.load_state_dict(random_weights(shapes_of(classifier.state_dict()), seed=1))
    with pytest.raises(CheckpointError, match="image sizes disagree"):
        load_bundle(converted_folder(tmp_path, classifier))


def test_the_onnx_backend_leaves_adm_to_torch(bundle):
    unet = tiny_network(RUN["unet"])
    runner = select_unet(unet, "auto")
    assert runner.backend == "torch" and runner.null_label is None and "ADMUNet" in runner.reason
    with pytest.raises(BackendError, match="backend 'torch'"):
        select_unet(unet, "onnx")


def test_the_app_runs_a_converted_bundle_at_the_converters_defaults(tmp_path):
    """The converter's defaults.json (the paper's 25 DDIM steps, the command's classifier scale) is
    what the page opens with; a step is timed for the page; Generate streams frames; the UI refuses
    the unconditional UNet of a model without a null label with the library's message."""
    import json

    import gradio as gr

    from demo.handlers import Handlers
    from demo.models import models_of
    from demo.ui import _info

    folder = converted_folder(tmp_path)
    flags = convert.parse_flags("--class_cond True")
    record = convert.app_defaults(flags, convert.parse_flags("--classifier_scale 0.5", flags))
    (folder / "defaults.json").write_text(json.dumps({**record, "class_index": 3}))
    handlers = Handlers(models_of([load_bundle(folder)]), downloads=tmp_path / "downloads")
    d = handlers.defaults
    assert (d.steps, d.sampler, d.scale, d.unet, d.cfg_scale, d.num_images) == (25, "ddim", 0.5, "conditional", 0.0, 1)
    handlers.timings.time_steps(2)
    seconds = handlers.timings.step_seconds[handlers.model.name]
    assert seconds > 0 and "one step of one image takes " in _info(handlers.model, seconds)
    # Seconds for a full-size model, milliseconds where a step is quick (set values: no machine's speed).
    assert "one step of one image takes 2.14 s here" in _info(handlers.model, 2.14)
    assert "one step of one image takes 7.6 ms here" in _info(handlers.model, 0.0076)
    values = dict(class_name="class 3", scale=1.0, unet="conditional", cfg_scale=0.0, steps=2, sampler="ddpm", eta=0.0,
                  num_images=2, seed=1)
    frames = list(handlers.generate(**values))
    assert "done" in frames[-1].status and frames[-1].x_t.size[0] > 0
    with pytest.raises(gr.Error, match="no unconditional mode"):
        list(handlers.generate(**{**values, "unet": "unconditional"}))
