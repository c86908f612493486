"""The one seeding rule: image i of a run seeded S draws x_T and every step's noise from its own
stream, seeded from (S, i). So image i is the same whatever the batch size, the other images in
its batch, or the rows beside it: the command line, the app and the evaluation agree image for
image. (Seeding batch k with S + k would tie the result to the batch size; drawing all x_T at
once would not cover the per-step noise of DDPM and DDIM with eta > 0.)
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch


def item_seed(seed: int, index: int) -> int:
    """A 63-bit seed for image `index` of a run seeded `seed`; distinct pairs give unrelated seeds."""
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class ItemNoise:
    """Gaussian noise for a batch whose item k is image indices[k] of the seed's run, each item
    drawn on the CPU from its own generator (so results do not depend on the device). Indices may
    repeat: items with the same index get the same noise (rows of a comparison share it).

    noise(shape, device) -> (B, ...) with B = len(indices); every call draws the next values of
    every stream.
    """

    def __init__(self, seed: int, indices: Sequence[int]):
        self.indices = list(indices)
        distinct = sorted(set(self.indices))
        self.generators = {i: torch.Generator().manual_seed(item_seed(seed, i)) for i in distinct}

    def __call__(self, shape, device) -> torch.Tensor:
        batch, *rest = shape
        if batch != len(self.indices):
            raise ValueError(f"noise for {len(self.indices)} images was asked for a batch of {batch}")
        drawn = {i: torch.randn(rest, generator=g) for i, g in self.generators.items()}
        return torch.stack([drawn[i] for i in self.indices]).to(device)
