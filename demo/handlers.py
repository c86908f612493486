"""The functions behind the buttons and the API endpoints, by job:

    Handlers   Generate and Compare (the public endpoints) and Stop: raw arguments become a Run
               (arguments.py, called in one place: run_of), streamed on the picked model
    RunStream  one run streamed: its steps recorded by runs.py and drawn by render.py (one frame
               is a StreamOutputs tuple), sent at most once per Display.frame_interval_s from the
               start, and always the last (0 sends x_T and every step), ended within a step by
               Stop (stops.py)
    LiveMode   the live events: the final frame of each slider move, superseding the last run
    Playback   after a run: the scrubber over its frames and its downloads (downloads.py)

A ValueError (a bad argument) or a NonFiniteError (a run that diverged) reaches the caller as
gr.Error, in one place: user_errors. The loaded models are models.py, their timings timing.py.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

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
from .downloads import Downloads
from .models import Model, offered
from .runs import Frame, Recording
from .settings import DISPLAY, LIMITS, AppDefaults, Display, Limits
from .stops import RunProgress, StopRequests
from .timing import Timings
from .zerogpu import on_gpu

NEW = AppDefaults()  # the Python defaults of the arguments added after the first release
log = logging.getLogger(__name__)


class StreamOutputs(NamedTuple):
    """One streamed frame. The field order is the order of the endpoints' outputs, written only
    here (ui.OutputPanel.outputs wires the components by these names); new fields are appended, so
    API callers that index the first five keep working."""
    x_t: Image.Image                 # the current x_t grid (x_T first, the samples last)
    pred_xstart: Image.Image | None  # the current x-hat_0 grid (None before the first step)
    status: str                      # Markdown: step, state, time
    chart: pd.DataFrame | gr.LinePlot  # mean p(c | x_t) per row and step so far (see `of`)
    table: pd.DataFrame              # per-row confidence and diversity
    push: Image.Image | None         # the guidance term k_t w(t) g, diverging colours (None before step 1)
    push_note: str                   # what the push colours mean at this step, with its scale s
    norm_chart: pd.DataFrame | gr.LinePlot  # mean ||k_t w(t) g|| per row and step so far
    recording: Recording             # kept in the session for scrubbing and downloads

    @classmethod
    def of(cls, recording: Recording, frame: Frame | None, with_evaluator: bool, first: bool) -> StreamOutputs:
        """The outputs after frame (None: x_T, before the first step); first: the run's first sent."""
        images = render.frame_images(recording, frame)
        chart, norm_chart = render.chart(recording), render.norm_chart(recording)
        if first:
            # The browser builds a chart (axis range, row colours) from the first value it gets
            # after these settings change, and only swaps the data afterwards.
            run = recording.run
            x_lim, colors = [0, run.request.steps], render.chart_colors(run)
            chart = gr.LinePlot(value=chart, x_lim=x_lim, color_map=colors)
            norm_chart = gr.LinePlot(value=norm_chart, x_lim=x_lim, color_map=colors)
        return cls(x_t=images.x_t, pred_xstart=images.pred_xstart, status=render.status(recording, frame),
                   chart=chart, table=render.table(recording, with_evaluator), push=images.push,
                   push_note=render.push_note(frame), norm_chart=norm_chart, recording=recording)


class AfterRun(NamedTuple):
    """Updates (gr.update) of the scrubber and the two download buttons, and the final status."""
    scrub: dict
    gif: dict
    png: dict
    status: str | dict


class FrameView(NamedTuple):
    """A recorded frame as the scrubber shows it: StreamOutputs' images and lines."""
    x_t: Image.Image
    pred_xstart: Image.Image | None
    status: str
    push: Image.Image | None
    push_note: str

    @classmethod
    def of(cls, recording: Recording, frame: Frame | None) -> FrameView:
        images = render.frame_images(recording, frame)
        return cls(x_t=images.x_t, pred_xstart=images.pred_xstart, status=render.status(recording, frame),
                   push=images.push, push_note=render.push_note(frame))


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """A bad argument (ValueError, from the library's checks or the app's limits) or a diverged
    run (NonFiniteError) becomes gr.Error with the same message, which Gradio shows the caller."""
    try:
        yield
    except (ValueError, NonFiniteError) as err:
        raise gr.Error(str(err)) from None


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None)


