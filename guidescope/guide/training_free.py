"""Training-free guidance: a classifier of clean images, f(c | x), steers through the Tweedie
estimate x-hat_0(x_t) = (x_t - sqrt(1 - alpha-bar_t) eps) / sqrt(alpha-bar_t) (through the codec's
decoder for a latent model), so it needs no training on noisy x_t.

TFG (Ye et al. 2024, Algorithm 1) writes the family as one step with five hyperparameters: the
strength rho of the gradient through the UNet, the strength mu of N_iter steps on x-hat_0, the
smoothing gamma-bar, N_recur and N_iter. With f~(x) = E_{delta ~ N(0, I)} f(c | x + gamma_t delta)
(a Monte Carlo mean of mc_samples draws; f itself when gamma_t = 0), one step from x_t, repeated
N_recur times:

    Delta_t = rho_t grad_{x_t} log f~(x-hat_0(x_t))                   through the UNet
    Delta_0 = x-hat_0^(N) - x-hat_0,  x-hat_0^(j+1) = x-hat_0^(j) + mu_t grad log f~(x-hat_0^(j))
    x_{t-1} = S(x_t, x-hat_0) + Delta_t / sqrt(alpha_t) + sqrt(alpha-bar_{t-1}) Delta_0
    x_t <- sqrt(alpha_t) x_{t-1} + sqrt(1 - alpha_t) z   between repetitions (alpha_t = alpha-bar_t / alpha-bar_{t-1})

S is the solver's own step (DDIM or DDPM) from x_t with x-hat_0: the x-hat_0 shift keeps its eps.
One addition here, not TFG's: stop_at, a probability at which the push ends. Each gradient is that
of min(log f~, log stop_at), so an image the guide already gives probability stop_at or more is
left alone (at 1, TFG's step: log f~ < 0). A guide keeps pushing a recognised image toward what it
finds most typical of the class, which costs the samples their variety; stopping it there keeps it
(docs/latent/training-free/TRAINING_FREE.md measures the difference).
rho_t = rho s_t n / sum(s) over the run's n steps, with s_t = 1 (constant), alpha_t (increase) or
beta_t = 1 - alpha_t (decrease), and mu_t likewise; gamma_t = gamma-bar (constant) or gamma-bar
sqrt(1 - alpha-bar_t) (decrease). The named methods are its special cases, each with its own
paper's step size (METHODS; the TFG repository's methods/*.py, which tests/test_training_free.py
checks against):

    dps      Chung et al. 2023: x_{t-1} = S + rho grad / |log f|            (no 1/sqrt(alpha_t))
    lgd      Song et al. 2023: x_{t-1} = S + rho grad / n, f~ with gamma_t = sqrt(1 - alpha-bar_t)
    freedom  Yu et al. 2023: x_{t-1} = S + rho_t grad, with N_recur time travel
    mpgd     He et al. 2024: only the step on x-hat_0 (N_iter = 1), no gradient through the UNet
    ug       Bansal et al. 2023: eps-hat = eps - sqrt(1 - alpha-bar_t) rho grad
             - sqrt(alpha-bar_t / (1 - alpha-bar_t)) Delta_0 (forward and backward guidance),
             S from eps-hat, with self-recurrence
    tfg      the unified step above

Recurrence re-noises one step of the schedule, so these methods run with the one-step samplers
(DDIM, DDPM), whose x_{t-1} depends on x_t alone. The guidance schedule's factor f(t) scales rho_t
and mu_t; where it is 0 the step is the plain one, once.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from torch import nn

from ..messages import choice, exact_integer, number
from .classifier_free import ClassifierFreeGuidance, _as_column, at_step
from .method import Move, Noise, Prediction
from .noise_aware import _clip_norm, class_log_prob
from .settings import Guidance, NonFiniteError

STRENGTH_SCHEDULES = ("constant", "increase", "decrease")   # s_t = 1, alpha_t, beta_t; mean 1 over the run
SMOOTHING_SCHEDULES = ("constant", "decrease")               # gamma-bar, gamma-bar sqrt(1 - alpha-bar_t)
MAX_STRENGTH = 1e4
MAX_REPEATS = 16                                             # N_recur, N_iter, mc_samples
MIN_STOP_AT = 0.01


class Form(NamedTuple):
    """How a named method's gradients enter the step."""
    time: str          # Delta_t: "tfg" adds Delta_t / sqrt(alpha_t) to x_{t-1}, "x" adds Delta_t, "eps" shifts eps
    x0: str            # Delta_0: "tfg" adds sqrt(alpha-bar_{t-1}) Delta_0 to x_{t-1}, "eps" shifts eps
    normalise: str     # the gradient through the UNet: "none", "log-prob" (/ |log f|, DPS), "draws" (/ n, LGD)


