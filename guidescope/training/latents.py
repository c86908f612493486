"""Training data in a latent space: the training and held-out images encoded once by an
autoencoder, scaled by LDM's scale factor (1 / std of the training latents)."""
from __future__ import annotations

import torch

from ..checkpoints import file_digest
from ..codec import LatentCodec
from ..networks.small import Autoencoder


def scale_factor_of(means: torch.Tensor) -> float:
    """1 / std of unscaled posterior means (LDM's scale factor)."""
    return float(1.0 / means.double().std())


def latent_scale_factor(autoencoder: Autoencoder, images: torch.Tensor) -> float:
    """LDM's scale factor of images (N, *image_shape): 1 / std of their posterior means."""
    return scale_factor_of(LatentCodec(autoencoder, 1.0).encode(images))


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
