"""Latent diffusion: the codec, latent bundles (and the ones refused), thresholds in latent space,
the app's latent frames, and training the autoencoder and the latent networks on tiny data."""
from __future__ import annotations

import json
import shutil

import gradio as gr
import numpy as np
import pytest
import torch
from test_train import read_log, write_stripes_folder

from app_fixtures import CLASS_NAMES, LATENT_SCALE, checkpoint_dir, make_latent_checkpoints  # noqa: F401
from demo import runs
from demo.handlers import Handlers, StreamOutputs
from demo.launch import opening_order
from demo.models import models_of
from guidescope.bundle import load_bundle
from guidescope.checkpoints import CheckpointError, load, save
from guidescope.codec import LatentCodec, PixelCodec
from guidescope.generation import generate, stream
from guidescope.guide import Guidance, Threshold
from guidescope.images import to_uint8
from guidescope.networks.small import Autoencoder, AutoencoderConfig
from guidescope.request import Request, Row
from guidescope.training import command as train
from guidescope.training.latents import latent_scale_factor


@pytest.fixture(scope="module")
def latent_dir(tmp_path_factory, checkpoint_dir):  # noqa: F811
    folder = tmp_path_factory.mktemp("tiny-latent")
    make_latent_checkpoints(folder, evaluator_from=checkpoint_dir)
    return folder


def test_the_codec_scales_the_posterior_mean_and_undoes_it():
    torch.manual_seed(0)
    autoencoder = Autoencoder(AutoencoderConfig(image_size=28, base_channels=8, latent_channels=4)).eval()
    assert autoencoder.config.latent_shape == (4, 7, 7)  # f = 4 on 28px: 28 -> 14 -> 7
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    scale = latent_scale_factor(autoencoder, x)
    codec = LatentCodec(autoencoder, scale)
    z = codec.encode(x)
    assert z.shape == (6, 4, 7, 7)
    assert float(z.double().std()) == pytest.approx(1.0, rel=1e-5)  # LDM's unit-variance latents
    with torch.no_grad():
        torch.testing.assert_close(z, scale * autoencoder.encode(x)[0])
        torch.testing.assert_close(codec.decode(z), autoencoder(x))  # the scale cancels on the way back
    assert codec.decode(z).shape == x.shape and codec.image_shape == (1, 28, 28)


def test_the_pixel_codec_is_the_identity():
    codec = PixelCodec((1, 8, 8))
    x = torch.randn(2, 1, 8, 8)
    assert codec.encode(x) is x and codec.decode(x) is x
    assert (codec.space, codec.scale_factor, codec.clip_bound, codec.latent_shape) == ("pixel", 1.0, 1.0, (1, 8, 8))


def test_a_latent_bundle_samples_latents_and_decodes_them(latent_dir):
    bundle = load_bundle(latent_dir)
    assert bundle.space == "latent" and bundle.sample_shape == (2, 8, 8) and bundle.image_shape == (1, 16, 16)
    assert bundle.codec.scale_factor == LATENT_SCALE and bundle.codec.clip_bound == 3.0
    request = Request((Row(2, 3.0), Row(3, 0.0)), images_per_row=2, steps=3, sampler="unipc", seed=4)
    last = list(stream(bundle, request))[-1]
    assert last.sample.shape == (4, 2, 8, 8)
    images = generate(bundle, request, batch_size=4).images
    assert images.shape == (4, 1, 16, 16) and images.dtype == torch.uint8
    assert torch.equal(images, torch.from_numpy(to_uint8(bundle.codec.decode(last.sample))))


def test_a_clip_acts_at_the_space_s_range():
    guidance = Guidance.make([0, 0], threshold=Threshold("clip"), clip_bound=3.0)
    x = torch.tensor([-5.0, -2.0, 0.5, 2.9, 4.0]).reshape(1, 5, 1, 1).repeat(2, 1, 1, 1)
    assert guidance.threshold(x)[0, :, 0, 0].tolist() == [-3.0, -2.0, 0.5, pytest.approx(2.9), 3.0]
    pixel = Guidance.make([0, 0], threshold=Threshold("clip"))
    assert pixel.threshold(x)[0, :, 0, 0].tolist() == [-1.0, -1.0, 0.5, 1.0, 1.0]


