"""What a Recording looks like: image grids, the probability chart, the per-row table, the status
line, and the files to download (an animated GIF of the denoising, the final PNG with its
generation parameters in a text chunk)."""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from guidance.images import grid as tile_grid

from .runs import Frame, Recording, RowStats, RunSettings
from .settings import DISPLAY, Display

PARAMETERS_KEY = "parameters"   # the PNG text chunk that holds RunSettings.parameters()
CHART_X, CHART_Y, CHART_COLOR = "step", "probability", "row"  # plain names: Vega-Lite reads fields
CHART_MAX_STEPS = 200           # chart points per row; longer runs are thinned evenly
CHART_RAMPS = {"w": ((0x8e, 0xc0, 0xe4), (0x08, 0x30, 0x6b)),      # light to dark blue
               "w_cfg": ((0xfd, 0xae, 0x6b), (0x7f, 0x27, 0x04))}  # light to dark orange
TABLE_COLUMNS = ("row", "classifier", "evaluator", "diversity")  # the first two: mean p(c | x)


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def grid(images: np.ndarray, settings: RunSettings, display: Display = DISPLAY,
         upscale: int | None = None) -> Image.Image:
    """(B, C, H, W) uint8 as tiles upscaled with nearest-neighbour (by display.upscale unless
    given): one block for a single row, else rows x images_per_row with each row's label written
    on its left."""
    up, pad = upscale or display.upscale, display.pad
    if len(settings.rows) == 1:  # one row reads better as a near-square block
        n = settings.images_per_row
        return tile_grid(images, ncols=math.ceil(n / math.isqrt(n)), pad=pad, upscale=up)
    image = tile_grid(images, ncols=settings.images_per_row, pad=pad, upscale=up)
    tile = images.shape[-2] * up
    font = _font(max(12, tile * 2 // 5))  # legible when the grid is shown scaled down
    width = max(int(font.getlength(row.label)) for row in settings.rows) + tile // 4
    canvas = Image.new(image.mode, (width + image.width, image.height), "white")
    canvas.paste(image, (width, 0))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(settings.rows):
        middle = (pad + r * (images.shape[-2] + pad)) * up + tile // 2
        draw.text((tile // 8, middle), row.label, fill="black", font=font, anchor="lm")
    return canvas


def frame_images(recording: Recording, frame: Frame | None) -> tuple[Image.Image, Image.Image | None]:
    """(x_t grid, x-hat_0 grid) after `frame`; before the first step, x_T and no prediction.
    The grid of the last step's samples carries the parameters text chunk."""
    settings = recording.settings
    if frame is None:
        return grid(recording.x_T, settings), None
    x_t = grid(frame.sample, settings)
    if frame.index == settings.steps - 1:
        x_t.info[PARAMETERS_KEY] = settings.parameters()
    return x_t, grid(frame.pred_xstart, settings)


def chart(recording: Recording, upto: int | None = None) -> pd.DataFrame:
    """The guidance classifier's mean p(c | x_t) per row over frames[:upto], long format
    (step 1..N, probability, row label) for gr.LinePlot. Before the first step it holds one
    empty point per row, so the chart learns every row label from its first value."""
    frames = recording.frames[:upto]
    if len(frames) > CHART_MAX_STEPS:  # evenly thinned, keeping the last
        keep = np.unique(np.linspace(0, len(frames) - 1, CHART_MAX_STEPS).round().astype(int))
        frames = [frames[k] for k in keep]
    labels = [row.label for row in recording.settings.rows]
    if not frames:
        steps, probs, count = np.full(len(labels), np.nan), np.full(len(labels), np.nan), 1
    else:
        steps = np.repeat([f.index + 1 for f in frames], len(labels)).astype(int)
        probs, count = np.concatenate([f.class_prob for f in frames]), len(frames)
    # A string dtype, so the row column stays nominal even when empty (pandas makes [] float).
    return pd.DataFrame({CHART_X: steps, CHART_Y: probs, CHART_COLOR: pd.Series(labels * count, dtype="string")})


def chart_colors(settings: RunSettings) -> dict[str, str]:
    """Row label -> colour: rows varying w in blues, rows varying w_cfg in oranges, from light to
    dark as the strength grows."""
    colors = {}
    for varies, (light, dark) in CHART_RAMPS.items():
        rows = sorted((row for row in settings.rows if row.varies == varies),
                      key=lambda row: row.scale if varies == "w" else row.cfg_scale)
        for k, row in enumerate(rows):
            f = k / (len(rows) - 1) if len(rows) > 1 else 1.0
            colors[row.label] = "#" + "".join(f"{round(a + f * (b - a)):02x}" for a, b in zip(light, dark))
    return colors


def _cell(value: float) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.3f}"


def table_columns(with_evaluator: bool) -> list[str]:
    return [column for column in TABLE_COLUMNS if with_evaluator or column != "evaluator"]


def table(recording: Recording, with_evaluator: bool) -> pd.DataFrame:
    """One line per row: the mean class confidence under the guidance classifier and under the
    evaluator, and the row's diversity, from recording.stats ("–" where not known yet)."""
    rows, stats = recording.settings.rows, recording.stats
    unknown = np.full(len(rows), np.nan)
    if stats is None:
        stats = RowStats(unknown, None, unknown)
    evaluator = unknown if stats.evaluator_prob is None else stats.evaluator_prob
    lines = [(row.label, _cell(p), _cell(e), _cell(d))
             for row, p, e, d in zip(rows, stats.classifier_prob, evaluator, stats.diversity)]
    frame = pd.DataFrame(lines, columns=list(TABLE_COLUMNS))
    return frame[table_columns(with_evaluator)]


def status(recording: Recording, frame: Frame | None) -> str:
    """One Markdown line: where the run is (or the frame being viewed), and how long it took."""
    settings = recording.settings
    where = ("x_T, before step 1" if frame is None
             else f"step {frame.index + 1} / {settings.steps} (from t = {frame.timestep})")
    state = "done" if recording.state == "finished" else recording.state
    return (f"**{where}** · {state} · {recording.elapsed:.1f} s · class {settings.class_name} · "
            f"{settings.sampler.upper()} · seed {settings.seed}")


def save_png(image: Image.Image, parameters: str, path: Path) -> Path:
    """image as PNG with the parameters in a tEXt chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)
    image.save(path, format="png", pnginfo=info)
    return path


def save_gif(recording: Recording, path: Path, display: Display = DISPLAY, frames: list[Frame] | None = None) -> Path:
    """The denoising (frames, by default all the recording's) as an animated GIF: x_t beside
    x-hat_0, at most gif_max_frames evenly spaced steps (always the last), playing in
    gif_seconds, then holding the last frame."""
    frames = recording.frames if frames is None else frames
    keep = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), display.gif_max_frames)).round().astype(int))
    pictures = []
    for k in keep:
        x_t, x0 = frame_images(recording, frames[k])
        gap = 2 * display.pad * display.upscale
        picture = Image.new("L", (x_t.width + gap + x0.width, x_t.height), 255)
        picture.paste(x_t.convert("L"), (0, 0))
        picture.paste(x0.convert("L"), (x_t.width + gap, 0))
        pictures.append(picture)
    step_ms = max(20, int(1000 * display.gif_seconds / len(pictures)))
    durations = [step_ms] * (len(pictures) - 1) + [step_ms + int(1000 * display.gif_hold_s)]
    pictures[0].save(path, format="gif", save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return path
