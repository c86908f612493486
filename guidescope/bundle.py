"""The loaded pipeline every caller uses: a Bundle of the networks of one checkpoint folder (the
UNet, the guidance classifier, the evaluator and, for a latent model, the codec), and
load_bundle, which reads them through guidescope.checkpoints and refuses networks that disagree on
the classes, the image size, the noise schedule or the latent space; and read_defaults, the one
reader of a folder's defaults.json (the settings the evaluation chose), which the app and the
command line both start from."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoints import CheckpointError, file_digest, load, rebuild_hint
from .codec import Codec, LatentCodec, PixelCodec
from .diffusion import GaussianDiffusion
from .guide import ORDERS, NoiseAwareGuidance, TrainingFree, TrainingFreeGuidance
from .parsing import interval_text
from .request import Conditioning


@dataclass(frozen=True)
class Bundle:
    """Everything the app and the evaluation need, loaded from one checkpoint folder."""
    unet: nn.Module                 # or a runner with the same call, config and null_label (guidescope.networks.backend)
    classifier: nn.Module | None
    evaluator: nn.Module | None
    class_names: tuple[str, ...]
    schedule: str
    num_timesteps: int
    device: torch.device = torch.device("cpu")
    folder: Path | None = None
    codec: Codec | None = None      # the sampler's space; None: pixels (the identity)
    variance: str = "small"         # DDPM's Sigma: "learned" for a learn_sigma UNet (guidescope.samplers.VARIANCES)
    guidance_order: str = ORDERS[0]  # where guidance meets the x-hat_0 threshold (guidescope.guide.ORDERS)
    guide_classifier: nn.Module | None = None  # a clean classifier of images (training-free guidance), or None
    torch_unet: nn.Module | None = None  # the UNet in torch, for gradients through it; None: unet is one

    def __post_init__(self):
        if self.codec is None:
            config = self.unet.config
            object.__setattr__(self, "codec", PixelCodec((config.in_channels, config.image_size, config.image_size)))

    def diffusion(self, steps: int | None = None) -> GaussianDiffusion:
        return GaussianDiffusion.from_schedule(self.schedule, self.num_timesteps, steps)

    def denoiser(self) -> NoiseAwareGuidance:
        """The noise-aware classifier guidance (with classifier-free guidance beneath) of this bundle."""
        return NoiseAwareGuidance(self.unet, self.classifier, self.unet.null_label, self.guidance_order)

    def training_free(self, setting: TrainingFree) -> TrainingFreeGuidance:
        """Training-free guidance by this bundle's clean classifier through x-hat_0 (and the decoder),
        on the torch UNet; the noise-aware classifier only reports log p(c | x_t) for the charts."""
        if self.guide_classifier is None:
            raise ValueError(f"{self.folder or 'this bundle'} has no clean guide classifier (guide_classifier.json): "
                             "give one with --guide-classifier DIR")
        unet = self.torch_unet or self.unet
        return TrainingFreeGuidance(unet, unet.null_label, self.guide_classifier, self.codec.differentiable_decode,
                                    setting, self.classifier)

    @property
    def conditioning(self) -> Conditioning:
        """Which rows the UNet can run: unconditional ones need a null label, conditional ones a class input."""
        return Conditioning(self.unet.null_label is not None, self.unet.config.class_cond)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the tensors the sampler runs on: images, or latents."""
        config = self.unet.config
        return config.in_channels, config.image_size, config.image_size

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the bundle makes (after codec.decode)."""
        return self.codec.image_shape

    @property
    def space(self) -> str:
        """"pixel" or "latent"."""
        return self.codec.space

    @property
    def backend(self) -> str:
        """What runs the UNet forward pass: "torch" or the runtime's name."""
        return getattr(self.unet, "backend", "torch")


def read_defaults(folder: str | Path | None) -> dict:
    """folder/defaults.json (what `python -m guidescope.evaluate` chose for the folder's checkpoints,
    with its reasons) as a dict; {} for no folder, or when the file is missing, unreadable or not a
    JSON object. Its values are read by default_value."""
    if folder is None:
        return {}
    try:
        chosen = json.loads((Path(folder) / "defaults.json").read_text())
    except (OSError, ValueError):
        return {}
    return chosen if isinstance(chosen, dict) else {}


def default_value(name: str, value, kind: type):
    """A defaults.json value as the type kind (int, float or str) of the setting `name`, or None
    when it does not fit: a float setting takes any JSON number, an int or str one only its own type,
    and "interval" also [LO, HI] or null, as its text ('LO-HI' or 'full', guidescope.parsing)."""
    if name == "interval" and value is None:
        return interval_text(None)
    if name == "interval" and isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value):
        return interval_text(tuple(value))
    if kind is float and type(value) in (int, float):
        return float(value)
    return value if type(value) is kind else None


