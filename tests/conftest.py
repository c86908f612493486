"""Shared fixtures: tiny networks (8x8 images, a few thousand weights) so every test runs in
well under a second on a shared two-core machine."""
from __future__ import annotations

import pytest
import torch

from guidescope.networks.small import ClassifierConfig, NoisyClassifier, UNet, UNetConfig

torch.set_num_threads(1)  # the machine is shared; tiny models gain nothing from more

NUM_CLASSES = 3
TINY_UNET = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                       attention_levels=(1,), num_heads=2, dropout=0.0, num_classes=NUM_CLASSES)
TINY_CLASSIFIER = ClassifierConfig(image_size=8, base_channels=8, channel_mults=(1, 2),
                                   num_classes=NUM_CLASSES)


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Perturb every weight: fresh networks zero their output layers, so their eps would be 0
    and many contracts would hold trivially."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen))
    return model.eval().requires_grad_(False)


def tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return randomize(UNet(TINY_UNET), seed)


def tiny_classifier(seed: int = 1) -> NoisyClassifier:
    torch.manual_seed(seed)
    return randomize(NoisyClassifier(TINY_CLASSIFIER), seed)


@pytest.fixture(scope="session")
def unet() -> UNet:
    return tiny_unet()


@pytest.fixture(scope="session")
def classifier() -> NoisyClassifier:
    return tiny_classifier()
