"""The functions behind the buttons and the API endpoints, by job:

    Handlers   Generate and Compare (the public endpoints) and Stop: raw arguments, gathered by
               name into a settings.Settings (endpoint), become a Run (arguments.py, called in one
               place: run_of), streamed on the picked model
    RunStream  one run streamed: its steps recorded by runs.py and drawn by render.py (one frame
               is a StreamOutputs tuple), sent at most once per Display.frame_interval_s from the
               start, and always the last (0 sends x_T and every step), ended within a step by
               Stop (stops.py)
    LiveMode   the live events: the final frame of a run at the slider's latest position (one run
               in flight, the latest position pending: the images follow a drag)
    Playback   after a run: the scrubber over its frames and its downloads (downloads.py)

A ValueError (a bad argument) or a NonFiniteError (a run that diverged) reaches the caller as
gr.Error, in one place: user_errors. The loaded models are models.py, their timings timing.py.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import time
from dataclasses import MISSING, fields, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import altair as alt
import gradio as gr
import pandas as pd
from gradio.components.plot import PlotData
from PIL import Image

from guidescope import generation
from guidescope.bundle import Bundle
from guidescope.guide import NonFiniteError
from guidescope.messages import choice, integer
from guidescope.samplers import Step

from . import arguments, render, runs
from .arguments import Run
from .downloads import Downloads
from .models import Model, offered
from .runs import Frame, Recording
from .settings import (
    COMPARE_ARGUMENTS,
    DISPLAY,
    GENERATE_ARGUMENTS,
    LIMITS,
    SETTING_NAMES,
    AppDefaults,
    Display,
    Limits,
    Settings,
)
from .stops import RunProgress, StopRequests
from .timing import Timings
from .zerogpu import on_gpu

log = logging.getLogger(__name__)
ERROR_SECONDS = 10  # an error's message leaves the page after this, so messages do not pile up


class StreamOutputs(NamedTuple):
    """One streamed frame. The field order is the order of the endpoints' outputs, written only
    here (ui.OutputPanel.outputs wires the components by these names); new fields are appended, so
    API callers that index the first five keep working."""
    x_t: Image.Image                 # the current x_t grid (x_T first, the samples last)
    pred_xstart: Image.Image | None  # the current x-hat_0 grid (None before the first step)
    status: str                      # Markdown: step, state, time
    chart: PlotData                  # mean p(c | x_t) per row and step so far (render.line_chart), as JSON
    table: pd.DataFrame              # per-row confidence and diversity
    push: Image.Image | None         # the guidance term k_t w(t) g, diverging colours (None before step 1)
    push_note: str                   # what the push colours mean at this step, with its scale s
    norm_chart: PlotData             # mean ||k_t w(t) g|| per row and step so far
    recording: Recording             # kept in the session for scrubbing and downloads
    row_labels: str                  # HTML: the rows' labels as text beside the x_t grid ("" for one row)
    clean_chart: PlotData            # mean p(c | x-hat_0) of the clean classifier per row and step so far

    @classmethod
    def of(cls, recording: Recording, frame: Frame | None, with_evaluator: bool) -> StreamOutputs:
        """The outputs after frame (None: x_T, before the first step). A finished run's last frame
        shows the run's largest push (the last steps push next to nothing) and says which step."""
        final = render.is_final(recording, frame)
        push_frame = render.shown_push(recording, frame)
        images = render.frame_images(recording, frame, push_frame)
        chart = _plot(render.line_chart(recording, render.chart(recording), render.CHART_Y, "p(c | x_t)", [0, 1]))
        norm_chart = _plot(render.line_chart(recording, render.norm_chart(recording), render.NORM_Y, "‖k_t w(t) g‖"))
        clean_chart = _plot(render.line_chart(recording, render.clean_chart(recording), render.CHART_Y,
                                              "p(c | x̂_0), clean classifier", [0, 1]))
        return cls(x_t=images.x_t, pred_xstart=images.pred_xstart, status=render.status(recording, frame),
                   chart=chart, table=render.table(recording, with_evaluator, frame=frame), push=images.push,
                   push_note=render.push_note(push_frame, recording.run.request.steps if final else None),
                   norm_chart=norm_chart, recording=recording,
                   row_labels=render.row_labels(recording.run, images.x_t.height), clean_chart=clean_chart)


class Detail(NamedTuple):
    """One image shown large (Playback.detail): an update of the image, and what it is."""
    detail: dict
    detail_note: str


def _plot(chart: alt.Chart) -> PlotData:
    """The chart as gr.Plot sends it, serialized here without validating the spec against
    Vega-Lite's schema (which gr.Plot would do on every frame, at 15 times the cost: 49 ms a
    chart against 3 ms for a 10-row chart); the spec is built by one function."""
    return PlotData(type="altair", plot=chart.to_json(validate=False))


