"""The endpoints' raw arguments turned into a library Request, and how the page names its rows.

The endpoints take raw JSON values (their events run with preprocess=False), gathered by name into
a settings.Settings. This module only translates them: text into numbers, intervals and classes, a slider's 25.0 into 25, the UNet
choice into a row's w_cfg. What the values may be is the library's rule, checked once by
guidescope.request.check as the request is built; then come the app's own limits (settings.Limits),
which need a checked request. Both raise ValueError with the message the user sees; the handlers
turn it into gr.Error.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Callable, NamedTuple

from guidescope.guide import SCHEDULE_SHAPES, THRESHOLDS, Threshold, TrainingFree
from guidescope.guide.training_free import LIBRARY_SETTING, METHODS, STRENGTH_SCHEDULES
from guidescope.messages import choice, finite_number, integer, shown
from guidescope.parsing import (class_index, interval_text, parse_classes, parse_interval, parse_intervals, parse_list,
                                parse_numbers)
from guidescope.request import (CheckedRequest, Conditioning, Request, Row, check, check_cfg_scale, check_interval,
                                check_scale, make_schedule)
from guidescope.samplers import sampler_title

from .settings import (COMPARE_CHOICES, GUIDE_CHOICES, LIMITS, PAGE_METHOD_PARAMETERS, ROW_VALUES, UNET_CHOICES,
                       AppDefaults, Limits, Settings)

UNETS = tuple(value for _, value in UNET_CHOICES)
GUIDES = tuple(value for _, value in GUIDE_CHOICES)
# The values of the page's training-free numbers (PAGE_METHOD_PARAMETERS) at which a row's name leaves them out.
UNSHOWN_AT = {"recurrences": 1, "iterations": 1, "gamma": 0, "stop_at": 1}
COMPARE_MODES = tuple(value for _, value in COMPARE_CHOICES)


@dataclass(frozen=True)
class Run:
    """A checked request and what the page shows about its rows."""
    checked: CheckedRequest         # what guidescope.generation takes without checking again
    labels: tuple[str, ...]         # per row: how the grids, the chart legends and the table name it
    shades: tuple[str, ...]         # per row: "w" or "w_cfg" (coloured by that strength), or "" (a colour each)
    class_names: tuple[str, ...]    # of the checkpoints

    @property
    def request(self) -> Request:
        return self.checked.request

    @property
    def class_name(self) -> str | None:
        """The target class of every row; None when the rows target different classes."""
        labels = {row.class_label for row in self.request.rows}
        return self.class_names[labels.pop()] if len(labels) == 1 else None

    def parameters(self) -> str:
        """The request as one line of JSON, each row with its label and class name, and its own
        sampler and steps where it has them (embedded in the PNG of the samples)."""
        record = asdict(self.checked.request)
        for row, label in zip(record["rows"], self.labels):
            row["label"], row["class_name"] = label, self.class_names[row["class_label"]]
            for own in ("sampler", "steps"):  # the request's, unless the row has its own
                if row[own] is None:
                    del row[own]
        return json.dumps(record, ensure_ascii=False)


class LeftColumn(NamedTuple):
    """The settings every row starts from, translated (not yet checked: see _run)."""
    row: Row
    scale: float                      # the page's w (a training-free row carries 0)
    page_setting: TrainingFree        # the page's training-free parameters, checked once, as TFG's setting
    interval: tuple[int, int] | None  # as given: None is every timestep
    class_names: tuple[str, ...]
    num_timesteps: int
    conditioning: Conditioning
    max_chars: int
    evaluated: AppDefaults            # the model's evaluated settings (what the "evaluated" rows run)


def _real(value):
    """A number field's value as a float (JSON may send 2 for 2.0); anything else as it came, for
    the library's check to name."""
    return float(value) if finite_number(value) else value


def _whole(value):
    """A slider's integral float as an int (25.0 -> 25: the seed's noise streams are named by its
    digits); anything else as it came, for the library's check to name."""
    return int(value) if finite_number(value) and value == int(value) else value


