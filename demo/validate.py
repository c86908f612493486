"""Server-side checks of every endpoint argument. The endpoints take raw JSON values (events run
with preprocess=False), so a call through the API meets exactly these checks; each failure raises
gr.Error naming the valid range.
"""
from __future__ import annotations

import math
import re

import gradio as gr

from .runs import Row, RunSettings
from .settings import COMPARE_CHOICES, LIMITS, SAMPLER_CHOICES, UNET_CHOICES, Limits

SAMPLERS = tuple(value for _, value in SAMPLER_CHOICES)
UNETS = tuple(value for _, value in UNET_CHOICES)
COMPARE_MODES = tuple(value for _, value in COMPARE_CHOICES)


SHOWN_CHARS = 60  # a rejected value is quoted back at most this long (a caller may send megabytes)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."


def _finite_number(value) -> bool:
    """An int or float (not a bool) that is finite as a float: raw JSON may carry NaN, Infinity
    or an integer of hundreds of digits, which math.isfinite cannot convert."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def number(value, name: str, low: float, high: float) -> float:
    """A finite float in [low, high]."""
    if not _finite_number(value) or not low <= value <= high:
        raise gr.Error(f"{name} must be a number from {low:g} to {high:g}, got {_shown(value)}")
    return float(value)


def integer(value, name: str, low: int, high: int) -> int:
    """An integer in [low, high]; a float with an integral value (a slider's 25.0) counts."""
    if not _finite_number(value) or value != int(value) or not low <= value <= high:
        raise gr.Error(f"{name} must be an integer from {low} to {high}, got {_shown(value)}")
    return int(value)


def choice(value, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise gr.Error(f"{name} must be one of {', '.join(choices)}; got {_shown(value)}")
    return value


def class_index(value, class_names: tuple[str, ...]) -> int:
    """A class given by name or by index."""
    if isinstance(value, str) and value in class_names:
        return class_names.index(value)
    if _finite_number(value) and value == int(value) and 0 <= value < len(class_names):
        return int(value)
    raise gr.Error(f"class must be one of {', '.join(class_names)} or an index from 0 to "
                   f"{len(class_names) - 1}; got {_shown(value)}")


def parse_strengths(text, name: str, maximum: float, limits: Limits = LIMITS) -> tuple[float, ...]:
    """Comma- or space-separated strengths, e.g. "0, 1, 2, 4, 8", each in [0, maximum]."""
    if not isinstance(text, str) or len(text) > limits.max_strengths_chars:
        raise gr.Error(f"{name} must be text of at most {limits.max_strengths_chars} characters "
                       f"such as \"0, 1, 2, 4, 8\"; got {_shown(text)}")
    values = []
    for word in (w for w in re.split(r"[,;\s]+", text.strip()) if w):
        try:
            values.append(float(word))
        except ValueError:
            raise gr.Error(f"{name}: {_shown(word)} is not a number; write them like \"0, 1, 2, 4, 8\"") from None
    if not 1 <= len(values) <= limits.max_rows:
        raise gr.Error(f"{name} must list from 1 to {limits.max_rows} values; got {len(values)}")
    values = [number(v, name, 0, maximum) for v in values]
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise gr.Error(f"{name} must differ from each other; {', '.join(f'{v:g}' for v in repeated)} appears twice")
    return tuple(values)


def _unet_cfg(unet, cfg_scale, limits: Limits) -> float | None:
    """w_cfg for the chosen UNet: None for the unconditional one (which takes no w_cfg)."""
    unet = choice(unet, "unet", UNETS)
    cfg_scale = number(cfg_scale, "classifier-free scale w_cfg", 0, limits.max_cfg_scale)
    if unet == "unconditional":
        if cfg_scale != 0:
            raise gr.Error("classifier-free scale w_cfg needs the class-conditional UNet: set unet to "
                           f"'conditional', or w_cfg to 0; got w_cfg={cfg_scale:g}")
        return None
    return cfg_scale


def _run(rows: list[Row], class_name, steps, sampler, eta, num_images, seed, class_names: tuple[str, ...],
         num_timesteps: int, limits: Limits) -> RunSettings:
    index = class_index(class_name, class_names)
    steps = integer(steps, "steps", 1, num_timesteps)
    n = integer(num_images, "number of images", 1, limits.max_images_per_row)
    if len(rows) > limits.max_rows:
        raise gr.Error(f"at most {limits.max_rows} rows at once; got {len(rows)}")
    if len(rows) * n > limits.max_images:
        raise gr.Error(f"at most {limits.max_images} images per request; {len(rows)} rows x {n} images is "
                       f"{len(rows) * n}: lower the number of images per row to {limits.max_images // len(rows)}")
    if len(rows) * n * steps > limits.max_image_steps:
        raise gr.Error(f"images x steps must be at most {limits.max_image_steps}; {len(rows) * n} images x "
                       f"{steps} steps is {len(rows) * n * steps}: use fewer images or steps")
    return RunSettings(
        class_index=index, class_name=class_names[index], rows=tuple(rows), images_per_row=n, steps=steps,
        sampler=choice(sampler, "sampler", SAMPLERS), eta=number(eta, "eta", 0, 1),
        seed=integer(seed, "seed", 0, limits.max_seed))


def generate_settings(class_name, scale, unet, cfg_scale, steps, sampler, eta, num_images, seed, *,
                      class_names: tuple[str, ...], num_timesteps: int, limits: Limits = LIMITS) -> RunSettings:
    """One row: classifier guidance w on top of the chosen UNet (and its w_cfg)."""
    scale = number(scale, "classifier guidance w", 0, limits.max_scale)
    cfg = _unet_cfg(unet, cfg_scale, limits)
    label = f"w={scale:g}" + (" (unconditional)" if cfg is None else f", w_cfg={cfg:g}")
    return _run([Row(label, scale, cfg)], class_name, steps, sampler, eta, num_images, seed,
                class_names, num_timesteps, limits)


def compare_rows(mode, strengths, scale, unet, cfg_scale, limits: Limits = LIMITS) -> list[Row]:
    """The rows of a comparison.

    classifier:          one row per w; the UNet and w_cfg as set.
    classifier-free:     one row per w_cfg on the conditional UNet; w as set.
    Arguments a mode does not use are still checked.
    classifier-vs-free:  per strength s, classifier guidance w=s on the unconditional UNet, then
                         classifier-free w_cfg=s with no classifier: each method alone.
    """
    mode = choice(mode, "compare", COMPARE_MODES)
    scale = number(scale, "classifier guidance w", 0, limits.max_scale)
    cfg = _unet_cfg(unet, cfg_scale, limits)
    if mode == "classifier":
        return [Row(f"w={w:g}", w, cfg)
                for w in parse_strengths(strengths, "classifier guidance strengths", limits.max_scale, limits)]
    if mode == "classifier-free":
        return [Row(f"w_cfg={s:g}", scale, s, "w_cfg")
                for s in parse_strengths(strengths, "classifier-free strengths", limits.max_cfg_scale, limits)]
    rows = []
    for s in parse_strengths(strengths, "strengths", min(limits.max_scale, limits.max_cfg_scale), limits):
        rows += [Row(f"classifier w={s:g}", s, None), Row(f"free w_cfg={s:g}", 0.0, s, "w_cfg")]
    return rows


def compare_settings(class_name, strengths, mode, scale, unet, cfg_scale, steps, sampler, eta, num_images,
                     seed, *, class_names: tuple[str, ...], num_timesteps: int,
                     limits: Limits = LIMITS) -> RunSettings:
    rows = compare_rows(mode, strengths, scale, unet, cfg_scale, limits)
    return _run(rows, class_name, steps, sampler, eta, num_images, seed, class_names, num_timesteps, limits)