def _diffusion_record(meta: dict, path: Path) -> tuple[str, int]:
    record = meta.get("diffusion")
    if not isinstance(record, dict) or "schedule" not in record or "num_timesteps" not in record:
        raise CheckpointError(f"checkpoint config {path} records no noise schedule ('diffusion': "
                              "{'schedule', 'num_timesteps'})")
    return str(record["schedule"]), int(record["num_timesteps"])


def _sampling_record(meta: dict, unet: nn.Module, path: Path) -> tuple[str, str]:
    """(variance, guidance order) of a UNet's diffusion record: a learn_sigma model samples DDPM with
    its own Sigma_theta; a record without those keys (this project's UNets) means fixed and ORDERS[0]."""
    record = meta["diffusion"]
    learn_sigma = bool(record.get("learn_sigma", False))
    if learn_sigma != bool(getattr(unet.config, "learn_sigma", False)):
        raise CheckpointError(f"{path} says learn_sigma={learn_sigma}, but its UNet outputs "
                              f"{getattr(unet.config, 'out_channels', unet.config.in_channels)} channels")
    order = record.get("guidance_order", ORDERS[0])
    if order not in ORDERS:
        raise CheckpointError(f"{path} has guidance_order {order!r}; choose one of {', '.join(ORDERS)}")
    return ("learned" if learn_sigma else "small"), order


def load_bundle(folder: str | Path, device="cpu", need_evaluator: bool = False, backend: str = "torch",
                classifier_folder: str | Path | None = None, guide_classifier_folder: str | Path | None = None) -> Bundle:
    """Load unet, classifier (and the evaluator and the clean guide classifier when present or
    needed) from folder. backend picks what runs the UNet forward pass (guidescope.networks.backend:
    "torch", "auto" or a CPU runtime); classifier_folder, another folder's classifier in place of
    folder's (a candidate to compare); guide_classifier_folder, a folder whose guide_classifier.json
    and .safetensors (any timm architecture, guidescope.networks.guide_classifier) guide instead of
    folder's. Refuses networks that disagree on the classes, the image size, the noise schedule or
    the latent space."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    unet, meta = load(folder, "unet", device)
    classifier_folder = Path(classifier_folder) if classifier_folder else folder
    classifier, classifier_meta = load(classifier_folder, "classifier", device)
    evaluator = None
    if need_evaluator or (folder / "evaluator.json").exists():
        evaluator, _ = load(folder, "evaluator", device)
    guide_classifier = _guide_classifier(Path(guide_classifier_folder or folder), guide_classifier_folder is not None, device)
    names = _class_names(folder, meta, unet, classifier)
    schedule, num_timesteps = _shared_schedule(folder, meta, classifier_folder, classifier_meta)
    variance, order = _sampling_record(meta, unet, folder / "unet.json")
    codec = _codec(folder, {folder / "unet.json": meta, classifier_folder / "classifier.json": classifier_meta},
                   unet.config, device)
    _check_image_sizes(folder, unet, (classifier, evaluator), codec)
    _check_guide_classifier(folder, guide_classifier, names, codec or PixelCodec(
        (unet.config.in_channels, unet.config.image_size, unet.config.image_size)))
    torch_unet = unet
    if backend != "torch":
        from .networks.backend import select_unet
        unet = select_unet(unet, backend, device)
    return Bundle(unet, classifier, evaluator, names, schedule, num_timesteps, torch.device(device), folder, codec,
                  variance, order, guide_classifier, torch_unet)


def _guide_classifier(folder: Path, asked: bool, device) -> nn.Module | None:
    """folder's clean guide classifier; None where the bundle's own folder has none (it still guides
    by its noise-aware classifier), an error where a folder asked for has none."""
    if not (folder / "guide_classifier.json").exists():
        if asked:
            raise CheckpointError(f"{folder} holds no guide classifier (guide_classifier.json and .safetensors, "
                                  "saved by `python -m guidescope.train guide_classifier`)")
        return None
    model, _ = load(folder, "guide_classifier", device)
    model.requires_grad_(False)
    return model


def _check_guide_classifier(folder: Path, guide: nn.Module | None, names: tuple[str, ...], codec) -> None:
    """A clean classifier classifies the bundle's images (after the decoder), into its classes."""
    if guide is None:
        return
    config = guide.config
    if config.num_classes != len(names):
        raise CheckpointError(f"the guide classifier has {config.num_classes} classes, the UNet of {folder} {len(names)}")
    if (config.in_channels, config.image_size, config.image_size) != tuple(codec.image_shape):
        raise CheckpointError(f"the guide classifier takes {config.in_channels}x{config.image_size}x{config.image_size} "
                              f"images, {folder} makes {'x'.join(map(str, codec.image_shape))}")