class Variant(NamedTuple):
    """A named special case of TFG: its form, the parameters a person sets, the others fixed."""
    title: str
    paper: str
    form: Form
    free: tuple[str, ...]     # TrainingFree fields the person sets
    fixed: dict               # the fields this method fixes (the rest keep TrainingFree's defaults)


METHODS = {
    "tfg": Variant("TFG", "Ye et al. 2024", Form("tfg", "tfg", "none"),
                   ("rho", "mu", "gamma", "recurrences", "iterations", "mc_samples", "rho_schedule", "mu_schedule",
                    "gamma_schedule", "stop_at"), {}),
    "dps": Variant("DPS", "Chung et al. 2023", Form("x", "tfg", "log-prob"), ("rho",), {"mu": 0.0, "iterations": 0}),
    "lgd": Variant("LGD", "Song et al. 2023", Form("x", "tfg", "draws"), ("rho", "mc_samples"),
                   {"mu": 0.0, "iterations": 0, "gamma": 1.0, "gamma_schedule": "decrease"}),
    "freedom": Variant("FreeDoM", "Yu et al. 2023", Form("x", "tfg", "none"), ("rho", "rho_schedule", "recurrences"),
                       {"mu": 0.0, "iterations": 0}),
    "mpgd": Variant("MPGD", "He et al. 2024", Form("x", "tfg", "none"), ("mu",), {"rho": 0.0, "iterations": 1}),
    "ug": Variant("Universal Guidance", "Bansal et al. 2023", Form("eps", "eps", "none"),
                  ("rho", "mu", "recurrences", "iterations"), {}),
}


