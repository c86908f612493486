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

from .networks.small import Autoencoder


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

    differentiable_decode = decode


class LatentCodec:
    """z = scale_factor * mean of q(z | x); x = D(z / scale_factor). decode runs without gradients,
    differentiable_decode with them."""
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
        return self.differentiable_decode(z)

    def differentiable_decode(self, z: torch.Tensor) -> torch.Tensor:
        """decode, with gradients where they are on: training-free guidance differentiates a clean
        classifier of the image through it (guidescope.guide.training_free)."""
        return self.autoencoder.decode(z.to(next(self.autoencoder.parameters()).dtype) / self.scale_factor)


Codec = Union[PixelCodec, LatentCodec]
