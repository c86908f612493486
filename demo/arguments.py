"""The endpoints' raw arguments turned into a library Request, and how the page names its rows.

The endpoints take raw JSON values (their events run with preprocess=False), so a call through
the API meets exactly these parsers: the library's (guidance.request), and the app's own limits
(settings.Limits). Both raise ValueError with the message the user sees; the handlers turn it
into gr.Error.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

from guidance.guide import SCHEDULE_SHAPES, THRESHOLDS, Threshold
from guidance.messages import choice, integer, number, shown
from guidance.request import (MAX_CFG_SCALE, MAX_SCALE, MAX_SEED, Request, Row, check, class_index, interval_text,
                              make_schedule, parse_classes, parse_interval, parse_intervals, parse_list, parse_numbers)

from .settings import COMPARE_CHOICES, LIMITS, ROW_VALUES, UNET_CHOICES, AppDefaults, Limits

UNETS = tuple(value for _, value in UNET_CHOICES)
COMPARE_MODES = tuple(value for _, value in COMPARE_CHOICES)


@dataclass(frozen=True)
class Run:
    """A checked request and what the page shows about its rows."""
    request: Request
    labels: tuple[str, ...]         # per row: how the grids, the chart legends and the table name it
    shades: tuple[str, ...]         # per row: "w" or "w_cfg" (coloured by that strength), or "" (a colour each)
    class_names: tuple[str, ...]    # of the checkpoints

    @property
    def class_name(self) -> str | None:
        """The target class of every row; None when the rows target different classes."""
        labels = {row.class_label for row in self.request.rows}
        return self.class_names[labels.pop()] if len(labels) == 1 else None

    def parameters(self) -> str:
        """The request as one line of JSON, each row with its label and class name (embedded in
        the PNG of the samples)."""
        record = asdict(self.request)
        for row, label in zip(record["rows"], self.labels):
            row["label"], row["class_name"] = label, self.class_names[row["class_label"]]
        return json.dumps(record, ensure_ascii=False)


class LeftColumn(NamedTuple):
    """The settings every row starts from, parsed."""
    row: Row
    interval: tuple[int, int] | None  # as given: None is every timestep
    class_names: tuple[str, ...]
    num_timesteps: int
    max_chars: int


def _left_column(class_name, scale, unet, cfg_scale, interval, schedule, threshold, threshold_percentile,
                 class_names: tuple[str, ...], num_timesteps: int, limits: Limits) -> LeftColumn:
    label = class_index(class_name, class_names)
    scale = number(scale, "classifier guidance w", 0, MAX_SCALE)
    unet = choice(unet, "unet", UNETS)
    cfg_scale = number(cfg_scale, "classifier-free scale w_cfg", 0, MAX_CFG_SCALE)
    if unet == "unconditional" and cfg_scale != 0:
        raise ValueError("classifier-free scale w_cfg needs the class-conditional UNet: set unet to "
                         f"'conditional', or w_cfg to 0; got w_cfg={cfg_scale:g}")
    if isinstance(interval, str) and len(interval) > limits.max_text_chars:
        raise ValueError(f"interval must be text of at most {limits.max_text_chars} characters such as "
                         f"'full' or '200-800'; got {shown(interval)}")
    interval = parse_interval(interval, num_timesteps)
    shape = choice(schedule, "schedule", SCHEDULE_SHAPES)
    mode = choice(threshold, "threshold", THRESHOLDS)
    percentile = number(threshold_percentile, "threshold percentile", 0.5, 1)
    row = Row(label, scale, None if unet == "unconditional" else cfg_scale,
              make_schedule(shape, interval, num_timesteps), Threshold(mode, percentile))
    return LeftColumn(row, interval, class_names, num_timesteps, limits.max_text_chars)


def _run(rows: list[tuple[Row, str, str]], steps, sampler, eta, num_images, seed, left: LeftColumn,
         limits: Limits) -> Run:
    """rows: (row, label, shade). Raises ValueError for anything the library or the app's limits refuse."""
    n = integer(num_images, "number of images", 1, limits.max_images_per_row)
    # Integers as ints: a slider sends 25.0, and the seed's noise streams are named by its digits.
    request = Request(tuple(row for row, _, _ in rows), images_per_row=n,
                      steps=integer(steps, "steps", 1, left.num_timesteps), sampler=sampler, eta=eta,
                      seed=integer(seed, "seed", 0, MAX_SEED))
    check(request, len(left.class_names), left.num_timesteps)
    count = len(request.rows)
    if count > limits.max_rows:
        raise ValueError(f"at most {limits.max_rows} rows at once; got {count}")
    if count * n > limits.max_images:
        raise ValueError(f"at most {limits.max_images} images per request; {count} rows x {n} images is "
                         f"{count * n}: lower the number of images per row to {limits.max_images // count}")
    if count * n * request.steps > limits.max_image_steps:
        raise ValueError(f"images x steps must be at most {limits.max_image_steps}; {count * n} images x "
                         f"{request.steps} steps is {count * n * request.steps}: use fewer images or steps")
    return Run(request, tuple(label for _, label, _ in rows), tuple(shade for _, _, shade in rows), left.class_names)


