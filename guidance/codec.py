"""The space a diffusion model runs in: pixels, or the latents of an autoencoder (Rombach et al.
2022, latent diffusion).

A Codec maps images x (B, C, H, W) in [-1, 1] to the sampler's tensors z and back:
    encode(x) -> z = scale_factor * E(x)      z (B, *latent_shape)
    decode(z) -> x = D(z / scale_factor)
The scale factor is LDM's: 1 / std of the training latents, so z has unit variance like the
noise the forward process mixes in. PixelCodec is the identity (pixel bundles); LatentCodec wraps
a KL-regularised Autoencoder. Samplers, guidance, schedules and CFG never look inside: they run
on whatever tensor they are given.
"""
from __future__ import annotations

from typing import Union

import torch

from .models import Autoencoder


class PixelCodec:
    """The identity: the sampler runs on images."""
    space = "pixel"
    scale_factor = 1.0
    clip_bound = 1.0                # images lie in [-1, 1]

    def __init__(self, image_shape: tuple[int, int, int]):
        self.image_shape = self.latent_shape = tuple(image_shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


class LatentCodec:
    """z = scale_factor * mean of q(z | x); x = D(z / scale_factor). The decode runs without
    gradients (nothing differentiates through it: guidance acts on z)."""
    space = "latent"

    def __init__(self, autoencoder: Autoencoder, scale_factor: float, clip_bound: float = 1.0):
        self.autoencoder, self.scale_factor, self.clip_bound = autoencoder, float(scale_factor), float(clip_bound)
        cfg = autoencoder.config
        self.image_shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        self.latent_shape = cfg.latent_shape

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """(N, *image_shape) in [-1, 1] -> (N, *latent_shape), in batches."""
        return torch.cat([self.autoencoder.encode(chunk)[0] for chunk in x.split(batch_size)]) * self.scale_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, *latent_shape) -> (B, *image_shape), about [-1, 1] (not clamped)."""
        return self.autoencoder.decode(z.to(next(self.autoencoder.parameters()).dtype) / self.scale_factor)


def scale_factor_of(means: torch.Tensor) -> float:
    """1 / std of unscaled posterior means (LDM's scale factor)."""
    return float(1.0 / means.double().std())


def latent_scale_factor(autoencoder: Autoencoder, images: torch.Tensor) -> float:
    """LDM's scale factor of images (N, *image_shape): 1 / std of their posterior means."""
    return scale_factor_of(LatentCodec(autoencoder, 1.0).encode(images))


Codec = Union[PixelCodec, LatentCodec]


def file_digest(path) -> str:
    """sha256 of a file's bytes (ties a latent network to the autoencoder it was trained on)."""
    import hashlib
    from pathlib import Path

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def encode_splits(autoencoder: Autoencoder, weights_path, train, test):
    """(train, test) Datasets of scaled latents, each carrying the latent record that the networks
    trained on them write into their checkpoints: {"autoencoder": file name, "sha256",
    "scale_factor", "shape", "clip_bound"}. The scale factor and the range (clip_bound, where the
    x-hat_0 clip acts) come from the training images alone."""
    means = LatentCodec(autoencoder, 1.0).encode(train.images)  # encoded once, then scaled
    codec = LatentCodec(autoencoder, scale_factor_of(means))
    latents = means * codec.scale_factor
    record = {"autoencoder": "autoencoder", "sha256": file_digest(weights_path),
              "scale_factor": codec.scale_factor, "shape": list(codec.latent_shape),
              "clip_bound": float(latents.abs().max())}  # the range of the training latents
    return (train._replace(images=latents, latent=record),
            test._replace(images=codec.encode(test.images), latent=record))
