"""Convert openai/guided-diffusion checkpoints into a checkpoint folder (safetensors + JSON).

    python -m guidescope.convert guided-diffusion --model 64x64_diffusion.pt --classifier 64x64_classifier.pt \\
        --preset 64x64 --out checkpoints/imagenet-64
    python -m guidescope.convert guided-diffusion --model M.pt --flags "--image_size 64 ..." \\
        [--classifier C.pt --classifier-flags "--classifier_depth 4"] --out DIR
    python -m guidescope.convert guided-diffusion --download --preset 64x64 [--cache DIR] --out DIR

A preset is the flags of guided-diffusion's README sampling command for that model; --flags takes
any guided-diffusion flags instead (MODEL_FLAGS, the command's own, or both), --classifier-flags
the classifier's (parsed after --flags, which give its --image_size, as in classifier_sample.py).
--download fetches a preset's published model and classifier (the README's links) into --cache and
converts them as if they were given with --model and --classifier.
The .pt files are read with torch.load(weights_only=True) and nothing else: a pickle that would
run code is refused, not run. A file whose keys or shapes differ from the config is refused,
naming the first difference. The folder gets unet.* and classifier.* with the config, the noise
schedule, ImageNet's class names (for 1000 classes) and the source files and flags, and a
defaults.json with the paper's sampler settings (25 DDIM steps, the command's classifier scale)
for the app. The bundle guides in guided-diffusion's order (guidescope.guide.ORDERS), so its
images are those of classifier_sample.py for the same x_T and noise.
"""
from __future__ import annotations

import argparse
import http.client
import json
import pickle
import shlex
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoints import save
from .networks.adm import ADMClassifier, ADMClassifierConfig, ADMUNet, ADMUNetConfig

FORMATS = ("guided-diffusion",)

# guided-diffusion's flags with their defaults (script_util's model_and_diffusion_defaults and
# classifier_defaults, and classifier_sample.py's own); a flag's type is its default's.
FLAG_DEFAULTS = dict(
    image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1, num_head_channels=-1,
    attention_resolutions="16,8", channel_mult="", dropout=0.0, class_cond=False, use_checkpoint=False,
    use_scale_shift_norm=True, resblock_updown=False, use_fp16=False, use_new_attention_order=False,
    learn_sigma=False, diffusion_steps=1000, noise_schedule="linear", timestep_respacing="", use_kl=False,
    predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False,
    classifier_use_fp16=False, classifier_width=128, classifier_depth=2, classifier_attention_resolutions="32,16,8",
    classifier_use_scale_shift_norm=True, classifier_resblock_updown=True, classifier_pool="attention",
    clip_denoised=True, num_samples=10000, batch_size=16, use_ddim=False, model_path="", classifier_path="",
    classifier_scale=1.0,
)
# guided-diffusion's channel_mult for each image size it knows (create_model, create_classifier).
CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
NUM_CLASSES = 1000  # ImageNet
GUIDANCE_ORDER = "threshold-then-guide"  # guided-diffusion's: cond_fn acts on p_mean_variance's clipped output
DEFAULT_CLASS = 207  # "golden retriever": the page opens on a class anyone can judge


@dataclass(frozen=True)
class Preset:
    """A README sampling command: MODEL_FLAGS, the command's classifier flags, the published files
    it samples with (names under DEFAULT_BASE_URL), and its SAMPLE_FLAGS."""
    model_flags: str
    classifier_flags: str
    model_file: str
    classifier_file: str
    sample_flags: str = "--timestep_respacing 250"


_ADM_COMMON = ("--attention_resolutions 32,16,8 --diffusion_steps 1000 --learn_sigma True --resblock_updown True "
               "--use_fp16 True --use_scale_shift_norm True")
