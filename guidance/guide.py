"""Guidance as one wrapper around the eps prediction, so every sampler gets it for free.

Classifier guidance (Dhariwal & Nichol 2021, Algorithms 1 and 2), with g = grad_{x_t} log p_phi(c | x_t, t):
    eps-tilde = eps - k_t * w * g
The sampler picks k_t. DDIM uses k_t = sqrt(1 - alpha-bar_t) (Algorithm 2). DDPM uses
k_t = sqrt(1 - alpha-bar_t) sqrt(alpha_t) Sigma_t / beta_t, which moves the posterior mean by
exactly w * Sigma_t * g (Algorithm 1) when x-hat_0 is not clipped. w is the paper's gradient
scale s: sampling then targets p(x_t) p(c | x_t)^w, and w = 0 is the plain model.

Classifier-free guidance (Ho & Salimans 2022), with the null label standing for "no class":
    eps-tilde = (1 + w_cfg) eps(x_t, c) - w_cfg eps(x_t, null)
Both can be on at once: classifier guidance is then added on top of the CFG prediction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn


class NonFiniteError(FloatingPointError):
    """A NaN or inf appeared while sampling; raised at the step where it appeared."""


@dataclass(frozen=True)
class Guidance:
    """What to steer toward, per batch item.

    class_labels: (B,) long, the target class c.
    scale: (B,) float, classifier guidance w (0 = off).
    cfg_scale: (B,) float, classifier-free w_cfg; None feeds the UNet the null label
        (the unconditional model), 0 the plain conditional model.
    max_guidance_norm: clip the per-item L2 norm of the guidance term k_t * w * g (None = no clip).
    diagnostics: also compute log p(c | x_t) when classifier guidance is off.
    """
    class_labels: torch.Tensor
    scale: torch.Tensor
    cfg_scale: torch.Tensor | None = None
    max_guidance_norm: float | None = None
    diagnostics: bool = True

    @classmethod
    def make(cls, class_labels, scale=0.0, cfg_scale=None, batch_size: int | None = None, **kwargs) -> "Guidance":
        """Build from ints, floats, lists or tensors, broadcast to batch_size items."""
        n = batch_size or len(torch.as_tensor(class_labels).reshape(-1))
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1).expand(n).clone()
        scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1).expand(n).clone()
        if cfg_scale is not None:
            cfg_scale = torch.as_tensor(cfg_scale, dtype=torch.float32).reshape(-1).expand(n).clone()
        return cls(labels, scale, cfg_scale, **kwargs)


class GuidedEps(NamedTuple):
    eps: torch.Tensor                     # (B, C, H, W) guided eps-tilde
    log_prob: torch.Tensor | None         # (B,) log p_phi(c | x_t, t), None when not computed
    guidance_norm: torch.Tensor | None    # (B,) L2 norm of k_t * w * g, None when guidance is off


def _as_column(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


class GuidedDenoiser:
    """Wraps the diffusion network unet(x_t, t, y) -> eps and the noise-conditioned classifier
    classifier(x_t, t) -> logits. Networks are always called with original timestep indices.
    The classifier must not mix batch items (no BatchNorm), so the gradient of the summed
    log-probabilities is each item's own gradient.
    """

    def __init__(self, unet: nn.Module, classifier: nn.Module | None, null_label: int):
        self.unet, self.classifier, self.null_label = unet, classifier, null_label

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, guidance: Guidance) -> torch.Tensor:
        """The unguided or classifier-free eps prediction, in one batched forward pass."""
        null = torch.full_like(guidance.class_labels, self.null_label).to(x_t.device)
        if guidance.cfg_scale is None:
            return self.unet(x_t, t, null)
        labels = guidance.class_labels.to(x_t.device)
        if not guidance.cfg_scale.any():
            return self.unet(x_t, t, labels)
        eps_cond, eps_uncond = self.unet(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                         torch.cat([labels, null])).chunk(2)
        w = _as_column(guidance.cfg_scale, x_t)
        return (1 + w) * eps_cond - w * eps_uncond

    def class_log_prob(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p_phi(c | x_t, t) per item, shape (B,)."""
        logits = self.classifier(x_t, t)
        # At least float32 (bf16 logits lose the small log-probabilities), never a float64 downcast.
        log_probs = torch.log_softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
        return log_probs.gather(1, labels.to(x_t.device)[:, None])[:, 0]

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, guidance: Guidance,
                 grad_coef: torch.Tensor) -> GuidedEps:
        """eps-tilde for x_t (B, C, H, W) at original timesteps t (B,); grad_coef is k_t, (B,)."""
        with torch.no_grad():
            eps = self.eps(x_t, t, guidance)
        if self.classifier is None:
            if guidance.scale.any():
                raise ValueError("classifier guidance needs a classifier")
            return GuidedEps(eps, None, None)
        if not guidance.scale.any():
            if not guidance.diagnostics:
                return GuidedEps(eps, None, None)
            with torch.no_grad():
                return GuidedEps(eps, self.class_log_prob(x_t, t, guidance.class_labels), None)
        with torch.enable_grad():
            x_in = x_t.detach().requires_grad_(True)
            log_prob = self.class_log_prob(x_in, t, guidance.class_labels)
            grad = torch.autograd.grad(log_prob.sum(), x_in)[0]
        term = _as_column(grad_coef, x_t) * _as_column(guidance.scale, x_t) * grad
        norm = term.flatten(1).norm(dim=1)
        if not torch.isfinite(norm).all():
            raise NonFiniteError("the classifier gradient is not finite")
        if guidance.max_guidance_norm is not None:
            factor = (guidance.max_guidance_norm / norm.clamp(min=1e-12)).clamp(max=1.0)
            term, norm = term * _as_column(factor, x_t), norm * factor
        return GuidedEps(eps - term, log_prob.detach(), norm)
