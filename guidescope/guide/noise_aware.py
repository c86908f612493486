"""Classifier guidance with a noise-aware classifier (Dhariwal & Nichol 2021, Algorithms 1 and 2),
g = grad_{x_t} log p_phi(c | x_t, t), on top of the classifier-free prediction:
    eps-tilde = eps - k_t * w(t) * g
k_t is the solver's (grad_coef), asked for once the networks have run, so it may depend on their
output. DDIM and DPM-Solver++ use k_t = sqrt(1 - alpha-bar_t) (Algorithm 2). DDPM uses
k_t = sqrt(1 - alpha-bar_t) sqrt(alpha_t) Sigma / beta_t, which moves the posterior mean by
exactly w * Sigma * g (Algorithm 1) when x-hat_0 is not clipped; Sigma is fixed, or the model's own
Sigma_theta (per pixel) for a learn_sigma UNet. w is the paper's gradient scale s: sampling then
targets p(x_t) p(c | x_t)^w, and w = 0 is the plain model.

Where the guidance shift meets the x-hat_0 threshold (ORDERS):
    guide-then-threshold   x-hat_0 of eps-tilde is thresholded (this project's networks)
    threshold-then-guide   the model's x-hat_0 is thresholded, then shifted by the guidance term:
                           x-hat_0' = threshold(x-hat_0(eps)) + sqrt(1 / alpha-bar_t - 1) k_t w g,
                           which is guided-diffusion's order: condition_score for DDIM (eps from the
                           clipped x-hat_0, minus sqrt(1 - alpha-bar_t) w g) and, for DDPM, exactly
                           condition_mean, mu(x-hat_0) + w Sigma g (ADM bundles, guidescope.convert)
The two agree wherever the threshold does not act.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import nn

from .classifier_free import ClassifierFreeGuidance, _as_column, at_step
from .method import Prediction
from .settings import Guidance, NonFiniteError

ORDERS = ("guide-then-threshold", "threshold-then-guide")


class NetworkOutput(NamedTuple):
    """What the networks give at x_t, before the classifier-guidance shift: the shift's factor k_t
    may depend on it (DDPM with a learned variance: Sigma_theta comes from v)."""
    eps: torch.Tensor                     # (B, C, H, W) eps_theta, or the classifier-free combination
    v: torch.Tensor | None                # (B, C, H, W) a learn_sigma UNet's variance output in [-1, 1], or None
    grad: torch.Tensor | None             # (R, C, H, W) g = grad_{x_t} log p_phi(c | x_t, t) of the guided rows
    rows: torch.Tensor | None             # (R,) which items those are; None (and grad None) when no item is guided
    scale: torch.Tensor                   # (B,) w(t)
    log_prob: torch.Tensor | None         # (B,) log p_phi(c | x_t, t), None when not computed


class GuidedEps(NamedTuple):
    eps: torch.Tensor                     # (B, C, H, W) guided eps-tilde
    log_prob: torch.Tensor | None         # (B,) log p_phi(c | x_t, t), None when not computed
    guidance_norm: torch.Tensor | None    # (B,) L2 norm of k_t * w(t) * g, None when no item is guided
    guidance_term: torch.Tensor | None    # (B, C, H, W) k_t * w(t) * g (after the norm clip), or None


# -- k_t, the solver's factor of w g ----------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _ddpm_coefs(diffusion) -> tuple[torch.Tensor, list[float]]:
    """(c_t, c_t beta-tilde_t) of a DDPM schedule, c_t = sqrt(1 - alpha-bar_t) sqrt(alpha_t) / beta_t:
    k_t = c_t Sigma turns w*g into a mean shift w Sigma g."""
    abar, alphas, betas = diffusion.alphas_cumprod, diffusion.alphas, diffusion.betas
    mean_coefs = ((1 - abar) * alphas).sqrt().div(betas)
    var = diffusion.fixed_variance(torch.arange(diffusion.num_timesteps), diffusion.betas).variance
    return mean_coefs, ((1 - abar) * alphas).sqrt().mul(var.flatten()).div(betas).tolist()


@functools.lru_cache(maxsize=16)
def _sigmas(diffusion) -> list[float]:
    return (1 - diffusion.alphas_cumprod).sqrt().tolist()


def grad_coef(solver, i: int, v: torch.Tensor | None) -> float | torch.Tensor:
    """k_t at schedule index i: a number, or (B, C, H, W) where it depends on the UNet's variance
    output v (DDPM with the learned Sigma_theta; None for an eps-only UNet)."""
    diffusion = solver.diffusion
    if solver.name == "ddim":
        return math.sqrt(1 - solver.abar[i])
    if solver.name != "ddpm":
        return _sigmas(diffusion)[i]
    mean_coefs, grad_coefs = _ddpm_coefs(diffusion)
    if solver.variance != "learned":
        return grad_coefs[i]
    return float(mean_coefs[i]) * solver.learned(i, v).variance


def shift_xstart(solver, x: torch.Tensor, t: torch.Tensor, model_xstart: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """x-hat_0(eps - term) from the model's thresholded x-hat_0 (order threshold-then-guide). DDPM:
    x-hat_0 + sqrt(1/alpha-bar_t - 1) term, whose posterior mean is condition_mean's mu(x-hat_0) +
    w Sigma g, since k_t = c_t Sigma. The others by guided-diffusion's condition_score: its eps,
    shifted, back to x-hat_0; at high noise both conversions cancel large numbers, so the
    reference's operations keep its float32 rounding."""
    diffusion = solver.diffusion
    if solver.name == "ddpm":
        return model_xstart + diffusion._gather("sqrt_recipm1_alphas_cumprod", t, x) * term
    shifted = diffusion.predict_eps_from_xstart(x, t, model_xstart) - term
    return diffusion.predict_xstart_from_eps(x, t, shifted)


