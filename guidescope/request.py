"""A sampling request and the one validator for it.

A Request is rows of guidance settings, images_per_row images each, sharing one sampler, step
count and seed. Image j of a row is image first_image + j of the seed's run (guidescope.noise), so
rows with the same first_image start from the same x_T and see the same noise at every step:
they differ only by their guidance. A row may instead take its own sampler and fewer steps (each
method at its own evaluated setting, or at another's time): it starts from the same x_T and runs
beside the others by progress (Request.step_of).

Every caller (the app's endpoints, the command line, the evaluation, the benchmarks) builds a
Request and hands it to guidescope.generation (guidescope.parsing translates text into its values).
`check` is the one check of what a request may hold, made once where it enters the library
(value objects, Schedule and Threshold, refuse only what would make them ill-formed); it returns a
CheckedRequest, which generation takes without checking again. It raises ValueError with the
message a user sees: the app turns it into gr.Error, the command line into a usage error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

from .guide import Guidance, Schedule, Threshold, TrainingFree, TrainingFreeGuidance
from .messages import choice, exact_integer, number
from .noise import ItemNoise
from .samplers import SAMPLERS

MAX_SCALE = 100.0       # classifier w: far past the point where samples fall apart
MAX_CFG_SCALE = 30.0    # classifier-free w_cfg
MAX_SEED = 2**31 - 1    # safe as a JavaScript number


@dataclass(frozen=True)
class SamplingDefaults:
    """The library's one table of sampling defaults: what a Request and the command line take for
    a setting they are not given. (The app's page starts from its checkpoint folder's
    defaults.json, what the evaluation chose.)"""
    sampler: str = "ddim"           # deterministic given x_T, at any step count (Song et al. 2021)
    steps: int = 50                 # the evaluation's DDIM reference, which other settings must match
    eta: float = 0.0                # DDIM noise: 0 deterministic given x_T, 1 DDPM-like
    seed: int = 0


SAMPLING_DEFAULTS = SamplingDefaults()


def make_schedule(shape: str, interval: tuple[int, int] | None, num_timesteps: int) -> Schedule:
    """The Schedule for a shape over an interval (None: the whole range; a ramp then runs over
    [0, T-1])."""
    if interval is None and shape != "constant":
        interval = (0, num_timesteps - 1)
    return Schedule(shape, interval)


# -- the request -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One guidance setting; every image of the row shares it."""
    class_label: int
    scale: float = 0.0                  # classifier guidance w
    cfg_scale: float | None = None      # None: the unconditional UNet eps(x_t, null); a number: the
                                        # conditional UNet with classifier-free w_cfg (0 = plain)
    schedule: Schedule = Schedule()     # w(t) = w * f(t), for w and w_cfg alike
    threshold: Threshold = Threshold()  # what happens to x-hat_0
    first_image: int = 0                # image j of the row is image first_image + j of the seed's run
    guide: TrainingFree | None = None   # None: the noise-aware classifier at strength w; a setting:
                                        # a clean classifier through x-hat_0 (w must then be 0)
    sampler: str | None = None          # None: the request's; else this row's own
    steps: int | None = None            # None: the request's; else this row's own, at most the request's