def _left_column(settings: Settings, class_names: tuple[str, ...], num_timesteps: int, conditioning: Conditioning,
                 limits: Limits, evaluated: AppDefaults) -> LeftColumn:
    s = settings
    label = class_index(s.class_name, class_names)
    unet = choice(s.unet, "unet", UNETS)
    # With the unconditional UNet the request carries no w_cfg, so the library never sees this one.
    if unet == "unconditional" and check_cfg_scale(s.cfg_scale) != 0:
        raise ValueError("classifier-free scale w_cfg needs the class-conditional UNet: set unet to "
                         f"'conditional', or w_cfg to 0; got w_cfg={s.cfg_scale:g}")
    if isinstance(s.interval, str) and len(s.interval) > limits.max_text_chars:
        raise ValueError(f"interval must be text of at most {limits.max_text_chars} characters such as "
                         f"'full' or '200-800'; got {shown(s.interval)}")
    interval = parse_interval(s.interval)
    page_setting = training_free_of_page(s)
    method_setting = page_setting.as_method(s.method)  # the method is checked, whichever the guide
    guide = method_setting if choice(s.guide, "guide", GUIDES) == "training-free" else None
    if guide:
        check_scale(s.scale)  # the page shows w, though the row does not carry it
    row = Row(label, 0.0 if guide else _real(s.scale), None if unet == "unconditional" else _real(s.cfg_scale),
              make_schedule(s.schedule, interval, num_timesteps), Threshold(s.threshold, _real(s.threshold_percentile)),
              guide=guide)
    return LeftColumn(row, _real(s.scale), page_setting, interval, class_names, num_timesteps, conditioning,
                      limits.max_text_chars, evaluated)


def training_free_of_page(s: Settings) -> TrainingFree:
    """The page's training-free numbers (PAGE_METHOD_PARAMETERS) as TFG's setting, which takes them
    all, with the library's values for the rest (guidescope.guide.training_free.LIBRARY_SETTING):
    each number the page shows is checked, once, whichever guide and method the rows take (a row
    takes the method's part of it, TrainingFree.as_method). ValueError names a bad value."""
    page = {name: (_whole if isinstance(getattr(LIBRARY_SETTING, name), int) else _real)(getattr(s, name))
            for name in PAGE_METHOD_PARAMETERS}  # a count is whole, a strength or probability real
    page["rho_schedule"] = page["mu_schedule"] = choice(s.strength_schedule, "strength schedule", STRENGTH_SCHEDULES)
    return TrainingFree.make("tfg", **{name: page.get(name, getattr(LIBRARY_SETTING, name))
                                       for name in METHODS["tfg"].free})


Describe = Callable[[Row], tuple[str, str]]  # a checked row -> (label, shade)


def _run(rows: list[Row], describe: Describe | list[tuple[str, str]], settings: Settings, left: LeftColumn,
         limits: Limits) -> Run:
    """The checked request of the rows, named by describe (per row, or a function of the checked
    row). Raises ValueError for anything the library or the app's limits refuse."""
    s = settings
    n = integer(s.num_images, "number of images", 1, limits.max_images_per_row)  # the app's own cap
    steps, sampler = _whole(s.steps), s.sampler
    if all(row.steps is not None for row in rows):  # each row at its own: the run is as long as the longest
        longest = max(rows, key=lambda row: row.steps)
        steps, sampler = longest.steps, longest.sampler
    request = Request(tuple(rows), images_per_row=n, steps=steps, sampler=sampler, eta=s.eta, seed=_whole(s.seed))
    checked = check(request, len(left.class_names), left.num_timesteps, left.conditioning)
    _within_limits(request, limits)
    names = [describe(row) for row in rows] if callable(describe) else describe
    return Run(checked, tuple(label for label, _ in names), tuple(shade for _, shade in names), left.class_names)


def _within_limits(request: Request, limits: Limits) -> None:
    """The app's limits on a checked request: rows, images, images x steps."""
    count, n = len(request.rows), request.images_per_row
    if count > limits.max_rows:
        raise ValueError(f"at most {limits.max_rows} rows at once; got {count}")
    if count * n > limits.max_images:
        raise ValueError(f"at most {limits.max_images} images per request; {count} rows x {n} images is "
                         f"{count * n}: lower the number of images per row to {limits.max_images // count}")
    if count * n * request.steps > limits.max_image_steps:
        raise ValueError(f"images x steps must be at most {limits.max_image_steps}; {count * n} images x "
                         f"{request.steps} steps is {count * n * request.steps}: use fewer images or steps")


def _unet_label(row: Row) -> tuple[str, str]:
    unet = " (unconditional)" if row.cfg_scale is None else f", w_cfg={row.cfg_scale:g}"
    if row.guide is not None:
        return method_label(row.guide) + unet, ""
    return f"w={row.scale:g}" + unet, "w"


