"""The functions behind the buttons and the API endpoints.

generate and compare are generators: they turn their raw arguments into a Run (arguments.py),
then stream frames of guidance.generation.stream(bundle, request) recorded by runs.py and drawn
by render.py. Each frame is a StreamOutputs tuple; frames go out at most once per
Display.frame_interval_s (always the first and the last; 0 sends every step). A ValueError (a
bad argument) or a NonFiniteError (a run that diverged) reaches the caller as gr.Error, in one
place: user_errors.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import gradio as gr
import pandas as pd
from PIL import Image

from guidance import generation
from guidance.checkpoints import Bundle
from guidance.guide import NonFiniteError
from guidance.messages import choice, integer
from guidance.samplers import Step

from . import arguments, render, runs
from .arguments import Run
from .runs import Frame, Recording, RowStats
from .settings import DISPLAY, LIMITS, AppDefaults, Display, Limits, app_defaults
from .zerogpu import on_gpu

KEPT_DOWNLOADS = 64  # files kept in the downloads folder; older ones are deleted
NEW = AppDefaults()  # the Python defaults of the arguments added after the first release
log = logging.getLogger(__name__)


class StreamOutputs(NamedTuple):
    """One streamed frame, in the order of the output components (new ones appended, so API
    callers that index the first five keep working)."""
    x_t: Image.Image                 # the current x_t grid (x_T first, the samples last)
    pred_xstart: Image.Image | None  # the current x-hat_0 grid (None before the first step)
    status: str                      # Markdown: step, state, time
    chart: pd.DataFrame | gr.LinePlot  # mean p(c | x_t) per row and step so far (see _outputs)
    table: pd.DataFrame              # per-row confidence and diversity
    push: Image.Image | None         # the guidance term k_t w(t) g, diverging colours (None before step 1)
    push_note: str                   # what the push colours mean at this step, with its scale s
    norm_chart: pd.DataFrame | gr.LinePlot  # mean ||k_t w(t) g|| per row and step so far
    recording: Recording             # kept in the session for scrubbing and downloads


class AfterRun(NamedTuple):
    """Updates (gr.update) of the scrubber and the two download buttons, and the final status."""
    scrub: dict
    gif: dict
    png: dict
    status: str | dict


class FrameView(NamedTuple):
    x_t: Image.Image
    pred_xstart: Image.Image | None
    status: str
    push: Image.Image | None
    push_note: str


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """A bad argument (ValueError, from the library's checks or the app's limits) or a diverged
    run (NonFiniteError) becomes gr.Error with the same message, which Gradio shows the caller."""
    try:
        yield
    except (ValueError, NonFiniteError) as err:
        raise gr.Error(str(err)) from None


class Model(NamedTuple):
    """One loaded checkpoint bundle the page offers, under the name the API takes."""
    name: str                       # "pixel" or "latent" (the bundle's space), or the folder's name
    bundle: Bundle
    defaults: AppDefaults           # what the page shows when this model is picked


def models_of(bundles: Sequence[Bundle]) -> list[Model]:
    """A Model per bundle with its folder's defaults; named by space, or by folder when two share one."""
    spaces = [b.space for b in bundles]
    return [Model(b.space if spaces.count(b.space) == 1 else Path(b.folder).name, b, app_defaults(b.folder))
            for b in bundles]


@dataclass
class RunProgress:
    """Where a run in progress is; written by the run after every step, read by Stop."""
    steps_done: int = 0
    stop_came: int | None = None  # steps_done when Stop came; None while it has not
    superseded: bool = False      # a newer live run of the session took over: send nothing more


