"""The app's handlers called directly, without a server: streaming, throttling, shared noise,
stopping, scrubbing, downloads, validation, the page's wiring and the launcher."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from app_fixtures import CLASS_NAMES, NUM_TIMESTEPS, bundle, checkpoint_dir, library_samples, pixels_match  # noqa: F401
from demo import handlers as handlers_module
from demo import render, runs, ui, validate
from demo.examples import EXAMPLES
from demo.handlers import Handlers
from demo.launch import launch, parse_args
from demo.settings import DEFAULTS, DISPLAY, Display
from guidance.guide import NonFiniteError
from guidance.images import grid
from guidance.generation import ItemNoise

REPO = Path(__file__).resolve().parent.parent
EVERY_STEP = Display(frame_interval_s=0.0)
FINAL_ONLY = Display(frame_interval_s=1e9)


def make_handlers(bundle, tmp_path, display: Display = EVERY_STEP) -> Handlers:
    return Handlers(bundle, "cpu", display=display, downloads=tmp_path / "downloads")


def gen_args(**changes) -> dict:
    args = dict(class_name="Trouser", scale=2.0, unet="unconditional", cfg_scale=0.0, steps=6, sampler="ddim",
                eta=0.0, num_images=4, seed=3)
    return {**args, **changes}


def compare_args(**changes) -> dict:
    args = dict(class_name="Sneaker", strengths="0, 4", mode="classifier", scale=0.0, unet="unconditional",
                cfg_scale=0.0, steps=5, sampler="ddim", eta=0.0, num_images=3, seed=5)
    return {**args, **changes}


def error_message(call) -> str:
    """The message of the gr.Error that call() raises."""
    with pytest.raises(gr.Error) as caught:
        call()
    return caught.value.message


def tile_rows(image: Image.Image, rows: int, cols: int, size: int = 16) -> np.ndarray:
    """(rows, cols, H, W) tiles cut back out of a grid drawn with the default pad and upscale
    (its row labels, if any, sit on the left and are dropped)."""
    pitch = (size + DISPLAY.pad) * DISPLAY.upscale
    array = np.asarray(image.convert("L"))
    array = array[:, array.shape[1] - (cols * pitch + DISPLAY.pad * DISPLAY.upscale):]
    start, tile = DISPLAY.pad * DISPLAY.upscale, size * DISPLAY.upscale
    corners = [[(start + r * pitch, start + c * pitch) for c in range(cols)] for r in range(rows)]
    return np.array([[array[y:y + tile, x:x + tile] for y, x in line] for line in corners])


# -- streaming --------------------------------------------------------------------------------

def test_generate_streams_x_T_then_every_step_then_the_seeded_samples(bundle, tmp_path):
    frames = list(make_handlers(bundle, tmp_path).generate(**gen_args()))
    assert len(frames) == 1 + 6  # x_T, then one frame per step (no throttling)
    first, last = frames[0], frames[-1]
    assert first.pred_xstart is None and "x_T" in first.status
    shape = (4, 1, 16, 16)
    x_T = ItemNoise(3, range(4))(shape, "cpu")
    assert pixels_match(first.x_t, x_T, ncols=2)  # 4 images lie in a 2 x 2 block
    assert "done" in last.status and "step 6 / 6" in last.status
    expected = library_samples(bundle, CLASS_NAMES.index("Trouser"), 2.0, steps=6, num_images=4, seed=3)
    assert pixels_match(last.x_t, expected, ncols=2)
    parameters = json.loads(last.x_t.info[render.PARAMETERS_KEY])
    assert parameters["seed"] == 3 and parameters["class_name"] == "Trouser" and parameters["steps"] == 6
    assert [f.recording for f in frames].count(last.recording) == len(frames)  # one recording, growing
    assert len(last.recording.frames) == 6 and last.recording.state == "finished"


def test_frames_are_throttled_but_the_first_and_last_always_go_out(bundle, tmp_path):
    frames = list(make_handlers(bundle, tmp_path, FINAL_ONLY).generate(**gen_args(steps=8)))
    assert len(frames) == 2
    assert "x_T" in frames[0].status and "done" in frames[1].status
    assert len(frames[1].recording.frames) == 8  # every step is still recorded for scrubbing


def test_chart_and_table_follow_the_run(bundle, tmp_path):
    frames = list(make_handlers(bundle, tmp_path).compare(**compare_args(strengths="0, 1, 4")))
    first_chart = frames[0].chart
    assert isinstance(first_chart, gr.LinePlot)  # the first value of a run also sets axis range and colours
    final_chart = frames[-1].chart
    assert isinstance(final_chart, pd.DataFrame)
    assert len(final_chart) == 5 * 3 and sorted(set(final_chart[render.CHART_X])) == [1, 2, 3, 4, 5]
    assert final_chart[render.CHART_Y].between(0, 1).all()
    table = frames[-1].table
    assert list(table["row"]) == ["w=0", "w=1", "w=4"]
    assert list(table.columns) == list(render.TABLE_COLUMNS)  # the tiny checkpoint has an evaluator
    for column in render.TABLE_COLUMNS[1:]:
        assert all(0 <= float(v) <= 1 for v in table[column])


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


def test_classifier_vs_free_rows_pair_each_method_alone(bundle, tmp_path):
    settings = validate.compare_settings(**compare_args(strengths="1, 3", mode="classifier-vs-free"),
                                         class_names=CLASS_NAMES, num_timesteps=NUM_TIMESTEPS)
    assert settings.rows == (runs.Row("classifier w=1", 1.0, None), runs.Row("free w_cfg=1", 0.0, 1.0, "w_cfg"),
                             runs.Row("classifier w=3", 3.0, None), runs.Row("free w_cfg=3", 0.0, 3.0, "w_cfg"))
    guidance = settings.guidance()
    assert guidance.scale.tolist() == [1.0] * 3 + [0.0] * 3 + [3.0] * 3 + [0.0] * 3
    # The unconditional rows share the classifier-free batch with w_cfg = -1, which is eps(x_t, null).
    assert guidance.cfg_scale.tolist() == [-1.0] * 3 + [1.0] * 3 + [-1.0] * 3 + [3.0] * 3
    frames = list(make_handlers(bundle, tmp_path, FINAL_ONLY).compare(**compare_args(strengths="1, 3",
                                                                                     mode="classifier-vs-free")))
    assert list(frames[-1].table["row"]) == [row.label for row in settings.rows]


def test_unconditional_rows_in_a_mixed_batch_match_the_unconditional_model(bundle, tmp_path):
    handlers = make_handlers(bundle, tmp_path, FINAL_ONLY)
    mixed = list(handlers.compare(**compare_args(strengths="2", mode="classifier-vs-free")))[-1]
    alone = list(handlers.generate(**gen_args(class_name="Sneaker", scale=2.0, steps=5, num_images=3, seed=5)))[-1]
    assert np.abs(tile_rows(mixed.x_t, 2, 3)[0].astype(int) - tile_rows(alone.x_t, 1, 3)[0]).max() <= 1


def test_strong_guidance_raises_the_classifier_confidence(bundle, tmp_path):
    frames = list(make_handlers(bundle, tmp_path, FINAL_ONLY).compare(**compare_args(strengths="0, 30", steps=10)))
    confidence = [float(v) for v in frames[-1].table["classifier"]]
    assert confidence[1] > confidence[0]


def test_a_nonfinite_step_becomes_a_readable_error(bundle, tmp_path, monkeypatch):
    def diverging(*args, **kwargs):
        raise NonFiniteError("sampling produced NaN or inf at step 0 (t=999); lower the guidance strength")
        yield

    monkeypatch.setattr(runs, "steps", diverging)
    handlers = make_handlers(bundle, tmp_path)
    assert "lower the guidance strength" in error_message(lambda: list(handlers.generate(**gen_args())))


# -- stopping, scrubbing, downloads ------------------------------------------------------------

def test_stop_ends_the_run_after_one_step(bundle, tmp_path):
    handlers = make_handlers(bundle, tmp_path, FINAL_ONLY)
    request = SimpleNamespace(session_hash="session-a")
    stream = handlers.generate(**gen_args(steps=50), request=request)
    assert "x_T" in next(stream).status
    handlers.stop(request)
    rest = list(stream)
    assert len(rest) == 1 and "stopped" in rest[0].status
    assert len(rest[0].recording.frames) == 1 and rest[0].recording.state == "stopped"


def test_a_stop_from_another_session_or_before_the_run_does_not_end_it(bundle, tmp_path):
    handlers = make_handlers(bundle, tmp_path, FINAL_ONLY)
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
    view = handlers.show_frame(0, recording)
    assert view.pred_xstart is None and "x_T" in view.status
    assert np.array_equal(np.asarray(view.x_t), np.asarray(frames[0].x_t))
    view = handlers.show_frame(3.0, recording)  # sliders send floats
    assert "step 3 / 5" in view.status
    assert np.array_equal(np.asarray(view.x_t), np.asarray(frames[3].x_t))
    assert np.array_equal(np.asarray(view.pred_xstart), np.asarray(frames[3].pred_xstart))
    for bad in (-1, 6, 2.5, "3"):
        assert "frame must be an integer from 0 to 5" in error_message(lambda: handlers.show_frame(bad, recording))
    assert "run a generation first" in error_message(lambda: handlers.show_frame(0, None))


def test_finish_offers_the_scrubber_a_gif_and_a_png_with_parameters(bundle, tmp_path):
    handlers = make_handlers(bundle, tmp_path)
    recording = list(handlers.compare(**compare_args(strengths="0, 2", steps=7)))[-1].recording
    scrub, gif, png, status = handlers.finish(recording)
    assert "done" in status and "step 7 / 7" in status
    assert scrub["visible"] and scrub["maximum"] == 7 and scrub["value"] == 7
    with Image.open(gif["value"]) as animation:
        assert animation.format == "GIF" and animation.n_frames == 7
    with Image.open(png["value"]) as image:
        image.load()
        parameters = json.loads(image.text[render.PARAMETERS_KEY])
        assert image.height == (2 * (16 + DISPLAY.pad) + DISPLAY.pad) * DISPLAY.png_upscale
    assert parameters == json.loads(recording.settings.parameters())
    assert [row["label"] for row in parameters["rows"]] == ["w=0", "w=2"]
    assert png["visible"]


def test_a_stopped_run_offers_its_gif_but_no_png(bundle, tmp_path):
    handlers = make_handlers(bundle, tmp_path, FINAL_ONLY)
    request = SimpleNamespace(session_hash="s")
    stream = handlers.generate(**gen_args(steps=30), request=request)
    next(stream)
    handlers.stop(request)
    recording = list(stream)[-1].recording
    scrub, gif, png, status = handlers.finish(recording)
    assert scrub["maximum"] == 1 and Path(gif["value"]).is_file()
    assert png["visible"] is False and "stopped" in status
    assert all(not part["visible"] for part in handlers.finish(None)[:3])


def test_a_run_cancelled_mid_stream_is_reported_as_stopped(bundle, tmp_path):
    handlers = make_handlers(bundle, tmp_path)
    stream = handlers.generate(**gen_args(steps=20))
    frames = [next(stream) for _ in range(4)]  # x_T and three steps, then the client goes away
    stream.close()
    recording = frames[-1].recording
    scrub, gif, png, status = handlers.finish(recording)
    assert recording.state == "stopped" and "step 3 / 20" in status and "stopped" in status
    assert scrub["maximum"] == 3 and not png["visible"]


def test_downloads_folder_stays_bounded(bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(handlers_module, "KEPT_DOWNLOADS", 3)
    handlers = make_handlers(bundle, tmp_path, FINAL_ONLY)
    for seed in range(3):
        handlers.finish(list(handlers.generate(**gen_args(steps=2, num_images=1, seed=seed)))[-1].recording)
    assert len(list(handlers.downloads.iterdir())) == 3


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
    (dict(sampler="euler"), "sampler must be one of ddim, ddpm"),
    (dict(sampler=None), "sampler must be one of ddim, ddpm"),
    (dict(eta=-0.1), "eta must be a number from 0 to 1"),
    (dict(eta=1.5), "eta must be a number from 0 to 1"),
    (dict(eta=math.nan), "eta must be a number from 0 to 1"),
    (dict(num_images=0), "number of images must be an integer from 1 to 16"),
    (dict(num_images=17), "from 1 to 16"),
    (dict(num_images=1.5), "from 1 to 16"),
    (dict(seed=-1), "seed must be an integer from 0 to 2147483647"),
    (dict(seed=2**31), "from 0 to 2147483647"),
    (dict(seed=0.5), "from 0 to 2147483647"),
    (dict(seed=[1]), "from 0 to 2147483647"),
    (dict(num_images=16, steps=251), "images x steps must be at most 4000"),
]


@pytest.mark.parametrize("changes, message", BAD_GENERATE, ids=[repr(c) for c, _ in BAD_GENERATE])
def test_generate_rejects_bad_arguments_naming_the_valid_range(bundle, tmp_path, changes, message):
    handlers = make_handlers(bundle, tmp_path)
    assert message in error_message(lambda: next(handlers.generate(**gen_args(**changes))))


BAD_COMPARE = [
    (dict(strengths=""), "must list from 1 to 10 values"),
    (dict(strengths=", ,"), "must list from 1 to 10 values"),
    (dict(strengths=", ".join(["1"] * 11)), "must list from 1 to 10 values"),
    (dict(strengths="1, two"), "'two' is not a number"),
    (dict(strengths="0, 2, 2.0"), "must differ from each other; 2 appears twice"),
    (dict(strengths="1, nan"), "classifier guidance strengths must be a number from 0 to 100"),
    (dict(strengths="-1"), "from 0 to 100"),
    (dict(strengths="1e400"), "from 0 to 100"),
    (dict(strengths="0, 40", mode="classifier-free"), "classifier-free strengths must be a number from 0 to 30"),
    (dict(strengths="1" + " " * 300), "at most 200 characters"),
    (dict(strengths=3), "at most 200 characters"),
    (dict(mode="both"), "compare must be one of classifier, classifier-free, classifier-vs-free"),
    (dict(strengths="0, 1, 2, 3, 4, 5", mode="classifier-vs-free"), "at most 10 rows"),
    (dict(strengths="0, 1, 2, 3, 4, 5, 6", num_images=16), "at most 80 images per request"),
    (dict(strengths="0, 1", num_images=10, steps=201), "images x steps must be at most 4000"),
    (dict(scale=-1, mode="classifier-free"), "classifier guidance w must be a number from 0 to 100"),
]


@pytest.mark.parametrize("changes, message", BAD_COMPARE, ids=[repr(c) for c, _ in BAD_COMPARE])
def test_compare_rejects_bad_arguments_naming_the_valid_range(bundle, tmp_path, changes, message):
    handlers = make_handlers(bundle, tmp_path)
    assert message in error_message(lambda: next(handlers.compare(**compare_args(**changes))))


def test_classes_are_accepted_by_name_or_index():
    assert validate.class_index("Bag", CLASS_NAMES) == 3
    assert validate.class_index(1, CLASS_NAMES) == validate.class_index(1.0, CLASS_NAMES) == 1


FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def test_the_defaults_and_every_example_are_valid_requests():
    validate.generate_settings(FASHION[DEFAULTS.class_index], DEFAULTS.scale, DEFAULTS.unet, DEFAULTS.cfg_scale,
                               DEFAULTS.steps, DEFAULTS.sampler, DEFAULTS.eta, DEFAULTS.num_images, DEFAULTS.seed,
                               class_names=FASHION, num_timesteps=1000)
    validate.compare_settings(FASHION[DEFAULTS.class_index], DEFAULTS.strengths, DEFAULTS.compare, DEFAULTS.scale,
                              DEFAULTS.unet, DEFAULTS.cfg_scale, DEFAULTS.steps, DEFAULTS.sampler, DEFAULTS.eta,
                              DEFAULTS.num_images, DEFAULTS.seed, class_names=FASHION, num_timesteps=1000)
    for example in EXAMPLES:
        assert example.class_name in FASHION and example.tab in ("generate", "compare")
        common = (example.scale, example.unet, example.cfg_scale, example.steps, example.sampler, example.eta,
                  example.num_images, example.seed)
        if example.tab == "generate":
            validate.generate_settings(example.class_name, *common, class_names=FASHION, num_timesteps=1000)
        else:
            validate.compare_settings(example.class_name, example.strengths, example.compare, *common,
                                      class_names=FASHION, num_timesteps=1000)


# -- rendering -------------------------------------------------------------------------------------

def test_grids_are_nearest_neighbour_upscaled_and_label_their_rows(bundle):
    settings = validate.compare_settings(**compare_args(strengths="0, 1"), class_names=CLASS_NAMES,
                                         num_timesteps=NUM_TIMESTEPS)
    images = np.random.default_rng(0).integers(0, 256, (6, 1, 16, 16), dtype=np.uint8)
    image = render.grid(images, settings)
    plain = grid(images, ncols=3, pad=DISPLAY.pad, upscale=DISPLAY.upscale)
    assert image.height == plain.height and image.width > plain.width  # a label strip on the left
    assert np.array_equal(np.asarray(image)[:, image.width - plain.width:], np.asarray(plain))
    tiles = tile_rows(image, rows=2, cols=3)
    assert np.array_equal(tiles[0, 0][::DISPLAY.upscale, ::DISPLAY.upscale], images[0, 0])


def test_chart_colours_darken_with_strength_per_guidance_kind():
    rows = (runs.Row("w=4", 4.0, None), runs.Row("w=0", 0.0, None), runs.Row("free", 0.0, 2.0, "w_cfg"))
    settings = runs.RunSettings(0, "x", rows, 2, 3, "ddim", 0.0, 0)
    colors = render.chart_colors(settings)
    brightness = {label: sum(int(c[i:i + 2], 16) for i in (1, 3, 5)) for label, c in colors.items()}
    assert brightness["w=0"] > brightness["w=4"]
    assert colors["free"] != colors["w=4"]


# -- the page and the launcher ---------------------------------------------------------------------

def test_the_page_exposes_generate_and_compare_only(bundle, tmp_path):
    demo = ui.build(make_handlers(bundle, tmp_path))
    api = demo.get_api_info()["named_endpoints"]
    assert sorted(api) == ["/compare", "/generate"]
    assert [p["parameter_name"] for p in api["/generate"]["parameters"]] == list(gen_args())
    assert [p["parameter_name"] for p in api["/compare"]["parameters"]] == list(compare_args())


def test_launch_defaults_are_local_and_private(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    args = parse_args([])
    assert args.host == "127.0.0.1" and args.share is False
    assert args.checkpoints == "checkpoints/fashion-mnist"


def test_launch_without_checkpoints_explains_and_exits(tmp_path, capsys):
    assert launch(parse_args(["--checkpoints", str(tmp_path / "missing"), "--threads", "1"])) == 2
    assert "does not exist" in capsys.readouterr().err


def test_importing_app_loads_nothing_heavy():
    code = "import sys, app; print(sorted(m for m in ('torch', 'gradio', 'demo.launch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
