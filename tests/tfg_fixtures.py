"""Tiny networks and schedule shared by scripts/tfg_reference.py (which ran the guidance methods of
YWolfeee/Training-Free-Guidance on them) and by the tests that compare guidescope against the
recorded outputs in tests/data/tfg/. Pure torch: every weight comes from a seeded generator, so
nothing but the recorded outputs needs to be committed.

Images are (B, 1, 4, 4) float32, there are 3 classes, and both networks are smooth (tanh, no ReLU)
so that every gradient the guidance methods take is informative.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from guidescope.diffusion import GaussianDiffusion

NUM_CLASSES = 3
SHAPE = (1, 4, 4)
HIDDEN = 4


def _init(gen: torch.Generator, *shape: int, fan_in: int) -> nn.Parameter:
    """float32 ~ N(0, 1 / fan_in), drawn in float64 from gen and rounded once."""
    w = torch.randn(shape, generator=gen, dtype=torch.float64) / math.sqrt(fan_in)
    return nn.Parameter(w.float(), requires_grad=False)


class TinyEps(nn.Module):
    """An epsilon predictor: conv3x3(1 -> 4, padding 1) -> tanh -> conv3x3(4 -> 1, padding 1),
    multiplied per item by (1 + t / 1000).

    forward(x, t, y=None): x (B, 1, 4, 4) float32; t an integer tensor, 0-d (as the TFG reference
    calls `unet(x, t)`) or (B,) (as guidescope calls it), or a Python int; y, a class label, is
    accepted and ignored (the network is unconditional).
    """

    def __init__(self, gen: torch.Generator):
        super().__init__()
        self.w1 = _init(gen, HIDDEN, 1, 3, 3, fan_in=9)
        self.b1 = _init(gen, HIDDEN, fan_in=10)
        self.w2 = _init(gen, 1, HIDDEN, 3, 3, fan_in=9 * HIDDEN)
        self.b2 = _init(gen, 1, fan_in=10)

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.tanh(F.conv2d(x, self.w1, self.b1, padding=1))
        out = F.conv2d(h, self.w2, self.b2, padding=1)
        t = torch.as_tensor(t, device=x.device)
        scale = 1 + t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) / 1000  # (1 or B, 1, 1, 1)
        return out * scale


class TinyClassifier(nn.Module):
    """A time-independent classifier: logits (B, 3) = linear(flatten(tanh(x))) + bias for
    x (B, 1, 4, 4). forward(x) returns the logits, not log-probabilities."""

    def __init__(self, gen: torch.Generator):
        super().__init__()
        n = math.prod(SHAPE)
        self.weight = _init(gen, NUM_CLASSES, n, fan_in=1)  # unit scale: class gaps of a few nats
        self.bias = _init(gen, NUM_CLASSES, fan_in=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.tanh(x).flatten(1), self.weight, self.bias)


def make_networks(seed: int = 0) -> tuple[TinyEps, TinyClassifier]:
    """(TinyEps, TinyClassifier) with weights drawn, in that order, from one generator seeded with
    seed; in eval mode, every parameter with requires_grad False."""
    gen = torch.Generator().manual_seed(seed)
    unet, classifier = TinyEps(gen), TinyClassifier(gen)
    for net in (unet, classifier):
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
    return unet, classifier


def schedule(steps: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ts, alpha_prod_ts, alpha_prod_t_prevs) of guidescope's linear schedule with T = 1000 respaced
    to `steps`, in SAMPLING order (noisiest first), which is how the TFG reference's
    `guide_step(x, t, unet, ts, alpha_prod_ts, alpha_prod_t_prevs, eta)` indexes them with
    t in range(steps):
        ts                  (steps,) long     the original timesteps, 999 first, 0 last
        alpha_prod_ts       (steps,) float32  alpha-bar at each kept timestep
        alpha_prod_t_prevs  (steps,) float32  alpha-bar at the next (less noisy) kept timestep; 1 last
    """
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, steps)
    ts = diffusion.timesteps.flip(0).long()
    alpha_prod_ts = diffusion.alphas_cumprod.flip(0).float()
    alpha_prod_t_prevs = diffusion.alphas_cumprod_prev.flip(0).float()
    assert alpha_prod_t_prevs[-1].item() == 1.0, "the last step must land on alpha-bar = 1"
    assert torch.equal(alpha_prod_t_prevs[:-1], alpha_prod_ts[1:]), "prev must be the next step's alpha-bar"
    return ts, alpha_prod_ts, alpha_prod_t_prevs


class RecordedNoise:
    """A noise_fn for the TFG reference's guidance classes, `noise_fn(x, sigma, **kwargs)`, that
    draws unit Gaussian noise torch.randn(x.shape, generator=...) from its own generator seeded
    with seed, returns sigma * noise + x, and records every call in order: the unit draw (before
    multiplying by sigma) in self.draws and sigma, as a float, in self.sigmas."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.draws: list[torch.Tensor] = []
        self.sigmas: list[float] = []

    def __call__(self, x: torch.Tensor, sigma, **kwargs) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.generator, dtype=torch.float32).to(x.device, x.dtype)
        self.draws.append(noise.clone())
        self.sigmas.append(float(sigma))
        return sigma * noise + x