def method_label(setting: TrainingFree) -> str:
    """'TFG ρ=2 μ=2 N_recur=2': a training-free row's name on the page: its page numbers, the
    repeats only where they are not 1, the smoothing where it is not 0, the stop where it is not 1."""
    symbols = {"rho": "ρ", "mu": "μ", "recurrences": "N_recur", "iterations": "N_iter", "gamma": "γ̄",
               "stop_at": "stop at p"}
    shown = [name for name in PAGE_METHOD_PARAMETERS
             if name in setting.variant.free and getattr(setting, name) != UNSHOWN_AT.get(name)]
    return " ".join([setting.variant.title, *(f"{symbols[name]}={getattr(setting, name):g}" for name in shown)])


def generate_run(settings: Settings, *, class_names: tuple[str, ...], num_timesteps: int,
                 conditioning: Conditioning = Conditioning(), limits: Limits = LIMITS,
                 evaluated: AppDefaults = AppDefaults()) -> Run:
    """One row: classifier guidance w on top of the chosen UNet (and its w_cfg)."""
    left = _left_column(settings, class_names, num_timesteps, conditioning, limits, evaluated)
    return _run([left.row], _unet_label, settings, left, limits)


# -- what the Compare rows vary ----------------------------------------------------------------------
# Each mode gives (row, label, shade) per row, from values it has translated. A left-column value
# that the rows replace is checked all the same (the page shows it), by the library's rule for it:
# no row carries it to guidescope.request.check.

def _replaced(left: LeftColumn, scale: bool = False, cfg_scale: bool = False, interval: bool = False) -> None:
    if scale:
        check_scale(left.row.scale)
    if cfg_scale and left.row.cfg_scale is not None:  # an unconditional row's w_cfg is checked already
        check_cfg_scale(left.row.cfg_scale)
    if interval and left.interval is not None:
        check_interval(left.interval, left.num_timesteps)


def _vary_w(text, left: LeftColumn) -> list[tuple[Row, str, str]]:
    _replaced(left, scale=True)
    return [(replace(left.row, scale=w, guide=None), f"w={w:g}", "w")  # w: the noise-aware classifier's
            for w in parse_numbers(text, "classifier guidance strengths", left.max_chars)]


def _vary_cfg(text, left: LeftColumn) -> list[tuple[Row, str, str]]:
    _replaced(left, cfg_scale=True)
    return [(replace(left.row, cfg_scale=s), f"w_cfg={s:g}", "w_cfg")
            for s in parse_numbers(text, "classifier-free strengths", left.max_chars)]


def _classifier_vs_free(text, left: LeftColumn) -> list[tuple[Row, str, str]]:
    """Per strength s, each method alone: classifier guidance w = s on the unconditional UNet
    (one UNet pass), then classifier-free w_cfg = s with no classifier."""
    _replaced(left, scale=True, cfg_scale=True)
    rows = []
    for s in parse_numbers(text, "strengths", left.max_chars):
        rows += [(replace(left.row, scale=s, cfg_scale=None, guide=None), f"classifier w={s:g}", "w"),
                 (replace(left.row, scale=0.0, cfg_scale=s, guide=None), f"free w_cfg={s:g}", "w_cfg")]
    return rows


def _vary_interval(text, left: LeftColumn) -> list[tuple[Row, str, str]]:
    _replaced(left, interval=True)
    shape = left.row.schedule.shape
    return [(replace(left.row, schedule=make_schedule(shape, interval, left.num_timesteps)), interval_text(interval), "")
            for interval in parse_intervals(text, left.max_chars)]


def _vary_schedule(text, left: LeftColumn) -> list[tuple[Row, str, str]]:
    shapes = parse_list(text, "schedules", ROW_VALUES["schedule"].example, SCHEDULE_SHAPES, str, left.max_chars)
    return [(replace(left.row, schedule=make_schedule(shape, left.interval, left.num_timesteps)), shape, "")
            for shape in shapes]  # Schedule refuses an unknown shape


def _vary_threshold(text, left: LeftColumn) -> list[tuple[Row, str, str]]:
    modes = parse_list(text, "thresholds", ROW_VALUES["threshold"].example, THRESHOLDS, str, left.max_chars)
    return [(replace(left.row, threshold=Threshold(mode, left.row.threshold.percentile)), mode, "")
            for mode in modes]  # Threshold refuses an unknown mode


def _vary_class(text, left: LeftColumn) -> list[tuple[Row, str, str]]:
    labels = parse_classes(text, left.class_names, left.max_chars)
    return [(replace(left.row, class_label=k), left.class_names[k], "") for k in labels]