_ADM_256 = _ADM_COMMON + " --image_size 256 --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2"
PRESETS = {
    "64x64": Preset(_ADM_COMMON + " --class_cond True --dropout 0.1 --image_size 64 --noise_schedule cosine "
                    "--num_channels 192 --num_head_channels 64 --num_res_blocks 3 --use_new_attention_order True",
                    "--classifier_scale 1.0 --classifier_depth 4", "64x64_diffusion.pt", "64x64_classifier.pt"),
    "128x128": Preset(_ADM_COMMON + " --class_cond True --image_size 128 --noise_schedule linear --num_channels 256 "
                      "--num_heads 4 --num_res_blocks 2", "--classifier_scale 0.5",
                      "128x128_diffusion.pt", "128x128_classifier.pt"),
    "256x256": Preset(_ADM_256 + " --class_cond True", "--classifier_scale 1.0",
                      "256x256_diffusion.pt", "256x256_classifier.pt"),
    # the README guides the unconditional model with the conditional model's classifier
    "256x256_uncond": Preset(_ADM_256 + " --class_cond False", "--classifier_scale 10.0",
                             "256x256_diffusion_uncond.pt", "256x256_classifier.pt"),
}
DEFAULT_BASE_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021"  # the README's download links
DEFAULT_CACHE = Path("~/.cache/classifier-guidescope/guided-diffusion")


class ConversionError(RuntimeError):
    """A checkpoint cannot be converted: unreadable, not plain weights, or not the config's."""


class DownloadError(RuntimeError):
    """A published file cannot be fetched: the network or server is unreachable, or answered an error."""


def _typed(name: str, text: str):
    default = FLAG_DEFAULTS[name]
    if isinstance(default, bool):  # guided-diffusion's str2bool
        if text.lower() in ("yes", "true", "t", "y", "1"):
            return True
        if text.lower() in ("no", "false", "f", "n", "0"):
            return False
        raise ValueError(f"--{name} takes a boolean (True or False), got {text!r}")
    try:
        return type(default)(text)
    except ValueError:
        raise ValueError(f"--{name} takes a {type(default).__name__}, got {text!r}") from None


def parse_flags(text: str, flags: dict | None = None) -> dict:
    """guided-diffusion flags ("--name value" or "--name=value") over `flags` (its defaults when
    None) -> the full dict of flags. ValueError names an unknown flag or a bad value."""
    result = dict(FLAG_DEFAULTS if flags is None else flags)
    words = shlex.split(text)
    while words:
        word = words.pop(0)
        if not word.startswith("--"):
            raise ValueError(f"expected a flag --name, got {word!r}")
        name, equals, value = word[2:].partition("=")
        if name not in FLAG_DEFAULTS:
            raise ValueError(f"unknown guided-diffusion flag --{name}; choose among {', '.join(sorted(FLAG_DEFAULTS))}")
        if not equals:
            if not words:
                raise ValueError(f"--{name} needs a value")
            value = words.pop(0)
        result[name] = _typed(name, value)
    return result


def _channel_mult(image_size: int, text: str = "") -> tuple:
    if text:
        return tuple(int(m) for m in text.split(","))
    if image_size not in CHANNEL_MULT:
        raise ValueError(f"no channel_mult for image size {image_size}; choose one of {sorted(CHANNEL_MULT)} "
                         "or give --channel_mult")
    return CHANNEL_MULT[image_size]


