"""The app's handlers called directly, without a server: streaming, throttling, shared noise, the
rows Compare can vary, the classifier's push, colour checkpoints, stopping, scrubbing, downloads,
validation, the page's wiring and the launcher."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from app_fixtures import (CLASS_NAMES, NUM_TIMESTEPS, bundle, checkpoint_dir, colour_bundle, library_samples,  # noqa: F401
                          chart_spec, chart_table, pixels_match)
from bad_arguments import BAD_COMPARE
from demo import arguments, downloads, render, runs, ui
from demo import handlers as handlers_module
from demo.examples import EXAMPLES
from demo.handlers import Handlers
from demo.launch import launch, parse_args
from demo.settings import (COMPARE_CHOICES, DEFAULTS, DISPLAY, LIMITS, ROW_VALUES, SAMPLER_CHOICES, AppDefaults, Display,
                           Settings)
from guidescope import generation
from guidescope.guide import NonFiniteError, Schedule, Threshold
from guidescope.images import grid
from guidescope.noise import ItemNoise
from guidescope.request import Request, Row, check
from guidescope.samplers import SAMPLERS

REPO = Path(__file__).resolve().parent.parent
EVERY_STEP = Display(frame_interval_s=0.0)
FINAL_ONLY = Display(frame_interval_s=1e9)


def make_handlers(bundle, tmp_path, display: Display = EVERY_STEP) -> Handlers:
    return Handlers(bundle, display=display, downloads=tmp_path / "downloads")


TRAINING_FREE_ARGS = dict(guide="noise-aware", method="tfg", rho=2.0, mu=2.0, recurrences=1, iterations=1,
                          strength_schedule="increase", gamma=0.0, stop_at=1.0)


def gen_args(**changes) -> dict:
    args = dict(class_name="Trouser", scale=2.0, unet="unconditional", cfg_scale=0.0, steps=6, sampler="ddim",
                eta=0.0, num_images=4, seed=3, interval="full", schedule="constant", threshold="clip",
                threshold_percentile=0.995, **TRAINING_FREE_ARGS)
    return {**args, **changes}


def compare_args(**changes) -> dict:
    args = dict(class_name="Sneaker", strengths="0, 4", mode="classifier", scale=0.0, unet="unconditional",
                cfg_scale=0.0, steps=5, sampler="ddim", eta=0.0, num_images=3, seed=5, interval="full",
                schedule="constant", threshold="clip", threshold_percentile=0.995, **TRAINING_FREE_ARGS)
    return {**args, **changes}


def compare_run(**changes) -> arguments.Run:
    args = compare_args(**changes)
    strengths, mode = args.pop("strengths"), args.pop("mode")
    return arguments.compare_run(Settings(**args), strengths, mode, class_names=CLASS_NAMES, num_timesteps=NUM_TIMESTEPS)


def error_message(call) -> str:
    """The message of the gr.Error that call() raises."""
    with pytest.raises(gr.Error) as caught:
        call()
    return caught.value.message


def tile_rows(image: Image.Image, rows: int, cols: int, size: int = 16) -> np.ndarray:
    """(rows, cols, H, W[, 3]) tiles at their own size, cut back out of a grid drawn with the
    default pad at the upscale its height shows (a labelled grid's labels, on the left, are dropped)."""
    up = image.height // (rows * (size + DISPLAY.pad) + DISPLAY.pad)
    pitch = (size + DISPLAY.pad) * up
    array = np.asarray(image)
    array = array[:, array.shape[1] - (cols * pitch + DISPLAY.pad * up):]
    start, tile = DISPLAY.pad * up, size * up
    corners = [[(start + r * pitch, start + c * pitch) for c in range(cols)] for r in range(rows)]
    return np.array([[array[y:y + tile:up, x:x + tile:up] for y, x in line] for line in corners])


class CountingUNet:
    """The bundle's UNet, counting the batch items of every call."""

    def __init__(self, unet):
        self.unet, self.config, self.null_label, self.items = unet, unet.config, unet.null_label, []

    def __call__(self, x, t, y):
        self.items.append(len(x))
        return self.unet(x, t, y)


# -- streaming --------------------------------------------------------------------------------

def test_generate_streams_x_T_then_every_step_then_the_seeded_samples(bundle, tmp_path):
    frames = list(make_handlers(bundle, tmp_path).generate(**gen_args()))
    assert len(frames) == 1 + 6  # x_T, then one frame per step (no throttling)
    first, last = frames[0], frames[-1]
    assert first.pred_xstart is None and first.push is None and "x_T" in first.status
    x_T = ItemNoise(3, range(4))((4, 1, 16, 16), "cpu")
    assert pixels_match(first.x_t, x_T, ncols=2)  # 4 images lie in a 2 x 2 block
    assert [f.status.split("**")[1] for f in frames[1:]] == [
        f"step {k} of 6 (denoised from t = {t})" for k, t in zip(range(1, 7), (999, 799, 599, 400, 200, 0))]
    assert "done" in last.status
    expected = library_samples(bundle, CLASS_NAMES.index("Trouser"), 2.0, steps=6, num_images=4, seed=3)
    assert pixels_match(last.x_t, expected, ncols=2)
    parameters = json.loads(last.x_t.info[render.PARAMETERS_KEY])
    assert parameters["seed"] == 3 and parameters["steps"] == 6 and parameters["sampler"] == "ddim"
    assert parameters["rows"] == [dict(class_label=1, class_name="Trouser", label="w=2 (unconditional)", scale=2.0,
                                       cfg_scale=None, schedule=dict(shape="constant", interval=None),
                                       threshold=dict(mode="clip", percentile=0.995), first_image=0, guide=None)]
    assert [f.recording for f in frames].count(last.recording) == len(frames)  # one recording, growing
    assert len(last.recording.frames) == 6 and last.recording.state == "finished"


@pytest.mark.parametrize("sampler", ["ddpm", "dpm++2m", "unipc"])
def test_every_sampler_gives_the_command_lines_images(bundle, tmp_path, sampler):
    changes = dict(sampler=sampler, interval="300-900", schedule="ramp-down", threshold="dynamic",
                   threshold_percentile=0.9)
    last = list(make_handlers(bundle, tmp_path, FINAL_ONLY).generate(**gen_args(**changes)))[-1]
    expected = library_samples(bundle, 1, 2.0, steps=6, num_images=4, seed=3, sampler=sampler,
                               schedule=Schedule("ramp-down", (300, 900)), threshold=Threshold("dynamic", 0.9))
    assert pixels_match(last.x_t, expected, ncols=2)
    plain = library_samples(bundle, 1, 2.0, steps=6, num_images=4, seed=3, sampler=sampler)
    assert not pixels_match(last.x_t, plain, ncols=2)  # the new settings did reach the sampler


def test_a_run_quicker_than_the_frame_interval_sends_its_samples_alone(bundle, tmp_path):
    frames = list(make_handlers(bundle, tmp_path, FINAL_ONLY).generate(**gen_args(steps=8)))
    assert len(frames) == 1 and "done" in frames[0].status
    assert list(chart_table(frames[0].chart)[render.CHART_X]) == list(range(1, 9))  # its chart holds every step
    assert len(frames[0].recording.frames) == 8  # every step is still recorded for scrubbing


def test_frames_go_out_once_per_interval_from_the_start_and_the_last_always(bundle, tmp_path, monkeypatch):
    """A clock that moves 0.2 s each time it is read, against a 0.5 s interval: the start reads
    it, then each check of whether a frame is due and each frame sent; so x_T is not due (0.2 s),
    step 1 is not (0.4 s), step 2 is (0.6 s, sent at 0.8 s), then step 5 (0.6 s after) and the last."""
    ticks = iter(range(1000))
    monkeypatch.setattr(handlers_module, "time", SimpleNamespace(monotonic=lambda: 0.2 * next(ticks)))
    frames = list(make_handlers(bundle, tmp_path, Display(frame_interval_s=0.5)).generate(**gen_args(steps=8)))
    assert [f.status.split(" (")[0] for f in frames][:2] == ["**step 2 of 8", "**step 5 of 8"] and len(frames) == 3
    assert "done" in frames[-1].status
    assert [chart_table(f.chart)[render.CHART_X].max() for f in frames] == [2, 5, 8]  # each frame's chart: its steps so far


def test_charts_and_table_follow_the_run(bundle, tmp_path):
    frames = list(make_handlers(bundle, tmp_path).compare(**compare_args(strengths="0, 1, 4")))
    for figure in (frames[0].chart, frames[-1].norm_chart):  # every frame carries its run's axis, colours, legend
        spec = chart_spec(figure)
        assert spec["encoding"]["x"]["scale"]["domain"] == [0, 5]
        assert spec["encoding"]["color"]["scale"]["domain"] == ["w=0", "w=1", "w=4"]  # the rows, in order
    chart, norms = chart_table(frames[-1].chart), chart_table(frames[-1].norm_chart)
    assert len(chart) == len(norms) == 5 * 3 and sorted(set(chart[render.CHART_X])) == [1, 2, 3, 4, 5]
    assert chart[render.CHART_Y].between(0, 1).all()
    by_row = norms.groupby(render.CHART_COLOR)[render.NORM_Y]
    assert (by_row.max()["w=0"] == 0) and (by_row.min()[["w=1", "w=4"]] > 0).all()
    assert by_row.mean()["w=4"] > by_row.mean()["w=1"]
    table = frames[-1].table
    assert list(table["row"]) == ["w=0", "w=1", "w=4"]
    assert list(table.columns) == list(render.TABLE_COLUMNS)  # the tiny checkpoint has an evaluator
    for column in ("classifier", "evaluator", "diversity"):
        assert all(0 <= float(v) <= 1 for v in table[column])
    assert all(float(v) > 0 for v in table["s / image"])


def test_compare_rows_share_their_noise(bundle, tmp_path):
    handlers = make_handlers(bundle, tmp_path)
    frames = list(handlers.compare(**compare_args(strengths="0, 8", sampler="ddpm")))
    start = tile_rows(frames[0].x_t, rows=2, cols=3)
    assert (start[0] == start[1]).all() and not (start[0, 0] == start[0, 1]).all()  # one x_T for every row
    final = tile_rows(frames[-1].x_t, rows=2, cols=3)
    assert not (final[0] == final[1]).all()
    # Each row of a comparison, per-step noise included (DDPM), is what generate gives for its
    # strength and the same seed.
    for row, scale in enumerate((0.0, 8.0)):
        alone = list(handlers.generate(**gen_args(class_name="Sneaker", scale=scale, steps=5, num_images=3, seed=5,
                                                  sampler="ddpm")))
        alone_tiles = tile_rows(alone[-1].x_t, rows=1, cols=3)  # 3 images lie in one row of 3
        assert np.abs(alone_tiles[0].astype(int) - final[row]).max() <= 1


def test_the_evaluated_rows_run_each_guide_at_the_models_own_setting_from_the_same_noise(bundle, tmp_path):
    """Compare "evaluated": the noise-aware default (UniPC 3) beside the training-free default (DDPM 6)
    and the latter at equal time, each row with its own sampler and steps; every row is what
    generate gives at that setting alone, charted at its own steps, with its seconds per image."""
    evaluated = AppDefaults(scale=4.0, sampler="unipc", steps=3, threshold="clip", rho=0.0, mu=8.0, recurrences=2,
                            training_free_sampler="ddpm", training_free_steps=6, training_free_interval="500-999")
    handlers = make_handlers(bundle, tmp_path)
    handlers.models[handlers.model.name] = handlers.model = handlers.model._replace(defaults=evaluated)
    frames = list(handlers.compare(**compare_args(strengths="noise-aware, training-free, equal-time", mode="evaluated",
                                                  num_images=2, sampler="ddim", steps=40, scale=9.0)))
    run = frames[-1].recording.run
    assert [(handlers.model.bundle.class_names[r.class_label], r.sampler, r.steps) for r in run.request.rows] == [
        ("Sneaker", "unipc", 3), ("Sneaker", "ddpm", 6), ("Sneaker", "ddpm", 1)]  # 3 plain steps buy one of 5
    assert run.labels == ("UniPC 3, noise-aware w=4", "DDPM 6, TFG ρ=0 μ=8 N_recur=2",
                          "DDPM 1, ≈ equal time: TFG ρ=0 μ=8 N_recur=2")
    assert (run.request.steps, run.request.sampler) == (6, "ddpm") and len(frames) == 1 + 6
    final = tile_rows(frames[-1].x_t, rows=3, cols=2)
    alone = [Request((replace(row, sampler=None, steps=None),), images_per_row=2, steps=row.steps, sampler=row.sampler,
                     seed=5) for row in run.request.rows]
    for k, request in enumerate(alone):
        images = generation.generate(bundle, request).images[:, 0].numpy()  # (2, H, W) uint8, grey
        shown = final[k] if final.ndim == 4 else final[k][..., 0]
        assert np.abs(images.astype(int) - shown).max() <= 1
    chart = chart_table(frames[-1].chart)
    points = chart.groupby(render.CHART_COLOR)[render.CHART_X].apply(list)
    assert points[run.labels[0]] == [1, 3, 5] and points[run.labels[1]] == [1, 2, 3, 4, 5, 6]
    assert points[run.labels[2]] == [1]
    table = frames[-1].table
    assert all(float(v) > 0 for v in table["s / image"])


def test_a_row_of_fewer_steps_keeps_a_point_per_step_in_a_thinned_chart():
    """A chart thins a long run's frames to CHART_MAX_STEPS; a row of 7 steps beside one of 401 still
    shows each of its 7 steps (where it took one since the frame drawn before)."""
    request = Request((Row(0), Row(0, steps=7)), steps=2 * render.CHART_MAX_STEPS + 1)
    frames = [SimpleNamespace(index=k, class_prob=np.zeros(2)) for k in range(request.steps)]
    recording = SimpleNamespace(frames=frames, run=SimpleNamespace(labels=("long", "short"), request=request))
    points = render.chart(recording).groupby(render.CHART_COLOR).size().to_dict()
    assert points == {"long": render.CHART_MAX_STEPS, "short": 7}


def test_the_evaluated_rows_are_estimated_at_their_own_steps_and_a_refusal_names_the_images_that_fit():
    """The request bound counts each row at its own steps; where the rows bring their own steps, the
    refusal asks for fewer images (the page's steps are not theirs)."""
    from demo.timing import Timings
    evaluated = AppDefaults(scale=4.0, sampler="unipc", steps=10, rho=0.0, mu=8.0, recurrences=2,
                            training_free_sampler="ddpm", training_free_steps=20)
    settings = {name: value for name, value in compare_args(num_images=4).items() if name not in ("strengths", "mode")}
    run = arguments.compare_run(Settings(**settings), "noise-aware, training-free", "evaluated", class_names=CLASS_NAMES,
                                num_timesteps=NUM_TIMESTEPS, evaluated=evaluated)
    timings = Timings([], DISPLAY, None)
    timings.batch_step_seconds["m"] = 0.01
    cost = run.request.rows[1].guide.step_cost()  # 2 x (1 + 1.5): x-hat_0 steps, twice
    assert timings.seconds("m", run) == pytest.approx(0.01 * 4 * (10 + cost * 20))
    with pytest.raises(ValueError, match=r"would take about 4 s here \(8 images x 20 steps\); .* use at most 2 images per row$"):
        timings.check_bound("m", run, 2.5)


def test_classifier_vs_free_runs_each_method_alone_with_one_unet_pass_for_the_unconditional_rows(bundle, tmp_path):
    run = compare_run(strengths="1, 3", mode="classifier-vs-free")
    assert run.request.rows == (Row(2, 1.0, None), Row(2, 0.0, 1.0), Row(2, 3.0, None), Row(2, 0.0, 3.0))
    assert run.labels == ("classifier w=1", "free w_cfg=1", "classifier w=3", "free w_cfg=3")
    guidance = run.request.guidance(range(12), NUM_TIMESTEPS)
    assert guidance.conditional.tolist() == ([False] * 3 + [True] * 3) * 2
    counting = CountingUNet(bundle.unet)
    handlers = make_handlers(replace(bundle, unet=counting), tmp_path, FINAL_ONLY)
    frames = list(handlers.compare(**compare_args(strengths="1, 3", mode="classifier-vs-free")))
    assert list(frames[-1].table["row"]) == list(run.labels)
    # Per step: the 6 unconditional items once, the 6 classifier-free items with c and with the null label.
    assert counting.items == [6 + 2 * 6] * 5


def test_unconditional_rows_in_a_mixed_batch_match_the_unconditional_model(bundle, tmp_path):
    handlers = make_handlers(bundle, tmp_path, FINAL_ONLY)
    mixed = list(handlers.compare(**compare_args(strengths="2", mode="classifier-vs-free")))[-1]
    alone = list(handlers.generate(**gen_args(class_name="Sneaker", scale=2.0, steps=5, num_images=3, seed=5)))[-1]
    assert np.abs(tile_rows(mixed.x_t, 2, 3)[0].astype(int) - tile_rows(alone.x_t, 1, 3)[0]).max() <= 1


ROWS = [  # (mode, text, the rows, their labels); the left column: class Sneaker, w = 2, the rest as set
    ("interval", "full, 0-400, 200-800",
     [Row(2, 2.0), Row(2, 2.0, schedule=Schedule("constant", (0, 400))),
      Row(2, 2.0, schedule=Schedule("constant", (200, 800)))], ["full", "0-400", "200-800"]),
    ("schedule", "all", [Row(2, 2.0), Row(2, 2.0, schedule=Schedule("ramp-up", (0, 999))),
                         Row(2, 2.0, schedule=Schedule("ramp-down", (0, 999)))], ["constant", "ramp-up", "ramp-down"]),
    ("schedule", "ramp-down; constant", [Row(2, 2.0, schedule=Schedule("ramp-down", (0, 999))), Row(2, 2.0)],
     ["ramp-down", "constant"]),
    ("threshold", "all", [Row(2, 2.0), Row(2, 2.0, threshold=Threshold("dynamic")),
                          Row(2, 2.0, threshold=Threshold("none"))], ["clip", "dynamic", "none"]),
    ("class", "all", [Row(k, 2.0) for k in range(4)], list(CLASS_NAMES)),
    ("class", "bag, T-SHIRT/TOP, 1", [Row(3, 2.0), Row(0, 2.0), Row(1, 2.0)], ["Bag", "T-shirt/top", "Trouser"]),
]


@pytest.mark.parametrize("mode, text, rows, labels", ROWS, ids=[f"{m}: {t}" for m, t, _, _ in ROWS])
def test_compare_rows_vary_what_the_mode_names(mode, text, rows, labels):
    run = compare_run(mode=mode, strengths=text, scale=2.0)
    assert list(run.request.rows) == rows and list(run.labels) == labels


def test_rows_vary_from_the_left_columns_settings():
    run = compare_run(mode="schedule", strengths="constant, ramp-up", scale=2.0, interval="100-300",
                      threshold="dynamic", threshold_percentile=0.9)
    dynamic = Threshold("dynamic", 0.9)
    assert run.request.rows == (Row(2, 2.0, schedule=Schedule("constant", (100, 300)), threshold=dynamic),
                                Row(2, 2.0, schedule=Schedule("ramp-up", (100, 300)), threshold=dynamic))
    run = compare_run(mode="threshold", strengths="clip, dynamic", scale=2.0, interval="0-500", schedule="ramp-up",
                      threshold_percentile=0.8)
    assert run.request.rows == (Row(2, 2.0, schedule=Schedule("ramp-up", (0, 500)), threshold=Threshold("clip", 0.8)),
                                Row(2, 2.0, schedule=Schedule("ramp-up", (0, 500)), threshold=Threshold("dynamic", 0.8)))


def test_guidance_outside_a_rows_interval_is_off(bundle, tmp_path):
    """Five DDIM steps start from t = 999, 749, 500, 250, 0: the row guided at 0-400 gets its push
    in the last two only."""
    frames = list(make_handlers(bundle, tmp_path).compare(**compare_args(mode="interval", strengths="full, 0-400",
                                                                         scale=4.0)))
    recorded = frames[-1].recording.frames
    assert [f.timestep for f in recorded] == [999, 749, 500, 250, 0]
    norms = np.array([f.guidance_norm for f in recorded])  # (steps, rows)
    assert (norms[:, 0] > 0).all()
    assert (norms[:3, 1] == 0).all() and (norms[3:, 1] > 0).all()


def test_a_class_row_is_what_generate_gives_for_that_class(bundle, tmp_path):
    handlers = make_handlers(bundle, tmp_path, FINAL_ONLY)
    last = list(handlers.compare(**compare_args(mode="class", strengths="Bag, Trouser", scale=3.0)))[-1]
    assert "a class per row" in last.status
    tiles = tile_rows(last.x_t, rows=2, cols=3)
    for row, name in enumerate(("Bag", "Trouser")):
        alone = list(handlers.generate(**gen_args(class_name=name, scale=3.0, steps=5, num_images=3, seed=5)))[-1]
        assert np.abs(tile_rows(alone.x_t, 1, 3)[0].astype(int) - tiles[row]).max() <= 1


def test_row_statistics_read_each_row_against_its_own_class(bundle):
    images = torch.rand(6, 1, 16, 16) * 2 - 1
    per_class = runs.row_stats(bundle, compare_run(mode="class", strengths="Bag, Trouser", num_images=3), images)
    bags = arguments.Run(check(Request((Row(3), Row(3)), images_per_row=3), len(CLASS_NAMES), NUM_TIMESTEPS),
                         ("Bag", "Bag"), ("", ""), CLASS_NAMES)
    all_bags = runs.row_stats(bundle, bags, images)
    assert per_class.classifier_prob[0] == pytest.approx(all_bags.classifier_prob[0])
    assert per_class.classifier_prob[1] != pytest.approx(all_bags.classifier_prob[1])
    assert per_class.evaluator_prob[1] != pytest.approx(all_bags.evaluator_prob[1])


def test_strong_guidance_raises_the_classifier_confidence(bundle, tmp_path):
    frames = list(make_handlers(bundle, tmp_path, FINAL_ONLY).compare(**compare_args(strengths="0, 30", steps=10)))
    confidence = [float(v) for v in frames[-1].table["classifier"]]
    assert confidence[1] > confidence[0]


def test_a_nonfinite_step_becomes_a_readable_error(bundle, tmp_path, monkeypatch):
    def diverging(*args, **kwargs):
        raise NonFiniteError("sampling produced NaN or inf at step 0 (t=999); lower the guidance strength")
        yield

    monkeypatch.setattr(generation, "stream", lambda bundle, request: diverging())
    handlers = make_handlers(bundle, tmp_path)
    assert "lower the guidance strength" in error_message(lambda: list(handlers.generate(**gen_args())))


# -- the classifier's push -------------------------------------------------------------------------

def test_the_push_column_shows_each_steps_guidance_term_in_diverging_colours(bundle, tmp_path):
    handlers = make_handlers(bundle, tmp_path)
    frames = list(handlers.compare(**compare_args(strengths="0, 6")))
    assert frames[0].push is None and "first step" in frames[0].push_note
    run = frames[-1].recording.run
    steps = list(generation.stream(bundle, run.request))
    largest = max(range(len(steps)), key=lambda k: float(steps[k].guidance_term.mean(1).abs().max()))
    shown = [(frame, steps[k]) for k, frame in enumerate(frames[1:-1])] + [(frames[-1], steps[largest])]
    assert f"step {largest + 1} of {len(steps)}, the run's largest push" in frames[-1].push_note  # after the run
    for frame, step in shown:
        term = step.guidance_term.mean(1)  # one channel: the term itself, (B, H, W)
        s = float(term.abs().max())
        assert f"s = {s:.3g}" in frame.push_note
        assert frame.push.mode == "RGB" and frame.push.size == frame.x_t.size
        tiles = tile_rows(frame.push, rows=2, cols=3)  # (2, 3, H, W, 3)
        colours = render.PUSH_COLORS[(128 + 127 * term / s).round().to(torch.uint8).numpy()]  # (B, H, W, 3)
        assert (tiles.reshape(6, 16, 16, 3) == colours).all()
        assert (tiles[0] == 255).all()  # the unguided row w=0: white, a push of 0
    red, blue = render.PUSH_COLORS[255], render.PUSH_COLORS[1]
    assert red[0] > red[2] and blue[2] > blue[0] and (render.PUSH_COLORS[128] == 255).all()


def test_an_unguided_step_shows_no_push(bundle, tmp_path):
    frames = list(make_handlers(bundle, tmp_path).generate(**gen_args(scale=0.0, steps=2)))
    for frame in frames[1:]:
        assert "the push is 0" in frame.push_note
        assert (tile_rows(frame.push, rows=2, cols=2) == 255).all()  # 4 images in a 2 x 2 block, all white
        assert (chart_table(frame.norm_chart)[render.NORM_Y] == 0).all()


def test_colour_checkpoints_give_colour_images_in_every_column(colour_bundle, tmp_path):
    handlers = make_handlers(colour_bundle, tmp_path)
    frames = list(handlers.generate(**gen_args(steps=3, scale=6.0)))
    x_T = ItemNoise(3, range(4))((4, 3, 16, 16), "cpu")
    assert frames[0].x_t.mode == "RGB" and pixels_match(frames[0].x_t, x_T, ncols=2)
    expected = library_samples(colour_bundle, 1, 6.0, steps=3, num_images=4, seed=3)
    last = frames[-1]
    assert pixels_match(last.x_t, expected, ncols=2)
    for image in (last.x_t, last.pred_xstart, last.push):
        array = np.asarray(image)
        assert image.mode == "RGB" and not (array[..., 0] == array[..., 1]).all()  # not grey
    _, gif, _, _ = handlers.playback.finish(last.recording)
    with Image.open(gif["value"]) as animation:
        animation.seek(animation.n_frames - 1)
        array = np.asarray(animation.convert("RGB"))
        assert not (array[..., 0] == array[..., 1]).all()


# -- stopping, scrubbing, downloads ------------------------------------------------------------

def test_stop_ends_the_run_after_one_step(bundle, tmp_path):
    handlers = make_handlers(bundle, tmp_path)  # x_T comes first
    request = SimpleNamespace(session_hash="session-a")
    stream = handlers.generate(**gen_args(steps=50), request=request)
    assert "x_T" in next(stream).status
    handlers.stop(request)
    rest = list(stream)
    assert len(rest) == 1 and "stopped" in rest[0].status
    assert len(rest[0].recording.frames) == 1 and rest[0].recording.state == "stopped"


def test_a_stop_from_another_session_or_before_the_run_does_not_end_it(bundle, tmp_path):
    handlers = make_handlers(bundle, tmp_path)  # x_T comes first
    mine, other = SimpleNamespace(session_hash="mine"), SimpleNamespace(session_hash="other")
    handlers.stop(mine)  # pressed while nothing ran
    stream = handlers.generate(**gen_args(steps=4), request=mine)
    next(stream)
    handlers.stop(other)
    assert "done" in list(stream)[-1].status


def test_scrubbing_shows_x_T_and_each_recorded_step(bundle, tmp_path):
    handlers = make_handlers(bundle, tmp_path)
    frames = list(handlers.generate(**gen_args(steps=5)))
    recording = frames[-1].recording
    view = handlers.playback.show_frame(0, recording)
    assert view.pred_xstart is None and view.push is None and "x_T" in view.status
    assert np.array_equal(np.asarray(view.x_t), np.asarray(frames[0].x_t))
    view = handlers.playback.show_frame(3.0, recording)  # sliders send floats
    assert "step 3 of 5" in view.status and view.push_note == frames[3].push_note
    for name in ("x_t", "pred_xstart", "push"):
        assert np.array_equal(np.asarray(getattr(view, name)), np.asarray(getattr(frames[3], name)))
    for bad in (-1, 6, 2.5, "3"):
        assert "frame must be an integer from 0 to 5" in error_message(lambda: handlers.playback.show_frame(bad, recording))
    # The table moves with the images: p(c | x_t) of that step; the run's own numbers at its end.
    probs = [float(v) for v in view.table["classifier"]]
    assert probs == pytest.approx([float(recording.frames[2].class_prob[0])], abs=5e-4)
    assert view.table.equals(frames[-1].table) is False
    assert handlers.playback.show_frame(5, recording).table.equals(frames[-1].table)


def test_a_click_on_a_grid_shows_that_image_large_with_its_x_t_x0_and_push(bundle, tmp_path):
    handlers = make_handlers(bundle, tmp_path, FINAL_ONLY)
    frames = list(handlers.compare(**compare_args(strengths="0, 4")))  # 2 rows x 3 images of 16 px
    recording, up, pad = frames[-1].recording, DISPLAY.compare_upscale, DISPLAY.pad
    pitch = (16 + pad) * up
    at = SimpleNamespace(index=[pad * up + 2 * pitch + 5, pad * up + pitch + 5])  # row 2, image 3
    detail = handlers.playback.detail(5, recording, at)
    assert detail.detail["visible"] and "image 3 of row w=4" in detail.detail_note and "step 5 of 5" in detail.detail_note
    large = np.asarray(detail.detail["value"])
    item = 5  # row-major: row 1 (w=4), image 2
    samples = recording.images(recording.frames[-1])[item, 0]
    assert np.array_equal(large[:16 * 6:6, :16 * 6:6, 0], samples)  # x_t first, at 6x
    assert large.shape[1] == (3 * 16 + 2 * 2) * 6  # x_t, x-hat_0 and the push, 2 px apart
    on_padding = SimpleNamespace(index=[1, 1])
    assert not handlers.playback.detail(5, recording, on_padding).detail["visible"]
    assert "run a generation first" in error_message(lambda: handlers.playback.show_frame(0, None))


def test_finish_offers_the_scrubber_a_gif_with_the_push_and_a_png_with_parameters(bundle, tmp_path):
    handlers = make_handlers(bundle, tmp_path)
    frames = list(handlers.compare(**compare_args(strengths="0, 2", steps=7)))
    recording = frames[-1].recording
    scrub, gif, png, status = handlers.playback.finish(recording)
    assert "done" in status and "step 7 of 7" in status
    assert scrub["visible"] and scrub["maximum"] == 7 and scrub["value"] == 7
    with Image.open(gif["value"]) as animation:
        assert animation.format == "GIF" and animation.n_frames == 7
        animation.seek(6)
        picture = np.asarray(animation.convert("RGB"))
    gap = 2 * DISPLAY.pad * DISPLAY.upscale
    x_t, push = frames[-1].x_t, handlers.playback.show_frame(7, recording).push  # the last step's own push
    columns = picture[:x_t.height, 2 * (x_t.width + gap):3 * x_t.width + 2 * gap]  # the third column
    error = np.abs(columns.astype(int) - np.asarray(push))  # a GIF's palette holds 256 colours
    assert error.mean() < 2 and np.percentile(error, 99) < 20
    with Image.open(png["value"]) as image:
        image.load()
        parameters = json.loads(image.text[render.PARAMETERS_KEY])
        assert image.height == (2 * (16 + DISPLAY.pad) + DISPLAY.pad) * DISPLAY.png_upscale
    assert parameters == json.loads(recording.run.parameters())
    assert [row["label"] for row in parameters["rows"]] == ["w=0", "w=2"]
    assert png["visible"]


def test_a_stopped_run_offers_its_gif_but_no_png(bundle, tmp_path):
    handlers = make_handlers(bundle, tmp_path)  # x_T comes first
    request = SimpleNamespace(session_hash="s")
    stream = handlers.generate(**gen_args(steps=30), request=request)
    next(stream)
    handlers.stop(request)
    recording = list(stream)[-1].recording
    scrub, gif, png, status = handlers.playback.finish(recording)
    assert scrub["maximum"] == 1 and Path(gif["value"]).is_file()
    assert png["visible"] is False and "stopped" in status
    assert all(not part["visible"] for part in handlers.playback.finish(None)[:3])


def test_a_run_cancelled_mid_stream_is_reported_as_stopped(bundle, tmp_path):
    handlers = make_handlers(bundle, tmp_path)
    stream = handlers.generate(**gen_args(steps=20))
    frames = [next(stream) for _ in range(4)]  # x_T and three steps, then the client goes away
    stream.close()
    recording = frames[-1].recording
    scrub, gif, png, status = handlers.playback.finish(recording)
    assert recording.state == "stopped" and "step 3 of 20" in status and "stopped" in status
    assert scrub["maximum"] == 3 and not png["visible"]


def test_downloads_folder_stays_bounded(bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(downloads, "KEPT_DOWNLOADS", 3)
    handlers = make_handlers(bundle, tmp_path, FINAL_ONLY)
    for seed in range(3):
        handlers.playback.finish(list(handlers.generate(**gen_args(steps=2, num_images=1, seed=seed)))[-1].recording)
    assert len(list(handlers.playback.downloads.folder.iterdir())) == 3


# -- validation ----------------------------------------------------------------------------------

BAD_GENERATE = [
    (dict(class_name="Nope"), "class must be one of T-shirt/top, Trouser, Sneaker, Bag or an index from 0 to 3"),
    (dict(class_name=4), "index from 0 to 3"),
    (dict(class_name=-1), "index from 0 to 3"),
    (dict(class_name=True), "index from 0 to 3"),
    (dict(class_name=None), "index from 0 to 3"),
    (dict(scale=math.nan), "classifier guidance w must be a number from 0 to 100"),
    (dict(scale=math.inf), "from 0 to 100"),
    (dict(scale=-0.5), "from 0 to 100"),
    (dict(scale=1e9), "from 0 to 100"),
    (dict(scale="2"), "from 0 to 100"),
    (dict(scale=None), "from 0 to 100"),
    (dict(unet="both"), "unet must be one of unconditional, conditional"),
    (dict(cfg_scale=2.0), "needs the class-conditional UNet"),
    (dict(unet="conditional", cfg_scale=31), "w_cfg must be a number from 0 to 30"),
    (dict(unet="conditional", cfg_scale=-1), "w_cfg must be a number from 0 to 30"),
    (dict(steps=0), "steps must be an integer from 1 to 1000"),
    (dict(steps=-5), "from 1 to 1000"),
    (dict(steps=2.5), "from 1 to 1000"),
    (dict(steps=1001), "from 1 to 1000"),
    (dict(steps="10"), "from 1 to 1000"),
    (dict(steps=math.nan), "from 1 to 1000"),
    (dict(sampler="euler"), "sampler must be one of ddim, ddpm, dpm++2m, unipc"),
    (dict(sampler=None), "sampler must be one of ddim, ddpm, dpm++2m, unipc"),
    (dict(eta=-0.1), "eta must be a number from 0 to 1"),
    (dict(eta=1.5), "eta must be a number from 0 to 1"),
    (dict(eta=math.nan), "eta must be a number from 0 to 1"),
    (dict(eta=0.5, sampler="dpm++2m"), "eta applies to the DDIM sampler only"),
    (dict(num_images=0), "number of images must be an integer from 1 to 16"),
    (dict(num_images=17), "from 1 to 16"),
    (dict(num_images=1.5), "from 1 to 16"),
    (dict(seed=-1), "seed must be an integer from 0 to 2147483647"),
    (dict(seed=2**31), "from 0 to 2147483647"),
    (dict(seed=0.5), "from 0 to 2147483647"),
    (dict(seed=[1]), "from 0 to 2147483647"),
    (dict(num_images=16, steps=251), "images x steps must be at most 4000"),
    (dict(interval="200"), "a guidance interval is 'full' or two timesteps like '200-800'; got '200'"),
    (dict(interval=None), "a guidance interval is 'full' or two timesteps"),
    (dict(interval="800-200"), "a guidance interval needs 0 <= t_lo <= t_hi <= 999, got 800-200"),
    (dict(interval="0-1000"), "t_hi <= 999"),
    (dict(interval="1" * 5000 + "-2"), "interval must be text of at most 200 characters"),
    (dict(schedule="linear"), "schedule must be one of constant, ramp-up, ramp-down; got 'linear'"),
    (dict(schedule=None), "schedule must be one of constant, ramp-up, ramp-down"),
    (dict(threshold="static"), "threshold must be one of clip, dynamic, none; got 'static'"),
    (dict(threshold_percentile=0.4), "threshold percentile must be a number from 0.5 to 1"),
    (dict(threshold_percentile="0.9"), "threshold percentile must be a number from 0.5 to 1"),
]


@pytest.mark.parametrize("changes, message", BAD_GENERATE, ids=[repr(c)[:60] for c, _ in BAD_GENERATE])
def test_generate_rejects_bad_arguments_naming_the_valid_range(bundle, tmp_path, changes, message):
    handlers = make_handlers(bundle, tmp_path)
    assert message in error_message(lambda: next(handlers.generate(**gen_args(**changes))))


@pytest.mark.parametrize("changes, message", BAD_COMPARE, ids=[repr(c)[:60] for c, _ in BAD_COMPARE])
def test_compare_rejects_bad_arguments_naming_the_valid_range(bundle, tmp_path, changes, message):
    handlers = make_handlers(bundle, tmp_path)
    assert message in error_message(lambda: next(handlers.compare(**compare_args(**changes))))


def test_classes_are_accepted_by_name_in_any_case_or_by_index():
    runs_ = [arguments.generate_run(Settings(**gen_args(class_name=name)), class_names=CLASS_NAMES,
                                    num_timesteps=NUM_TIMESTEPS)
             for name in ("Bag", "bag", " BAG ", 3, 3.0, "3")]
    assert {run.request.rows[0].class_label for run in runs_} == {3}


def test_integral_floats_from_sliders_become_integers():
    run = arguments.generate_run(Settings(**gen_args(steps=6.0, seed=3.0, num_images=4.0)), class_names=CLASS_NAMES,
                                 num_timesteps=NUM_TIMESTEPS)
    assert (run.request.steps, run.request.seed, run.request.images_per_row) == (6, 3, 4)
    assert all(type(v) is int for v in (run.request.steps, run.request.seed, run.request.images_per_row))


FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@pytest.mark.parametrize("defaults", [AppDefaults(), DEFAULTS], ids=["built-in", "shipped"])
def test_the_defaults_and_every_example_are_valid_requests(defaults):
    arguments.check_defaults(defaults, FASHION, 1000)
    for example in EXAMPLES:
        assert example.tab in ("generate", "compare")
        assert example.changes.get("class_name", "Bag") in FASHION
        settings = example.settings(defaults, FASHION)
        if example.tab == "generate":
            arguments.generate_run(settings.settings(FASHION), class_names=FASHION, num_timesteps=1000)
        else:
            arguments.compare_run(settings.settings(FASHION), settings.strengths, settings.compare, class_names=FASHION,
                                  num_timesteps=1000)


def test_every_compare_mode_and_sampler_is_on_the_page_with_a_valid_example():
    assert [value for _, value in COMPARE_CHOICES] == list(arguments.VARY) == list(ROW_VALUES)
    assert [value for _, value in SAMPLER_CHOICES] == list(SAMPLERS)
    for mode, values in ROW_VALUES.items():
        assert len(compare_run(mode=mode, strengths=values.example).request.rows) > 1


# -- rendering -------------------------------------------------------------------------------------

def test_grids_are_nearest_neighbour_upscaled_and_their_labels_are_text_beside_them():
    run = compare_run(strengths="0, 1")
    images = np.random.default_rng(0).integers(0, 256, (6, 1, 16, 16), dtype=np.uint8)
    image = render.grid(images, run)  # the page's: no label in the bitmap
    up = DISPLAY.compare_upscale
    assert np.array_equal(np.asarray(image), np.asarray(grid(images, ncols=3, pad=DISPLAY.pad, upscale=up)))
    assert np.array_equal(tile_rows(image, rows=2, cols=3)[0, 0], images[0, 0])
    labels = render.row_labels(run, image.height)  # one line of text per row, each a row's height
    row = (16 + DISPLAY.pad) * up
    assert labels.count("height:%dpx" % row) == 2 and ">w=0<" in labels and ">w=1<" in labels
    assert render.row_labels(arguments.generate_run(Settings(**gen_args()), class_names=CLASS_NAMES,
                                                    num_timesteps=NUM_TIMESTEPS), image.height) == ""
    labelled = render.grid(images, run, labels=True)  # the downloaded PNG keeps them in the picture
    assert labelled.height == image.height and labelled.width > image.width
    assert np.array_equal(np.asarray(labelled)[:, labelled.width - image.width:], np.asarray(image))
    one_row = render.grid(images[:4], arguments.generate_run(Settings(**gen_args()), class_names=CLASS_NAMES,
                                                           num_timesteps=NUM_TIMESTEPS))
    assert one_row.width == 2 * (16 + DISPLAY.pad) * DISPLAY.upscale + DISPLAY.pad * DISPLAY.upscale  # 2 x 2 at 4x


def test_chart_colours_shade_strengths_and_tell_other_rows_apart():
    run = compare_run(mode="classifier-vs-free", strengths="4, 0")
    colors = render.chart_colors(run)
    brightness = {label: sum(int(c[i:i + 2], 16) for i in (1, 3, 5)) for label, c in colors.items()}
    assert brightness["classifier w=0"] > brightness["classifier w=4"]
    assert brightness["free w_cfg=0"] > brightness["free w_cfg=4"]
    assert colors["classifier w=4"] != colors["free w_cfg=4"]
    colors = render.chart_colors(compare_run(mode="class", strengths="all"))
    assert list(colors) == list(CLASS_NAMES) and len(set(colors.values())) == 4


# -- the page and the launcher ---------------------------------------------------------------------

def test_the_page_exposes_generate_and_compare_only_with_the_new_arguments_last(bundle, tmp_path):
    handlers = make_handlers(bundle, tmp_path)
    demo = ui.build(handlers)
    api = demo.get_api_info()["named_endpoints"]
    assert sorted(api) == ["/compare", "/generate"]
    for name, args in (("/generate", gen_args()), ("/compare", compare_args())):
        parameters = api[name]["parameters"]
        assert [p["parameter_name"] for p in parameters] == [*args, "model"]  # the model choice came last
        assert all(p["parameter_has_default"] for p in parameters)
        assert parameters[-1]["parameter_default"] == handlers.model.name
    defaults = {p["parameter_name"]: p["parameter_default"] for p in api["/generate"]["parameters"]}
    assert defaults["interval"] == handlers.defaults.interval and defaults["sampler"] == handlers.defaults.sampler
    info = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "info")
    assert f"UNet on {bundle.backend}" in info.value and "running on cpu" in info.value
    assert [o["label"] for o in api["/generate"]["returns"]][:5] == [
        "x_t", "x̂_0 (predicted from x_t)", "status", "guidance classifier's belief in the class",
        "per row: mean p(c | x) under each network, diversity and seconds per image"]  # as before the push was added


def test_launch_defaults_are_local_and_private(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    args = parse_args([])
    assert args.host == "127.0.0.1" and args.share is False
    assert args.checkpoints is None  # the shipped pixel bundle, and the latent one where it is present
    assert args.backend == "auto" and args.frame_interval == DISPLAY.frame_interval_s == 0.5


@pytest.mark.parametrize("argv", [["--frame-interval", "-1"], ["--frame-interval", "nan"], ["--backend", "nope"]])
def test_launch_refuses_bad_options(argv, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert argv[0] in capsys.readouterr().err


def test_launch_without_checkpoints_explains_and_exits(tmp_path, capsys):
    assert launch(parse_args(["--checkpoints", str(tmp_path / "missing"), "--threads", "1"])) == 2
    assert "does not exist" in capsys.readouterr().err


def test_importing_app_loads_nothing_heavy():
    code = "import sys, app; print(sorted(m for m in ('torch', 'gradio', 'demo.launch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_request_over_the_time_bound_is_refused_naming_it_and_one_within_runs(bundle, tmp_path):
    handlers = make_handlers(bundle, tmp_path, FINAL_ONLY)
    handlers.timings.batch_step_seconds[handlers.model.name] = 0.01  # as if measured: 10 ms per image-step
    bound = handlers.limits.max_seconds  # 10 s: 1000 image-steps at that cost
    within = list(handlers.generate(**gen_args(num_images=10, steps=100)))  # 1000 image-steps: 10 s
    assert "done" in within[-1].status
    message = error_message(lambda: next(handlers.generate(**gen_args(num_images=10, steps=101))))
    assert message.startswith("this request would take about 10 s here (10 images x 101 steps)")
    assert f"at most {bound:g} s" in message and "use at most 100 steps" in message
    # A classifier-free row runs the UNet twice: 5 images x 101 steps is over the bound too.
    message = error_message(lambda: next(handlers.generate(**gen_args(num_images=5, steps=101, unet="conditional",
                                                                      cfg_scale=1.0))))
    assert "(5 images x 101 steps)" in message
    assert handlers.timings.seconds(handlers.model.name, arguments.generate_run(
        Settings(**gen_args(num_images=4, steps=10)), class_names=CLASS_NAMES, num_timesteps=NUM_TIMESTEPS)) == \
        pytest.approx(0.4)


def test_a_run_still_going_at_the_time_bound_ends_there(bundle, tmp_path, monkeypatch):
    """A clock that moves 1 s each time it is read, against a 2.5 s bound: the start reads it (0 s)
    and once more for whether x_T is due (1 s), then each step once (with FINAL_ONLY no frame is
    due before the last): step 1 ends at 2 s, step 2 at 3 s is past the bound, and the run ends
    there with what it has."""
    ticks = iter(range(1000))
    monkeypatch.setattr(handlers_module, "time", SimpleNamespace(monotonic=lambda: float(next(ticks))))
    handlers = Handlers(bundle, display=FINAL_ONLY, downloads=tmp_path, limits=replace(LIMITS, max_seconds=2.5))
    frames = list(handlers.generate(**gen_args(steps=8)))
    recording = frames[-1].recording
    assert recording.state == "cut" and len(recording.frames) == 2 and len(frames) == 1
    assert "stopped at the time one request may take" in frames[-1].status


def test_the_request_bound_is_a_server_option():
    assert parse_args([]).max_seconds == LIMITS.max_seconds
    assert parse_args(["--max-seconds", "30"]).max_seconds == 30
    for bad in ("0", "-1", "nan"):
        with pytest.raises(SystemExit) as exit_:
            parse_args(["--max-seconds", bad])
        assert exit_.value.code == 2