def _vary_guide(text, left: LeftColumn) -> list[tuple[Row, str, str]]:
    """One row per guide from the same noise: the noise-aware classifier at the page's w, or a
    clean classifier's method at the page's parameters it takes."""
    check_scale(left.scale)
    names = parse_list(text, "guides", ROW_VALUES["methods"].example, ("noise-aware", *METHODS),
                       lambda item: choice(item.casefold(), "guide", ("noise-aware", *METHODS)), left.max_chars)
    rows = []
    for name in names:
        if name == "noise-aware":
            rows.append((replace(left.row, scale=left.scale, guide=None), f"noise-aware w={left.scale:g}", ""))
        else:
            guide = left.page_setting.as_method(name)
            rows.append((replace(left.row, scale=0.0, guide=guide), method_label(guide), ""))
    return rows


def _at_evaluated(text, left: LeftColumn) -> list[tuple[Row, str, str]]:
    """One row per guide at the model's evaluated setting, each with its own sampler and steps:
    the noise-aware default, the training-free one, or the latter at the steps the noise-aware
    default's time buys by the step costs (TrainingFree.steps_costing: an estimate, the table gives
    the seconds measured). Only the class, images and seed are the page's."""
    d, label, T = left.evaluated, left.row.class_label, left.num_timesteps
    noise_aware = Row(label, d.scale, None if d.unet == "unconditional" else d.cfg_scale,
                      make_schedule(d.schedule, parse_interval(d.interval), T),
                      Threshold(d.threshold, d.threshold_percentile), sampler=d.sampler, steps=d.steps)
    guide = training_free_of_page(d.settings(left.class_names)).as_method(d.method)
    free = Row(label, schedule=make_schedule(d.training_free_schedule, parse_interval(d.training_free_interval), T),
               threshold=Threshold(d.training_free_threshold, d.threshold_percentile), guide=guide,
               sampler=d.training_free_sampler, steps=d.training_free_steps)
    plain_steps = d.steps * (2 if noise_aware.cfg_scale else 1)  # classifier-free guidance runs the UNet twice
    equal = replace(free, steps=guide.steps_costing(plain_steps))
    rows = {"noise-aware": (noise_aware, f"noise-aware w={d.scale:g}"), "training-free": (free, method_label(guide)),
            "equal-time": (equal, f"≈ equal time: {method_label(guide)}")}
    names = parse_list(text, "guides", ROW_VALUES["evaluated"].example, tuple(rows),
                       lambda item: choice(item.casefold(), "guide", tuple(rows)), left.max_chars)
    # The sampler and steps first: what tells the rows apart stays in view where a legend cuts a name.
    return [(row, f"{sampler_title(row.sampler)} {row.steps}, {name}", "")
            for row, name in (rows[name] for name in names)]


VARY = {"classifier": _vary_w, "classifier-free": _vary_cfg, "classifier-vs-free": _classifier_vs_free,
        "interval": _vary_interval, "schedule": _vary_schedule, "threshold": _vary_threshold, "class": _vary_class,
        "methods": _vary_guide, "evaluated": _at_evaluated}


def compare_run(settings: Settings, strengths, mode, *, class_names: tuple[str, ...], num_timesteps: int,
                conditioning: Conditioning = Conditioning(), limits: Limits = LIMITS,
                evaluated: AppDefaults = AppDefaults()) -> Run:
    """Rows that differ in what `mode` names; strengths is the text of their values, which
    settings.ROW_VALUES describes per mode. Each row is otherwise set as the settings column says
    (the "evaluated" rows as evaluated says); settings a mode does not use are still checked."""
    left = _left_column(settings, class_names, num_timesteps, conditioning, limits, evaluated)
    rows = VARY[choice(mode, "compare", COMPARE_MODES)](strengths, left)
    return _run([row for row, _, _ in rows], [(label, shade) for _, label, shade in rows], settings, left, limits)


def check_defaults(defaults: AppDefaults, class_names: tuple[str, ...], num_timesteps: int,
                   limits: Limits = LIMITS) -> None:
    """Raise ValueError when the page's first Generate or Compare would be refused."""
    settings = defaults.settings(class_names)
    generate_run(settings, class_names=class_names, num_timesteps=num_timesteps, limits=limits)
    for mode, rows in ((defaults.compare, defaults.strengths), ("evaluated", ROW_VALUES["evaluated"].example)):
        compare_run(settings, rows, mode, class_names=class_names, num_timesteps=num_timesteps, limits=limits,
                    evaluated=defaults)
