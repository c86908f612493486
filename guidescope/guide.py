"""Guidance as one wrapper around the eps prediction, so every sampler gets it for free.

Classifier guidance (Dhariwal & Nichol 2021, Algorithms 1 and 2), with g = grad_{x_t} log p_phi(c | x_t, t):
    eps-tilde = eps - k_t * w(t) * g
The sampler picks k_t, once the networks have run (GuidedDenoiser.predict, then shift), so k_t may
depend on their output. DDIM and DPM-Solver++ use k_t = sqrt(1 - alpha-bar_t) (Algorithm 2). DDPM
uses k_t = sqrt(1 - alpha-bar_t) sqrt(alpha_t) Sigma / beta_t, which moves the posterior mean by
exactly w * Sigma * g (Algorithm 1) when x-hat_0 is not clipped; Sigma is fixed, or the model's own
Sigma_theta (per pixel) for a learn_sigma UNet. Where the shift meets the x-hat_0 threshold is the
sampler's order (guidescope.samplers.ORDERS). w is the paper's gradient scale s: sampling then
targets p(x_t) p(c | x_t)^w, and w = 0 is the plain model.

Classifier-free guidance (Ho & Salimans 2022), with the null label standing for "no class":
    eps-tilde = (1 + w_cfg(t)) eps(x_t, c) - w_cfg(t) eps(x_t, null)
Both can be on at once: classifier guidance is then added on top of the CFG prediction.

Every setting is per batch item, so one batch can hold rows of different strengths, schedules,
UNets (conditional or not) and x-hat_0 thresholds. A schedule scales both strengths at each step:
w(t) = w * f(t) (see Schedule); Guidance.at(t) is the one place that computes a step's strengths.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple, Sequence

import torch
from torch import nn

from .messages import choice, number, shown

SCHEDULE_SHAPES = ("constant", "ramp-up", "ramp-down")
THRESHOLDS = ("clip", "dynamic", "none")


class NonFiniteError(FloatingPointError):
    """A NaN or inf appeared while sampling; raised at the step where it appeared."""


@dataclass(frozen=True)
class Schedule:
    """The factor f(t) in [0, 1] that scales a guidance strength at original timestep t.

    Outside the interval [t_lo, t_hi] (inclusive; None = every timestep) f = 0: guidance in a
    limited interval (Kynkaanniemi et al. 2024). Inside it:
        constant   f = 1
        ramp-up    f = (t_hi - t) / (t_hi - t_lo)   0 at the noisy end, 1 at the clean end
        ramp-down  f = (t - t_lo) / (t_hi - t_lo)   1 at the noisy end, 0 at the clean end
    Sampling runs from t = T-1 down to 0, so ramp-up guides more and more as the image forms.
    A ramp needs its interval: [0, T-1] for the whole range.
    """
    shape: str = "constant"
    interval: tuple[int, int] | None = None

    def __post_init__(self):
        """Well-formed: a known shape, and an interval of two integers where a ramp needs one. Where
        the interval lies (0 <= t_lo <= t_hi <= T-1) depends on the model: guidescope.request.check."""
        choice(self.shape, "schedule", SCHEDULE_SHAPES)
        if self.interval is not None:
            if not (isinstance(self.interval, (tuple, list)) and len(self.interval) == 2
                    and all(isinstance(t, int) and not isinstance(t, bool) for t in self.interval)):
                raise ValueError(f"a guidance interval is two integer timesteps (t_lo, t_hi), got {shown(self.interval)}")
        elif self.shape != "constant":
            raise ValueError(f"the {self.shape} schedule needs an interval [t_lo, t_hi]")

    def factor(self, t: int) -> float:
        if self.interval is None:
            return 1.0
        lo, hi = self.interval
        if not lo <= t <= hi:
            return 0.0
        if self.shape == "constant" or hi == lo:
            return 1.0
        return (hi - t) / (hi - lo) if self.shape == "ramp-up" else (t - lo) / (hi - lo)


@dataclass(frozen=True)
class Threshold:
    """What happens to each x-hat_0 before the sampler uses it.

    clip     clamp to [-1, 1] (the static threshold of DDPM and guided-diffusion)
    dynamic  Saharia et al. 2022: s = max(1, the percentile-th quantile of |x-hat_0| over the
             image's pixels); clamp to [-s, s] and divide by s, per image
    none     leave it as predicted
    """
    mode: str = "clip"
    percentile: float = 0.995

    def __post_init__(self):
        choice(self.mode, "threshold", THRESHOLDS)
        number(self.percentile, "threshold percentile", 0.5, 1)

    def __call__(self, pred_xstart: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        if self.mode == "clip":
            return pred_xstart.clamp(-1, 1)
        if self.mode == "none":
            return pred_xstart
        s = torch.quantile(pred_xstart.flatten(1).abs().float(), self.percentile, dim=1).clamp(min=1)
        s = s.to(pred_xstart.dtype).reshape(-1, *([1] * (pred_xstart.ndim - 1)))
        return torch.maximum(torch.minimum(pred_xstart, s), -s) / s


def _per_item(value, n: int, dtype) -> torch.Tensor:
    return torch.as_tensor(value, dtype=dtype).reshape(-1).expand(n).clone()


def _tuple_of(value, n: int, kind: type) -> tuple:
    items = (value,) * n if isinstance(value, kind) else tuple(value)
    if len(items) != n or not all(isinstance(v, kind) for v in items):
        raise ValueError(f"give one {kind.__name__} or one per item ({n})")
    return items


@dataclass(frozen=True)
class Guidance:
    """What to steer toward, per batch item (B items).

    class_labels: (B,) long, the target class c.
    scale: (B,) float, classifier guidance w (0 = off).
    conditional: (B,) bool; False feeds the UNet the null label (the unconditional model
        eps(x_t, null)), True the class (the conditional model, with classifier-free w_cfg).
    cfg_scale: (B,) float, classifier-free w_cfg of conditional items (0 = the plain conditional
        model); ignored for unconditional items.
    schedules: B Schedules scaling w and w_cfg per step.
    thresholds: B Thresholds applied to x-hat_0.
    max_guidance_norm: clip the per-item L2 norm of the guidance term k_t * w * g (None = no clip).
    diagnostics: also compute log p(c | x_t) at steps where classifier guidance is off.
    clip_bound: b, the data space's range: the thresholds act on x-hat_0 / b (1 for pixels in
        [-1, 1]; a latent space's measured range for latents).
    """
    class_labels: torch.Tensor
    scale: torch.Tensor
    conditional: torch.Tensor
    cfg_scale: torch.Tensor
    schedules: tuple[Schedule, ...]
    thresholds: tuple[Threshold, ...]
    max_guidance_norm: float | None = None
    diagnostics: bool = True
    clip_bound: float = 1.0
    _factors: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def make(cls, class_labels, scale=0.0, cfg_scale=None, batch_size: int | None = None,
             schedule: Schedule | Sequence[Schedule] = Schedule(), threshold: Threshold | Sequence[Threshold] = Threshold(),
             **kwargs) -> "Guidance":
        """Build from ints, floats, lists or tensors, broadcast to batch_size items.

        cfg_scale None makes every item unconditional; a number or per-item values make every
        item conditional with that w_cfg. For a mix, pass `conditional` (a (B,) bool) in kwargs.
        """
        n = batch_size or len(torch.as_tensor(class_labels).reshape(-1))
        conditional = kwargs.pop("conditional", cfg_scale is not None)
        return cls(_per_item(class_labels, n, torch.long), _per_item(scale, n, torch.float32),
                   _per_item(conditional, n, torch.bool), _per_item(0.0 if cfg_scale is None else cfg_scale, n, torch.float32),
                   _tuple_of(schedule, n, Schedule), _tuple_of(threshold, n, Threshold), **kwargs)

    def __post_init__(self):
        n = len(self.class_labels)
        if not all(len(v) == n for v in (self.scale, self.conditional, self.cfg_scale, self.schedules, self.thresholds)):
            raise ValueError(f"every guidance setting needs one value per item ({n})")

    def __len__(self) -> int:
        return len(self.class_labels)

    def at(self, timestep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(w(t), w_cfg(t)), each (B,) float: the strengths at an original timestep t, after the
        schedules (0 for unconditional items' w_cfg)."""
        if timestep not in self._factors:
            self._factors[timestep] = torch.tensor([s.factor(timestep) for s in self.schedules])
        f = self._factors[timestep]
        return self.scale * f, torch.where(self.conditional, self.cfg_scale * f, 0.0)

    def threshold(self, pred_xstart: torch.Tensor) -> torch.Tensor:
        """Each item's Threshold applied to its x-hat_0 / clip_bound, times clip_bound, (B, C, H, W)."""
        if self.clip_bound != 1.0:
            b = self.clip_bound
            return replace(self, clip_bound=1.0).threshold(pred_xstart / b) * b
        first = self.thresholds[0]
        if all(th == first for th in self.thresholds):
            return first(pred_xstart)
        out = torch.empty_like(pred_xstart)
        for th in set(self.thresholds):
            rows = torch.tensor([i for i, other in enumerate(self.thresholds) if other == th], device=pred_xstart.device)
            out[rows] = th(pred_xstart[rows])
        return out


class Prediction(NamedTuple):
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


def _as_column(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


# -- the networks at x_t: classifier-free guidance, then the classifier and its gradient -------------

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

def _guidance_term(prediction: Prediction, grad_coef: torch.Tensor) -> torch.Tensor:
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


class GuidedDenoiser:
    """Wraps the diffusion network unet(x_t, t, y) -> eps and the noise-conditioned classifier
    classifier(x_t, t) -> logits. Networks are always called with original timesteps (`timestep`
    here; the samplers index their respaced schedule, `t` there). The classifier must not mix
    batch items (no BatchNorm): see classifier_gradient.

    A learn_sigma UNet returns (B, 2C, H, W): eps, then v (improved DDPM); the split is made here.
    null_label is the label meaning "no class", or None for a UNet trained without one (ADM's
    class-conditional models): every item must then be conditional with w_cfg = 0, which
    guidescope.request.check makes sure of.
    """

    def __init__(self, unet, classifier: nn.Module | None, null_label: int | None):
        self.unet, self.classifier, self.null_label = unet, classifier, null_label

    def class_log_prob(self, x_t: torch.Tensor, timestep: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p_phi(c | x_t, t) per item, (B,), from this denoiser's classifier."""
        return class_log_prob(self.classifier, x_t, timestep, labels)

    def predict(self, x_t: torch.Tensor, timestep: torch.Tensor, guidance: Guidance) -> Prediction:
        """The networks at x_t (B, C, H, W), original timesteps (B,), all equal (one sampling step):
        eps (and v) with classifier-free guidance, and the classifier gradient g of the items
        guided at this step; the classifier's backward pass runs on those items only, and not at
        all when none is."""
        scale, cfg_scale = guidance.at(int(timestep[0]))
        with torch.no_grad():
            out = classifier_free_output(self.unet, self.null_label, x_t, timestep, guidance, cfg_scale)
        c = x_t.shape[1]
        eps, v = (out, None) if out.shape[1] == c else (out[:, :c], out[:, c:])
        grad, rows, log_prob = self._classify(x_t, timestep, guidance, (scale != 0).to(x_t.device))
        return Prediction(eps, v, grad, rows, scale, log_prob)

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
    def shift(prediction: Prediction, guidance: Guidance, grad_coef: torch.Tensor) -> GuidedEps:
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
        predict, then shift."""
        return self.shift(self.predict(x_t, timestep, guidance), guidance, grad_coef)
