"""ADM (guidescope.networks.adm) against openai/guided-diffusion's own code, and the converter (guidescope.convert).

The reference numbers are test data written by scripts/adm_reference.py, which ran guided-diffusion
in a scratch environment: the sorted (key, shape) lists of the README presets' networks, and the
outputs of tiny random networks whose weights both sides fill from one seeded recipe (adm_fixtures).
"""
import dataclasses
import functools
import http.server
import pickle
import socket
import threading

import pytest
import torch
from safetensors.torch import load_file
from test_checkpoints import Marker

from adm_fixtures import DATA, checksum, random_weights, read_json, shapes_of
from guidescope import convert
from guidescope.checkpoints import load
from guidescope.convert import PRESETS, ConversionError, parse_flags
from guidescope.diffusion import GaussianDiffusion, respace_timesteps
from guidescope.networks.adm import ADMClassifier, ADMClassifierConfig, ADMUNet, ADMUNetConfig
from guidescope.networks.registry import build_model

TINY = read_json("tiny.json")
PRESET_DATA = read_json("presets.json")


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(DATA / "tiny.safetensors")


def tiny_network(name: str) -> torch.nn.Module:
    """Our network for a tiny fixture config, with the weights the reference ran with."""
    record = TINY["networks"][name]
    net = build_model(record["kind"], record["config"])
    weights = random_weights(shapes_of(net.state_dict()), record["seed"])
    net.load_state_dict(weights, strict=True)
    return net.eval().requires_grad_(False)


def key_shapes(model: torch.nn.Module) -> list:
    return [[k, list(v.shape)] for k, v in sorted(model.state_dict().items())]


@pytest.mark.parametrize("name", sorted(TINY["networks"]))
def test_tiny_network_reproduces_the_reference(name, reference):
    record = TINY["networks"][name]
    net = tiny_network(name)
    assert key_shapes(net) == record["keys"]
    assert checksum(net.state_dict()) == pytest.approx(record["checksum"], rel=1e-12)  # the same weights
    x, t, y = reference["x"], reference["t"], reference["y"]
    out = net(x, t, y) if isinstance(net, ADMUNet) else net(x, t)
    assert out.shape == reference[f"{name}/out"].shape
    torch.testing.assert_close(out, reference[f"{name}/out"], atol=1e-5, rtol=0)


def test_learn_sigma_doubles_the_output_channels():
    assert tiny_network("unet_new").config.learn_sigma and not tiny_network("unet_legacy").config.learn_sigma


def test_unconditional_unet_ignores_labels_and_conditional_needs_them(reference):
    x, t = reference["x"], reference["t"]
    uncond = tiny_network("unet_legacy")
    assert torch.equal(uncond(x, t, torch.tensor([0, 1])), uncond(x, t))
    with pytest.raises(ValueError, match="needs labels"):
        tiny_network("unet_new")(x, t)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_networks_have_the_reference_keys_and_shapes(preset):
    recorded = PRESET_DATA[preset]
    ours = PRESETS[preset]
    # Our copy of the README command parses to the same flags as the script's copy.
    assert parse_flags(f"{ours.model_flags} {ours.sample_flags}") == parse_flags(
        f"{recorded['model_flags']} {recorded['sample_flags']}")
    flags = parse_flags(f"{ours.model_flags} {ours.sample_flags}")
    classifier_flags = parse_flags(ours.classifier_flags, flags)
    assert parse_flags(recorded["classifier_flags"], flags) == classifier_flags
    with torch.device("meta"):  # keys and shapes only; a 256x256 model would take 2 GiB
        unet = ADMUNet(convert.unet_config(flags))
        classifier = ADMClassifier(convert.classifier_config(classifier_flags))
    assert key_shapes(unet) == recorded["unet"]
    assert key_shapes(classifier) == recorded["classifier"]
    record = convert.diffusion_record(flags)
    assert (record["schedule"], record["num_timesteps"], record["learn_sigma"], record["timestep_respacing"]) == (
        recorded["diffusion"]["noise_schedule"], recorded["diffusion"]["diffusion_steps"],
        recorded["diffusion"]["learn_sigma"], recorded["diffusion"]["timestep_respacing"])
    assert classifier_flags["classifier_scale"] == recorded["classifier_scale"]
    # The README's --timestep_respacing 250 keeps the timesteps our respacing keeps.
    kept = respace_timesteps(record["num_timesteps"], int(record["timestep_respacing"]))
    assert kept.tolist() == recorded["diffusion"]["kept_timesteps"]


def test_config_rejects_widths_groupnorm_cannot_split():
    with pytest.raises(ValueError, match="multiple of 32"):
        ADMUNetConfig(model_channels=48)
    with pytest.raises(ValueError, match="choose one of"):
        ADMClassifierConfig(pool="spatial")