def _copy(latent_dir, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(latent_dir, folder)
    return folder


def test_a_latent_bundle_without_its_autoencoder_is_refused_naming_both_files(latent_dir, tmp_path):
    folder = _copy(latent_dir, tmp_path)
    (folder / "autoencoder.json").unlink()
    with pytest.raises(CheckpointError) as err:
        load_bundle(folder)
    assert str(folder / "unet.json") in str(err.value) and str(folder / "autoencoder.json") in str(err.value)


def test_an_autoencoder_of_another_latent_shape_is_refused_naming_both_files(latent_dir, tmp_path):
    folder = _copy(latent_dir, tmp_path)
    other = Autoencoder(AutoencoderConfig(image_size=16, base_channels=8, channel_mults=(1, 2), latent_channels=3))
    save(other, folder, "autoencoder", class_names=list(CLASS_NAMES))
    with pytest.raises(CheckpointError) as err:
        load_bundle(folder)
    message = str(err.value)
    assert "json" in message and str(folder / "autoencoder.json") in message and "(3, 8, 8)" in message
    assert str(folder / "unet.json") in message or str(folder / "classifier.json") in message


def test_a_retrained_autoencoder_is_refused(latent_dir, tmp_path):
    folder = _copy(latent_dir, tmp_path)
    autoencoder, _ = load(folder, "autoencoder")
    with torch.no_grad():
        next(autoencoder.parameters()).add_(0.01)
    save(autoencoder, folder, "autoencoder", class_names=list(CLASS_NAMES))
    with pytest.raises(CheckpointError, match="another autoencoder"):
        load_bundle(folder)


def test_networks_in_two_spaces_are_refused(latent_dir, checkpoint_dir, tmp_path):  # noqa: F811
    folder = _copy(latent_dir, tmp_path)
    shutil.copy(checkpoint_dir / "classifier.json", folder / "classifier.json")
    shutil.copy(checkpoint_dir / "classifier.safetensors", folder / "classifier.safetensors")
    with pytest.raises(CheckpointError, match="train both in one space"):
        load_bundle(folder)
    pixel = tmp_path / "pixel"
    shutil.copytree(checkpoint_dir, pixel)
    shutil.copy(latent_dir / "autoencoder.json", pixel / "autoencoder.json")
    with pytest.raises(CheckpointError, match="not trained on its latents"):
        load_bundle(pixel)


def test_mosaic_tiles_the_channels_at_the_image_size():
    z = torch.arange(4 * 7 * 7, dtype=torch.float32).reshape(1, 4, 7, 7)
    maps = runs.mosaic(z, 28)
    assert maps.shape == (1, 1, 28, 28)
    # 2 x 2 channels of 7 x 7, each doubled: channel 1 sits top right, channel 2 bottom left.
    assert maps[0, 0, 0, 14] == z[0, 1, 0, 0] and maps[0, 0, 14, 0] == z[0, 2, 0, 0]
    assert maps[0, 0, 27, 27] == z[0, 3, 6, 6] and maps[0, 0, 1, 1] == z[0, 0, 0, 0]


def _run(handlers: Handlers, model: str, **changes):
    values = dict(class_name="Bag", scale=3.0, unet="unconditional", cfg_scale=0.0, steps=3, sampler="unipc", eta=0.0,
                  num_images=2, seed=1, model=model, **changes)
    return list(handlers.generate(**values))


def test_the_app_streams_latent_maps_then_decoded_samples(latent_dir, checkpoint_dir, tmp_path):  # noqa: F811
    pixel, latent = load_bundle(checkpoint_dir), load_bundle(latent_dir)
    handlers = Handlers(models_of([pixel, latent]), downloads=tmp_path)
    assert list(handlers.models) == ["pixel", "latent"] and handlers.bundle is pixel
    frames = _run(handlers, "latent")
    recording = frames[-1].recording
    assert len(recording.frames) == 3 and recording.latent
    first = recording.frames[0]
    assert first.sample.shape == (2, 1, 16, 16) and first.pred_xstart is None  # z_t as maps; x-hat_0 decoded on demand
    # The last x_t grid is the decoded samples, exactly the library's.
    request = recording.run.request
    expected = generate(latent, request, batch_size=2).images.numpy()
    assert np.array_equal(recording.images(recording.frames[-1]), expected)
    # x-hat_0 is decoded once per frame shown, to pixels.
    assert recording.pred_xstart(first).shape == (2, 1, 16, 16) and 0 in recording._decoded
    after = handlers.playback.finish(recording)
    assert after.png["visible"] and after.gif["visible"]
    # The pixel model still samples pixels, the default when no model is named.
    assert _run(handlers, None)[-1].recording.frames[0].pred_xstart.shape == (2, 1, 16, 16)
    with pytest.raises(Exception, match="model"):
        _run(handlers, "voxel")


class Session:
    session_hash = "live-session"


LIVE_VALUES = ("Bag", 3.0, "unconditional", 0.0, 4, "unipc", 0.0, 2, 1, "full", "constant", "clip", 0.995, "noise-aware",
               "tfg", 2.0, 2.0, 1, 1, "increase", 0.0, 1.0, None)


def test_a_live_run_sends_its_final_frame_only(latent_dir, tmp_path):
    handlers = Handlers(load_bundle(latent_dir), downloads=tmp_path)
    final = handlers.live_mode.live_generate(True, *LIVE_VALUES, request=Session())  # the final frame alone
    assert len(final.recording.frames) == 4 and final.recording.state == "finished" and "done" in final.status
    skipped = handlers.live_mode.live_generate(False, *LIVE_VALUES, request=Session())  # live off: nothing runs or changes
    assert len(skipped) == len(StreamOutputs._fields) and all(out == gr.skip() for out in skipped)


def test_the_page_opens_on_the_faster_model_that_reaches_the_target(latent_dir, checkpoint_dir, tmp_path):  # noqa: F811
    pixel_dir, latent_copy = tmp_path / "pixel", tmp_path / "latent"
    shutil.copytree(checkpoint_dir, pixel_dir)
    shutil.copytree(latent_dir, latent_copy)
    record = {"scale": 3.0, "steps": 3, "sampler": "unipc"}
    (pixel_dir / "defaults.json").write_text(json.dumps({**record, "fidelity": [0.96, 0.95, 0.97], "seconds_per_image": 0.05}))
    (latent_copy / "defaults.json").write_text(json.dumps({**record, "fidelity": [0.955, 0.94, 0.97], "seconds_per_image": 0.004}))
    models = models_of([load_bundle(pixel_dir), load_bundle(latent_copy)])
    ordered, why = opening_order(models)
    assert [m.name for m in ordered] == ["latent", "pixel"] and "samples fastest" in why and "latent 95.5%" in why
    # A faster model whose interval starts below the target does not open the page.
    (latent_copy / "defaults.json").write_text(json.dumps({**record, "fidelity": [0.94, 0.92, 0.96], "seconds_per_image": 0.004}))
    ordered, why = opening_order(models_of([load_bundle(pixel_dir), load_bundle(latent_copy)]))
    assert [m.name for m in ordered] == ["pixel", "latent"]


def test_the_autoencoder_and_the_latent_networks_train_from_the_command_line(tmp_path):
    images = write_stripes_folder(tmp_path / "images")
    out = tmp_path / "out"
    common = ["--out", str(out), "--image-folder", str(images), "--image-size", "16", "--holdout", "0.25",
              "--batch-size", "4", "--log-every", "2", "--device", "cpu", "--threads", "1"]
    assert train.main(["autoencoder", *common, "--steps", "4", "--base-channels", "8", "--latent-channels", "2"]) == 0
    assert read_log(out, "autoencoder")[-1]["test_psnr"] > 0
    autoencoder, meta = load(out, "autoencoder")
    assert autoencoder.config.latent_shape == (2, 4, 4) and meta["training"]["kl_weight"] == 1e-6
    for kind in ("unet", "classifier"):
        assert train.main([kind, *common, "--steps", "2", "--base-channels", "8", "--num-timesteps", "100",
                           "--channel-mults", "1,2", "--attention-levels", "", "--autoencoder", str(out)]) == 0
    record = load(out, "unet")[1]["latent"]
    assert record == load(out, "classifier")[1]["latent"] and record["shape"] == [2, 4, 4]
    bundle = load_bundle(out)
    assert bundle.space == "latent" and bundle.codec.scale_factor == record["scale_factor"]
    request = Request((Row(0, 1.0),), images_per_row=2, steps=2, sampler="ddim")
    assert generate(bundle, request).images.shape == (2, 1, 16, 16)
    with pytest.raises(SystemExit):
        train.main(["evaluator", *common, "--autoencoder", str(out)])
