"""The functions behind the buttons and the API endpoints.

generate and compare are generators: they check their arguments (validate.py), then stream
frames of one run (runs.py) drawn by render.py. Each frame is a StreamOutputs tuple; frames are
throttled to one per Display.frame_interval_s (and always the first and the last), so encoding
and sending them costs little next to sampling.
"""
from __future__ import annotations

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
import torch
from PIL import Image

from guidance.checkpoints import Bundle
from guidance.guide import NonFiniteError
from guidance.images import to_uint8
from guidance.samplers import Step

from . import render, runs, validate
from .runs import Frame, Recording, RowStats, RunSettings
from .settings import DISPLAY, LIMITS, Display, Limits

KEPT_DOWNLOADS = 64  # files kept in the downloads folder; older ones are deleted
log = logging.getLogger(__name__)


def on_gpu(fn):
    """fn under spaces.GPU when the `spaces` package is installed (Hugging Face ZeroGPU), else fn."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)


class StreamOutputs(NamedTuple):
    """One streamed frame, in the order of the output components."""
    x_t: Image.Image                 # the current x_t grid (x_T first, the samples last)
    pred_xstart: Image.Image | None  # the current x-hat_0 grid (None before the first step)
    status: str                      # Markdown: step, state, time
    chart: pd.DataFrame | gr.LinePlot  # mean p(c | x_t) per row and step so far (see _outputs)
    table: pd.DataFrame              # per-row confidence and diversity
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
    """The app's handlers, bound to one loaded checkpoint bundle."""

    def __init__(self, bundle: Bundle, device: str | torch.device = "cpu", display: Display = DISPLAY,
                 limits: Limits = LIMITS, downloads: str | Path | None = None):
        self.bundle, self.device, self.display, self.limits = bundle, device, display, limits
        self.downloads = Path(downloads or tempfile.mkdtemp(prefix="guidance-demo-"))
        self.downloads.mkdir(parents=True, exist_ok=True)
        self.stops = StopRequests()
        self.with_evaluator = bundle.evaluator is not None
        self._stream_on_device = on_gpu(self.stream)

    def generate(self, class_name, scale, unet, cfg_scale, steps, sampler, eta, num_images, seed,
                 request: gr.Request = None) -> Iterator[StreamOutputs]:
        """Sample num_images images of one class with classifier guidance w on the chosen UNet
        (unconditional, or conditional with classifier-free w_cfg), streaming x_t and x-hat_0.

        class_name: a class name (or index); scale: w >= 0; unet: "unconditional" or
        "conditional"; cfg_scale: w_cfg >= 0 (0 with the unconditional UNet); steps: 1..T;
        sampler: "ddim" or "ddpm"; eta: DDIM noise in [0, 1]; num_images; seed.
        """
        settings = validate.generate_settings(
            class_name, scale, unet, cfg_scale, steps, sampler, eta, num_images, seed,
            class_names=self.bundle.class_names, num_timesteps=self.bundle.num_timesteps, limits=self.limits)
        yield from self._stream_on_device(settings, _session(request))

    def compare(self, class_name, strengths, mode, scale, unet, cfg_scale, steps, sampler, eta, num_images, seed,
                request: gr.Request = None) -> Iterator[StreamOutputs]:
        """Several guidance strengths at once, one row each, all from the same noise in one batch.

        strengths: text such as "0, 1, 2, 4, 8"; mode: "classifier" (rows vary w),
        "classifier-free" (rows vary w_cfg on the conditional UNet) or "classifier-vs-free"
        (per strength, classifier guidance alone and classifier-free guidance alone). The other
        arguments are as for generate; num_images is per row.
        """
        settings = validate.compare_settings(
            class_name, strengths, mode, scale, unet, cfg_scale, steps, sampler, eta, num_images, seed,
            class_names=self.bundle.class_names, num_timesteps=self.bundle.num_timesteps, limits=self.limits)
        yield from self._stream_on_device(settings, _session(request))

    def stream(self, settings: RunSettings, session: str | None = None) -> Iterator[StreamOutputs]:
        """Run the sampler for settings, yielding x_T at once, then a frame whenever
        frame_interval_s has passed, then the final frame (or the frame where Stop was seen).
        Logs one line when the run ends, however it ends."""
        shape = runs.image_shape(self.bundle, settings)
        recording = Recording(settings, to_uint8(runs.initial_noise(settings, shape)))
        progress = self.stops.start(session)
        try:
            yield self._outputs(recording, None)
            sent = time.monotonic()
            for step in runs.steps(self.bundle, settings, self.device):
                frame = recording.add(step)
                progress.steps_done = frame.index + 1
                if frame.index == settings.steps - 1:
                    recording.end("finished", runs.row_stats(self.bundle, settings, step.sample))
                    yield self._outputs(recording, frame)
                elif progress.stop_came is not None:
                    recording.end("stopped", self._live_stats(settings, frame, step))
                    yield self._outputs(recording, frame)
                    return
                elif time.monotonic() - sent >= self.display.frame_interval_s:
                    recording.stats = self._live_stats(settings, frame, step)
                    yield self._outputs(recording, frame)
                    sent = time.monotonic()
        except NonFiniteError as err:
            recording.end("failed", recording.stats)
            raise gr.Error(str(err)) from None
        finally:
            self.stops.end(session, progress)
            # Still "running" here: Gradio closed the stream, as the client cancelled or went away.
            state = "closed" if recording.state == "running" else recording.state
            stop = "" if progress.stop_came is None else f"; Stop came after step {progress.stop_came}"
            log.info("run %s: %s after step %d of %d%s", (session or "-")[:8], state, len(recording.frames),
                     settings.steps, stop)

    def _live_stats(self, settings: RunSettings, frame: Frame, step: Step) -> RowStats:
        """Mid-run: p(c | x_t) from the step and the diversity of x-hat_0."""
        return RowStats(frame.class_prob, None, runs.diversity(step.pred_xstart, len(settings.rows)))

    def _outputs(self, recording: Recording, frame: Frame | None) -> StreamOutputs:
        x_t, pred_xstart = render.frame_images(recording, frame)
        chart = render.chart(recording)
        if frame is None:
            # The browser builds the chart (axis range, row colours) from the first value it gets
            # after these settings change, and only swaps the data afterwards.
            settings = recording.settings
            chart = gr.LinePlot(value=chart, x_lim=[0, settings.steps], color_map=render.chart_colors(settings))
        return StreamOutputs(x_t, pred_xstart, render.status(recording, frame), chart,
                             render.table(recording, self.with_evaluator), recording)

    def stop(self, request: gr.Request = None) -> None:
        """Ask this session's running generation or comparison to end after its current step."""
        self.stops.request(_session(request))

    def show_frame(self, position, recording: Recording | None) -> FrameView:
        """The recorded frame at a scrubber position: 0 is x_T, k is after step k."""
        if recording is None or not recording.frames:
            raise gr.Error("nothing recorded yet: run a generation first")
        k = validate.integer(position, "frame", 0, len(recording.frames))
        frame = recording.frames[k - 1] if k else None
        return FrameView(*render.frame_images(recording, frame), render.status(recording, frame))

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
            samples = render.grid(frames[-1].sample, recording.settings, self.display, self.display.png_upscale)
            png = render.save_png(samples, recording.settings.parameters(), self.downloads / f"{stem}.png")
        self._prune_downloads()
        return AfterRun(gr.update(minimum=0, maximum=len(frames), value=len(frames), step=1, visible=True),
                        gr.update(value=str(gif), visible=True),
                        gr.update(value=str(png), visible=True) if png else hidden,
                        render.status(recording, frames[-1]))

    def _file_stem(self, recording: Recording) -> str:
        settings = recording.settings
        digest = hashlib.sha256(f"{settings.parameters()}|{len(recording.frames)}".encode()).hexdigest()[:12]
        name = "".join(ch if ch.isalnum() else "-" for ch in settings.class_name.lower())
        return f"guidance-{name}-seed{settings.seed}-{digest}"

    def _prune_downloads(self) -> None:
        files = sorted(self.downloads.iterdir(), key=lambda p: p.stat().st_mtime)
        for path in files[:-KEPT_DOWNLOADS]:
            path.unlink(missing_ok=True)