def run_of(build, values: tuple, model: Model, limits: Limits) -> Run:
    """An endpoint's raw values as a checked Run on model's bundle: the app's one call into
    demo/arguments.py (build is arguments.generate_run or compare_run). Raises ValueError."""
    bundle = model.bundle
    return build(*values, class_names=bundle.class_names, num_timesteps=bundle.num_timesteps,
                 conditioning=bundle.conditioning, limits=limits)


def defaults_run(model: Model, limits: Limits, **changes) -> Run:
    """The Run of the page's first Generate on model, with changes to its defaults."""
    values = replace(model.defaults, **changes).generate_values(model.bundle.class_names)
    return run_of(arguments.generate_run, values, model, limits)


class Handlers:
    """The app's handlers, bound to loaded checkpoint bundles: one Bundle, or Models (the first
    is the one the page opens on). defaults: what the page shows first for a single bundle (by
    default those of its folder, settings.app_defaults). Its parts: timings, live_mode, playback."""

    def __init__(self, bundle: Bundle | Sequence[Model], display: Display = DISPLAY, limits: Limits = LIMITS,
                 downloads: str | Path | None = None, defaults: AppDefaults | None = None):
        models = offered(bundle, defaults)
        self.models, self.model = {m.name: m for m in models}, models[0]
        self.bundle, self.defaults = self.model.bundle, self.model.defaults
        self.display, self.limits = display, limits
        self.with_evaluator = any(m.bundle.evaluator is not None for m in models)
        self.stops = StopRequests()
        self.opening = ""               # Markdown: why the page opens on the first model (demo/launch.py)
        self.timings = Timings(models, display, partial(defaults_run, limits=limits))
        self.live_mode = LiveMode(self.serve, self.stops)
        self.playback = Playback(Downloads(downloads, display))
        self._stream_on_device = on_gpu(self.stream)

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
        yield from self.serve(arguments.generate_run, (
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
        yield from self.serve(arguments.compare_run, (
            class_name, strengths, mode, scale, unet, cfg_scale, steps, sampler, eta, num_images, seed, interval,
            schedule, threshold, threshold_percentile), model, request)

    def serve(self, build, values: tuple, model, request: gr.Request | None,
              final_only: bool = False) -> Iterator[StreamOutputs]:
        """Stream the Run of an endpoint's raw values (run_of) on the named model, for the request's
        session; a bad value raises gr.Error before anything runs."""
        with user_errors():
            model = self.pick(model)
            run = run_of(build, values, model, self.limits)
        yield from self._stream_on_device(run, _session(request), model.name, final_only)

    def stream(self, run: Run, session: str | None = None, model: str | None = None,
               final_only: bool = False) -> Iterator[StreamOutputs]:
        """Sample the run on the named model, yielding a frame whenever frame_interval_s has passed
        (x_T first when it is 0), then the final frame (or the frame where Stop was seen);
        final_only sends the final frame alone, and nothing once a newer live run superseded this
        one. Logs one line when the run ends, however it ends."""
        stream = RunStream(self.pick(model).bundle, run, session, self.display.frame_interval_s, self.with_evaluator)
        yield from stream.frames(self.stops, final_only)

    def stop(self, request: gr.Request = None) -> None:
        """Ask this session's running generation or comparison to end after its current step."""
        self.stops.request(_session(request))


class RunStream:
    """One run streamed: its steps recorded into a Recording and sent as StreamOutputs, its
    RunProgress (registered with StopRequests for the session) read after every step."""

    def __init__(self, bundle: Bundle, run: Run, session: str | None, frame_interval_s: float,
                 with_evaluator: bool):
        self.bundle, self.run, self.session = bundle, run, session
        self.frame_interval_s, self.with_evaluator = frame_interval_s, with_evaluator

    def frames(self, stops: StopRequests, final_only: bool) -> Iterator[StreamOutputs]:
        """The run's frames (see _steps); a run that fails is marked failed."""
        with user_errors():  # what this bundle's UNet cannot run (guidance.request.Conditioning)
            steps = generation.stream(self.bundle, self.run.request)
        recording = runs.start(self.bundle, self.run)
        progress = stops.start(self.session)
        try:
            yield from self._steps(steps, recording, progress, final_only)
        except gr.Error:
            recording.end("failed", recording.stats)
            raise
        finally:
            stops.end(self.session, progress)
            self._log_end(recording, progress)

    def _steps(self, steps: Iterator[Step], recording: Recording, progress: RunProgress,
               final_only: bool) -> Iterator[StreamOutputs]:
        """Record every step; send the last, the one where Stop was seen (none when superseded)
        and, unless final_only, x_T or a step whenever frame_interval_s has passed since the start
        or the frame sent before: with 0, x_T and every step; a run shorter than the interval sends
        its last frame alone, one frame the server and the page need not handle."""
        bundle, run, sent, first = self.bundle, self.run, time.monotonic(), True

        def due() -> bool:
            return not final_only and time.monotonic() - sent >= self.frame_interval_s

        def send(frame: Frame | None) -> StreamOutputs:
            nonlocal sent, first
            outputs, sent, first = StreamOutputs.of(recording, frame, self.with_evaluator, first), time.monotonic(), False
            return outputs

        if due():
            yield send(None)
        with user_errors():
            for step in steps:
                last = step.index == run.request.steps - 1
                images = bundle.codec.decode(step.sample) if last else None  # decoded once, for both
                frame = recording.add(step, images)
                progress.steps_done = frame.index + 1
                if last:
                    recording.end("finished", runs.row_stats(bundle, run, step.sample, images=images))
                    yield send(frame)
                elif progress.stop_came is not None:
                    recording.end("stopped", runs.live_stats(recording, frame, step))
                    if not progress.superseded:
                        yield send(frame)
                    return
                elif due():
                    recording.stats = runs.live_stats(recording, frame, step)
                    yield send(frame)

    def _log_end(self, recording: Recording, progress: RunProgress) -> None:
        """One log line when the run ends, however it ends."""
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
        log.info("run %s: %s after step %d of %d%s", (self.session or "-")[:8], state, len(recording.frames),
                 self.run.request.steps, stop)


class LiveMode:
    """The live events, wired to the sliders when a live box is ticked. serve is Handlers.serve;
    stops the StopRequests through which a newer move ends the session's running sample."""

    def __init__(self, serve: Callable[..., Iterator[StreamOutputs]], stops: StopRequests):
        self._serve, self._stops = serve, stops

    def live_generate(self, live, class_name, scale, unet, cfg_scale, steps, sampler, eta, num_images, seed, interval,
                      schedule, threshold, threshold_percentile, model, request: gr.Request = None) -> tuple:
        """When live is on: generate's final frame (StreamOutputs). The page calls it as a control
        moves, after supersede has ended the session's previous run. When live is off, or a newer
        move superseded this run, every output is left as it is (gr.skip)."""
        return self._final(live, arguments.generate_run, (
            class_name, scale, unet, cfg_scale, steps, sampler, eta, num_images, seed, interval, schedule,
            threshold, threshold_percentile), model, request)

    def live_compare(self, live, class_name, strengths, mode, scale, unet, cfg_scale, steps, sampler, eta, num_images,
                     seed, interval, schedule, threshold, threshold_percentile, model, request: gr.Request = None) -> tuple:
        """As live_generate, for compare with one image per row: the strip of final images across
        the rows, for one noise."""
        return self._final(live, arguments.compare_run, (
            class_name, strengths, mode, scale, unet, cfg_scale, steps, sampler, eta, 1, seed, interval, schedule,
            threshold, threshold_percentile), model, request)

    def _final(self, live, build, values: tuple, model, request: gr.Request | None) -> tuple:
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
            self._stops.request(_session(request), superseded=True)


class Playback:
    """After a run: the scrubber over its recorded frames, and its files to download."""

    def __init__(self, downloads: Downloads):
        self.downloads = downloads

    def show_frame(self, position, recording: Recording | None) -> FrameView:
        """The recorded frame at a scrubber position: 0 is x_T, k is after step k."""
        if recording is None or not recording.frames:
            raise gr.Error("nothing recorded yet: run a generation first")
        with user_errors():
            k = integer(position, "frame", 0, len(recording.frames))
        return FrameView.of(recording, recording.frames[k - 1] if k else None)

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
        gif, png = self.downloads.save(recording, frames)
        return AfterRun(gr.update(minimum=0, maximum=len(frames), value=len(frames), step=1, visible=True),
                        gr.update(value=str(gif), visible=True),
                        gr.update(value=str(png), visible=True) if png else hidden,
                        render.status(recording, frames[-1]))
