"""The UNet alone, or classifier-free guidance (Ho & Salimans 2022), with the null label standing
for "no class":
    eps-tilde = (1 + w_cfg(t)) eps(x_t, c) - w_cfg(t) eps(x_t, null)
Unconditional items run eps(x_t, null); conditional ones with w_cfg = 0 the plain conditional model.
Every other method adds its guidance on top of this prediction.
"""
from __future__ import annotations

import torch

from .method import GuidanceMethod, Prediction
from .settings import Guidance


def at_step(solver, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, timestep), each (B,): schedule index i of solver.diffusion, as the diffusion takes it,
    and its original timestep, as the networks take it."""
    t = torch.full((x.shape[0],), i, device=x.device)
    return t, solver.diffusion.timesteps.to(x.device)[t]


def _as_column(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def classifier_free_output(unet, null_label: int | None, x_t: torch.Tensor, timestep: torch.Tensor,
                           guidance: Guidance, cfg_scale: torch.Tensor) -> torch.Tensor:
    """The unguided or classifier-free UNet output at x_t (B, C, H, W), original timesteps (B,), in
    one batched UNet call that holds each conditional item once and the null label only for the
    items that need it: unconditional items and conditional items whose w_cfg(t) (cfg_scale, (B,))
    is not 0. (B, C, H, W), or (B, 2C, H, W) with v for a learn_sigma UNet."""
    conditional = guidance.conditional.to(x_t.device)
    needs_null = ~conditional | (cfg_scale.to(x_t.device) != 0)
    labels = guidance.class_labels.to(x_t.device)
    if not needs_null.any():  # one kind of pass: no gathering
        return unet(x_t, timestep, labels)
    if null_label is None:
        raise ValueError("this UNet has no null label: it cannot run unconditional items or classifier-free guidance")
    if not conditional.any():
        return unet(x_t, timestep, torch.full_like(labels, null_label))
    cond, null = conditional.nonzero()[:, 0], needs_null.nonzero()[:, 0]
    rows = torch.cat([cond, null])
    out = unet(x_t[rows], timestep[rows], torch.cat([labels[cond], torch.full_like(null, null_label)]))
    return _combine(out, cond, null, conditional, cfg_scale, x_t)


def _combine(out: torch.Tensor, cond: torch.Tensor, null: torch.Tensor, conditional: torch.Tensor,
             cfg_scale: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """out holds the items cond with their class, then the items null with the null label.
    Conditional items get (1 + w_cfg) eps(x_t, c) - w_cfg eps(x_t, null), the others eps(x_t, null);
    a v output is not extrapolated: each item keeps its own pass's, the conditional one (GLIDE)."""
    shape = (len(x_t), *out.shape[1:])
    out_cond, out_null = out.new_zeros(shape), out.new_zeros(shape)
    out_cond[cond], out_null[null] = out[:len(cond)], out[len(cond):]
    w, is_cond = _as_column(cfg_scale, x_t), _as_column(conditional, x_t).bool()
    combined = torch.where(is_cond, (1 + w) * out_cond - w * out_null, out_null)
    c = x_t.shape[1]
    if out.shape[1] > c:
        combined[:, c:] = torch.where(is_cond, out_cond[:, c:], out_null[:, c:])
    return combined


class ClassifierFreeGuidance(GuidanceMethod):
    """The unguided or classifier-free prediction, per item (guidance.conditional, cfg_scale).
    null_label is the label meaning "no class", or None for a UNet trained without one (ADM's
    class-conditional models): every item must then be conditional with w_cfg = 0, which
    guidescope.request.check makes sure of. A learn_sigma UNet returns (B, 2C, H, W): eps, then v
    (improved DDPM); the split is made here."""
    name = "classifier-free"
    title = "Classifier-free guidance"

    def __init__(self, unet, null_label: int | None):
        self.unet, self.null_label = unet, null_label

    def network_output(self, x_t: torch.Tensor, timestep: torch.Tensor, guidance: Guidance
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(eps, v) at x_t (B, C, H, W), original timesteps (B,), all equal: eps_theta or the
        classifier-free combination, and v (None for an eps-only UNet). Differentiable where
        gradients are on."""
        cfg_scale = guidance.at(int(timestep[0]))[1]
        out = classifier_free_output(self.unet, self.null_label, x_t, timestep, guidance, cfg_scale)
        c = x_t.shape[1]
        return (out, None) if out.shape[1] == c else (out[:, :c], out[:, c:])

    def predict(self, x: torch.Tensor, i: int, solver, guidance: Guidance) -> Prediction:
        t, timestep = at_step(solver, i, x)
        with torch.no_grad():
            eps, v = self.network_output(x, timestep, guidance)
        pred_xstart = guidance.threshold(solver.diffusion.predict_xstart_from_eps(x, t, eps))
        return Prediction(pred_xstart, v, None, None, None)
