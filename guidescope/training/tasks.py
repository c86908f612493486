"""What differs between training the networks, one small object per kind: the network, the
loss, the optimizer defaults, EMA or not, held-out metrics and what the checkpoint records. The
shared loop (guidescope.training.loop) calls only the methods of Task.

Kinds are named as their checkpoints (unet.safetensors, classifier.safetensors, ...).
Randomness: `draw` makes every random number of a step for the whole global batch from the
loop's generator, with the batch as the first dimension; each data-parallel rank then takes its
share of the rows, so the batch is noised the same however many processes share it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..diffusion import SCHEDULES, GaussianDiffusion
from ..metrics import noisy_accuracy_by_quarter
from ..networks.guide_classifier import GuideClassifier, GuideClassifierConfig
from ..networks.small import (Autoencoder, AutoencoderConfig, ClassifierConfig, Evaluator, EvaluatorConfig,
                              NoisyClassifier, UNet, UNetConfig)
from .data import Dataset


@dataclass(frozen=True)
class Task:
    """Base of the kinds: the optimizer's settings; subclasses add their own fields."""
    name: ClassVar[str]
    loss_name: ClassVar[str]        # recorded in the checkpoint
    uses_ema: ClassVar[bool] = False  # export an exponential moving average (decay: field ema_decay)
    cosine_lr: ClassVar[bool] = True  # lr decays to 0 over the planned steps (else constant)
    lr: float = 1e-3
    weight_decay: float = 0.05      # AdamW

    def build(self, num_classes: int, image_size: int, channels: int) -> nn.Module:
        raise NotImplementedError

    def draw(self, n: int, shape: tuple[int, ...], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Per-image random numbers for a global batch of n images of shape (n, C, H, W)."""
        raise NotImplementedError

    def loss(self, net, x0: torch.Tensor, y: torch.Tensor, draws: tuple[torch.Tensor, ...],
             num_classes: int) -> torch.Tensor:
        """Mean loss over the batch x0 (B, C, H, W) in [-1, 1] with labels y (B,); draws are the same
        rows of draw()'s tensors; num_classes is also the UNet's null label."""
        raise NotImplementedError

    def held_out(self, model: nn.Module, test: Dataset, n: int) -> dict[str, float]:
        """Metrics on the first n held-out images (model in eval mode); none by default."""
        return {}

    def checkpoint_extras(self) -> dict:
        """Top-level keys of the checkpoint's JSON besides kind, config, class names and training."""
        return {}

    def hyperparameters(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _NoisedTask(Task):
    """A network trained on q_sample(x_0, t, eps) of one noise schedule. The architecture fields
    left at None keep the network config's defaults (guidescope.networks.small)."""
    schedule: str = "cosine"
    num_timesteps: int = 1000
    channel_mults: tuple | None = None
    num_res_blocks: int | None = None
    attention_levels: tuple | None = None

    def architecture(self) -> dict:
        """The architecture fields that were set, as config keyword arguments."""
        names = ("channel_mults", "num_res_blocks", "attention_levels")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {self.schedule!r}; choose one of {SCHEDULES}")

    @cached_property  # frozen dataclasses allow it: it writes the instance's __dict__ directly
    def diffusion(self) -> GaussianDiffusion:
        return GaussianDiffusion.from_schedule(self.schedule, self.num_timesteps)

    def checkpoint_extras(self) -> dict:
        return {"diffusion": {"schedule": self.schedule, "num_timesteps": self.num_timesteps}}


@dataclass(frozen=True)
class UNetTask(_NoisedTask):
    """eps_theta(x_t, t, y): MSE to eps, with the null label in a share p_uncond of the batch so one
    network is also the unconditional model of classifier-free guidance."""
    name: ClassVar[str] = "unet"
    loss_name: ClassVar[str] = "MSE to eps; null label with probability p_uncond"
    uses_ema: ClassVar[bool] = True
    cosine_lr: ClassVar[bool] = False
    lr: float = 2e-4
    weight_decay: float = 0.0
    base_channels: int = 48
    dropout: float = 0.1
    p_uncond: float = 0.2           # probability of the null label (CFG training)
    input_perturbation: float = 0.0  # DDPM-IP gamma (Ning et al. 2023; 0.1 in the paper, 0 = off)
    ema_decay: float = 0.9995

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.p_uncond < 1:
            raise ValueError(f"p_uncond must be in [0, 1), got {self.p_uncond}")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")

    def build(self, num_classes, image_size, channels):
        return UNet(UNetConfig(image_size=image_size, in_channels=channels, num_classes=num_classes,
                               base_channels=self.base_channels, dropout=self.dropout, **self.architecture()))

    def draw(self, n, shape, generator):
        device = generator.device
        t = torch.randint(self.num_timesteps, (n,), device=device, generator=generator)
        noise = torch.randn(shape, device=device, generator=generator)
        drop = torch.rand(n, device=device, generator=generator) < self.p_uncond
        # DDPM-IP: the input is noised with eps + gamma * xi while the target stays eps.
        noise_in = noise
        if self.input_perturbation:
            noise_in = noise + self.input_perturbation * torch.randn(shape, device=device, generator=generator)
        return t, noise, noise_in, drop

    def loss(self, net, x0, y, draws, num_classes):
        t, noise, noise_in, drop = draws
        y = torch.where(drop, torch.full_like(y, num_classes), y)  # num_classes is the null label
        return F.mse_loss(net(self.diffusion.q_sample(x0, t, noise_in), t, y), noise)


@dataclass(frozen=True)
class ClassifierTask(_NoisedTask):
    """p_phi(c | x_t, t): cross-entropy on noised images. Timesteps are uniform by default; with
    noise_power a > 0 they are drawn as t = floor(T u^(1/(1+a))), u ~ U(0, 1), whose density grows
    as (t/T)^a toward the noisy end: a noise-level weighting of the loss (a = 1: linear in t)."""
    name: ClassVar[str] = "classifier"
    loss_name: ClassVar[str] = "cross-entropy on q_sample(x_0, t)"
    base_channels: int = 32
    noise_power: float = 0.0        # 0: uniform t, as guided-diffusion trains its classifiers
    pool: str = ClassifierConfig.pool  # "attention": guided-diffusion's attention pooling

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.noise_power < math.inf:  # also refuses NaN
            raise ValueError(f"noise_power must be a finite number from 0, got {self.noise_power!r}")

    def build(self, num_classes, image_size, channels):
        return NoisyClassifier(ClassifierConfig(image_size=image_size, in_channels=channels,
                                                num_classes=num_classes, base_channels=self.base_channels,
                                                pool=self.pool, **self.architecture()))

    def draw(self, n, shape, generator):
        device = generator.device
        if self.noise_power == 0:  # kept as it was: the same draws, so old runs resume identically
            t = torch.randint(self.num_timesteps, (n,), device=device, generator=generator)
        else:
            u = torch.rand(n, device=device, generator=generator)
            t = (self.num_timesteps * u ** (1 / (1 + self.noise_power))).long().clamp(max=self.num_timesteps - 1)
        return t, torch.randn(shape, device=device, generator=generator)

    def loss(self, net, x0, y, draws, num_classes):
        t, noise = draws
        return F.cross_entropy(net(self.diffusion.q_sample(x0, t, noise), t), y)

    def held_out(self, model, test, n):
        quarters = noisy_accuracy_by_quarter(model, self.diffusion, test.images[:n], test.labels[:n])
        return {f"acc_q{q}": acc for q, acc in enumerate(quarters)}


MAX_SHIFT = 2  # evaluator augmentation: circular shifts of up to this many pixels


@dataclass(frozen=True)
class _CleanClassifierTask(Task):
    """A classifier of clean images, scored by its accuracy on the held-out images."""

    @torch.no_grad()
    def held_out(self, model, test, n):
        device = next(model.parameters()).device
        images, labels = test.images[:n], test.labels[:n]
        correct = sum(int((model(x.to(device)).argmax(1).cpu() == y).sum())
                      for x, y in zip(images.split(500), labels.split(500)))
        return {"test_acc": correct / len(images)}


@dataclass(frozen=True)
class EvaluatorTask(_CleanClassifierTask):
    """Clean-image classifier (timm ResNet of widths base_channels x (1, 2, 4, 8)) that judges samples."""
    name: ClassVar[str] = "evaluator"
    loss_name: ClassVar[str] = f"cross-entropy on clean images shifted by up to {MAX_SHIFT} pixels"
    base_channels: int = 32

    def build(self, num_classes, image_size, channels):
        widths = tuple(self.base_channels * m for m in (1, 2, 4, 8))
        return Evaluator(EvaluatorConfig(image_size=image_size, in_channels=channels, num_classes=num_classes,
                                         channels=widths))

    def draw(self, n, shape, generator):
        return (torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (n, 2), device=generator.device, generator=generator),)

    def loss(self, net, x0, y, draws, num_classes):
        return F.cross_entropy(net(roll_each(x0, draws[0])), y)


@dataclass(frozen=True)
class GuideClassifierTask(_CleanClassifierTask):
    """p(c | x_0) on clean images, to guide through x̂₀ (guidescope.networks.guide_classifier): a
    random crop of the image padded by crop_padding black pixels and a horizontal flip with
    probability 1/2, cross-entropy with label smoothing, AdamW with the cosine schedule. The
    network fields left at None keep GuideClassifierConfig's defaults; an architecture given
    without model_args gets timm's own defaults (the shipped arguments are the shipped ConvNeXt's).

    With adversarial_radius r > 0 it is adversarially trained (Madry et al. 2018): each augmented
    image is first moved by adversarial_steps steps of projected gradient ascent on the loss
    within an L2 ball of radius r (in the [-1, 1] units of the images), from the image itself,
    each step 2.5 r / steps long along the normalised gradient, and the network learns from the
    moved images. A robust classifier's input gradients point at features of the class rather
    than at imperceptible patterns (Santurkar et al. 2019, Kawar et al. 2022), which is what
    training-free guidance follows; it still never sees a noisy x_t."""
    name: ClassVar[str] = "guide_classifier"
    loss_name: ClassVar[str] = ("cross-entropy with label smoothing on clean images, randomly cropped and flipped "
                                "(and moved adversarially within an L2 ball where adversarial_radius > 0)")
    lr: float = 2e-3
    architecture: str | None = None  # a timm model name
    model_args: dict | None = None  # more keyword arguments of timm.create_model
    input_size: int | None = None   # the side the timm network sees (None: the images')
    crop_padding: int = 2           # random crops of the image padded by this many pixels each side
    label_smoothing: float = 0.1
    adversarial_radius: float = 0.0  # L2 radius of the adversarial moves (0: none)
    adversarial_steps: int = 3      # steps of projected gradient ascent per move

    def __post_init__(self):
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must not be negative, got {self.crop_padding}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not (math.isfinite(self.adversarial_radius) and self.adversarial_radius >= 0):
            raise ValueError(f"adversarial_radius must be a finite number >= 0, got {self.adversarial_radius}")
        if self.adversarial_steps < 1:
            raise ValueError(f"adversarial_steps must be at least 1, got {self.adversarial_steps}")

    def build(self, num_classes, image_size, channels):
        network = {"architecture": self.architecture, "model_args": {}} if self.architecture else {}
        if self.model_args is not None:
            network["model_args"] = self.model_args
        return GuideClassifier(GuideClassifierConfig(num_classes=num_classes, in_channels=channels,
                                                     image_size=image_size, input_size=self.input_size, **network))

    def draw(self, n, shape, generator):
        device, pad = generator.device, self.crop_padding
        shifts = torch.randint(-pad, pad + 1, (n, 2), device=device, generator=generator)
        return shifts, torch.rand(n, device=device, generator=generator) < 0.5

    def loss(self, net, x0, y, draws, num_classes):
        shifts, flips = draws
        x = translate_each(x0, shifts, self.crop_padding, fill=-1.0)  # -1: black, Fashion-MNIST's background
        x = torch.where(flips[:, None, None, None], x.flip(-1), x)
        if self.adversarial_radius:
            x = self.adversarial(getattr(net, "module", net), x, y)  # the bare network: no gradient exchange
        return F.cross_entropy(net(x), y, label_smoothing=self.label_smoothing)

    def adversarial(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x moved within the L2 ball of radius adversarial_radius around each image (and within
        [-1, 1]) to raise the loss: projected gradient ascent from x, detached."""
        radius, steps = self.adversarial_radius, self.adversarial_steps
        delta = torch.zeros_like(x)
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(net(x + delta), y, label_smoothing=self.label_smoothing)
            grad = torch.autograd.grad(loss, delta)[0]
            with torch.no_grad():
                direction = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
                delta = delta + 2.5 * radius / steps * direction
                delta = delta * (radius / delta.flatten(1).norm(dim=1).clamp_min(radius))[:, None, None, None]
                delta = (x + delta).clamp(-1, 1) - x
        return (x + delta).detach()


@dataclass(frozen=True)
class AutoencoderTask(Task):
    """The first stage of latent diffusion: a KL-regularised autoencoder (LDM's, without the
    adversarial term) trained on L1 + MSE reconstruction of a posterior sample, plus kl_weight
    times KL(q(z | x) || N(0, I)) per latent element."""
    name: ClassVar[str] = "autoencoder"
    loss_name: ClassVar[str] = "L1 + MSE of the reconstruction of a posterior sample + kl_weight * KL"
    base_channels: int = 32
    latent_channels: int = 4
    kl_weight: float = 1e-6

    def build(self, num_classes, image_size, channels):
        return Autoencoder(self._config(image_size, channels))

    def _config(self, image_size, channels) -> AutoencoderConfig:
        return AutoencoderConfig(image_size=image_size, in_channels=channels, base_channels=self.base_channels,
                                 latent_channels=self.latent_channels)

    def draw(self, n, shape, generator):
        latent = self._config(shape[-1], shape[1]).latent_shape
        return (torch.randn((n, *latent), device=generator.device, generator=generator),)

    def loss(self, net, x0, y, draws, num_classes):
        model = getattr(net, "module", net)  # the network itself under DDP
        mean, logvar = model.encode(x0)
        x = model.decode(mean + torch.exp(0.5 * logvar) * draws[0])
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).mean()
        return F.l1_loss(x, x0) + F.mse_loss(x, x0) + self.kl_weight * kl

    @torch.no_grad()
    def held_out(self, model, test, n):
        device = next(model.parameters()).device
        mse = sum(float(F.mse_loss(model(x.to(device)), x.to(device), reduction="sum"))
                  for x in test.images[:n].split(500)) / test.images[:n].numel()
        return {"test_mse": mse, "test_psnr": 10 * math.log10(4 / mse)}  # peak-to-peak 2 in [-1, 1]


def roll_each(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Image i of x (B, C, H, W) rolled circularly by shifts[i] = (rows, columns), shifts (B, 2)."""
    b, _, h, w = x.shape
    rows = (torch.arange(h, device=x.device) - shifts[:, :1]) % h  # (B, H): source row of each output row
    cols = (torch.arange(w, device=x.device) - shifts[:, 1:]) % w  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    rolled = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return rolled.permute(0, 3, 1, 2)


def translate_each(x: torch.Tensor, shifts: torch.Tensor, pad: int, fill: float) -> torch.Tensor:
    """Image i of x (B, C, H, W) moved by shifts[i] = (rows, columns), each in [-pad, pad], the
    uncovered border set to fill: a random crop of the image padded by pad (torchvision's
    RandomCrop(H, padding=pad, fill=fill)). The roll never wraps: |shift| <= pad keeps it inside the padding."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), value=fill)
    return roll_each(padded, shifts)[..., pad:pad + h, pad:pad + w]


TASKS: dict[str, type[Task]] = {task.name: task for task in (UNetTask, ClassifierTask, EvaluatorTask, AutoencoderTask,
                                                              GuideClassifierTask)}
