"""What a Recording looks like: image grids (x_t, x-hat_0 and the classifier's push), the two
charts, the per-row table, the status line, and the files to download (an animated GIF of the
denoising, the final PNG with its generation parameters in a text chunk)."""
from __future__ import annotations

import functools
import html
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import altair as alt
import pandas as pd
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from guidescope.images import grid as tile_grid
from guidescope.samplers import sampler_title

from .arguments import Run
from .runs import Frame, Push, Recording, RowStats
from .settings import DISPLAY, Display

PARAMETERS_KEY = "parameters"   # the PNG text chunk that holds Run.parameters()
CHART_X, CHART_Y, CHART_COLOR = "step", "probability", "row"  # plain names: Vega-Lite reads fields
NORM_Y = "norm"                 # the guidance norm chart's value field
CHART_MAX_STEPS = 200           # chart points per row; longer runs are thinned evenly
CHART_WIDTH = 340               # CSS px of a whole chart, axes and padding in: it fits a 420 px screen's panel
                                # (354 px), and two side by side a 1400 px page
CHART_PADDING = {"top": 30, "left": 5, "right": 5, "bottom": 5}  # CSS px around the chart: the panel's label
                                # floats over its top 26 px, where the lines near p = 1 would run under it
LEGEND_WIDTHS = {1: CHART_WIDTH - 40, 2: 200}  # CSS px of a legend label before it is cut, by labels a line: the
                                # legend sits under the plot, one label a line for up to LEGEND_SINGLE rows (a
                                # training-free row's name is long), else two ("TFG ρ=2 μ=2 (unconditional)" fits)
LEGEND_SINGLE = 3
CHART_RAMPS = {"w": ((0x8e, 0xc0, 0xe4), (0x08, 0x30, 0x6b)),      # light to dark blue
               "w_cfg": ((0xfd, 0xae, 0x6b), (0x7f, 0x27, 0x04))}  # light to dark orange
CATEGORY_COLORS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",  # Tableau 10, for rows that
                   "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")  # differ in kind, not strength
PUSH_BACKGROUND = 160           # grey between the push tiles, whose 0 is white
TABLE_COLUMNS = ("row", "classifier", "evaluator", "diversity", "s / image")  # the first two: mean p(c | x)


def _diverging_colors() -> np.ndarray:
    """(256, 3) uint8: level 128 white, down to blue at 1 and up to red at 255 (ColorBrewer RdBu's
    ends), linear in between; see runs.Push."""
    v = np.clip((np.arange(256) - 128) / 127, -1, 1)[:, None]
    white, blue, red = np.array([255, 255, 255]), np.array([0x21, 0x66, 0xac]), np.array([0xb2, 0x18, 0x2b])
    return np.where(v < 0, white + -v * (blue - white), white + v * (red - white)).round().astype(np.uint8)


PUSH_COLORS = _diverging_colors()


class FrameImages(NamedTuple):
    x_t: Image.Image
    pred_xstart: Image.Image | None     # None before the first step
    push: Image.Image | None            # None before the first step


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def columns_of(run: Run) -> int:
    """Tiles per line of a run's grids: one row reads better as a near-square block; several rows
    keep a line each."""
    n = run.request.images_per_row
    return math.ceil(n / math.isqrt(n)) if len(run.labels) == 1 else n


def upscale_of(run: Run, display: Display = DISPLAY) -> int:
    """The page's nearest-neighbour factor for a run: one row large, several rows smaller."""
    return display.upscale if len(run.labels) == 1 else display.compare_upscale