def _downsample_rates(image_size: int, resolutions: str) -> tuple[int, ...]:
    """'32,16,8' at 64px -> (2, 4, 8): guided-diffusion's attention resolutions as rates ds."""
    return tuple(image_size // int(res) for res in resolutions.split(","))


def unet_config(flags: dict) -> ADMUNetConfig:
    """The UNet that guided-diffusion's create_model builds from these flags (3-channel images)."""
    return ADMUNetConfig(
        image_size=flags["image_size"], in_channels=3, model_channels=flags["num_channels"],
        out_channels=6 if flags["learn_sigma"] else 3, num_res_blocks=flags["num_res_blocks"],
        attention_resolutions=_downsample_rates(flags["image_size"], flags["attention_resolutions"]),
        dropout=flags["dropout"], channel_mult=_channel_mult(flags["image_size"], flags["channel_mult"]),
        num_classes=NUM_CLASSES, class_cond=flags["class_cond"], num_heads=flags["num_heads"],
        num_head_channels=flags["num_head_channels"], num_heads_upsample=flags["num_heads_upsample"],
        use_scale_shift_norm=flags["use_scale_shift_norm"], resblock_updown=flags["resblock_updown"],
        use_new_attention_order=flags["use_new_attention_order"])


def classifier_config(flags: dict) -> ADMClassifierConfig:
    """The classifier that guided-diffusion's create_classifier builds from these flags."""
    return ADMClassifierConfig(
        image_size=flags["image_size"], in_channels=3, model_channels=flags["classifier_width"],
        out_channels=NUM_CLASSES, num_res_blocks=flags["classifier_depth"],
        attention_resolutions=_downsample_rates(flags["image_size"], flags["classifier_attention_resolutions"]),
        channel_mult=_channel_mult(flags["image_size"]), num_heads=1, num_head_channels=64,
        use_scale_shift_norm=flags["classifier_use_scale_shift_norm"],
        resblock_updown=flags["classifier_resblock_updown"], use_new_attention_order=False,
        pool=flags["classifier_pool"])


def diffusion_record(flags: dict) -> dict:
    """The checkpoint's {"schedule", "num_timesteps"} plus what the sampler needs to know of the
    model's output (learn_sigma: the second half is v, the variance interpolation) and the README's
    respacing. ValueError for what the bundle cannot honour."""
    if flags["predict_xstart"]:
        raise ValueError("--predict_xstart True models predict x_0, not eps; only eps models convert")
    if flags["rescale_timesteps"] and flags["diffusion_steps"] != 1000:
        raise ValueError("--rescale_timesteps True models take t * 1000 / T; only T = 1000 converts")
    return {"schedule": flags["noise_schedule"], "num_timesteps": flags["diffusion_steps"],
            "learn_sigma": flags["learn_sigma"], "timestep_respacing": flags["timestep_respacing"],
            "use_ddim": flags["use_ddim"], "guidance_order": GUIDANCE_ORDER}


def app_defaults(flags: dict, classifier_flags: dict) -> dict:
    """defaults.json for the app (demo.settings.AppDefaults' names): the paper's 25 DDIM steps
    (guided-diffusion's README: --timestep_respacing ddim25 --use_ddim True), the command's
    classifier scale, the UNet the model is (no classifier-free guidance: no null label), and one
    image, since a full-size step takes seconds on a CPU."""
    return {"class_index": DEFAULT_CLASS, "scale": classifier_flags["classifier_scale"],
            "unet": "conditional" if flags["class_cond"] else "unconditional", "cfg_scale": 0.0,
            "steps": 25, "sampler": "ddim", "eta": 0.0, "num_images": 1,
            "scale_reason": "the --classifier_scale of guided-diffusion's README command for this model",
            "steps_reason": "Dhariwal & Nichol sample with 25 DDIM steps (README: --timestep_respacing ddim25 "
                            "--use_ddim True); here 25 evenly spaced steps ending at T-1, which keep other "
                            "timesteps than ddim25's range(0, 1000, 40)"}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .pt file, by torch.load(weights_only=True): a pickle that would build any
    other object (run code) is refused before anything runs. ConversionError names the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConversionError(f"{path} is not plain weights; refused without running it ({str(err).splitlines()[0]})") from None
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        raise ConversionError(f"cannot read {path}: {err}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return state


def check_state_dict(state: dict[str, torch.Tensor], model: nn.Module, path: str | Path) -> None:
    """ConversionError naming the first key (in the network's order) missing from the file or of
    another shape, else the first key the network lacks."""
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise ConversionError(f"{path} lacks {key} {tuple(value.shape)}, which the config expects")
        if tuple(state[key].shape) != tuple(value.shape):
            raise ConversionError(f"{path} has {key} of shape {tuple(state[key].shape)}; the config expects "
                                  f"{tuple(value.shape)}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise ConversionError(f"{path} has {extra[0]} {tuple(state[extra[0]].shape)}, which the config lacks"
                              + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))


def _load_into(model: nn.Module, path: Path) -> nn.Module:
    state = read_state_dict(path)
    check_state_dict(state, model, path)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    return model


def imagenet_class_names() -> list[str]:
    """ImageNet's 1000 class names, as torchvision ships them in its weights' metadata (no download)."""
    from torchvision.models import ResNet50_Weights  # here: importing torchvision takes a while
    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def convert(model_path: Path, model_flags: str, out: Path, classifier_path: Path | None = None,
            classifier_flags: str = "") -> Path:
    """Write out/unet.* (and out/classifier.*) from guided-diffusion checkpoints and their flags."""
    flags = parse_flags(model_flags)
    classifier_all = parse_flags(classifier_flags, flags)
    record = diffusion_record(flags)
    names = imagenet_class_names()
    source = {"format": "guided-diffusion", "model": Path(model_path).name, "flags": model_flags,
              "classifier_flags": classifier_flags, "classifier_scale": classifier_all["classifier_scale"]}
    if classifier_path is not None:
        source["classifier"] = Path(classifier_path).name
    unet = _load_into(ADMUNet(unet_config(flags)), Path(model_path))
    classifier = None
    if classifier_path is not None:  # checked before anything is written
        classifier = _load_into(ADMClassifier(classifier_config(classifier_all)), Path(classifier_path))
    out = Path(out)
    save(unet, out, "adm_unet", "unet", class_names=names, diffusion=record, source=source)
    if classifier is not None:
        save(classifier, out, "adm_classifier", "classifier", class_names=names, diffusion=record, source=source)
    (out / "defaults.json").write_text(json.dumps(app_defaults(flags, classifier_all), indent=2) + "\n")
    return Path(out)


def download(url: str, dest: Path, timeout: float = 60.0) -> Path:
    """Fetch url to dest, streamed into a temporary file beside it that is renamed only once the
    whole body (the server's Content-Length, where it gives one) has arrived, so a failed run
    leaves no partial dest. A dest already of the server's size is kept, not fetched again.
    DownloadError names the URL."""
    dest, part = Path(dest), None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            size = None if length is None else int(length)
            if size is not None and dest.is_file() and dest.stat().st_size == size:
                return dest
            dest.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part",
                                             delete=False) as file:
                part = Path(file.name)
                shutil.copyfileobj(response, file, 1 << 20)
        if size is not None and part.stat().st_size != size:
            raise DownloadError(f"{url} sent {part.stat().st_size} of its {size} bytes")
        part.replace(dest)
        part = None
        return dest
    except urllib.error.HTTPError as err:  # before URLError, which it is
        raise DownloadError(f"{url} answered {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise DownloadError(f"cannot reach {url}: {err.reason}") from None
    except (OSError, http.client.HTTPException) as err:
        raise DownloadError(f"cannot fetch {url}: {err}") from None
    finally:
        if part is not None:
            part.unlink(missing_ok=True)


def fetch_preset(name: str, cache: Path = DEFAULT_CACHE, base_url: str = DEFAULT_BASE_URL) -> tuple[Path, Path]:
    """The preset's published (model, classifier) files in cache, fetched from base_url/NAME."""
    preset, folder = PRESETS[name], Path(cache).expanduser()
    paths = []
    for file in (preset.model_file, preset.classifier_file):
        url = f"{base_url.rstrip('/')}/{file}"
        print(f"fetching {url} -> {folder / file}", file=sys.stderr)
        paths.append(download(url, folder / file))
    return tuple(paths)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m guidescope.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("format", choices=FORMATS)
    p.add_argument("--model", type=Path, default=None, help="the diffusion model's .pt state dict")
    p.add_argument("--classifier", type=Path, default=None, help="the noise-aware classifier's .pt state dict")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", choices=sorted(PRESETS), help="flags of guided-diffusion's README command")
    which.add_argument("--flags", help='guided-diffusion flags, e.g. "--image_size 64 --num_channels 192 ..."')
    p.add_argument("--classifier-flags", default=None, help="the classifier's flags (a preset has its own)")
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    p.add_argument("--download", action="store_true",
                   help="fetch the --preset's published model and classifier into --cache (a file already there "
                        "at the server's size is kept) and convert them, in place of --model and --classifier")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"where --download keeps files ({DEFAULT_CACHE})")
    p.add_argument("--base-url", default=DEFAULT_BASE_URL, help="where --download fetches from (the README's links)")
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.download and (args.preset is None or args.model or args.classifier):
        p.error("--download fetches a --preset's own files: give --preset and no --model or --classifier")
    if not args.download and args.model is None:
        p.error("give --model, or --download with --preset")
    if args.preset:
        preset = PRESETS[args.preset]
        model_flags = f"{preset.model_flags} {preset.sample_flags}"
        classifier_flags = preset.classifier_flags if args.classifier_flags is None else args.classifier_flags
    else:
        model_flags, classifier_flags = args.flags, args.classifier_flags or ""
    try:
        if args.download:
            args.model, args.classifier = fetch_preset(args.preset, args.cache, args.base_url)
        out = convert(args.model, model_flags, args.out, args.classifier, classifier_flags)
    except (ConversionError, DownloadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