class AfterRun(NamedTuple):
    """Updates (gr.update) of the scrubber and the two download buttons, and the final status."""
    scrub: dict
    gif: dict
    png: dict
    status: str | dict


class FrameView(NamedTuple):
    """A recorded frame as the scrubber shows it: StreamOutputs' images, lines and table, at that step."""
    x_t: Image.Image
    pred_xstart: Image.Image | None
    status: str
    push: Image.Image | None
    push_note: str
    table: pd.DataFrame

    @classmethod
    def of(cls, recording: Recording, frame: Frame | None, with_evaluator: bool) -> FrameView:
        images = render.frame_images(recording, frame)
        return cls(x_t=images.x_t, pred_xstart=images.pred_xstart, status=render.status(recording, frame),
                   push=images.push, push_note=render.push_note(frame),
                   table=render.table(recording, with_evaluator, runs.frame_stats(recording, frame), frame))


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """A bad argument (ValueError, from the library's checks or the app's limits) or a diverged
    run (NonFiniteError) becomes gr.Error with the same message, which Gradio shows the caller; the
    server logs it as one line, not a traceback (nothing went wrong in the server)."""
    try:
        yield
    except (ValueError, NonFiniteError) as err:
        log.info("refused: %s", err)
        raise gr.Error(str(err), duration=ERROR_SECONDS, print_exception=False) from None


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None)


Build = Callable[..., Run]  # arguments.generate_run or compare_run with its values bound: the model's facts -> Run


def run_of(build: Build, model: Model, limits: Limits) -> Run:
    """A checked Run on model's bundle: the app's one call into demo/arguments.py. Raises ValueError."""
    bundle = model.bundle
    return build(class_names=bundle.class_names, num_timesteps=bundle.num_timesteps,
                 conditioning=bundle.conditioning, limits=limits, evaluated=model.defaults)


def defaults_run(model: Model, limits: Limits, **changes) -> Run:
    """The Run of the page's first Generate on model, with changes to its defaults."""
    settings = replace(model.defaults, **changes).settings(model.bundle.class_names)
    return run_of(partial(arguments.generate_run, settings), model, limits)