@dataclass(frozen=True)
class TrainingFree:
    """One training-free setting: a named method (METHODS) and TFG's hyperparameters. Build it with
    make, which refuses a parameter the method does not take."""
    method: str = "tfg"
    rho: float = 0.0                 # strength of the gradient through the UNet (Delta_t)
    mu: float = 0.0                  # strength of each step on x-hat_0 (Delta_0)
    gamma: float = 0.0               # gamma-bar, the Monte Carlo smoothing of f around x-hat_0
    recurrences: int = 1             # N_recur: the step is taken this many times, re-noised between
    iterations: int = 0              # N_iter: steps on x-hat_0
    mc_samples: int = 1              # draws of f~'s Monte Carlo mean where gamma_t > 0
    rho_schedule: str = "constant"   # STRENGTH_SCHEDULES
    mu_schedule: str = "constant"
    gamma_schedule: str = "constant"  # SMOOTHING_SCHEDULES
    stop_at: float = 1.0             # no push where f~(c | x-hat_0) >= stop_at (1: always pushes, TFG's)

    def __post_init__(self):
        choice(self.method, "training-free method", tuple(METHODS))
        for name in ("rho", "mu", "gamma"):
            number(getattr(self, name), name, 0, MAX_STRENGTH)
        exact_integer(self.recurrences, "recurrences", 1, MAX_REPEATS)
        exact_integer(self.iterations, "iterations", 0, MAX_REPEATS)
        exact_integer(self.mc_samples, "Monte Carlo samples", 1, MAX_REPEATS)
        choice(self.rho_schedule, "rho schedule", STRENGTH_SCHEDULES)
        choice(self.mu_schedule, "mu schedule", STRENGTH_SCHEDULES)
        choice(self.gamma_schedule, "gamma schedule", SMOOTHING_SCHEDULES)
        number(self.stop_at, "stop at", MIN_STOP_AT, 1)
        variant = METHODS[self.method]
        for name, value in variant.fixed.items():
            if getattr(self, name) != value:
                raise ValueError(f"{variant.title} fixes {name} = {value}; it takes {', '.join(variant.free)}")

    @classmethod
    def make(cls, method: str = "tfg", **params) -> "TrainingFree":
        """The setting of `method` with the given parameters, the method's fixed values for the rest.
        Raises ValueError naming what the method takes, for anything else."""
        variant = _variant(method)
        unknown = sorted(set(params) - {f.name for f in fields(cls)})
        refused = sorted(set(params) - set(variant.free))
        if unknown or refused:
            raise ValueError(f"{variant.title} takes {', '.join(variant.free)}; got {', '.join(unknown or refused)}")
        return cls(method, **{**variant.fixed, **params})

    def as_method(self, method: str) -> "TrainingFree":
        """The setting of `method` made of this one's values that it takes and its own fixed values,
        not checked again: every value came through this setting's check (TFG takes them all)."""
        variant = _variant(method)
        values = {f.name: f.default for f in fields(self)}
        values.update({name: getattr(self, name) for name in variant.free}, **variant.fixed, method=method)
        setting = object.__new__(TrainingFree)
        for name, value in values.items():
            object.__setattr__(setting, name, value)
        return setting

    @property
    def variant(self) -> Variant:
        return METHODS[self.method]

    def step_cost(self) -> float:
        """About how many plain guided steps (a UNet forward pass and a classifier's backward pass)
        one step of this setting costs, for estimates before a run: a gradient through the UNet
        about 4 (forward, backward at about twice, the decoder and classifier), each step on x-hat_0
        about 1.5 (the decoder and the classifier, forward and backward; the first one's gradient
        comes with the one through the UNet where there is one), all N_recur times."""
        through_unet = 4.0 if self.rho else 1.0
        on_x0 = max(self.iterations - bool(self.rho), 0) if self.mu else 0
        return self.recurrences * (through_unet + 1.5 * on_x0)

    def steps_costing(self, plain_steps: int) -> int:
        """The steps of this setting that cost what plain_steps plain guided steps do, by
        step_cost (at least one): a training-free row at another guide's time."""
        return max(1, int(plain_steps / self.step_cost()))

    def describe(self) -> str:
        """'TFG rho 2 (increase) mu 2 (increase) N_recur 2 N_iter 1': the method and the parameters a
        person sets, each strength's schedule beside it where it is not constant, those at their
        default value left out."""
        default, free = TrainingFree(), self.variant.free
        words = [self.variant.title]
        for name in ("rho", "mu", "gamma"):
            value = getattr(self, name)
            if name in free and value != getattr(default, name):
                shape = getattr(self, f"{name}_schedule")
                words.append(f"{name} {value:g}" + ("" if shape == "constant" else f" ({shape})"))
        for name, symbol in (("recurrences", "N_recur"), ("iterations", "N_iter"), ("mc_samples", "draws"),
                             ("stop_at", "stop at")):
            if name in free and getattr(self, name) != getattr(default, name):
                words.append(f"{symbol} {getattr(self, name):g}")
        return " ".join(words)


# Where a bundle's defaults.json has no evaluated training-free setting: TFG's schedules (rho_t and
# mu_t grow as alpha_t does: small at the noisy end, where the gradient through x-hat_0 is large and a
# constant rho throws x_t far off), one step on x-hat_0, strengths where the search starts.
LIBRARY_SETTING = TrainingFree("tfg", rho=2.0, mu=2.0, iterations=1, rho_schedule="increase", mu_schedule="increase",
                               gamma_schedule="decrease")


def _variant(method: str) -> Variant:
    """METHODS[method], or ValueError naming the methods."""
    return METHODS[method] if isinstance(method, str) and method in METHODS else choice(
        method, "training-free method", tuple(METHODS))


@functools.lru_cache(maxsize=64)
def _strength_schedule(diffusion, shape: str) -> tuple[float, ...]:
    """s_t n / sum(s) per schedule index (mean 1 over the run's n steps)."""
    s = {"constant": torch.ones_like(diffusion.alphas), "increase": diffusion.alphas, "decrease": diffusion.betas}[shape]
    return tuple((s * len(s) / s.sum()).tolist())


