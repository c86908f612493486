"""Samplers: one loop (sample_loop) around one solver per method.

The loop asks the guidance method (guidescope.guide) for each step: the method makes x-hat_0 and
lets the solver step to the next x; the loop yields a Step record. The UI, the command line and
the evaluation all iterate this same generator (through guidescope.generation). A solver has one
job, the step from x_t and x-hat_0 to the next x; guidance is not its business, so a new solver is
a new class, not a new loop.

    ddpm     ancestral sampling (Ho et al. 2020, Algorithm 2)
    ddim     Song et al. 2021, eq. 12; eta = 0 deterministic, eta = 1 DDPM-like noise
    dpm++2m  DPM-Solver++(2M), multistep second order in data prediction (Lu et al. 2022,
             Algorithm 2), a first-order first step and a first-order final step to x_0
    unipc    UniPC (Zhao et al. 2023): the same predictor plus the UniC corrector, which reuses
             each new network evaluation to correct the x it was made at; no extra evaluations

A multistep method sees the steps before it as a history (newest first); a predictor-corrector
method also corrects x_t once the network has seen it (Solver.correct), before it steps.
"""
from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import torch

from .diffusion import GaussianDiffusion
from .guide.method import GuidanceMethod, Noise
from .guide.settings import Guidance, NonFiniteError

VARIANCES = ("small", "learned")  # DDPM's Sigma: beta-tilde_t, or the model's own (a learn_sigma UNet)


class Step(NamedTuple):
    index: int                           # 0-based position in the loop; the last is steps - 1
    timestep: int                        # original timestep t of the x_t this step started from
    sample: torch.Tensor                 # (B, C, H, W) x_{t-1}: after the last step, the image
    pred_xstart: torch.Tensor            # (B, C, H, W) guided x-hat_0 from x_t, after its threshold
    log_prob: torch.Tensor | None        # (B,) log p_phi(c | x_t, t) of the noise-aware classifier
    guidance_norm: torch.Tensor | None   # (B,) L2 norm of the classifier guidance term
    guidance_term: torch.Tensor | None   # (B, C, H, W) what the guidance changed: the noise-aware
                                         # term k_t w(t) g subtracted from eps (guidescope.guide)
    seconds: torch.Tensor | None = None  # (B,) each item's sampling time so far, its loop's time shared
                                         # evenly (guidescope.generation sets it)


class Previous(NamedTuple):
    """What a multistep method keeps of a step before."""
    index: int                           # schedule index i of that step's x_t
    pred_xstart: torch.Tensor            # its x-hat_0
    x: torch.Tensor                      # the x_t it stepped from (after the correction, if any)


History = tuple[Previous, ...]           # the steps before, newest first; at most HISTORY kept
HISTORY = 2