def endpoint(run: Callable, names: Sequence[str], doc: str) -> Callable:
    """The function Gradio calls for an event: self, then the arguments `names` (each Settings
    field, with Settings' defaults, and the endpoint's own), then model and request. Gradio reads
    its signature for the API's argument names and defaults, so the order lives in Settings alone.
    run gets self, the Settings, the endpoint's own arguments by name, model and request; a
    generator stays one (Gradio streams what it yields)."""
    P = inspect.Parameter
    defaults = {f.name: f.default for f in fields(Settings) if f.default is not MISSING}
    signature = inspect.Signature(
        [P("self", P.POSITIONAL_OR_KEYWORD)]
        + [P(name, P.POSITIONAL_OR_KEYWORD, default=defaults.get(name, P.empty)) for name in names]
        + [P("model", P.POSITIONAL_OR_KEYWORD, default=None),
           P("request", P.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request)])

    def bound(args: tuple, kwargs: dict):
        values = signature.bind(*args, **kwargs)
        values.apply_defaults()
        given = dict(values.arguments)
        settings = Settings(**{name: given.pop(name) for name in SETTING_NAMES})
        return run(given.pop("self"), settings, **given)

    if inspect.isgeneratorfunction(run):
        def call(*args, **kwargs) -> Iterator:
            yield from bound(args, kwargs)
    else:
        def call(*args, **kwargs):
            return bound(args, kwargs)

    call.__signature__, call.__doc__, call.__name__ = signature, doc, run.__name__.lstrip("_")
    call.__annotations__ = {"request": gr.Request}  # Gradio passes the request to the parameter of this type
    return call


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
        self.live_mode = LiveMode(self.serve)
        self.playback = Playback(Downloads(downloads, display), self.with_evaluator)
        self._stream_on_device = on_gpu(self.stream)

    def pick(self, model) -> Model:
        """The Model named `model` (None: the one the page opens on). Raises ValueError."""
        return self.model if model is None else self.models[choice(model, "model", tuple(self.models))]

    def _generate(self, settings: Settings, model=None, request: gr.Request | None = None) -> Iterator[StreamOutputs]:
        yield from self.serve(partial(arguments.generate_run, settings), model, request)

    generate = endpoint(_generate, GENERATE_ARGUMENTS, """Sample num_images images of one class with classifier
        guidance w on the chosen UNet (unconditional, or conditional with classifier-free w_cfg), streaming x_t,
        x-hat_0 and the classifier's push.

        class_name: a class name (any case) or index; scale: w >= 0; unet: "unconditional" or
        "conditional"; cfg_scale: w_cfg >= 0 (0 with the unconditional UNet); steps: 1..T;
        sampler: "ddim", "ddpm", "dpm++2m" or "unipc"; eta: DDIM noise in [0, 1] (0 for the others);
        num_images; seed; interval: "full" or "LO-HI", the original timesteps where guidance is
        on; schedule: "constant", "ramp-up" or "ramp-down" over the interval; threshold: "clip",
        "dynamic" or "none" for x-hat_0; threshold_percentile: in [0.5, 1], for "dynamic"; model:
        which loaded bundle samples ("pixel", "latent"; None or left out: the page's first).
        """)

    def _compare(self, settings: Settings, strengths, mode, model=None,
                 request: gr.Request | None = None) -> Iterator[StreamOutputs]:
        yield from self.serve(partial(arguments.compare_run, settings, strengths, mode), model, request)

    compare = endpoint(_compare, COMPARE_ARGUMENTS, """Rows that differ in one setting, all from the same noise
        in one batch.

        mode says what the rows vary and strengths (text) lists a value per row:
        "classifier" w ("0, 1, 2, 4, 8"); "classifier-free" w_cfg on the conditional UNet;
        "classifier-vs-free" per strength s, classifier guidance w = s alone, then classifier-free
        w_cfg = s alone; "interval" ("full, 0-500, 500-999"); "schedule" and "threshold" (their
        names, or "all"); "class" ("Bag, Sneaker" or "all"); "methods" ("noise-aware, tfg, mpgd": each
        guide at the arguments it takes); "evaluated" ("noise-aware, training-free, equal-time": each
        guide at the model's evaluated setting, with its own sampler and steps, or the training-free
        one at the noise-aware one's time; only class_name, num_images and seed are used). The other
        arguments are as for generate and set what the rows share; num_images is per row.
        """)

    def serve(self, build: Build, model, request: gr.Request | None,
              final_only: bool = False) -> Iterator[StreamOutputs]:
        """Stream the Run that build makes (run_of) on the named model, for the request's session;
        a bad value raises gr.Error before anything runs."""
        with user_errors():
            model = self.pick(model)
            run = run_of(build, model, self.limits)
            self.timings.check_bound(model.name, run, self.limits.max_seconds)
        yield from self._stream_on_device(run, _session(request), model.name, final_only)

    def stream(self, run: Run, session: str | None = None, model: str | None = None,
               final_only: bool = False) -> Iterator[StreamOutputs]:
        """Sample the run on the named model, yielding a frame whenever frame_interval_s has passed
        (x_T first when it is 0), then the final frame (or the frame where Stop was seen);
        final_only sends the final frame alone. Logs one line when the run ends, however it ends."""
        stream = RunStream(self.pick(model).bundle, run, session, self.display.frame_interval_s, self.with_evaluator,
                           self.limits.max_seconds)
        yield from stream.frames(self.stops, final_only)

    def stop(self, request: gr.Request = None) -> None:
        """Ask this session's running generation or comparison to end after its current step."""
        self.stops.request(_session(request))


class RunStream:
    """One run streamed: its steps recorded into a Recording and sent as StreamOutputs, its
    RunProgress (registered with StopRequests for the session) read after every step."""

    def __init__(self, bundle: Bundle, run: Run, session: str | None, frame_interval_s: float,
                 with_evaluator: bool, max_seconds: float):
        self.bundle, self.run, self.session = bundle, run, session
        self.frame_interval_s, self.with_evaluator = frame_interval_s, with_evaluator
        self.max_seconds = max_seconds  # a run still going after this ends (Limits.max_seconds)

    def frames(self, stops: StopRequests, final_only: bool) -> Iterator[StreamOutputs]:
        """The run's frames (see _steps); a run that fails is marked failed."""
        with user_errors():  # what this bundle's UNet cannot run (guidescope.request.Conditioning)
            steps = generation.stream(self.bundle, self.run.checked)
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
        """Record every step; send the last, the one where Stop was seen and, unless final_only, x_T or a step whenever frame_interval_s has passed since the start
        or the frame sent before: with 0, x_T and every step; a run shorter than the interval sends
        its last frame alone, one frame the server and the page need not handle."""
        bundle, run, sent = self.bundle, self.run, time.monotonic()
        deadline = sent + self.max_seconds  # the estimate refused what looked longer; this holds the bound

        def due(now: float) -> bool:
            return not final_only and now - sent >= self.frame_interval_s

        def send(frame: Frame | None) -> StreamOutputs:
            nonlocal sent
            outputs, sent = StreamOutputs.of(recording, frame, self.with_evaluator), time.monotonic()
            return outputs

        if due(time.monotonic()):
            yield send(None)
        with user_errors():
            for step in steps:
                last = step.index == run.request.steps - 1
                images = bundle.codec.decode(step.sample) if last else None  # decoded once, for both
                frame = recording.add(step, images)
                progress.steps_done = frame.index + 1
                now = time.monotonic()  # one reading a step, for the bound and the frame interval
                if last:
                    recording.end("finished", runs.row_stats(bundle, run, step.sample, images=images))
                    yield send(frame)
                elif progress.stop_came is not None or now > deadline:
                    state = "stopped" if progress.stop_came is not None else "cut"
                    recording.end(state, runs.frame_stats(recording, frame))
                    yield send(frame)
                    return
                elif due(now):
                    recording.stats = runs.frame_stats(recording, frame)
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
        stop = "" if progress.stop_came is None else f"; Stop came after step {progress.stop_came}"
        log.info("run %s: %s after step %d of %d%s", (self.session or "-")[:8], state, len(recording.frames),
                 self.run.request.steps, stop)


