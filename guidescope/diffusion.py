"""Gaussian diffusion math (Ho et al. 2020; Nichol & Dhariwal 2021). Owns no network.

Glossary (code name -> paper symbol):
    betas             beta_t           forward-process variances
    alphas            alpha_t          1 - beta_t
    alphas_cumprod    alpha-bar_t      prod_{s<=t} alpha_s
    x_start           x_0              a clean image in [-1, 1]
    x_t               x_t              a noisy image at timestep t
    eps               epsilon          the noise mixed into x_t (the network predicts it: epsilon_theta)
    pred_xstart       x-hat_0          the x_0 predicted from x_t and eps

Every method takes index tensors `t` of shape (B,) into *this* object's schedule. A respaced
diffusion keeps a subset of the original timesteps; `timesteps[t]` gives the original index,
which is what networks are always called with.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

SCHEDULES = ("linear", "cosine")


def make_betas(schedule: str, num_timesteps: int = 1000) -> torch.Tensor:
    """beta_1..beta_T as float64, shape (T,).

    linear: DDPM's beta from 1e-4 to 0.02, rescaled by 1000 / T so any T gives the same process.
    cosine: improved DDPM, alpha-bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), s = 0.008,
            beta_t = min(1 - alpha-bar(t+1) / alpha-bar(t), 0.999).
    """
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"the number of timesteps must be a positive integer, got {num_timesteps!r}")
    if schedule == "linear":
        if num_timesteps <= 20:  # beta_T = 0.02 * 1000 / T must stay below 1
            raise ValueError(f"the linear schedule needs more than 20 timesteps, got {num_timesteps}")
        scale = 1000 / num_timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)
    if schedule == "cosine":
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        alpha_bar = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown noise schedule {schedule!r}; choose one of {SCHEDULES}")


def respace_timesteps(num_timesteps: int, steps: int) -> torch.Tensor:
    """`steps` evenly spaced original timesteps in increasing order, ending at T-1 and starting at 0.

    Any count from 1 to T works (guided-diffusion's "ddimN" accepts only some N). One step keeps
    only T-1: a single jump from pure noise to the x_0 prediction. (A request's step count is checked
    where it enters the library: guidescope.request.check.)
    """
    if steps == 1:
        return torch.tensor([num_timesteps - 1])
    # Spacing (T-1)/(steps-1) >= 1, so rounding keeps the timesteps distinct.
    return torch.linspace(0, num_timesteps - 1, steps, dtype=torch.float64).round().long()


class Variance(NamedTuple):
    """A Gaussian's per-item variance, each (B, 1, ...) or (B, C, H, W)."""
    variance: torch.Tensor
    log_variance: torch.Tensor


class MeanVariance(NamedTuple):
    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor


class GaussianDiffusion:
    """The forward process q and the posterior q(x_{t-1} | x_t, x_0) for one schedule.

    `timesteps` maps this schedule's indices to the original ones (identity unless respaced).
    Schedule arrays are float64 and cast to the input dtype on use.

    Longer than a class should be, on purpose: it is one job, one method per equation of the
    papers (DDPM eq. 4 and its inverse, eqs. 6-7, sec. 3.2; improved DDPM eq. 15), all reading the
    same schedule tables; split, one schedule's tables would be spread over several objects.
    """

    def __init__(self, betas: torch.Tensor, timesteps: torch.Tensor | None = None):
        self.betas = betas.to(torch.float64)
        self.num_timesteps = len(betas)
        self.timesteps = torch.arange(self.num_timesteps) if timesteps is None else timesteps.long()
        self.alphas = 1 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        # Posterior q(x_{t-1} | x_t, x_0) (DDPM eq. 7); the log variance at t=0 (where it is 0)
        # is clipped to the t=1 value, as in guided-diffusion.
        self.posterior_variance = self.betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
            if self.num_timesteps > 1 else self.betas.clone()
        )
        self.posterior_mean_coef1 = self.betas * self.alphas_cumprod_prev.sqrt() / (1 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1 - self.alphas_cumprod)
        # Factors of the formulas below, once here rather than on every call.
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1 / self.alphas_cumprod - 1).sqrt()
        self._tables: dict[tuple, torch.Tensor] = {}

    def _gather(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """self.<name>[t] in like's dtype and on its device, shaped (B, 1, 1, ...) to broadcast
        against like. Each table is converted once per device and dtype: a host-to-device copy on
        every call would stall a GPU sampling loop once per call."""
        key = (name, like.device, like.dtype)
        if key not in self._tables:
            self._tables[key] = getattr(self, name).to(like.device, like.dtype)
        return self._tables[key][t.to(like.device)].reshape(-1, *([1] * (like.ndim - 1)))

    @classmethod
    def from_schedule(cls, schedule: str, num_timesteps: int, steps: int | None = None):
        """The diffusion for `schedule` (SCHEDULES) with T = num_timesteps, respaced to `steps` kept
        timesteps (all T when None). No default: the schedule and T are what a model was trained
        with, which its checkpoint records."""
        betas = make_betas(schedule, num_timesteps)
        kept = respace_timesteps(num_timesteps, num_timesteps if steps is None else steps)
        if len(kept) == num_timesteps:
            return cls(betas)
        # Keep alpha-bar at the kept steps: beta'_i = 1 - alpha-bar_{s_i} / alpha-bar_{s_{i-1}}.
        alpha_bar = torch.cumprod(1 - betas, 0)[kept]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        return cls(1 - alpha_bar / prev, timesteps=kept)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps  (DDPM eq. 4)."""
        return (self._gather("sqrt_alphas_cumprod", t, x_start) * x_start
                + self._gather("sqrt_one_minus_alphas_cumprod", t, x_start) * noise)

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x-hat_0 = (x_t - sqrt(1 - alpha-bar_t) eps) / sqrt(alpha-bar_t)  (eq. 4 solved for x_0)."""
        return (self._gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                - self._gather("sqrt_recipm1_alphas_cumprod", t, x_t) * eps)

    def predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        """eps = (x_t / sqrt(alpha-bar_t) - x_0) / sqrt(1 / alpha-bar_t - 1)  (the inverse of the above)."""
        return ((self._gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_xstart)
                / self._gather("sqrt_recipm1_alphas_cumprod", t, x_t))

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> MeanVariance:
        """q(x_{t-1} | x_t, x_0) = N(mu-tilde, beta-tilde)  (DDPM eq. 6-7):

        mu-tilde_t  = sqrt(alpha-bar_{t-1}) beta_t / (1 - alpha-bar_t) x_0
                      + sqrt(alpha_t) (1 - alpha-bar_{t-1}) / (1 - alpha-bar_t) x_t
        beta-tilde_t = (1 - alpha-bar_{t-1}) / (1 - alpha-bar_t) beta_t
        """
        mean = (self._gather("posterior_mean_coef1", t, x_t) * x_start
                + self._gather("posterior_mean_coef2", t, x_t) * x_t)
        return MeanVariance(mean, *self.fixed_variance(t, x_t))

    def fixed_variance(self, t: torch.Tensor, like: torch.Tensor) -> Variance:
        """The reverse-process variance fixed to the posterior's, Sigma_t = beta-tilde_t (DDPM sec. 3.2),
        its log clipped at t=0 to the t=1 value; shaped (B, 1, ...) to broadcast against like."""
        return Variance(self._gather("posterior_variance", t, like), self._gather("posterior_log_variance_clipped", t, like))

    def learned_variance(self, t: torch.Tensor, v: torch.Tensor) -> Variance:
        """Sigma_theta from a learn_sigma model's second output v in [-1, 1] (improved DDPM eq. 15,
        guided-diffusion's LEARNED_RANGE):

            log Sigma_theta = frac log beta_t + (1 - frac) log beta-tilde_t,   frac = (v + 1) / 2

        v is (B, C, H, W), t (B,) indices into this schedule. Respaced, beta_t and beta-tilde_t are
        those of the kept steps (from_schedule recomputes the betas), as in guided-diffusion's respace;
        beta-tilde_0 is clipped to beta-tilde_1, as the posterior's log variance is.
        """
        frac = (v + 1) / 2
        log_variance = (frac * self._gather("betas", t, v).log()
                        + (1 - frac) * self._gather("posterior_log_variance_clipped", t, v))
        return Variance(log_variance.exp(), log_variance)