class Solver:
    """One sampling method: an optional correction of x_t, and the step to the next x."""
    name = ""                       # what requests, the command line and the API call it
    title = ""                      # how pages and reports name it
    diffusion: GaussianDiffusion

    def correct(self, x: torch.Tensor, i: int, pred_xstart: torch.Tensor, history: History) -> torch.Tensor:
        """x_t after the network's x-hat_0 at it is known; most methods keep it as it is."""
        return x

    def step(self, x: torch.Tensor, i: int, pred_xstart: torch.Tensor, noise: Noise,
             history: History, v: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


class DDPM(Solver):
    """x_{t-1} = mu-tilde(x-hat_0, x_t) + sqrt(Sigma) z, no noise at the last step; Sigma is fixed
    to beta-tilde_t (variance "small") or the model's Sigma_theta (variance "learned"). Classifier
    guidance moves mu by w Sigma g (Dhariwal & Nichol Algorithm 1; guidescope.guide.noise_aware)."""
    name = "ddpm"
    title = "DDPM"

    def __init__(self, diffusion: GaussianDiffusion, variance: str = "small"):
        if variance not in VARIANCES:
            raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
        self.diffusion, self.variance = diffusion, variance
    def learned(self, i: int, v: torch.Tensor | None):
        """Sigma_theta at schedule index i from the UNet's v."""
        if v is None:
            raise ValueError("the learned variance needs a learn_sigma UNet (one that also outputs v)")
        return self.diffusion.learned_variance(torch.full((len(v),), i, device=v.device), v)

    def step(self, x: torch.Tensor, i: int, pred_xstart: torch.Tensor, noise: Noise,
             history: History, v: torch.Tensor | None) -> torch.Tensor:
        t = torch.full((x.shape[0],), i, device=x.device)
        mean = self.diffusion.q_posterior_mean_variance(pred_xstart, x, t).mean
        if i == 0:
            return mean
        log_var = (self.learned(i, v).log_variance if self.variance == "learned"
                   else self.diffusion.fixed_variance(t, x).log_variance)
        return mean + (0.5 * log_var).exp() * noise(x.shape, x.device)


class DDIM(Solver):
    """x_{t-1} = sqrt(alpha-bar_{t-1}) x-hat_0 + sqrt(1 - alpha-bar_{t-1} - sigma_t^2) eps + sigma_t z,
    sigma_t = eta sqrt((1 - alpha-bar_{t-1}) / (1 - alpha-bar_t)) sqrt(1 - alpha-bar_t / alpha-bar_{t-1}),
    with eps recomputed from the thresholded x-hat_0."""
    name = "ddim"
    title = "DDIM"

    def __init__(self, diffusion: GaussianDiffusion, eta: float = 0.0):
        self.diffusion, self.eta = diffusion, eta
        self.abar, self.abar_prev = diffusion.alphas_cumprod.tolist(), diffusion.alphas_cumprod_prev.tolist()

    def step(self, x: torch.Tensor, i: int, pred_xstart: torch.Tensor, noise: Noise,
             history: History, v: torch.Tensor | None) -> torch.Tensor:
        abar, abar_prev = self.abar[i], self.abar_prev[i]
        t = torch.full((x.shape[0],), i, device=x.device)
        eps = self.diffusion.predict_eps_from_xstart(x, t, pred_xstart)
        sigma = self.eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
        x = math.sqrt(abar_prev) * pred_xstart + math.sqrt(max(0.0, 1 - abar_prev - sigma ** 2)) * eps
        return x + sigma * noise(x.shape, x.device) if sigma > 0 and i > 0 else x


class DPMSolverPP2M(Solver):
    """DPM-Solver++(2M) in data prediction (Lu et al. 2022, Algorithm 2), for the probability-flow
    ODE of a discrete VP schedule. With alpha_t = sqrt(alpha-bar_t), sigma_t = sqrt(1 - alpha-bar_t),
    lambda_t = log(alpha_t / sigma_t) and h = lambda_{t-1} - lambda_t:

        first order  x_{t-1} = (sigma_{t-1} / sigma_t) x_t - alpha_{t-1} (e^{-h} - 1) D_t,   D_t = x-hat_0(x_t)
        second order the same with D = (1 + 1/(2r)) D_t - 1/(2r) D_prev, r = h_prev / h

    The first step has no previous x-hat_0 and is first order (DDIM). The final step, to
    alpha-bar = 1 (sigma = 0, h infinite), is the first-order x_0 = D_t.
    """
    name = "dpm++2m"
    title = "DPM-Solver++(2M)"

    def __init__(self, diffusion: GaussianDiffusion):
        self.diffusion = diffusion
        abar, abar_prev = diffusion.alphas_cumprod, diffusion.alphas_cumprod_prev
        self.alpha, self.sigma = abar.sqrt().tolist(), (1 - abar).sqrt().tolist()
        self.alpha_prev, self.sigma_prev = abar_prev.sqrt().tolist(), (1 - abar_prev).sqrt().tolist()
        self.lam = (0.5 * (abar.log() - (1 - abar).log())).tolist()
        self.lam_prev = (0.5 * (abar_prev.log() - (1 - abar_prev).log())).tolist()  # +inf at i = 0

    def step(self, x: torch.Tensor, i: int, pred_xstart: torch.Tensor, noise: Noise,
             history: History, v: torch.Tensor | None) -> torch.Tensor:
        if i == 0:
            return pred_xstart
        h = self.lam_prev[i] - self.lam[i]
        data = pred_xstart
        if history:
            r = (self.lam[i] - self.lam[history[0].index]) / h
            data = (1 + 0.5 / r) * pred_xstart - (0.5 / r) * history[0].pred_xstart
        return (self.sigma_prev[i] / self.sigma[i]) * x - self.alpha_prev[i] * math.expm1(-h) * data


class UniPC(DPMSolverPP2M):
    """UniPC with B(h) = e^{-h} - 1 ("bh2"), data prediction, order 2 (Zhao et al. 2023). Its
    predictor UniP-2 is DPM-Solver++(2M)'s step. Its corrector UniC redoes the step that led to x_t
    from the step before, x_s (index j, x-hat_0 D_s), now that D_t = x-hat_0(x_t) is known, with
    h = lambda_t - lambda_s:

        x_t <- (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) (D_s + rho_1 D1 + rho_t (D_t - D_s))

    where D1 = (D_u - D_s) / r_u from the step before that (r_u = (lambda_u - lambda_s) / h) and the
    rhos solve UniPC's order conditions; after the first-order first step, D1 is absent and
    rho_t = 1/2. The corrected x_t is what the predictor steps from and what the next correction
    starts from; the network is never run on it, so each step costs one evaluation as before.
    """
    name = "unipc"
    title = "UniPC"

    def correct(self, x: torch.Tensor, i: int, pred_xstart: torch.Tensor, history: History) -> torch.Tensor:
        if not history or i == 0:  # nothing to correct yet; the last step returns x-hat_0 whatever x is
            return x
        s = history[0]
        hh = self.lam[s.index] - self.lam[i]  # -h
        b_h = math.expm1(hh)
        phi_1 = b_h / hh - 1                  # h_phi_1 / hh - 1, UniPC's phi_2 term
        d_t = pred_xstart - s.pred_xstart
        if len(history) == 1:
            residual = 0.5 * d_t
        else:
            u = history[1]
            r = (self.lam[u.index] - self.lam[s.index]) / -hh
            b1 = phi_1 / b_h
            b2 = 2 * (phi_1 / hh - 0.5) / b_h
            rho_1 = (b1 - b2) / (1 - r)       # R = [[1, 1], [r, 1]], R rho = (b1, b2)
            residual = rho_1 * ((u.pred_xstart - s.pred_xstart) / r) + (b1 - rho_1) * d_t
        return (self.sigma[i] / self.sigma[s.index]) * s.x - self.alpha[i] * b_h * (s.pred_xstart + residual)


SOLVERS = {solver.name: solver for solver in (DDIM, DDPM, DPMSolverPP2M, UniPC)}  # the one table of samplers
SAMPLERS = tuple(SOLVERS)


def sampler_title(sampler: str) -> str:
    """'dpm++2m' -> 'DPM-Solver++(2M)': a sampler's display name."""
    return SOLVERS[sampler].title


def make_solver(sampler: str, diffusion: GaussianDiffusion, eta: float = 0.0, variance: str = "small") -> Solver:
    """The step object for a sampler name (SAMPLERS); eta in [0, 1] is DDIM's, variance (VARIANCES)
    DDPM's: the other methods use eps alone. guidescope.request.check has made sure of the name, of eta
    and that eta is 0 for the others."""
    if sampler == "ddim":
        return DDIM(diffusion, eta)
    if sampler == "ddpm":
        return DDPM(diffusion, variance)
    if sampler not in SOLVERS:  # the lookup's own failure, said as the check says it
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    return SOLVERS[sampler](diffusion)


def _check_finite(step: Step) -> Step:
    if not (torch.isfinite(step.sample).all() and torch.isfinite(step.pred_xstart).all()):
        raise NonFiniteError(f"sampling produced NaN or inf at step {step.index} (t={step.timestep}); "
                             "lower the guidance strength or set a guidance norm clip")
    return step


def sample_loop(method: GuidanceMethod, diffusion: GaussianDiffusion, shape, guidance: Guidance, noise: Noise,
                sampler: str = "ddim", eta: float = 0.0, variance: str = "small", device="cpu") -> Iterator[Step]:
    """Sample from x_T = noise(shape) through every timestep of `diffusion` (respaced or not),
    yielding one Step per step of the guidance method (guidescope.guide). shape is (B, C, H, W) with
    B = len(guidance); variance is DDPM's Sigma (VARIANCES). The values are taken as
    guidescope.request.check leaves them (eta in [0, 1], and 0 but for DDIM; a sampler the method
    runs with): called directly, pass valid ones. Raises NonFiniteError at the step where a NaN or
    inf appears."""
    solver = make_solver(sampler, diffusion, eta, variance)
    x = noise(shape, device)
    history: History = ()
    for index, i in enumerate(reversed(range(diffusion.num_timesteps))):
        move = method.step(x, i, solver, guidance, noise, history)
        p = move.prediction
        history = (Previous(i, p.pred_xstart, move.x_from), *history[:HISTORY - 1])
        x = move.sample
        yield _check_finite(Step(index, int(diffusion.timesteps[i]), x, p.pred_xstart, p.log_prob,
                                 p.guidance_norm, p.guidance_term))


def final(steps: Iterator[Step]) -> Step:
    """Run a sampler to the end and return its last record."""
    last = None
    for last in steps:
        pass
    return last