def _class_names(folder: Path, meta: dict, unet: nn.Module, classifier: nn.Module) -> tuple[str, ...]:
    """The UNet's class names (its indices when it records none), which the classifier must share."""
    names = tuple(meta.get("class_names") or [str(i) for i in range(unet.config.num_classes)])
    if len(names) != unet.config.num_classes or classifier.config.num_classes != unet.config.num_classes:
        raise CheckpointError(f"class counts disagree in {folder}: unet {unet.config.num_classes}, "
                              f"classifier {classifier.config.num_classes}, names {len(names)}")
    return names


def _shared_schedule(folder: Path, meta: dict, classifier_folder: Path, classifier_meta: dict) -> tuple[str, int]:
    """(schedule, T) of the UNet, which the classifier must share: it reads the noise level from t,
    so one trained on another schedule or T would be asked about the wrong noise levels."""
    schedule, num_timesteps = _diffusion_record(meta, folder / "unet.json")
    classifier_schedule = _diffusion_record(classifier_meta, classifier_folder / "classifier.json")
    if classifier_schedule != (schedule, num_timesteps):
        raise CheckpointError(
            f"noise schedules disagree: {folder / 'unet.json'} has {schedule} with T = {num_timesteps}, "
            f"{classifier_folder / 'classifier.json'} has {classifier_schedule[0]} with T = {classifier_schedule[1]}; "
            "train the classifier on the UNet's schedule")
    return schedule, num_timesteps


def _check_image_sizes(folder: Path, unet: nn.Module, others: tuple, codec: LatentCodec | None) -> None:
    """Pixels: the classifier and the evaluator (others, None when absent) take the UNet's images.
    Latents: the evaluator judges the images the autoencoder makes (_codec checks the rest)."""
    classifier, evaluator = others
    if codec is None:
        for other in (classifier, evaluator):
            if other is not None and (other.config.image_size, other.config.in_channels) != (
                    unet.config.image_size, unet.config.in_channels):
                raise CheckpointError(f"image sizes disagree in {folder}: unet {unet.config.image_size}px x "
                                      f"{unet.config.in_channels} channels, {type(other).__name__} "
                                      f"{other.config.image_size}px x {other.config.in_channels}")
    elif evaluator is not None and (evaluator.config.in_channels, evaluator.config.image_size,
                                    evaluator.config.image_size) != codec.image_shape:
        raise CheckpointError(f"the evaluator of {folder} judges {evaluator.config.image_size}px images, "
                              f"the autoencoder makes {codec.image_shape}")


def _codec(folder: Path, metas: dict[Path, dict], unet_config, device) -> LatentCodec | None:
    """The autoencoder of a latent bundle, checked against what the unet and the classifier (metas,
    by their JSON files) were trained on (the same autoencoder file, scale factor and latent shape);
    None for pixels."""
    records = {path: meta.get("latent") for path, meta in metas.items()}
    ae_json, ae_weights = folder / "autoencoder.json", folder / "autoencoder.safetensors"
    if not any(records.values()):
        if ae_json.exists():
            raise CheckpointError(f"{ae_json} is there but {folder / 'unet.json'} was not trained on its latents "
                                  "(no 'latent' record); train the unet with --autoencoder")
        return None
    for path, record in records.items():
        if not record:
            raise CheckpointError(f"{path} runs on pixels but {folder / 'unet.json'} on the "
                                  "latents of an autoencoder: train both in one space")
    if not ae_json.exists():
        raise CheckpointError(f"{folder / 'unet.json'} runs on the latents of {ae_json}, which is missing; "
                              + rebuild_hint("autoencoder", folder))
    autoencoder, _ = load(folder, "autoencoder", device)
    latent_shape = autoencoder.config.latent_shape
    digest = file_digest(ae_weights)
    for path, record in records.items():
        if tuple(record.get("shape", ())) != latent_shape:
            raise CheckpointError(f"{path} runs on latents of shape {tuple(record.get('shape', ()))} but "
                                  f"{ae_json} makes {latent_shape}")
        if record.get("sha256") != digest:
            raise CheckpointError(f"{path} was trained on the latents of another autoencoder than {ae_weights} "
                                  "(sha256 differs); retrain it with --autoencoder")
    if (unet_config.in_channels, unet_config.image_size, unet_config.image_size) != latent_shape:
        raise CheckpointError(f"{folder / 'unet.json'} makes {unet_config.in_channels}x{unet_config.image_size}x"
                              f"{unet_config.image_size} tensors but {ae_json} has latents of shape {latent_shape}")
    scales = {record["scale_factor"] for record in records.values()}
    if len(scales) > 1:
        raise CheckpointError(f"the unet and the classifier of {folder} disagree on the latent scale factor: {scales}")
    return LatentCodec(autoencoder, scales.pop(), records[folder / "unet.json"].get("clip_bound", 1.0))