# -- the classifier and its gradient ------------------------------------------------------------------

def class_log_prob(classifier: nn.Module, x_t: torch.Tensor, timestep: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    """log p_phi(c | x_t, t) per item, shape (B,)."""
    logits = classifier(x_t, timestep)
    # At least float32 (bf16 logits lose the small log-probabilities), never a float64 downcast.
    log_probs = torch.log_softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
    return log_probs.gather(1, labels.to(x_t.device)[:, None])[:, 0]


def classifier_gradient(classifier: nn.Module, x_t: torch.Tensor, timestep: torch.Tensor, labels: torch.Tensor,
                        rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """g = grad_{x_t} log p_phi(c | x_t, t) of the items `rows` (R,) alone, (R, C, H, W), and their
    log p_phi, (R,): the backward pass runs on those items only. The classifier must not mix
    items, so the gradient of the summed log-probabilities is each item's own."""
    every = len(rows) == len(x_t)
    with torch.enable_grad():
        x_in = (x_t if every else x_t[rows]).detach().requires_grad_(True)
        log_prob = class_log_prob(classifier, x_in, timestep[rows], labels[rows])
        grad = torch.autograd.grad(log_prob.sum(), x_in)[0]
    return grad, log_prob.detach()


def _log_prob_of_every_item(classifier: nn.Module, x_t: torch.Tensor, timestep: torch.Tensor, labels: torch.Tensor,
                            rows: torch.Tensor, others: torch.Tensor, log_prob_rows: torch.Tensor) -> torch.Tensor:
    """(B,) log p_phi(c | x_t, t), for the charts: the guided rows' from their gradient pass, the
    others' from a pass without gradients."""
    with torch.no_grad():
        log_prob_others = class_log_prob(classifier, x_t[others], timestep[others], labels[others])
    log_prob = torch.empty(len(x_t), dtype=log_prob_others.dtype, device=x_t.device)
    log_prob[rows] = log_prob_rows.to(log_prob.dtype)
    log_prob[others] = log_prob_others
    return log_prob


# -- the classifier-guidance shift ---------------------------------------------------------------------

def _guidance_term(prediction: NetworkOutput, grad_coef: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) k_t w(t) g, zero for the items not guided. grad_coef is k_t: (B,), or
    (B, C, H, W) where it varies per pixel."""
    eps, rows = prediction.eps, prediction.rows
    k = grad_coef.to(eps.device, eps.dtype) if grad_coef.ndim == eps.ndim else _as_column(grad_coef, eps)
    term = torch.zeros_like(eps)
    term[rows] = (k * _as_column(prediction.scale, eps))[rows] * prediction.grad
    return term


def _clip_norm(term: torch.Tensor, norm: torch.Tensor, max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each item's term (B, C, H, W) scaled down to an L2 norm of at most max_norm; (term, norm (B,))."""
    factor = (max_norm / norm.clamp(min=1e-12)).clamp(max=1.0)
    return term * _as_column(factor, term), norm * factor


class NoiseAwareGuidance(ClassifierFreeGuidance):
    """Classifier guidance by the noise-conditioned classifier classifier(x_t, t) -> logits, on top
    of the unet(x_t, t, y) -> eps prediction (ClassifierFreeGuidance). Networks are always called
    with original timesteps (`timestep` here; the samplers index their respaced schedule, `t`
    there). The classifier must not mix batch items (no BatchNorm): see classifier_gradient.
    order is where the shift meets the x-hat_0 threshold (ORDERS, checked where a bundle is loaded).
    """
    name = "noise-aware"
    title = "Noise-aware classifier"

    def __init__(self, unet, classifier: nn.Module | None, null_label: int | None, order: str = ORDERS[0]):
        super().__init__(unet, null_label)
        self.classifier, self.order = classifier, order

    def class_log_prob(self, x_t: torch.Tensor, timestep: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p_phi(c | x_t, t) per item, (B,), from this method's classifier."""
        return class_log_prob(self.classifier, x_t, timestep, labels)

    def predict(self, x: torch.Tensor, i: int, solver, guidance: Guidance) -> Prediction:
        """The networks at x_t, k_t now that they have run, the shift, and x-hat_0 with the shift on
        the side of the threshold that self.order names."""
        t, timestep = at_step(solver, i, x)
        out = self.networks(x, timestep, guidance)
        k = grad_coef(solver, i, out.v)
        if not isinstance(k, torch.Tensor):
            k = torch.full((x.shape[0],), k, dtype=torch.float64, device=x.device)
        guided = self.shift(out, guidance, k)
        diffusion = solver.diffusion
        if self.order == "guide-then-threshold" or guided.guidance_term is None:
            pred_xstart = guidance.threshold(diffusion.predict_xstart_from_eps(x, t, guided.eps))
        else:
            model_xstart = guidance.threshold(diffusion.predict_xstart_from_eps(x, t, out.eps))
            pred_xstart = shift_xstart(solver, x, t, model_xstart, guided.guidance_term)
        return Prediction(pred_xstart, out.v, guided.log_prob, guided.guidance_norm, guided.guidance_term)

    def networks(self, x_t: torch.Tensor, timestep: torch.Tensor, guidance: Guidance) -> NetworkOutput:
        """The networks at x_t (B, C, H, W), original timesteps (B,), all equal (one sampling step):
        eps (and v) with classifier-free guidance, and the classifier gradient g of the items
        guided at this step; the classifier's backward pass runs on those items only, and not at
        all when none is."""
        scale = guidance.at(int(timestep[0]))[0]
        with torch.no_grad():
            eps, v = self.network_output(x_t, timestep, guidance)
        grad, rows, log_prob = self._classify(x_t, timestep, guidance, (scale != 0).to(x_t.device))
        return NetworkOutput(eps, v, grad, rows, scale, log_prob)

    def _classify(self, x_t: torch.Tensor, timestep: torch.Tensor, guidance: Guidance, guided: torch.Tensor):
        """(g of the guided items, which items those are, log p_phi(c | x_t, t) (B,)): g and the rows
        are None when no item is guided, log p_phi when it is not asked for (guidance.diagnostics)
        beyond the guided items, or there is no classifier."""
        if self.classifier is None:
            if guided.any():
                raise ValueError("classifier guidance needs a classifier")
            return None, None, None
        labels = guidance.class_labels.to(x_t.device)
        if not guided.any():
            if not guidance.diagnostics:
                return None, None, None
            with torch.no_grad():
                return None, None, class_log_prob(self.classifier, x_t, timestep, labels)
        rows = guided.nonzero()[:, 0]
        grad, log_prob_rows = classifier_gradient(self.classifier, x_t, timestep, labels, rows)
        if len(rows) == len(x_t):
            return grad, rows, log_prob_rows
        if not guidance.diagnostics:
            return grad, rows, None
        others = (~guided).nonzero()[:, 0]
        return grad, rows, _log_prob_of_every_item(self.classifier, x_t, timestep, labels, rows, others, log_prob_rows)

    @staticmethod
    def shift(prediction: NetworkOutput, guidance: Guidance, grad_coef: torch.Tensor) -> GuidedEps:
        """eps-tilde = eps - k_t w(t) g, with the term's per-item norm clipped to
        guidance.max_guidance_norm. grad_coef is k_t: (B,), or (B, C, H, W) where it varies per
        pixel (DDPM with the learned Sigma_theta), known only once the UNet has run. Raises
        NonFiniteError when the term is not finite."""
        eps = prediction.eps
        if prediction.rows is None:
            return GuidedEps(eps, prediction.log_prob, None, None)
        term = _guidance_term(prediction, grad_coef)
        norm = term.flatten(1).norm(dim=1)
        if not torch.isfinite(norm).all():
            raise NonFiniteError("the classifier gradient is not finite")
        if guidance.max_guidance_norm is not None:
            term, norm = _clip_norm(term, norm, guidance.max_guidance_norm)
        return GuidedEps(eps - term, prediction.log_prob, norm, term)

    def __call__(self, x_t: torch.Tensor, timestep: torch.Tensor, guidance: Guidance,
                 grad_coef: torch.Tensor) -> GuidedEps:
        """eps-tilde for x_t (B, C, H, W) at original timesteps (B,) with k_t = grad_coef (B,):
        the networks, then the shift."""
        return self.shift(self.networks(x_t, timestep, guidance), guidance, grad_coef)
