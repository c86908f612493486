"""Generating N images from a checkpoint bundle in batches, for the command line
(`python -m guidance.sample`) and the evaluation.

Every image has its own noise stream, seeded from (seed, its index), for x_T and for every
step's noise, so image i is the same whatever the batch size or the other images in its batch.
(Seeding batch k with seed + k would tie the result to the batch size; drawing all x_T at once
would not cover the per-step noise of DDPM and DDIM with eta > 0.)
"""
from __future__ import annotations

import hashlib
import math
from typing import Callable, NamedTuple, Sequence

import torch

from .checkpoints import Bundle
from .diffusion import respace_timesteps
from .guide import Guidance, GuidedDenoiser
from .images import to_uint8
from .samplers import SAMPLERS, Step, sample


class Samples(NamedTuple):
    images: torch.Tensor    # (N, C, H, W) uint8 in [0, 255]
    labels: torch.Tensor    # (N,) int64, the class each image was guided toward


def class_index(class_names: Sequence[str], value: int | str) -> int:
    """A class given as an index (an int or a string of digits) or a name, case-insensitive."""
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if 0 <= index < len(class_names):
            return index
        raise ValueError(f"class index {index} is out of range; choose 0 to {len(class_names) - 1}")
    folded = [name.casefold() for name in class_names]
    if text.casefold() in folded:
        return folded.index(text.casefold())
    raise ValueError(f"unknown class {text!r}; choose an index from 0 to {len(class_names) - 1} "
                     f"or one of: {', '.join(class_names)}")


def item_seed(seed: int, index: int) -> int:
    """A 63-bit seed for image `index` of a run seeded `seed`; distinct pairs give unrelated seeds."""
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class ItemNoise:
    """Gaussian noise for a batch of images index_0.., each item from its own CPU generator.
    Called like guidance.SharedNoise: noise(shape, device) -> (B, ...) with B = len(indices)."""

    def __init__(self, seed: int, indices: Sequence[int]):
        self.generators = [torch.Generator().manual_seed(item_seed(seed, i)) for i in indices]

    def __call__(self, shape, device) -> torch.Tensor:
        batch, *rest = shape
        if batch != len(self.generators):
            raise ValueError(f"noise for {len(self.generators)} images was asked for a batch of {batch}")
        return torch.stack([torch.randn(rest, generator=g) for g in self.generators]).to(device)


def _labels(class_label: int | Sequence[int] | torch.Tensor, n: int) -> torch.Tensor:
    labels = torch.as_tensor(class_label, dtype=torch.long).reshape(-1)
    if len(labels) == 1:
        return labels.expand(n).clone()
    if len(labels) != n:
        raise ValueError(f"got {len(labels)} class labels for {n} images; give one label or one per image")
    return labels


def check_request(bundle: Bundle, class_label, scale: float = 0.0, cfg_scale: float | None = None,
                  steps: int = 50, sampler: str = "ddim", eta: float = 0.0, n: int = 16,
                  batch_size: int = 64) -> None:
    """Raise ValueError, naming the valid range or choices, for any argument generate() cannot use."""
    for name, count in (("n", n), ("batch size", batch_size)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{name} must be a positive integer, got {count!r}")
    labels = _labels(class_label, n)
    num_classes = len(bundle.class_names)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"class labels must be from 0 to {num_classes - 1}")
    respace_timesteps(bundle.num_timesteps, steps)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    if not 0 <= eta <= 1:  # also refuses NaN
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if sampler == "ddpm" and eta != 0:
        raise ValueError("eta applies to the DDIM sampler only")
    for name, value in (("scale", scale), ("cfg scale", cfg_scale)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")


def generate(bundle: Bundle, class_label: int | Sequence[int] | torch.Tensor, scale: float = 0.0,
             cfg_scale: float | None = None, steps: int = 50, sampler: str = "ddim", eta: float = 0.0,
             n: int = 16, batch_size: int = 64, seed: int = 0, max_guidance_norm: float | None = None,
             on_step: Callable[[Step], None] | None = None) -> Samples:
    """n images, class_label for all (an int) or per image (n ints), sampled in batches on the
    device of bundle.unet.

    scale: classifier guidance w (0 = off). cfg_scale: None feeds the UNet the null label (the
    unconditional model), 0 the plain conditional model, w_cfg the classifier-free combination
    (1 + w_cfg) eps(x_t, c) - w_cfg eps(x_t, null). on_step is called with every sampler Step.
    Returns uint8 images (N, C, H, W) and int64 labels (N,).
    """
    check_request(bundle, class_label, scale, cfg_scale, steps, sampler, eta, n, batch_size)
    labels = _labels(class_label, n)
    device = next(bundle.unet.parameters()).device
    config = bundle.unet.config
    model = GuidedDenoiser(bundle.unet, bundle.classifier, bundle.unet.null_label)
    diffusion = bundle.diffusion(steps)
    images = []
    for start in range(0, n, batch_size):
        batch = labels[start:start + batch_size]
        guidance = Guidance.make(batch, scale, cfg_scale, batch_size=len(batch),
                                 max_guidance_norm=max_guidance_norm, diagnostics=False)
        noise = ItemNoise(seed, range(start, start + len(batch)))
        shape = (len(batch), config.in_channels, config.image_size, config.image_size)
        for step in sample(model, diffusion, shape, guidance, noise, sampler, eta=eta, device=device):
            if on_step is not None:
                on_step(step)
        images.append(torch.from_numpy(to_uint8(step.sample)))
    return Samples(torch.cat(images), labels)
