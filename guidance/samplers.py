"""DDPM ancestral sampling and DDIM, as generators that yield one record per step.

The UI, the command line and the evaluation all iterate these same generators. Guidance comes
entirely from the GuidedDenoiser; a sampler only supplies k_t, the factor that turns the
classifier gradient into an eps shift (see guide.py).
"""
from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import torch

from .diffusion import GaussianDiffusion
from .guide import GuidedDenoiser, Guidance, NonFiniteError

SAMPLERS = ("ddim", "ddpm")


class Step(NamedTuple):
    index: int                           # 0-based position in the loop; the last is steps - 1
    timestep: int                        # original timestep t of the x_t this step started from
    sample: torch.Tensor                 # (B, C, H, W) x_{t-1}: after the last step, the image
    pred_xstart: torch.Tensor            # (B, C, H, W) guided x-hat_0 from x_t, in [-1, 1]
    log_prob: torch.Tensor | None        # (B,) log p_phi(c | x_t, t) for the target class
    guidance_norm: torch.Tensor | None   # (B,) L2 norm of the classifier guidance term


class SharedNoise:
    """Gaussian noise drawn for `groups` items and tiled `repeats` times along the batch, so a
    batch laid out as repeats x groups (e.g. one row per guidance strength) shares x_T and every
    step's noise. Drawn on the CPU from a seeded generator, so results do not depend on the device.
    """

    def __init__(self, seed: int, repeats: int = 1):
        self.generator = torch.Generator().manual_seed(seed)
        self.repeats = repeats

    def __call__(self, shape: torch.Size | tuple, device) -> torch.Tensor:
        batch, *rest = shape
        if batch % self.repeats:
            raise ValueError(f"batch {batch} is not a multiple of the {self.repeats} noise repeats")
        noise = torch.randn(batch // self.repeats, *rest, generator=self.generator)
        return noise.repeat(self.repeats, *([1] * len(rest))).to(device)


def _check_finite(step: Step) -> Step:
    if not (torch.isfinite(step.sample).all() and torch.isfinite(step.pred_xstart).all()):
        raise NonFiniteError(f"sampling produced NaN or inf at step {step.index} (t={step.timestep}); "
                             "lower the guidance strength or set a guidance norm clip")
    return step


def ddpm_sample(model: GuidedDenoiser, diffusion: GaussianDiffusion, shape, guidance: Guidance,
                noise: SharedNoise, device="cpu", variance: str = "small",
                clip_denoised: bool = True) -> Iterator[Step]:
    """Ancestral sampling, x_{t-1} = mu + sqrt(Sigma_t) z with z ~ N(0, I) and no noise at t = 0
    (DDPM Algorithm 2). Classifier guidance moves mu by w Sigma_t g (Dhariwal & Nichol Algorithm 1)."""
    x = noise(shape, device)
    timesteps = diffusion.timesteps.to(device)
    # Per-step scalars as Python floats: tiny tensor ops would cost more than the arithmetic.
    alphas_cumprod, alphas, betas = (v.tolist() for v in (diffusion.alphas_cumprod, diffusion.alphas, diffusion.betas))
    for index, i in enumerate(reversed(range(diffusion.num_timesteps))):
        t = torch.full((shape[0],), i, device=device)
        _, var, _ = diffusion.model_variance(t, x, variance)
        # k_t = sqrt(1 - alpha-bar_t) sqrt(alpha_t) Sigma_t / beta_t turns w*g into a mean shift w Sigma_t g.
        grad_coef = math.sqrt((1 - alphas_cumprod[i]) * alphas[i]) / betas[i] * var.flatten()
        out = model(x, timesteps[t], guidance, grad_coef)
        mv, pred_xstart = diffusion.p_mean_variance(x, t, out.eps, variance, clip_denoised)
        x = mv.mean if i == 0 else mv.mean + (0.5 * mv.log_variance).exp() * noise(shape, device)
        yield _check_finite(Step(index, int(diffusion.timesteps[i]), x, pred_xstart, out.log_prob, out.guidance_norm))


def ddim_sample(model: GuidedDenoiser, diffusion: GaussianDiffusion, shape, guidance: Guidance,
                noise: SharedNoise, device="cpu", eta: float = 0.0,
                clip_denoised: bool = True) -> Iterator[Step]:
    """DDIM (Song et al. 2021, eq. 12): x_{t-1} = sqrt(alpha-bar_{t-1}) x-hat_0
    + sqrt(1 - alpha-bar_{t-1} - sigma_t^2) eps + sigma_t z, with
    sigma_t = eta sqrt((1 - alpha-bar_{t-1}) / (1 - alpha-bar_t)) sqrt(1 - alpha-bar_t / alpha-bar_{t-1}).
    eta = 0 is deterministic given x_T; eta = 1 matches DDPM's variance."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    x = noise(shape, device)
    timesteps = diffusion.timesteps.to(device)
    alphas_cumprod, alphas_cumprod_prev = diffusion.alphas_cumprod.tolist(), diffusion.alphas_cumprod_prev.tolist()
    for index, i in enumerate(reversed(range(diffusion.num_timesteps))):
        t = torch.full((shape[0],), i, device=device)
        alpha_bar, alpha_bar_prev = alphas_cumprod[i], alphas_cumprod_prev[i]
        grad_coef = torch.full((shape[0],), math.sqrt(1 - alpha_bar), dtype=torch.float64, device=device)
        out = model(x, timesteps[t], guidance, grad_coef)
        pred_xstart = diffusion.predict_xstart_from_eps(x, t, out.eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        eps = diffusion.predict_eps_from_xstart(x, t, pred_xstart)
        sigma = eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))
        x = math.sqrt(alpha_bar_prev) * pred_xstart + math.sqrt(max(0.0, 1 - alpha_bar_prev - sigma ** 2)) * eps
        if sigma > 0 and i > 0:
            x = x + sigma * noise(shape, device)
        yield _check_finite(Step(index, int(diffusion.timesteps[i]), x, pred_xstart, out.log_prob, out.guidance_norm))


def sample(model: GuidedDenoiser, diffusion: GaussianDiffusion, shape, guidance: Guidance,
           noise: SharedNoise, sampler: str = "ddim", eta: float = 0.0, device="cpu",
           **kwargs) -> Iterator[Step]:
    """Dispatch to ddim_sample or ddpm_sample (eta applies to DDIM only)."""
    if sampler == "ddim":
        return ddim_sample(model, diffusion, shape, guidance, noise, device, eta=eta, **kwargs)
    if sampler == "ddpm":
        return ddpm_sample(model, diffusion, shape, guidance, noise, device, **kwargs)
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")


def final(steps: Iterator[Step]) -> Step:
    """Run a sampler to the end and return its last record."""
    last = None
    for last in steps:
        pass
    return last