# The converter ---------------------------------------------------------------------------------

TINY_FLAGS = ("--image_size 8 --num_channels 32 --channel_mult 1,2 --num_res_blocks 1 --attention_resolutions 8,4 "
              "--learn_sigma True --class_cond True --num_head_channels 16 --resblock_updown True "
              "--use_new_attention_order True --noise_schedule cosine --diffusion_steps 100")


def tiny_checkpoint(tmp_path, flags: str = TINY_FLAGS) -> tuple[ADMUNet, str]:
    torch.manual_seed(0)
    unet = ADMUNet(convert.unet_config(parse_flags(flags)))
    state = random_weights(shapes_of(unet.state_dict()), seed=5)
    unet.load_state_dict(state)
    path = tmp_path / "model.pt"
    torch.save(state, path)
    return unet.eval(), path


def test_converter_writes_a_folder_that_loads_to_the_same_network(tmp_path):
    unet, path = tiny_checkpoint(tmp_path)
    assert convert.main(["guided-diffusion", "--model", str(path), "--flags", TINY_FLAGS,
                         "--out", str(tmp_path / "out")]) == 0
    loaded, meta = load(tmp_path / "out", "unet")
    assert meta["kind"] == "adm_unet" and loaded.config == unet.config
    assert meta["diffusion"] == {"schedule": "cosine", "num_timesteps": 100, "learn_sigma": True,
                                 "timestep_respacing": "", "use_ddim": False, "guidance_order": "threshold-then-guide"}
    assert len(meta["class_names"]) == 1000 and meta["class_names"][1] == "goldfish"
    assert meta["source"]["model"] == "model.pt"
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([5, 90]), torch.tensor([3, 999])
    assert torch.equal(loaded(x, t, y), unet(x, t, y))


CLASSIFIER_FLAGS = "--classifier_width 32 --classifier_depth 1 --classifier_attention_resolutions 8"


def test_converter_writes_the_classifier_with_the_model(tmp_path):
    _, model_path = tiny_checkpoint(tmp_path, TINY_FLAGS.replace("--image_size 8", "--image_size 64"))
    classifier = ADMClassifier(convert.classifier_config(parse_flags(CLASSIFIER_FLAGS, parse_flags("--image_size 64"))))
    state = random_weights(shapes_of(classifier.state_dict()), seed=6)
    torch.save(state, tmp_path / "classifier.pt")
    convert.convert(model_path, TINY_FLAGS.replace("--image_size 8", "--image_size 64"), tmp_path / "out",
                    tmp_path / "classifier.pt", CLASSIFIER_FLAGS)
    loaded, meta = load(tmp_path / "out", "classifier")
    assert meta["kind"] == "adm_classifier" and meta["source"]["classifier"] == "classifier.pt"
    assert loaded.config.num_classes == 1000 and loaded.config.image_size == 64
    classifier.load_state_dict(state)
    x, t = torch.randn(1, 3, 64, 64), torch.tensor([7])
    assert torch.equal(loaded(x, t), classifier.eval()(x, t))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's, about the payload it refuses
