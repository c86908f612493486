"""What guidance steers toward, per batch item: the target class, the strengths, when they act
(Schedule) and what happens to each x-hat_0 (Threshold). Every guidance method
(guidescope.guide.method) reads its strengths here.

Classifier guidance (Dhariwal & Nichol 2021) has strength w, classifier-free guidance (Ho &
Salimans 2022) w_cfg; both can be on at once. Every setting is per batch item, so one batch can
hold rows of different strengths, schedules, UNets (conditional or not) and x-hat_0 thresholds.
A schedule scales the strengths at each step: w(t) = w * f(t) (see Schedule); Guidance.at(t) is
the one place that computes a step's strengths.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import torch

from ..messages import choice, number, shown

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
        f = self.factor(timestep)
        return self.scale * f, torch.where(self.conditional, self.cfg_scale * f, 0.0)

    def factor(self, timestep: int) -> torch.Tensor:
        """(B,) f(t), each item's schedule factor at an original timestep t."""
        if timestep not in self._factors:
            self._factors[timestep] = torch.tensor([s.factor(timestep) for s in self.schedules])
        return self._factors[timestep]

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


