"""How fast each loaded model samples on this machine: one step of one image, which the page's
info line shows (a full-size ImageNet model takes seconds per step on a CPU); one step of a full
batch, which bounds what one request may cost (Limits.max_seconds); and one Generate at the
model's defaults, which decides whether live mode is offered."""
from __future__ import annotations

import time
from typing import Callable, Sequence

from guidescope import generation

from .arguments import Run
from .models import Model
from .settings import Display


class Timings:
    """Seconds measured per model name. defaults_run(model, **changes) is the Run of the page's
    first Generate on model with changes to its defaults (handlers.defaults_run), so what is timed
    is what the page would run."""

    def __init__(self, models: Sequence[Model], display: Display, defaults_run: Callable[..., Run]):
        self.models, self.display, self._defaults_run = {m.name: m for m in models}, display, defaults_run
        self.run_seconds: dict[str, float] = {}  # model -> seconds of one Generate at its defaults (time_runs)
        self.step_seconds: dict[str, float] = {}  # model -> seconds of one step of one image (time_steps)
        self.batch_step_seconds: dict[str, float] = {}  # model -> seconds per image of one step of a full batch
        self._estimated: set[str] = set()  # models whose run_seconds is step_seconds x steps, not timed

    def time_steps(self, batch: int) -> None:
        """Time one sampling step at each model's defaults, of one image and of `batch` images (the
        second of two steps; the first warms up): the page shows the first (a full-size ImageNet
        model takes seconds per step on a CPU), the request bound uses the second, per image."""
        for name, m in self.models.items():
            for images, kept in ((1, self.step_seconds), (batch, self.batch_step_seconds)):
                run = self._defaults_run(m, num_images=images, steps=2)
                steps = generation.stream(m.bundle, run.checked, diagnostics=False)
                next(steps)
                start = time.perf_counter()
                next(steps)
                kept[name] = (time.perf_counter() - start) / images

    def seconds(self, model: str, run: Run) -> float | None:
        """The estimated sampling time of run on model: its image-steps (two for a classifier-free
        row, which runs the UNet twice; a clean classifier's row, its TrainingFree.step_cost), each
        row at its steps, at the measured cost of one in a full batch; None where not measured."""
        per = self.batch_step_seconds.get(model)
        if per is None:
            return None
        request = run.request
        passes = sum((2 if row.cfg_scale else 1) * (row.guide.step_cost() if row.guide else 1) * request.steps_of(row)
                     for row in request.rows)
        return per * passes * request.images_per_row

    def check_bound(self, model: str, run: Run, max_seconds: float) -> None:
        """Raise ValueError naming the bound when run would hold the server longer than max_seconds
        here, so that one person's request cannot keep everyone else waiting."""
        seconds = self.seconds(model, run)
        if seconds is None or seconds <= max_seconds:
            return
        request = run.request
        images = len(request.rows) * request.images_per_row
        if all(row.steps is not None for row in request.rows):  # each row at its own steps: only images can give
            per_row = int(max_seconds / (seconds / request.images_per_row) + 1e-9)  # the most images a row within it
            advice = f"use at most {per_row} images per row" if per_row else "use fewer rows"
        else:
            fits = max(1, int(max_seconds / (seconds / request.steps) + 1e-9))  # the most steps within the bound
            advice = f"use at most {fits} steps, or fewer images"
        raise ValueError(f"this request would take about {seconds:.0f} s here ({images} images x {request.steps} "
                         f"steps); one request may take at most {max_seconds:g} s, so that nobody waits longer "
                         f"for theirs: {advice}")

    def time_runs(self) -> None:
        """Time one Generate at each model's defaults (after a warm-up run), for live mode. A model
        whose steps alone would take over ten times the live limit is not run: its time is estimated
        from time_steps (minutes of start-up for a full-size ImageNet model otherwise)."""
        if not self.step_seconds:
            self.time_steps(1)
        for name, m in self.models.items():
            estimate = self.step_seconds[name] * m.defaults.steps * m.defaults.num_images
            if estimate > 10 * self.display.live_max_seconds:
                self.run_seconds[name] = estimate
                self._estimated.add(name)
                continue
            run = self._defaults_run(m)
            for _ in range(2):
                start = time.perf_counter()
                for _ in generation.stream(m.bundle, run.checked, diagnostics=False):
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