def generate_run(class_name, scale, unet, cfg_scale, steps, sampler, eta, num_images, seed, interval, schedule,
                 threshold, threshold_percentile, *, class_names: tuple[str, ...], num_timesteps: int,
                 limits: Limits = LIMITS) -> Run:
    """One row: classifier guidance w on top of the chosen UNet (and its w_cfg)."""
    left = _left_column(class_name, scale, unet, cfg_scale, interval, schedule, threshold,
                        threshold_percentile, class_names, num_timesteps, limits)
    row = left.row
    label = f"w={row.scale:g}" + (" (unconditional)" if row.cfg_scale is None else f", w_cfg={row.cfg_scale:g}")
    return _run([(row, label, "w")], steps, sampler, eta, num_images, seed, left, limits)


# -- what the Compare rows vary ----------------------------------------------------------------------

def _vary_w(text, left: LeftColumn) -> list[tuple[Row, str, str]]:
    return [(replace(left.row, scale=w), f"w={w:g}", "w")
            for w in parse_numbers(text, "classifier guidance strengths", 0, MAX_SCALE, left.max_chars)]


def _vary_cfg(text, left: LeftColumn) -> list[tuple[Row, str, str]]:
    return [(replace(left.row, cfg_scale=s), f"w_cfg={s:g}", "w_cfg")
            for s in parse_numbers(text, "classifier-free strengths", 0, MAX_CFG_SCALE, left.max_chars)]


def _classifier_vs_free(text, left: LeftColumn) -> list[tuple[Row, str, str]]:
    """Per strength s, each method alone: classifier guidance w = s on the unconditional UNet
    (one UNet pass), then classifier-free w_cfg = s with no classifier."""
    rows = []
    for s in parse_numbers(text, "strengths", 0, min(MAX_SCALE, MAX_CFG_SCALE), left.max_chars):
        rows += [(replace(left.row, scale=s, cfg_scale=None), f"classifier w={s:g}", "w"),
                 (replace(left.row, scale=0.0, cfg_scale=s), f"free w_cfg={s:g}", "w_cfg")]
    return rows


def _vary_interval(text, left: LeftColumn) -> list[tuple[Row, str, str]]:
    shape = left.row.schedule.shape
    return [(replace(left.row, schedule=make_schedule(shape, interval, left.num_timesteps)), interval_text(interval), "")
            for interval in parse_intervals(text, left.num_timesteps, left.max_chars)]


def _vary_schedule(text, left: LeftColumn) -> list[tuple[Row, str, str]]:
    shapes = parse_list(text, "schedules", ROW_VALUES["schedule"].example, SCHEDULE_SHAPES,
                     lambda item: choice(item, "schedule", SCHEDULE_SHAPES), left.max_chars)
    return [(replace(left.row, schedule=make_schedule(shape, left.interval, left.num_timesteps)), shape, "")
            for shape in shapes]


def _vary_threshold(text, left: LeftColumn) -> list[tuple[Row, str, str]]:
    modes = parse_list(text, "thresholds", ROW_VALUES["threshold"].example, THRESHOLDS,
                    lambda item: choice(item, "threshold", THRESHOLDS), left.max_chars)
    return [(replace(left.row, threshold=Threshold(mode, left.row.threshold.percentile)), mode, "") for mode in modes]


def _vary_class(text, left: LeftColumn) -> list[tuple[Row, str, str]]:
    labels = parse_classes(text, left.class_names, left.max_chars)
    return [(replace(left.row, class_label=k), left.class_names[k], "") for k in labels]


VARY = {"classifier": _vary_w, "classifier-free": _vary_cfg, "classifier-vs-free": _classifier_vs_free,
        "interval": _vary_interval, "schedule": _vary_schedule, "threshold": _vary_threshold, "class": _vary_class}


def compare_run(class_name, strengths, mode, scale, unet, cfg_scale, steps, sampler, eta, num_images, seed,
                interval, schedule, threshold, threshold_percentile, *, class_names: tuple[str, ...],
                num_timesteps: int, limits: Limits = LIMITS) -> Run:
    """Rows that differ in what `mode` names (settings.ROW_VALUES says what `strengths` then
    holds), each otherwise set as the left column says. Arguments a mode does not use are
    still checked."""
    left = _left_column(class_name, scale, unet, cfg_scale, interval, schedule, threshold,
                        threshold_percentile, class_names, num_timesteps, limits)
    rows = VARY[choice(mode, "compare", COMPARE_MODES)](strengths, left)
    return _run(rows, steps, sampler, eta, num_images, seed, left, limits)


def check_defaults(defaults: AppDefaults, class_names: tuple[str, ...], num_timesteps: int,
                   limits: Limits = LIMITS) -> None:
    """Raise ValueError when the page's first Generate or Compare would be refused."""
    values = defaults.generate_values(class_names)
    generate_run(*values, class_names=class_names, num_timesteps=num_timesteps, limits=limits)
    compare_run(values[0], defaults.strengths, defaults.compare, *values[1:], class_names=class_names,
                num_timesteps=num_timesteps, limits=limits)