class LiveMode:
    """The live events, wired to the sliders when a live box is ticked. serve is Handlers.serve."""

    def __init__(self, serve: Callable[..., Iterator[StreamOutputs]]):
        self._serve = serve

    def _live_generate(self, settings: Settings, live, model, request: gr.Request | None = None) -> tuple:
        return self._final(live, partial(arguments.generate_run, settings), model, request)

    live_generate = endpoint(_live_generate, ("live", *GENERATE_ARGUMENTS), """When live is on: generate's final frame
        (StreamOutputs). The page calls it as a control moves; a run in flight goes to its end, and of the
        moves made meanwhile only the latest runs next (ui._wire_live). When live is off, every output is left as
        it is (gr.skip).""")

    def _live_compare(self, settings: Settings, live, strengths, mode, model,
                      request: gr.Request | None = None) -> tuple:
        settings = replace(settings, num_images=1)
        return self._final(live, partial(arguments.compare_run, settings, strengths, mode), model, request)

    live_compare = endpoint(_live_compare, ("live", *COMPARE_ARGUMENTS), """As live_generate, for compare with one
        image per row: the strip of final images across the rows, for one noise.""")

    def _final(self, live, build: Build, model, request: gr.Request | None) -> tuple:
        frames = list(self._serve(build, model, request, final_only=True)) if live is True else []
        return frames[-1] if frames else tuple(gr.skip() for _ in StreamOutputs._fields)

    def after_live(self, live) -> AfterRun:
        """After a live run: the scrubber and the downloads, which belong to the last Generate or
        Compare, are hidden; the status is the live run's own. When live is off, nothing changes."""
        if live is not True:
            return AfterRun(*(gr.skip() for _ in AfterRun._fields))
        hidden = gr.update(visible=False)
        return AfterRun(hidden, hidden, hidden, gr.skip())


class Playback:
    """After a run: the scrubber over its recorded frames, one image shown large on a click, and
    the run's files to download."""

    def __init__(self, downloads: Downloads, with_evaluator: bool):
        self.downloads, self.with_evaluator = downloads, with_evaluator

    def show_frame(self, position, recording: Recording | None) -> FrameView:
        """The recorded frame at a scrubber position: 0 is x_T, k is after step k."""
        if recording is None or not recording.frames:
            raise gr.Error("nothing recorded yet: run a generation first", duration=ERROR_SECONDS)
        with user_errors():
            k = integer(position, "frame", 0, len(recording.frames))
        return FrameView.of(recording, recording.frames[k - 1] if k else None, self.with_evaluator)

    def detail(self, position, recording: Recording | None, evt: gr.SelectData) -> Detail:
        """The image under a click on any of the three grids, large, with its x_t, x-hat_0 and push
        at the frame shown: the scrubber's, or the latest while a run streams (the final frame
        shows the push of the run's largest step, as the panel does)."""
        if recording is None or not recording.frames:
            return Detail(gr.update(visible=False), "")
        frames, run = list(recording.frames), recording.run
        try:
            k = len(frames) if recording.state == "running" else integer(position, "frame", 0, len(frames))
        except ValueError:  # the scrubber still holds an earlier run's position
            k = len(frames)
        frame = frames[k - 1] if k else None
        item = render.item_at(run, tuple(evt.index), recording.x_T.shape[-1])
        if item is None:
            return Detail(gr.update(visible=False), "")
        push_frame = render.shown_push(recording, frame)
        row, j = divmod(item, run.request.images_per_row)
        where = "x_T, before step 1" if frame is None else f"step {frame.index + 1} of {run.request.steps}"
        pushed = "" if push_frame in (None, frame) else f" (push of step {push_frame.index + 1}, the largest)"
        return Detail(gr.update(value=render.detail(recording, frame, item, push_frame), visible=True),
                      f"**image {j + 1} of row {run.labels[row]}**, {where}{pushed}: x_t · x̂_0 · push")

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
