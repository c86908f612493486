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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import gradio as gr
import pandas as pd
from PIL import Image

from guidance import generation
from guidance.checkpoints import Bundle
from guidance.guide import NonFiniteError
from guidance.images import to_uint8
from guidance.request import integer
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


@dataclass
class RunProgress:
    """Where a run in progress is; written by the run after every step, read by Stop."""
    steps_done: int = 0
    stop_came: int | None = None  # steps_done when Stop came; None while it has not


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

    def request(self, session: str | None) -> None:
        with self._lock:
            progress = self._runs.get(session)
            if progress is not None and progress.stop_came is None:
                progress.stop_came = progress.steps_done

    def end(self, session: str | None, progress: RunProgress) -> None:
        with self._lock:
            if self._runs.get(session) is progress:  # not a newer run of the same session
                del self._runs[session]


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None)


class Handlers:
    """The app's handlers, bound to one loaded checkpoint bundle. defaults: what the page shows
    first (by default those of the bundle's folder, settings.app_defaults)."""

    def __init__(self, bundle: Bundle, display: Display = DISPLAY, limits: Limits = LIMITS,
                 downloads: str | Path | None = None, defaults: AppDefaults | None = None):
        self.bundle, self.display, self.limits = bundle, display, limits
        self.defaults = app_defaults(bundle.folder) if defaults is None else defaults
        self.downloads = Path(downloads or tempfile.mkdtemp(prefix="guidance-demo-"))
        self.downloads.mkdir(parents=True, exist_ok=True)
        self.stops = StopRequests()
        self.with_evaluator = bundle.evaluator is not None
        self._stream_on_device = on_gpu(self.stream)

    def generate(self, class_name, scale, unet, cfg_scale, steps, sampler, eta, num_images, seed,
                 interval=NEW.interval, schedule=NEW.schedule, threshold=NEW.threshold,
                 threshold_percentile=NEW.threshold_percentile, request: gr.Request = None) -> Iterator[StreamOutputs]:
        """Sample num_images images of one class with classifier guidance w on the chosen UNet
        (unconditional, or conditional with classifier-free w_cfg), streaming x_t, x-hat_0 and the
        classifier's push.

        class_name: a class name (any case) or index; scale: w >= 0; unet: "unconditional" or
        "conditional"; cfg_scale: w_cfg >= 0 (0 with the unconditional UNet); steps: 1..T;
        sampler: "ddim", "ddpm", "dpm++2m" or "unipc"; eta: DDIM noise in [0, 1] (0 for the others);
        num_images; seed; interval: "full" or "LO-HI", the original timesteps where guidance is
        on; schedule: "constant", "ramp-up" or "ramp-down" over the interval; threshold: "clip",
        "dynamic" or "none" for x-hat_0; threshold_percentile: in [0.5, 1], for "dynamic".
        """
        yield from self._serve(arguments.generate_run, (
            class_name, scale, unet, cfg_scale, steps, sampler, eta, num_images, seed, interval, schedule,
            threshold, threshold_percentile), request)

    def compare(self, class_name, strengths, mode, scale, unet, cfg_scale, steps, sampler, eta, num_images, seed,
                interval=NEW.interval, schedule=NEW.schedule, threshold=NEW.threshold,
                threshold_percentile=NEW.threshold_percentile, request: gr.Request = None) -> Iterator[StreamOutputs]:
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
            schedule, threshold, threshold_percentile), request)

    def _serve(self, build, values: tuple, request: gr.Request | None) -> Iterator[StreamOutputs]:
        with user_errors():
            run = build(*values, class_names=self.bundle.class_names, num_timesteps=self.bundle.num_timesteps,
                        limits=self.limits)
        yield from self._stream_on_device(run, _session(request))

    def stream(self, run: Run, session: str | None = None) -> Iterator[StreamOutputs]:
        """Sample the run, yielding x_T at once, then a frame whenever frame_interval_s has passed,
        then the final frame (or the frame where Stop was seen). Logs one line when the run
        ends, however it ends."""
        steps = generation.stream(self.bundle, run.request)
        recording = Recording(run, to_uint8(runs.initial_noise(run, self.bundle.image_shape)))
        progress = self.stops.start(session)
        try:
            yield self._outputs(recording, None)
            sent = time.monotonic()
            with user_errors():
                for step in steps:
                    frame = recording.add(step)
                    progress.steps_done = frame.index + 1
                    if frame.index == run.request.steps - 1:
                        recording.end("finished", runs.row_stats(self.bundle, run, step.sample))
                        yield self._outputs(recording, frame)
                    elif progress.stop_came is not None:
                        recording.end("stopped", self._live_stats(run, frame, step))
                        yield self._outputs(recording, frame)
                        return
                    elif time.monotonic() - sent >= self.display.frame_interval_s:
                        recording.stats = self._live_stats(run, frame, step)
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
            stop = "" if progress.stop_came is None else f"; Stop came after step {progress.stop_came}"
            log.info("run %s: %s after step %d of %d%s", (session or "-")[:8], state, len(recording.frames),
                     run.request.steps, stop)

    def _live_stats(self, run: Run, frame: Frame, step: Step) -> RowStats:
        """Mid-run: p(c | x_t) from the step and the diversity of x-hat_0."""
        return RowStats(frame.class_prob, None, runs.diversity(step.pred_xstart, len(run.labels)))

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
            samples = render.grid(frames[-1].sample, recording.run, self.display, self.display.png_upscale)
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