class StopRequests:
    """The run in progress of each session, and Stop requests for it: the Stop button, or the
    client going away (the page's unload event). A run checks its own progress after every step,
    so Stop ends it within one step (cancelling through Gradio alone waits for the next streamed
    frame). Only running sessions are kept: a Stop with nothing running is dropped, and sessions
    that come and go leave nothing behind."""

    def __init__(self):
        self._runs: dict[str, RunProgress] = {}
        self._lock = threading.Lock()

    def start(self, session: str | None) -> RunProgress:
        """A new run for session; a Stop pressed before it does not end it."""
        progress = RunProgress()
        if session is not None:
            with self._lock:
                self._runs[session] = progress
        return progress

    def request(self, session: str | None, superseded: bool = False) -> None:
        """Stop the session's run after its current step; superseded: a newer run replaces it, so
        it ends without another frame."""
        with self._lock:
            progress = self._runs.get(session)
            if progress is not None and progress.stop_came is None:
                progress.stop_came, progress.superseded = progress.steps_done, superseded

    def end(self, session: str | None, progress: RunProgress) -> None:
        with self._lock:
            if self._runs.get(session) is progress:  # not a newer run of the same session
                del self._runs[session]


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None)


class Handlers:
    """The app's handlers, bound to loaded checkpoint bundles: one Bundle, or Models (the first
    is the one the page opens on). defaults: what the page shows first for a single bundle (by
    default those of its folder, settings.app_defaults)."""

    def __init__(self, bundle: Bundle | Sequence[Model], display: Display = DISPLAY, limits: Limits = LIMITS,
                 downloads: str | Path | None = None, defaults: AppDefaults | None = None):
        if isinstance(bundle, Bundle):
            bundle = [Model(bundle.space, bundle, app_defaults(bundle.folder) if defaults is None else defaults)]
        if not bundle:
            raise ValueError("the app needs at least one checkpoint bundle")
        self.models = {m.name: m for m in bundle}
        self.model = bundle[0]
        self.bundle, self.defaults = self.model.bundle, self.model.defaults
        self.display, self.limits = display, limits
        self.downloads = Path(downloads or tempfile.mkdtemp(prefix="guidance-demo-"))
        self.downloads.mkdir(parents=True, exist_ok=True)
        self.stops = StopRequests()
        self.with_evaluator = any(m.bundle.evaluator is not None for m in bundle)
        self.run_seconds: dict[str, float] = {}  # model -> seconds of one Generate at its defaults (time_runs)
        self.step_seconds: dict[str, float] = {}  # model -> seconds of one step of one image (time_steps)
        self._estimated: set[str] = set()  # models whose run_seconds is step_seconds x steps, not timed
        self.opening = ""               # Markdown: why the page opens on the first model (demo/launch.py)
        self._stream_on_device = on_gpu(self.stream)

    def _defaults_run(self, m: Model, **changes) -> Run:
        values = replace(m.defaults, **changes).generate_values(m.bundle.class_names)
        return arguments.generate_run(*values, class_names=m.bundle.class_names, num_timesteps=m.bundle.num_timesteps,
                                      conditioning=m.bundle.conditioning, limits=self.limits)

    def time_steps(self) -> None:
        """Time one sampling step of one image at each model's defaults (the second of two steps;
        the first warms up), for the page: a full-size ImageNet model takes seconds per step on a CPU."""
        for name, m in self.models.items():
            steps = generation.stream(m.bundle, self._defaults_run(m, num_images=1, steps=2).request, diagnostics=False)
            next(steps)
            start = time.perf_counter()
            next(steps)
            self.step_seconds[name] = time.perf_counter() - start

    def time_runs(self) -> None:
        """Time one Generate at each model's defaults (after a warm-up run), for live mode. A model
        whose steps alone would take over ten times the live limit is not run: its time is estimated
        from time_steps (minutes of start-up for a full-size ImageNet model otherwise)."""
        if not self.step_seconds:
            self.time_steps()
        for name, m in self.models.items():
            estimate = self.step_seconds[name] * m.defaults.steps * m.defaults.num_images
            if estimate > 10 * self.display.live_max_seconds:
                self.run_seconds[name] = estimate
                self._estimated.add(name)
                continue
            run = self._defaults_run(m)
            for _ in range(2):
                start = time.perf_counter()
                for _ in generation.stream(m.bundle, run.request, diagnostics=False):
                    pass
                self.run_seconds[name] = time.perf_counter() - start

    def live(self, model) -> tuple[bool, str]:
        """Whether live mode is offered for a model, and the page's sentence saying why."""
        seconds, limit = self.run_seconds.get(model), self.display.live_max_seconds
        if seconds is None:  # not timed: the limit alone decides (`python app.py --live on|off`)
            if limit < 0:
                return False, "Live mode is off (`python app.py --live off`)."
            return True, "Live: the images follow w, w_cfg, the class and the seed as you move them."
        timing = f"one run at this model's defaults takes {'about ' if model in self._estimated else ''}{seconds:.2f} s here"
        if seconds <= limit:
            return True, f"Live: {timing}, so the images follow w, w_cfg, the class and the seed as you move them."
        return False, (f"Live mode is off for this model: {timing}, more than the {limit:g} s that following a "
                       "slider needs. Press Generate instead, or pick the latent model.")

    def pick(self, model) -> Model:
        """The Model named `model` (None: the one the page opens on). Raises ValueError."""
        return self.model if model is None else self.models[choice(model, "model", tuple(self.models))]

    def generate(self, class_name, scale, unet, cfg_scale, steps, sampler, eta, num_images, seed,
                 interval=NEW.interval, schedule=NEW.schedule, threshold=NEW.threshold,
                 threshold_percentile=NEW.threshold_percentile, model=None,
                 request: gr.Request = None) -> Iterator[StreamOutputs]:
        """Sample num_images images of one class with classifier guidance w on the chosen UNet
        (unconditional, or conditional with classifier-free w_cfg), streaming x_t, x-hat_0 and the
        classifier's push.

        class_name: a class name (any case) or index; scale: w >= 0; unet: "unconditional" or
        "conditional"; cfg_scale: w_cfg >= 0 (0 with the unconditional UNet); steps: 1..T;
        sampler: "ddim", "ddpm", "dpm++2m" or "unipc"; eta: DDIM noise in [0, 1] (0 for the others);
        num_images; seed; interval: "full" or "LO-HI", the original timesteps where guidance is
        on; schedule: "constant", "ramp-up" or "ramp-down" over the interval; threshold: "clip",
        "dynamic" or "none" for x-hat_0; threshold_percentile: in [0.5, 1], for "dynamic"; model:
        which loaded bundle samples ("pixel", "latent"; None or left out: the page's first).
        """
        yield from self._serve(arguments.generate_run, (
            class_name, scale, unet, cfg_scale, steps, sampler, eta, num_images, seed, interval, schedule,
            threshold, threshold_percentile), model, request)

    def compare(self, class_name, strengths, mode, scale, unet, cfg_scale, steps, sampler, eta, num_images, seed,
                interval=NEW.interval, schedule=NEW.schedule, threshold=NEW.threshold,
                threshold_percentile=NEW.threshold_percentile, model=None,
                request: gr.Request = None) -> Iterator[StreamOutputs]:
        """Rows that differ in one setting, all from the same noise in one batch.

        mode says what the rows vary and strengths (text) lists a value per row:
        "classifier" w ("0, 1, 2, 4, 8"); "classifier-free" w_cfg on the conditional UNet;
        "classifier-vs-free" per strength s, classifier guidance w = s alone, then classifier-free
        w_cfg = s alone; "interval" ("full, 0-500, 500-999"); "schedule" and "threshold" (their
        names, or "all"); "class" ("Bag, Sneaker" or "all"). The other arguments are as for
        generate and set what the rows share; num_images is per row.
        """
        yield from self._serve(arguments.compare_run, (
            class_name, strengths, mode, scale, unet, cfg_scale, steps, sampler, eta, num_images, seed, interval,
            schedule, threshold, threshold_percentile), model, request)

    def live_generate(self, live, class_name, scale, unet, cfg_scale, steps, sampler, eta, num_images, seed, interval,
                      schedule, threshold, threshold_percentile, model, request: gr.Request = None) -> tuple:
        """When live is on: generate's final frame (StreamOutputs). The page calls it as a control
        moves, after supersede has ended the session's previous run. When live is off, or a newer
        move superseded this run, every output is left as it is (gr.skip)."""
        return self._live(live, arguments.generate_run, (
            class_name, scale, unet, cfg_scale, steps, sampler, eta, num_images, seed, interval, schedule,
            threshold, threshold_percentile), model, request)

    def live_compare(self, live, class_name, strengths, mode, scale, unet, cfg_scale, steps, sampler, eta, num_images,
                     seed, interval, schedule, threshold, threshold_percentile, model, request: gr.Request = None) -> tuple:
        """As live_generate, for compare with one image per row: the strip of final images across
        the rows, for one noise."""
        return self._live(live, arguments.compare_run, (
            class_name, strengths, mode, scale, unet, cfg_scale, steps, sampler, eta, 1, seed, interval, schedule,
            threshold, threshold_percentile), model, request)

    def _live(self, live, build, values: tuple, model, request: gr.Request | None) -> tuple:
        frames = list(self._serve(build, values, model, request, final_only=True)) if live is True else []
        return frames[-1] if frames else tuple(gr.skip() for _ in StreamOutputs._fields)

    def after_live(self, live) -> AfterRun:
        """After a live run: the scrubber and the downloads, which belong to the last Generate or
        Compare, are hidden; the status is the live run's own. When live is off, nothing changes."""
        if live is not True:
            return AfterRun(*(gr.skip() for _ in AfterRun._fields))
        hidden = gr.update(visible=False)
        return AfterRun(hidden, hidden, hidden, gr.skip())

    def supersede(self, live, request: gr.Request = None) -> None:
        """When live is on, end this session's running sample after its current step without
        another frame: a newer live request takes its place (the last position wins)."""
        if live is True:
            self.stops.request(_session(request), superseded=True)

    def _serve(self, build, values: tuple, model, request: gr.Request | None,
               final_only: bool = False) -> Iterator[StreamOutputs]:
        with user_errors():
            model = self.pick(model)
            bundle = model.bundle
            run = build(*values, class_names=bundle.class_names, num_timesteps=bundle.num_timesteps,
                        conditioning=bundle.conditioning, limits=self.limits)
        yield from self._stream_on_device(run, _session(request), model.name, final_only)

    def stream(self, run: Run, session: str | None = None, model: str | None = None,
               final_only: bool = False) -> Iterator[StreamOutputs]:
        """Sample the run on the named model, yielding x_T at once, then a frame whenever
        frame_interval_s has passed, then the final frame (or the frame where Stop was seen);
        final_only sends the final frame alone, and nothing once a newer live run superseded this
        one. Logs one line when the run ends, however it ends."""
        bundle = self.pick(model).bundle
        with user_errors():  # what this bundle's UNet cannot run (guidance.request.Conditioning)
            steps = generation.stream(bundle, run.request)
        recording = runs.start(bundle, run)
        progress = self.stops.start(session)
        try:
            if not final_only:
                yield self._outputs(recording, None)
            sent = time.monotonic()
            with user_errors():
                for step in steps:
                    last = step.index == run.request.steps - 1
                    images = bundle.codec.decode(step.sample) if last else None  # decoded once, for both
                    frame = recording.add(step, images)
                    progress.steps_done = frame.index + 1
                    if last:
                        recording.end("finished", runs.row_stats(bundle, run, step.sample, images=images))
                        yield self._outputs(recording, frame)
                    elif progress.stop_came is not None:
                        recording.end("stopped", self._live_stats(recording, frame, step))
                        if not progress.superseded:
                            yield self._outputs(recording, frame)
                        return
                    elif not final_only and time.monotonic() - sent >= self.display.frame_interval_s:
                        recording.stats = self._live_stats(recording, frame, step)
                        yield self._outputs(recording, frame)
                        sent = time.monotonic()
        except gr.Error:
            recording.end("failed", recording.stats)
            raise
        finally:
            self.stops.end(session, progress)
            # Still "running" here: Gradio closed the stream at a frame, as the client cancelled or went
            # away. The Stop button does both: it asks the run to end and cancels it through Gradio, and
            # either may come first. A stream closed after the run's Stop request was stopped by it;
            # one closed before the request reached the run (or without one) was closed.
            state = recording.state
            if state == "running":
                state = "closed" if progress.stop_came is None else "stopped"
            if progress.superseded:
                state = "superseded"
            stop = "" if progress.stop_came is None else f"; Stop came after step {progress.stop_came}"
            log.info("run %s: %s after step %d of %d%s", (session or "-")[:8], state, len(recording.frames),
                     run.request.steps, stop)

    def _live_stats(self, recording: Recording, frame: Frame, step: Step) -> RowStats:
        """Mid-run: p(c | x_t) from the step and the diversity of x-hat_0."""
        return RowStats(frame.class_prob, None, runs.live_diversity(recording, frame, step))

    def _outputs(self, recording: Recording, frame: Frame | None) -> StreamOutputs:
        images = render.frame_images(recording, frame)
        chart, norm_chart = render.chart(recording), render.norm_chart(recording)
        if frame is None:
            # The browser builds a chart (axis range, row colours) from the first value it gets
            # after these settings change, and only swaps the data afterwards.
            run = recording.run
            x_lim, colors = [0, run.request.steps], render.chart_colors(run)
            chart = gr.LinePlot(value=chart, x_lim=x_lim, color_map=colors)
            norm_chart = gr.LinePlot(value=norm_chart, x_lim=x_lim, color_map=colors)
        return StreamOutputs(images.x_t, images.pred_xstart, render.status(recording, frame), chart,
                             render.table(recording, self.with_evaluator), images.push, render.push_note(frame),
                             norm_chart, recording)

    def stop(self, request: gr.Request = None) -> None:
        """Ask this session's running generation or comparison to end after its current step."""
        self.stops.request(_session(request))

    def show_frame(self, position, recording: Recording | None) -> FrameView:
        """The recorded frame at a scrubber position: 0 is x_T, k is after step k."""
        if recording is None or not recording.frames:
            raise gr.Error("nothing recorded yet: run a generation first")
        with user_errors():
            k = integer(position, "frame", 0, len(recording.frames))
        frame = recording.frames[k - 1] if k else None
        images = render.frame_images(recording, frame)
        return FrameView(images.x_t, images.pred_xstart, render.status(recording, frame), images.push,
                         render.push_note(frame))

    def finish(self, recording: Recording | None) -> AfterRun:
        """After a run: the scrubber over its frames, the GIF of the denoising and, for a finished
        run, the PNG of the samples with the parameters in a text chunk; the status says how the
        run ended. A run still marked running was cancelled (Stop, or a client's cancel)."""
        hidden = gr.update(visible=False)
        if recording is None or not recording.frames:
            return AfterRun(hidden, hidden, hidden, gr.update())
        if recording.state == "running":
            recording.end("stopped", recording.stats)
        frames = list(recording.frames)  # the sampler thread may still add the step it was on
        stem = self._file_stem(recording)
        gif = render.save_gif(recording, self.downloads / f"{stem}.gif", self.display, frames)
        png = None
        if recording.state == "finished":
            samples = render.grid(recording.images(frames[-1]), recording.run, self.display, self.display.png_upscale)
            png = render.save_png(samples, recording.run.parameters(), self.downloads / f"{stem}.png")
        self._prune_downloads()
        return AfterRun(gr.update(minimum=0, maximum=len(frames), value=len(frames), step=1, visible=True),
                        gr.update(value=str(gif), visible=True),
                        gr.update(value=str(png), visible=True) if png else hidden,
                        render.status(recording, frames[-1]))

    def _file_stem(self, recording: Recording) -> str:
        run = recording.run
        digest = hashlib.sha256(f"{run.parameters()}|{len(recording.frames)}".encode()).hexdigest()[:12]
        name = "".join(ch if ch.isalnum() else "-" for ch in (run.class_name or "classes").lower())
        return f"guidance-{name}-seed{run.request.seed}-{digest}"

    def _prune_downloads(self) -> None:
        files = sorted(self.downloads.iterdir(), key=lambda p: p.stat().st_mtime)
        for path in files[:-KEPT_DOWNLOADS]:
            path.unlink(missing_ok=True)