def _smoothing(diffusion, i: int, setting: TrainingFree) -> float:
    if setting.gamma == 0:
        return 0.0
    if setting.gamma_schedule == "constant":
        return setting.gamma
    return setting.gamma * math.sqrt(1 - float(diffusion.alphas_cumprod[i]))


class TrainingFreeGuidance(ClassifierFreeGuidance):
    """TFG's step (module docstring) with a clean classifier guide(x) -> logits of images in
    [-1, 1], on top of the classifier-free prediction, per batch item (class, x-hat_0 threshold,
    w_cfg and schedule factor; the setting is the batch's). decode maps x-hat_0 to the images the
    guide classifies (the codec's differentiable_decode; the identity for pixels). classifier, the
    noise-aware one when there is one, only reports log p(c | x_t) for the charts: it never steers.
    """
    name = "training-free"
    title = "Clean classifier through x-hat_0"
    samplers = ("ddim", "ddpm")

    def __init__(self, unet, null_label: int | None, guide: nn.Module, decode, setting: TrainingFree,
                 classifier: nn.Module | None = None):
        super().__init__(unet, null_label)
        self.guide, self.decode, self.setting, self.classifier = guide, decode, setting, classifier

    def log_f(self, x0: torch.Tensor, draws: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """(B,) log f~(c | x0) = log mean_k f(c | decode(x0 + gamma delta_k)), or log f(c | decode(x0))
        with no draws, at most log stop_at (its gradient 0 above); differentiable."""
        points = torch.cat([x0 + d for d in draws]) if draws else x0
        logits = self.guide(self.decode(points))
        log_probs = torch.log_softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
        n = max(len(draws), 1)
        chosen = log_probs.gather(1, labels.repeat(n)[:, None])[:, 0].reshape(n, len(x0))
        log_f = torch.logsumexp(chosen, dim=0) - math.log(n)
        stop_at = self.setting.stop_at
        return log_f if stop_at == 1 else log_f.clamp(max=math.log(stop_at))

    def _grad(self, x0: torch.Tensor, draws: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x_in = x0.detach().requires_grad_(True)
            return torch.autograd.grad(self.log_f(x_in, draws, labels).sum(), x_in)[0]

    def step(self, x: torch.Tensor, i: int, solver, guidance: Guidance, noise: Noise, history: tuple) -> Move:
        t, timestep = at_step(solver, i, x)
        diffusion, setting = solver.diffusion, self.setting
        factor = guidance.factor(int(timestep[0])).to(x.device, x.dtype)
        rho = setting.rho * _strength_schedule(diffusion, setting.rho_schedule)[i] * factor
        mu = setting.mu * _strength_schedule(diffusion, setting.mu_schedule)[i] * factor
        if not ((rho != 0).any() or ((mu != 0).any() and setting.iterations)):  # unguided here (its interval)
            move = super().step(x, i, solver, guidance, noise, history)
            log_prob = self._noisy_log_prob(x, timestep, guidance.class_labels.to(x.device), guidance)
            return move._replace(prediction=move.prediction._replace(log_prob=log_prob))
        abar, abar_prev = float(diffusion.alphas_cumprod[i]), float(diffusion.alphas_cumprod_prev[i])
        alpha = abar / abar_prev
        x_t = x
        for repeat in range(setting.recurrences):
            sample, prediction = self._once(x_t, i, t, timestep, solver, guidance, noise, rho, mu)
            if repeat < setting.recurrences - 1:
                x_t = math.sqrt(alpha) * sample + math.sqrt(1 - alpha) * noise(x.shape, x.device)
        log_prob = self._noisy_log_prob(x_t, timestep, guidance.class_labels.to(x.device), guidance)
        return Move(sample, x_t, prediction._replace(log_prob=log_prob))

    def _once(self, x, i, t, timestep, solver, guidance, noise, rho, mu) -> tuple[torch.Tensor, Prediction]:
        """One of the N_recur repetitions: (x_{t-1}, the prediction)."""
        diffusion, setting, form = solver.diffusion, self.setting, self.setting.variant.form
        labels = guidance.class_labels.to(x.device)
        gamma = _smoothing(diffusion, i, setting)
        draws = [gamma * noise(x.shape, x.device) for _ in range(setting.mc_samples)] if gamma else []
        iterations = setting.iterations if (mu != 0).any() else 0
        if (rho != 0).any():
            delta_t, eps, v, x0, grad_x0 = self._through_unet(diffusion, x, t, timestep, guidance, draws, labels,
                                                              with_x0=iterations > 0)
            delta_t = _as_column(rho, x) * delta_t
        else:
            with torch.no_grad():
                eps, v = self.network_output(x, timestep, guidance)
            x0, delta_t = guidance.threshold(diffusion.predict_xstart_from_eps(x, t, eps)), torch.zeros_like(x)
            grad_x0 = None
        x0_new = x0
        for j in range(iterations):
            first = j == 0 and grad_x0 is not None  # at x-hat_0 itself: the gradient of the pass through the UNet
            grad = grad_x0 if first else self._grad(x0_new, draws, labels)
            x0_new = x0_new + _as_column(mu, x) * grad
        delta_0 = x0_new - x0
        abar, abar_prev = float(diffusion.alphas_cumprod[i]), float(diffusion.alphas_cumprod_prev[i])
        if form.time == "eps":  # Universal Guidance: both shifts on eps, and the step from eps-hat
            term = math.sqrt(1 - abar) * delta_t + math.sqrt(abar / (1 - abar)) * delta_0
            term, norm = _clipped(term, guidance.max_guidance_norm)
            pred_xstart = diffusion.predict_xstart_from_eps(x, t, eps - term)
            sample = solver.step(x, i, pred_xstart, noise, (), v)
        else:
            time_coef = 1 / math.sqrt(abar / abar_prev) if form.time == "tfg" else 1.0
            term, norm = _clipped(time_coef * delta_t + math.sqrt(abar_prev) * delta_0, guidance.max_guidance_norm)
            sample = solver.step(x, i, x0, noise, (), v) + term
            pred_xstart = x0_new
        return sample, Prediction(pred_xstart, v, None, norm, term)

    def _through_unet(self, diffusion, x, t, timestep, guidance, draws, labels, with_x0: bool):
        """(grad_{x_t} log f~(x-hat_0(x_t)), normalised as the method says, eps, v, x-hat_0, and with
        with_x0 grad_{x-hat_0} log f~(x-hat_0), else None): the gradient runs back through the
        threshold, the UNet and the decoder; the one at x-hat_0 is a stop on the way (the first step
        on x-hat_0 needs it, at no second pass through the decoder and the classifier)."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            eps, v = self.network_output(x_in, timestep, guidance)
            x0 = guidance.threshold(diffusion.predict_xstart_from_eps(x_in, t, eps))
            log_f = self.log_f(x0, draws, labels)
            grads = torch.autograd.grad(log_f.sum(), (x_in, x0) if with_x0 else (x_in,))
        grad, grad_x0 = grads[0], grads[1] if with_x0 else None
        normalise = self.setting.variant.form.normalise
        if normalise == "log-prob":
            grad = grad / _as_column(log_f.detach().abs(), grad)
        elif normalise == "draws":
            grad = grad / max(len(draws), 1)
        if not torch.isfinite(grad).all():
            raise NonFiniteError("the clean classifier's gradient through x-hat_0 is not finite")
        return grad, eps.detach(), None if v is None else v.detach(), x0.detach(), grad_x0

    def _noisy_log_prob(self, x, timestep, labels, guidance) -> torch.Tensor | None:
        """log p_phi(c | x_t, t) of the noise-aware classifier, for the charts only."""
        if self.classifier is None or not guidance.diagnostics:
            return None
        with torch.no_grad():
            return class_log_prob(self.classifier, x, timestep, labels)


def _clipped(term: torch.Tensor, max_norm: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(term, its per-item L2 norm (B,)), scaled down to max_norm where it is over (the noise-aware
    term's clip, noise_aware._clip_norm)."""
    norm = term.flatten(1).norm(dim=1)
    return (term, norm) if max_norm is None else _clip_norm(term, norm, max_norm)