def test_converter_refuses_a_pickle_that_would_run_code(tmp_path, capsys):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"input_blocks.0.0.weight": Marker(marker)}))
    torch.save({"x": Marker(marker)}, tmp_path / "evil_zip.pt")  # the zip format torch.save writes
    assert not marker.exists()
    for file in (path, tmp_path / "evil_zip.pt"):
        with pytest.raises(ConversionError, match="not plain weights"):
            convert.read_state_dict(file)
        assert convert.main(["guided-diffusion", "--model", str(file), "--flags", TINY_FLAGS,
                             "--out", str(tmp_path / "out")]) == 2
    assert not marker.exists() and not (tmp_path / "out").exists()
    assert "refused" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ("drop", "lacks input_blocks.1.0.in_layers.0.weight"),
    ("reshape", r"has input_blocks.1.0.in_layers.0.weight of shape \(16,\); the config expects \(32,\)"),
    ("extra", "has zz.extra .*which the config lacks"),
])
def test_converter_refuses_weights_that_do_not_fit_the_config_naming_the_first_mismatch(tmp_path, change, message):
    unet, _ = tiny_checkpoint(tmp_path)
    state = dict(unet.state_dict())
    key = "input_blocks.1.0.in_layers.0.weight"  # the first key after the stem in the network's order
    if change == "drop":
        del state[key]
        del state["input_blocks.1.0.in_layers.0.bias"]
    elif change == "reshape":
        state[key] = torch.ones(16)
        state["out.2.weight"] = torch.ones(1)  # a later mismatch is not the one named
    else:
        state["zz.extra"] = torch.ones(2)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ConversionError, match=message):
        convert.convert(tmp_path / "bad.pt", TINY_FLAGS, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_flags_parser_names_an_unknown_flag_and_a_bad_value():
    assert parse_flags("--image_size=128 --class_cond False")["image_size"] == 128
    with pytest.raises(ValueError, match="unknown guided-diffusion flag --image-size"):
        parse_flags("--image-size 64")
    with pytest.raises(ValueError, match="--learn_sigma takes a boolean"):
        parse_flags("--learn_sigma maybe")


# Learned variance and the guided runs ---------------------------------------------------------

RUN = TINY["run"]


def run_setup(reference):
    """The run's diffusion (respaced as the reference's), UNet, and classifier_sample.py's cond_fn."""
    diffusion = GaussianDiffusion.from_schedule(RUN["noise_schedule"], RUN["diffusion_steps"],
                                                int(RUN["timestep_respacing"]))
    assert torch.equal(diffusion.timesteps, reference["run/timestep_map"])
    unet, classifier = tiny_network(RUN["unet"]), tiny_network(RUN["classifier"])
    y = reference["run/y"]

    def grad_log_p(x, t_original):
        """s * grad_x log p_phi(y | x_t, t)."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            selected = classifier(x_in, t_original).log_softmax(-1)[range(len(y)), y]
            return torch.autograd.grad(selected.sum(), x_in)[0] * RUN["classifier_scale"]
    return diffusion, unet, y, grad_log_p


def model_step(diffusion, unet, x, t, y):
    """(eps, x-hat_0 clipped to [-1, 1], learned Sigma_theta) at indices t of the respaced schedule."""
    eps, v = unet(x, diffusion.timesteps[t], y).chunk(2, dim=1)
    pred_xstart = diffusion.predict_xstart_from_eps(x, t, eps).clamp(-1, 1)
    return eps, pred_xstart, diffusion.learned_variance(t, v)


def test_learned_variance_gives_the_reference_p_mean_variance(reference):
    diffusion, unet, y, _ = run_setup(reference)
    x, t = reference["run/x_T"], reference["pmv/t"]
    _, pred_xstart, sigma = model_step(diffusion, unet, x, t, y)
    mean = diffusion.q_posterior_mean_variance(pred_xstart, x, t).mean
    for name, ours in (("mean", mean), ("variance", sigma.variance), ("log_variance", sigma.log_variance),
                       ("pred_xstart", pred_xstart)):
        torch.testing.assert_close(ours, reference[f"pmv/{name}"], atol=1e-5, rtol=0, msg=name)


def test_learned_variance_spans_beta_tilde_to_beta():
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, 10)
    t, like = torch.tensor([5]), torch.zeros(1, 1)
    low, high = diffusion.learned_variance(t, -torch.ones(1, 1)), diffusion.learned_variance(t, torch.ones(1, 1))
    assert low.variance.item() == pytest.approx(diffusion.fixed_variance(t, like).variance.item(), rel=1e-6)
    assert high.variance.item() == pytest.approx(diffusion.betas[5].item(), rel=1e-6)


def ddpm_run(reference, scale: float = 1.0) -> list[torch.Tensor]:
    """p_sample with condition_mean: mean + Sigma_theta * s * g, then + exp(log Sigma_theta / 2) * noise,
    with the noise the reference drew; x_{t-1} of every step."""
    diffusion, unet, y, grad_log_p = run_setup(reference)
    x, samples = reference["run/x_T"], []
    for k, i in enumerate(reversed(range(diffusion.num_timesteps))):
        t = torch.full((len(x),), i)
        _, pred_xstart, sigma = model_step(diffusion, unet, x, t, y)
        mean = diffusion.q_posterior_mean_variance(pred_xstart, x, t).mean
        mean = mean + sigma.variance * scale * grad_log_p(x, diffusion.timesteps[t])
        x = mean + (i != 0) * (0.5 * sigma.log_variance).exp() * reference["ddpm/noise"][k]
        samples.append(x)
    return samples


def ddim_run(reference, scale: float = 1.0) -> list[torch.Tensor]:
    """ddim_sample (eta 0) with condition_score: eps - sqrt(1 - alpha-bar_t) * s * g; x_{t-1} of every step."""
    diffusion, unet, y, grad_log_p = run_setup(reference)
    x, samples = reference["run/x_T"], []
    for i in reversed(range(diffusion.num_timesteps)):
        t = torch.full((len(x),), i)
        _, pred_xstart, _ = model_step(diffusion, unet, x, t, y)
        eps = diffusion.predict_eps_from_xstart(x, t, pred_xstart)
        eps = eps - diffusion._gather("sqrt_one_minus_alphas_cumprod", t, x) * scale * grad_log_p(x, diffusion.timesteps[t])
        alpha_bar_prev = diffusion._gather("alphas_cumprod_prev", t, x)
        x = diffusion.predict_xstart_from_eps(x, t, eps) * alpha_bar_prev.sqrt() + (1 - alpha_bar_prev).sqrt() * eps
        samples.append(x)
    return samples


@pytest.mark.parametrize("sampler, run", [("ddpm", ddpm_run), ("ddim", ddim_run)])
def test_guided_run_follows_the_reference_sample_loop(reference, sampler, run):
    """Every step of guided-diffusion's p_sample_loop (learned variance) / ddim_sample_loop with cond_fn."""
    expected = reference[f"{sampler}/samples"]
    for k, x in enumerate(run(reference)):
        # float32 rounding grows over the steps, differently at each thread count (up to 3e-4 after 10)
        torch.testing.assert_close(x, expected[k], atol=1e-3, rtol=0, msg=f"{sampler} step {k}")
    # The guidance term is far above the tolerance, so the comparison checks it.
    assert (run(reference, scale=0.0)[-1] - expected[-1]).abs().max() > 1e-2


# Downloading a preset's published files (from a file server on 127.0.0.1) ------------------------

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def file_server(tmp_path):
    """(folder, base URL) of an HTTP server on 127.0.0.1 that serves the folder's files."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join()


TINY_64 = TINY_FLAGS.replace("--image_size 8", "--image_size 64")  # a classifier needs an image size ADM knows


def download_args(tmp_path, base_url: str) -> list[str]:
    return ["guided-diffusion", "--download", "--preset", "64x64", "--cache", str(tmp_path / "cache"),
            "--base-url", base_url, "--out", str(tmp_path / "out")]


def test_download_fetches_the_presets_files_and_converts_them(tmp_path, file_server, monkeypatch):
    folder, base_url = file_server
    monkeypatch.setitem(PRESETS, "64x64", dataclasses.replace(
        PRESETS["64x64"], model_flags=TINY_64, classifier_flags=CLASSIFIER_FLAGS, sample_flags="--timestep_respacing 25"))
    unet, model_path = tiny_checkpoint(tmp_path, TINY_64)
    model_path.rename(folder / "64x64_diffusion.pt")
    classifier = ADMClassifier(convert.classifier_config(parse_flags(CLASSIFIER_FLAGS, parse_flags(TINY_64))))
    classifier.load_state_dict(random_weights(shapes_of(classifier.state_dict()), seed=6))
    torch.save(classifier.state_dict(), folder / "64x64_classifier.pt")
    assert convert.main(download_args(tmp_path, base_url)) == 0
    for name in ("64x64_diffusion.pt", "64x64_classifier.pt"):
        assert (tmp_path / "cache" / name).read_bytes() == (folder / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["64x64_classifier.pt", "64x64_diffusion.pt"]
    loaded_unet, meta = load(tmp_path / "out", "unet")
    loaded_classifier, _ = load(tmp_path / "out", "classifier")
    assert meta["source"]["model"] == "64x64_diffusion.pt" and meta["source"]["classifier"] == "64x64_classifier.pt"
    x, t, y = torch.randn(1, 3, 64, 64), torch.tensor([7]), torch.tensor([3])
    assert torch.equal(loaded_unet(x, t, y), unet(x, t, y))
    assert torch.equal(loaded_classifier(x, t), classifier.eval()(x, t))


def test_download_keeps_a_file_of_the_servers_size_and_replaces_another(tmp_path, file_server):
    folder, base_url = file_server
    (folder / "f.pt").write_bytes(b"published")
    dest = tmp_path / "cache" / "f.pt"
    assert convert.download(base_url + "f.pt", dest) == dest and dest.read_bytes() == b"published"
    dest.write_bytes(b"same-size")  # as long as the server's file: kept, not fetched again
    convert.download(base_url + "f.pt", dest)
    assert dest.read_bytes() == b"same-size"
    dest.write_bytes(b"short")
    convert.download(base_url + "f.pt", dest)
    assert dest.read_bytes() == b"published"


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("failure", ["unreachable", "404"])
def test_download_failure_exits_2_naming_the_url(tmp_path, file_server, capsys, failure):
    base_url = closed_port_url() if failure == "unreachable" else file_server[1]  # the served folder is empty
    assert convert.main(download_args(tmp_path, base_url)) == 2
    err = capsys.readouterr().err
    url = f"{base_url.rstrip('/')}/64x64_diffusion.pt"
    assert f"error: cannot reach {url}: " in err if failure == "unreachable" else f"error: {url} answered 404" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())