@dataclass(frozen=True)
class Request:
    rows: tuple[Row, ...]
    images_per_row: int = 8
    steps: int = SAMPLING_DEFAULTS.steps         # the run's: a row of its own steps takes at most these
    sampler: str = SAMPLING_DEFAULTS.sampler     # the rows' that have none of their own
    eta: float = SAMPLING_DEFAULTS.eta           # DDIM noise, 0 to 1, for the rows on DDIM
    seed: int = SAMPLING_DEFAULTS.seed
    max_guidance_norm: float | None = None

    @property
    def num_items(self) -> int:
        """Every image of the request, rows x images_per_row (generate samples them in batches)."""
        return len(self.rows) * self.images_per_row

    def row_of(self, item: int) -> Row:
        """Item k of the request (row-major: row k // n, image k % n)."""
        return self.rows[item // self.images_per_row]

    def sampler_of(self, row: Row) -> str:
        return self.sampler if row.sampler is None else row.sampler

    def steps_of(self, row: Row) -> int:
        return self.steps if row.steps is None else row.steps

    @property
    def uneven(self) -> bool:
        """Whether some row takes fewer steps than the request (step_of spreads them over its steps)."""
        return any(self.steps_of(row) != self.steps for row in self.rows)

    def step_of(self, row: Row, index: int) -> int:
        """The step (0-based) a row has reached at the request's step `index` (of K): a row of S <= K
        steps advances by progress, to its first step j whose share (j + 1) / S reaches the
        request's (index + 1) / K; so it takes its first step at index 0 and its last by K - 1
        (S = K: each step at its own index)."""
        steps = self.steps_of(row)
        return -(-(index + 1) * steps // self.steps) - 1

    def noise(self, items: Sequence[int]) -> ItemNoise:
        """The noise of the given items: item k draws from stream first_image + k % n of the seed."""
        n = self.images_per_row
        return ItemNoise(self.seed, [self.row_of(k).first_image + k % n for k in items])

    def guidance(self, items: Sequence[int], diagnostics: bool = True, clip_bound: float = 1.0) -> Guidance:
        """Per-item guidance for the given items, (len(items),) settings; clip_bound is the data
        space's range for the x-hat_0 thresholds (1: pixels in [-1, 1])."""
        rows = [self.row_of(k) for k in items]
        return Guidance.make(
            [r.class_label for r in rows], [r.scale for r in rows],
            [0.0 if r.cfg_scale is None else r.cfg_scale for r in rows], batch_size=len(rows),
            conditional=[r.cfg_scale is not None for r in rows], schedule=[r.schedule for r in rows],
            threshold=[r.threshold for r in rows], max_guidance_norm=self.max_guidance_norm, diagnostics=diagnostics,
            clip_bound=clip_bound)

    def labels(self) -> torch.Tensor:
        """(num_items,) the class each item is guided toward."""
        return torch.tensor([r.class_label for r in self.rows]).repeat_interleave(self.images_per_row)


class Conditioning(NamedTuple):
    """Which rows a UNet can run: unconditional ones eps(x_t, null), conditional ones eps(x_t, c),
    and classifier-free guidance, which needs both. This project's UNets can do all; ADM's
    class-conditional models have no null label, its unconditional ones no class input."""
    unconditional: bool = True
    conditional: bool = True


def _check_conditioning(row: Row, conditioning: Conditioning) -> None:
    if row.cfg_scale is None and not conditioning.unconditional:
        raise ValueError("this UNet has no unconditional mode (no null label: it was trained without label "
                         "dropout): use the class-conditional UNet, with w_cfg = 0")
    if row.cfg_scale is not None and not conditioning.conditional:
        raise ValueError("this UNet is unconditional (it has no class input): use the unconditional UNet")
    if row.cfg_scale and not conditioning.unconditional:
        raise ValueError(f"classifier-free guidance needs a UNet trained with a null label, which this one "
                         f"lacks: set w_cfg to 0; got w_cfg={row.cfg_scale:g}")


def check_scale(value) -> float:
    """Classifier guidance w: the one rule for it."""
    return number(value, "classifier guidance w", 0, MAX_SCALE)


def check_cfg_scale(value) -> float:
    """Classifier-free w_cfg: the one rule for it (the app also applies it to a w_cfg it does not send)."""
    return number(value, "classifier-free scale w_cfg", 0, MAX_CFG_SCALE)


def check_interval(interval: tuple[int, int], num_timesteps: int) -> None:
    """Where a guidance interval may lie: the one rule for it (a Schedule holds two integers, but
    only the model's T says which are timesteps)."""
    lo, hi = interval
    if not 0 <= lo <= hi <= num_timesteps - 1:
        raise ValueError(f"a guidance interval needs 0 <= t_lo <= t_hi <= {num_timesteps - 1}, got {lo}-{hi}")


def _row_checks(row: Row, num_classes: int, num_timesteps: int, conditioning: Conditioning):
    """The checks of one row, each with the fields it reads."""
    yield ("class_label",), lambda: exact_integer(row.class_label, "class", 0, num_classes - 1)
    yield ("scale",), lambda: check_scale(row.scale)
    if row.cfg_scale is not None:
        yield ("cfg_scale",), lambda: check_cfg_scale(row.cfg_scale)
    yield ("class_label", "cfg_scale"), lambda: _check_conditioning(row, conditioning)
    if row.schedule.interval is not None:
        yield ("schedule",), lambda: check_interval(row.schedule.interval, num_timesteps)
    yield ("first_image",), lambda: exact_integer(row.first_image, "first image", 0, 2**62)
    if row.guide is not None:
        yield ("guide", "scale"), lambda: _check_training_free(row)
    if row.sampler is not None:
        yield ("sampler",), lambda: choice(row.sampler, "sampler", SAMPLERS)


def _check_training_free(row: Row) -> None:
    if not isinstance(row.guide, TrainingFree):
        raise ValueError(f"a row's guide is a TrainingFree setting or None, got {type(row.guide).__name__}")
    if row.scale:
        raise ValueError(f"w is the noise-aware classifier's strength; a row guided by a clean classifier "
                         f"({row.guide.variant.title}) takes its strengths from rho and mu: set w to 0, got w={row.scale:g}")


def _check_sampler(request: Request) -> None:
    """A guidance method runs only with the samplers it names; a row takes at most the request's
    steps; eta needs a row that runs DDIM."""
    for k, row in enumerate(request.rows):
        where = "" if len(request.rows) == 1 else f" (row {k + 1} of {len(request.rows)})"
        if row.steps is not None:
            exact_integer(row.steps, f"a row's steps{where}", 1, request.steps)
        if row.guide is not None and request.sampler_of(row) not in TrainingFreeGuidance.samplers:
            raise ValueError(f"{row.guide.variant.title} re-noises one step at a time (its recurrence), so it runs "
                             f"with the {' or '.join(s.upper() for s in TrainingFreeGuidance.samplers)} sampler; "
                             f"got {request.sampler_of(row)}{where if row.sampler is not None else ''}")
    if request.eta != 0 and all(request.sampler_of(row) != "ddim" for row in request.rows):
        raise ValueError("eta applies to the DDIM sampler only")


class CheckedRequest(NamedTuple):
    """A request that passed check against a model's classes, T and conditioning. Only check makes
    one; guidescope.generation takes it without a second check where the model is the same."""
    request: Request
    num_classes: int
    num_timesteps: int
    conditioning: Conditioning


def check(request: Request, num_classes: int, num_timesteps: int,
          conditioning: Conditioning = Conditioning()) -> CheckedRequest:
    """Raise ValueError, naming the valid range or choices, for anything the library cannot run:
    the one check of a request, made where it enters the library (guidescope.generation, or the app
    before its own limits). Returns the request with what it was checked against."""
    if not request.rows:
        raise ValueError("a request needs at least one row of guidance settings")
    exact_integer(request.images_per_row, "number of images", 1, 2**31)
    exact_integer(request.steps, "steps", 1, num_timesteps)
    choice(request.sampler, "sampler", SAMPLERS)
    number(request.eta, "eta", 0, 1)
    exact_integer(request.seed, "seed", 0, MAX_SEED)
    if request.max_guidance_norm is not None:
        number(request.max_guidance_norm, "guidance norm clip", 1e-6, math.inf)
    rows = request.rows
    for k, row in enumerate(rows):
        for fields, run_check in _row_checks(row, num_classes, num_timesteps, conditioning):
            try:
                run_check()
            except ValueError as err:  # a row is named only where its value is its own
                if all(getattr(r, f) == getattr(row, f) for r in rows for f in fields):
                    raise
                raise ValueError(f"{err} (row {k + 1} of {len(rows)})") from None
    _check_sampler(request)
    return CheckedRequest(request, num_classes, num_timesteps, conditioning)
