"""A sampling request and the one validator for it.

A Request is rows of guidance settings, images_per_row images each, sharing one sampler, step
count and seed. Image j of a row is image first_image + j of the seed's run (guidance.noise), so
rows with the same first_image start from the same x_T and see the same noise at every step:
they differ only by their guidance.

Every caller (the app's endpoints, the command line, the evaluation, the benchmarks) builds a
Request and hands it to guidance.generation. The parsers below only translate text into values;
`check` is the one check of what a request may hold, made once where it enters the library
(value objects, Schedule and Threshold, refuse only what would make them ill-formed). Both raise
ValueError with the message a user sees: the app turns it into gr.Error, the command line into a
usage error. Class names match without regard to case, everywhere.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

from .guide import Guidance, Schedule, Threshold
from .messages import choice, exact_integer, finite_number, number, shown
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
_CHECKED = "_checked_against"  # set by check on a request that passed: (num_classes, num_timesteps, conditioning)


# -- raw values (JSON from the API, text from the command line) ----------------------------------

def class_index(value, class_names: Sequence[str]) -> int:
    """A class given by name (any case) or by index (an int, or a string of digits). A reference
    to no class cannot be translated, so it is refused here, quoted as written."""
    folded = [name.casefold() for name in class_names]
    if isinstance(value, str) and value.strip().casefold() in folded:
        return folded.index(value.strip().casefold())
    index = int(value.strip()) if isinstance(value, str) and value.strip().isdigit() else value
    if finite_number(index) and index == int(index) and 0 <= index < len(class_names):
        return int(index)
    raise ValueError(f"class must be one of {', '.join(class_names)} or an index from 0 to "
                     f"{len(class_names) - 1}; got {shown(value)}")


def words(text, name: str, max_chars: int, example: str) -> list[str]:
    """Comma-, semicolon- or space-separated words of a text field (at least one)."""
    if not isinstance(text, str) or len(text) > max_chars:
        raise ValueError(f"{name} must be text of at most {max_chars} characters such as \"{example}\"; "
                         f"got {shown(text)}")
    found = [w for w in re.split(r"[,;\s]+", text.strip()) if w]
    if not found:
        raise ValueError(f"{name} is empty; write it like \"{example}\"")
    return found


def parse_numbers(text, name: str, max_chars: int = 200) -> tuple[float, ...]:
    """Numbers such as "0, 1, 2, 4, 8", none repeated; their range is the request's (check)."""
    values = []
    for word in words(text, name, max_chars, "0, 1, 2, 4, 8"):
        try:
            values.append(float(word))
        except ValueError:
            raise ValueError(f"{name}: {shown(word)} is not a number; write them like \"0, 1, 2, 4, 8\"") from None
    _no_repeats(values, name, lambda v: f"{v:g}")
    return tuple(values)


def parse_interval(text) -> tuple[int, int] | None:
    """'full' (None: every timestep) or 'LO-HI', two original timesteps (check says where they may lie)."""
    if isinstance(text, str) and text.strip().casefold() in ("full", "all"):
        return None
    match = re.fullmatch(r"\s*(\d{1,9})\s*-\s*(\d{1,9})\s*", text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"a guidance interval is 'full' or two timesteps like '200-800'; got {shown(text)}")
    return int(match[1]), int(match[2])


def parse_intervals(text, max_chars: int = 200) -> tuple[tuple[int, int] | None, ...]:
    """Intervals such as "full, 0-500, 200-800, 500-999", none repeated."""
    values = [parse_interval(w) for w in words(text, "intervals", max_chars, "full, 0-500, 500-999")]
    _no_repeats(values, "intervals", interval_text)
    return tuple(values)


def parse_list(text, name: str, example: str, every: Sequence, parse, max_chars: int = 200) -> list:
    """Comma- or semicolon-separated items (a class name may hold a space), each through parse,
    or "all" for every one of `every`; none repeated."""
    if not isinstance(text, str) or len(text) > max_chars:
        raise ValueError(f"{name} must be text of at most {max_chars} characters such as \"{example}\"; "
                         f"got {shown(text)}")
    items = [item.strip() for item in re.split(r"[,;]", text) if item.strip()]
    if not items:
        raise ValueError(f"{name} is empty; write it like \"{example}\"")
    if len(items) == 1 and items[0].casefold() == "all":
        return list(every)
    values = [parse(item) for item in items]
    _no_repeats(values, name, shown, items)
    return values


def parse_classes(text, class_names: Sequence[str], max_chars: int = 200) -> list[int]:
    """Classes such as "Bag, Ankle boot, 3" (names in any case, or indices), or "all"."""
    return parse_list(text, "classes", ", ".join(class_names[:2]), range(len(class_names)),
                      lambda item: class_index(item, class_names), max_chars)


def interval_text(interval: tuple[int, int] | None) -> str:
    return "full" if interval is None else f"{interval[0]}-{interval[1]}"


def make_schedule(shape: str, interval: tuple[int, int] | None, num_timesteps: int) -> Schedule:
    """The Schedule for a shape over an interval (None: the whole range; a ramp then runs over
    [0, T-1])."""
    if interval is None and shape != "constant":
        interval = (0, num_timesteps - 1)
    return Schedule(shape, interval)


def _no_repeats(values: list, name: str, fmt, written: list | None = None) -> None:
    """Refuse a value given twice, quoting the repeat as written (default: the value) through fmt."""
    written = values if written is None else written
    repeated = [w for i, (v, w) in enumerate(zip(values, written)) if v in values[:i]]
    if repeated:
        raise ValueError(f"{name} must differ from each other; {fmt(repeated[0])} appears twice")


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


@dataclass(frozen=True)
class Request:
    rows: tuple[Row, ...]
    images_per_row: int = 8
    steps: int = SAMPLING_DEFAULTS.steps
    sampler: str = SAMPLING_DEFAULTS.sampler
    eta: float = SAMPLING_DEFAULTS.eta           # DDIM noise, 0 to 1
    seed: int = SAMPLING_DEFAULTS.seed
    max_guidance_norm: float | None = None

    @property
    def num_items(self) -> int:
        """Every image of the request, rows x images_per_row (generate samples them in batches)."""
        return len(self.rows) * self.images_per_row

    def row_of(self, item: int) -> Row:
        """Item k of the request (row-major: row k // n, image k % n)."""
        return self.rows[item // self.images_per_row]

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


def check(request: Request, num_classes: int, num_timesteps: int, conditioning: Conditioning = Conditioning()) -> None:
    """Raise ValueError, naming the valid range or choices, for anything the library cannot run:
    the one check of a request, made where it enters the library (guidance.generation, or the app
    before its own limits). A request that passes is marked with what it was checked against, so
    that is_checked spares it a second check: a Request is immutable, and dataclasses.replace makes
    a new one, unmarked."""
    if not request.rows:
        raise ValueError("a request needs at least one row of guidance settings")
    exact_integer(request.images_per_row, "number of images", 1, 2**31)
    exact_integer(request.steps, "steps", 1, num_timesteps)
    choice(request.sampler, "sampler", SAMPLERS)
    number(request.eta, "eta", 0, 1)
    if request.sampler != "ddim" and request.eta != 0:
        raise ValueError("eta applies to the DDIM sampler only")
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
    object.__setattr__(request, _CHECKED, (num_classes, num_timesteps, conditioning))


def is_checked(request: Request, num_classes: int, num_timesteps: int, conditioning: Conditioning) -> bool:
    """Whether check passed this very request against these classes, T and conditioning."""
    return getattr(request, _CHECKED, None) == (num_classes, num_timesteps, conditioning)