def grid(images: np.ndarray, run: Run, display: Display = DISPLAY, upscale: int | None = None,
         background: int = 255, labels: bool = False) -> Image.Image:
    """(B, C, H, W) uint8, one or three channels, as tiles upscaled with nearest-neighbour (by
    upscale_of(run) unless given) on `background`: one block for a single row, else rows x
    images_per_row, with each row's label written on its left when `labels` (the downloaded PNG;
    the page lays the labels out as text, row_labels)."""
    up, pad = upscale or upscale_of(run, display), display.pad
    image = tile_grid(images, ncols=columns_of(run), pad=pad, upscale=up, background=background)
    if len(run.labels) == 1 or not labels:
        return image
    tile = images.shape[-2] * up
    font = _font(max(12, tile * 2 // 5))
    width = max(int(font.getlength(label)) for label in run.labels) + tile // 4
    canvas = Image.new(image.mode, (width + image.width, image.height), "white")
    canvas.paste(image, (width, 0))
    draw = ImageDraw.Draw(canvas)
    for r, label in enumerate(run.labels):
        middle = (pad + r * (images.shape[-2] + pad)) * up + tile // 2
        draw.text((tile // 8, middle), label, fill="black", font=font, anchor="lm")
    return canvas


def row_labels(run: Run, grid_height: int, display: Display = DISPLAY) -> str:
    """The rows' labels as HTML text, one line per row of a grid `grid_height` px tall (shown at
    its own size), each beside its row; empty for a single row."""
    if len(run.labels) == 1:
        return ""
    top = display.pad * upscale_of(run, display)
    row = (grid_height - top) / len(run.labels)
    lines = "".join(f'<div class="row-label" title="{html.escape(label)}" style="height:{row:g}px;'
                    f'line-height:{row - top:g}px">{html.escape(label)}</div>' for label in run.labels)
    return f'<div class="row-labels" style="padding-top:{top}px">{lines}</div>'


def push_colors(push: Push) -> np.ndarray:
    """(B, 3, H, W) uint8 RGB of a push through the diverging colour map."""
    return PUSH_COLORS[push.levels].transpose(0, 3, 1, 2)


def is_final(recording: Recording, frame: Frame | None) -> bool:
    """Whether frame is the last one of a finished run."""
    return frame is not None and recording.state == "finished" and frame is recording.frames[-1]


def shown_push(recording: Recording, frame: Frame | None) -> Frame | None:
    """The frame whose push is shown: frame's own, or for the final frame of a run the step with the
    largest push (the last steps' pushes are near 0, a white panel)."""
    if not is_final(recording, frame):
        return frame
    return max(recording.frames, key=lambda f: f.push.scale)


def push_note(frame: Frame | None, steps: int | None = None) -> str:
    """What the push column's colours mean at this frame: s, the largest |k_t w(t) g|; with steps,
    which step it is (the run's largest push, shown after a run)."""
    if frame is None:
        return "the push appears with the first step"
    if frame.push.scale == 0:
        return "no classifier guidance at this step: the push is 0"
    which = "" if steps is None else f"step {frame.index + 1} of {steps}, the run's largest push: "
    return f"{which}blue −s … white 0 … red +s, with s = {frame.push.scale:.3g} (the largest |k_t w(t) g| in the batch)"


def frame_arrays(recording: Recording, frame: Frame | None, push_frame: Frame | None = None) -> tuple:
    """(x_t, x-hat_0, push) of `frame` as uint8 (B, C, H, W) arrays (None where there is none yet):
    before the first step x_T alone; a latent run shows z_t's channels as maps until the last
    step, which shows the decoded samples. push_frame: whose push (default frame's own)."""
    if frame is None:
        return recording.x_T, None, None
    last = frame.index == recording.run.request.steps - 1
    push_frame = push_frame or frame
    return (recording.images(frame) if last else frame.sample, recording.pred_xstart(frame),
            push_colors(push_frame.push))


def frame_images(recording: Recording, frame: Frame | None, push_frame: Frame | None = None) -> FrameImages:
    """The three grids of frame_arrays; the grid of the last step's samples carries the
    parameters text chunk."""
    run = recording.run
    x_t, pred_xstart, push = frame_arrays(recording, frame, push_frame)
    image = grid(x_t, run)
    if frame is not None and frame.index == run.request.steps - 1:
        image.info[PARAMETERS_KEY] = run.parameters()
    return FrameImages(image, None if pred_xstart is None else grid(pred_xstart, run),
                       None if push is None else grid(push, run, background=PUSH_BACKGROUND))


def item_at(run: Run, point: tuple[int, int], size: int, display: Display = DISPLAY) -> int | None:
    """The batch item under a point (x, y) in a grid's pixels (grid: images of `size` px), or None
    on the padding or past the last image."""
    up, pad, ncols = upscale_of(run, display), display.pad, columns_of(run)
    pitch = (size + pad) * up
    (col, dx), (row, dy) = (divmod(v - pad * up, pitch) for v in point)
    if min(col, row) < 0 or dx >= size * up or dy >= size * up or col >= ncols:
        return None
    item = row * ncols + col
    return item if item < len(run.labels) * run.request.images_per_row else None


def detail(recording: Recording, frame: Frame | None, item: int, push_frame: Frame | None = None,
           scale: int = 6) -> Image.Image:
    """One image large: its x_t, x-hat_0 and push side by side (what exists at this frame),
    nearest-neighbour at `scale`x."""
    arrays = [a[item:item + 1] for a in frame_arrays(recording, frame, push_frame) if a is not None]
    arrays = [np.repeat(a, 3, 1) if a.shape[1] == 1 else a for a in arrays]  # grey beside the coloured push
    gap = np.full((1, 3, arrays[0].shape[2], 2), 255, np.uint8)
    row = np.concatenate([part for a in arrays for part in (a, gap)][:-1], axis=3)[0]
    return Image.fromarray(row.transpose(1, 2, 0)).resize((row.shape[2] * scale, row.shape[1] * scale), Image.NEAREST)


def _per_step(recording: Recording, values, y: str, upto: int | None) -> pd.DataFrame:
    """values(frame) -> (rows,) over frames[:upto] in long format (step 1..N, y, row label); before
    the first step, one empty point per row."""
    frames = recording.frames[:upto]
    if len(frames) > CHART_MAX_STEPS:  # evenly thinned, keeping the last
        keep = np.unique(np.linspace(0, len(frames) - 1, CHART_MAX_STEPS).round().astype(int))
        frames = [frames[k] for k in keep]
    labels = list(recording.run.labels)
    if not frames:
        steps, found, count = np.full(len(labels), np.nan), np.full(len(labels), np.nan), 1
    else:
        steps = np.repeat([f.index + 1 for f in frames], len(labels)).astype(int)
        found, count = np.concatenate([values(f) for f in frames]), len(frames)
    # A string dtype, so the row column stays nominal even when empty (pandas makes [] float).
    data = pd.DataFrame({CHART_X: steps, y: found, CHART_COLOR: pd.Series(labels * count, dtype="string")})
    request = recording.run.request
    if frames and request.uneven:
        # A row of fewer steps is drawn at the frames where it took one of its own (Request.step_of)
        # since the frame drawn before.
        took = [before is None or request.step_of(row, f.index) != request.step_of(row, before.index)
                for before, f in zip([None, *frames[:-1]], frames) for row in request.rows]
        data = data[took]
    return data


def line_chart(recording: Recording, data: pd.DataFrame, y: str, title: str, y_domain: list | None = None) -> alt.Chart:
    """A line per row of the run over its steps, as a whole Vega-Lite spec: the axis range, each
    row's colour (chart_colors) and the legend travel with every frame, so every run draws its own
    lines and legend however many frames it sends. (gr.LinePlot keeps the spec it built from an
    earlier value and swaps only the data, so a new run's rows were drawn under the last run's
    legend, or not at all.)"""
    colors, rows = chart_colors(recording.run), list(recording.run.labels)  # the legend in row order
    columns = 1 if len(rows) <= LEGEND_SINGLE else 2
    request = recording.run.request
    # Points where a line may hold one (the first frame; a row of one step beside longer ones).
    return alt.Chart(data).mark_line(point=len(recording.frames) <= 1 or request.uneven).encode(
        x=alt.X(f"{CHART_X}:Q", title="step of the longest row (the others by progress)" if request.uneven else "step",
                scale=alt.Scale(domain=[0, request.steps])),
        y=alt.Y(f"{y}:Q", title=title, scale=alt.Scale(domain=y_domain) if y_domain else alt.Undefined),
        color=alt.Color(f"{CHART_COLOR}:N", title="row", sort=rows, legend=alt.Legend(labelLimit=LEGEND_WIDTHS[columns], orient="bottom", columns=columns),
                        scale=alt.Scale(domain=rows, range=[colors[row] for row in rows])),
    ).properties(width=CHART_WIDTH, height=200, padding=CHART_PADDING, autosize={"type": "fit-x", "contains": "padding"},
                 usermeta={"embedOptions": {"renderer": "svg"}})  # lines a test can read


def chart(recording: Recording, upto: int | None = None) -> pd.DataFrame:
    """The guidance classifier's mean p(c | x_t) per row and step."""
    return _per_step(recording, lambda frame: frame.class_prob, CHART_Y, upto)


def clean_chart(recording: Recording, upto: int | None = None) -> pd.DataFrame:
    """The clean classifier's mean p(c | x-hat_0) per row and step (empty without one)."""
    if recording.guide is None:
        return _per_step(recording, lambda frame: frame.class_prob, CHART_Y, 0)
    return _per_step(recording, lambda frame: frame.clean_prob, CHART_Y, upto)


def norm_chart(recording: Recording, upto: int | None = None) -> pd.DataFrame:
    """The mean L2 norm of k_t w(t) g per row and step (0 where a row is not guided)."""
    return _per_step(recording, lambda frame: frame.guidance_norm, NORM_Y, upto)


def chart_colors(run: Run) -> dict[str, str]:
    """Row label -> colour: rows varying w in blues, rows varying w_cfg in oranges, from light to
    dark as the strength grows; rows that differ otherwise (interval, schedule, threshold, class)
    one categorical colour each."""
    rows = list(zip(run.labels, run.shades, run.request.rows))
    others = [label for label, shade, _ in rows if shade not in CHART_RAMPS]
    colors = {label: CATEGORY_COLORS[k % len(CATEGORY_COLORS)] for k, label in enumerate(others)}
    for shade, (light, dark) in CHART_RAMPS.items():
        ramp = sorted((r for r in rows if r[1] == shade), key=lambda r: r[2].scale if shade == "w" else r[2].cfg_scale)
        for k, (label, _, _) in enumerate(ramp):
            f = k / (len(ramp) - 1) if len(ramp) > 1 else 1.0
            colors[label] = "#" + "".join(f"{round(a + f * (b - a)):02x}" for a, b in zip(light, dark))
    return colors


def _cell(value: float) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.3f}"


def table_columns(with_evaluator: bool) -> list[str]:
    return [column for column in TABLE_COLUMNS if with_evaluator or column != "evaluator"]


def table(recording: Recording, with_evaluator: bool, stats: RowStats | None = None,
          frame: Frame | None = None) -> pd.DataFrame:
    """One line per row: the mean confidence in the row's class under the guidance classifier and
    under the evaluator, and the row's diversity, from stats (default recording.stats), and its
    sampling seconds per image up to frame (default the last); "–" where not known yet."""
    labels, stats = recording.run.labels, stats or recording.stats
    unknown = np.full(len(labels), np.nan)
    if stats is None:
        stats = RowStats(unknown, None, unknown)
    evaluator = unknown if stats.evaluator_prob is None else stats.evaluator_prob
    if frame is None and recording.frames:
        frame = recording.frames[-1]
    seconds = unknown if frame is None or frame.seconds is None else frame.seconds
    lines = [(label, _cell(p), _cell(e), _cell(d), _cell(t))
             for label, p, e, d, t in zip(labels, stats.classifier_prob, evaluator, stats.diversity, seconds)]
    frame = pd.DataFrame(lines, columns=list(TABLE_COLUMNS))
    return frame[table_columns(with_evaluator)]


def status(recording: Recording, frame: Frame | None) -> str:
    """One Markdown line: where the run is (or the frame being viewed), and how long it took."""
    run, request = recording.run, recording.run.request
    where = ("x_T, before step 1" if frame is None
             else f"step {frame.index + 1} of {request.steps} (denoised from t = {frame.timestep})")
    state = {"finished": "done", "cut": "stopped at the time one request may take (fewer steps or images "
             "fit)"}.get(recording.state, recording.state)
    target = f"class {run.class_name}" if run.class_name is not None else "a class per row"
    row = f" · {run.labels[0]}" if len(run.labels) == 1 else f" · {len(run.labels)} rows"
    cost = f" ({recording.elapsed / request.num_items:.3f} s per image)" if frame is not None else ""
    return (f"**{where}** · {state} · {recording.elapsed:.1f} s{cost} · {target}{row} · "
            f"{sampler_title(request.sampler)} · seed {request.seed}")


def save_png(image: Image.Image, parameters: str, path: Path) -> Path:
    """image as PNG with the parameters in a tEXt chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)
    image.save(path, format="png", pnginfo=info)
    return path


def save_gif(recording: Recording, path: Path, display: Display = DISPLAY, frames: list[Frame] | None = None) -> Path:
    """The denoising (frames, by default all the recording's) as an animated GIF: x_t, x-hat_0 and
    the push side by side above a line with the step and s, at most gif_max_frames evenly spaced
    steps (always the last), playing in gif_seconds, then holding the last frame."""
    frames = recording.frames if frames is None else frames
    keep = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), display.gif_max_frames)).round().astype(int))
    gap, font, line = 2 * display.pad * display.upscale, _font(12), 20
    pictures = []
    for k in keep:
        frame, columns = frames[k], frame_images(recording, frames[k])
        note = f"step {frame.index + 1} / {recording.run.request.steps}   push ±s, s = {frame.push.scale:.3g}"
        width = max(sum(image.width for image in columns) + 2 * gap, int(font.getlength(note)) + 2 * gap)
        picture = Image.new("RGB", (width, columns.x_t.height + line), "white")
        x = 0
        for image in columns:
            picture.paste(image.convert("RGB"), (x, 0))
            x += image.width + gap
        ImageDraw.Draw(picture).text((gap, columns.x_t.height + line // 2), note, fill="black", font=font, anchor="lm")
        pictures.append(picture)
    step_ms = max(20, int(1000 * display.gif_seconds / len(pictures)))
    durations = [step_ms] * (len(pictures) - 1) + [step_ms + int(1000 * display.gif_hold_s)]
    pictures[0].save(path, format="gif", save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return path
