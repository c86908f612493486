"""The sweeps of an evaluation, sized by a budget, and the run that measures them.

Sweeps, in the order they run; a later one uses what defaults.py chose from the earlier ones:
    classifier  w over classifier_scales, unconditional model, DDIM at reference_steps -> the scale w*
    steps       at w*: DPM-Solver++ at dpm_steps, UniPC at unipc_steps, DDIM at ddim_steps, DDPM at
                ddpm_steps, each with every threshold of step_thresholds -> the screened sampler, steps
                and threshold
    decision    on decision_images_per_class images a class: the settings the decision rules of
                defaults.py ask for, measured as they ask -> the app's sampler, steps and w
    samplers    over sampler_scales, with the chosen threshold: DDIM at reference_steps and at compare_ddim_steps, DPM-Solver++ at
                the chosen step count (compare_dpm_steps unless DPM-Solver++ was chosen), and UniPC at
                the chosen step count when UniPC was chosen
    schedules   at the chosen sampler, steps and threshold: every schedule over schedule_scales (and w*) -> schedule
    thresholds  at the chosen sampler and steps: dynamic thresholding and the clip, over threshold_scales
    cfg         classifier-free w_cfg over cfg_scales on the conditional model, DDIM at reference_steps
    combined    classifier w over combined_scales on top of w_cfg = combined_cfg, DDIM at reference_steps
A setting that two sweeps share is measured once (the decision sweep's sample is another one, kept
apart). results.json is rewritten after every setting, and a resumed run keeps the settings already
in it.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from ..bundle import Bundle
from ..images import grid, to_model_range
from ..metrics import RealReference, bootstrap_scores
from ..request import SAMPLING_DEFAULTS
from .defaults import DECISION, Defaults, choose_defaults, decide
from .measure import Measurement, Setting, draw, first_images, judge, measure

SWEEPS = ("classifier", "steps", DECISION, "samplers", "schedules", "thresholds", "cfg", "combined")
MIN_IMAGES = 8  # per setting: k-NN recall needs more than k (metrics.PRECISION_RECALL_K) distinct images in a resample

# (shape, guided part of the timestep range as fractions of T; None: all of it)
SCHEDULES = (("constant", None), ("constant", (0.0, 0.5)), ("constant", (0.2, 0.8)), ("constant", (0.5, 1.0)),
             ("ramp-up", (0.0, 1.0)), ("ramp-down", (0.0, 1.0)))


@dataclass(frozen=True)
class Budget:
    """How much an evaluation measures; every budget runs every sweep."""
    name: str
    images_per_class: int                   # per setting (at least MIN_IMAGES in all)
    decision_images_per_class: int          # per setting of the decision sweep
    n_real: int                             # held-out images of the Frechet reference (and training images of its floor)
    resamples: int = 200                    # bootstrap resamples
    reference_steps: int = SAMPLING_DEFAULTS.steps  # DDIM steps of the reference and of the strength sweeps
    classifier_scales: tuple[float, ...] = (0, 0.5, 1, 2, 3, 5, 8, 12)
    dpm_steps: tuple[int, ...] = (5, 8, 10, 15, 20)
    unipc_steps: tuple[int, ...] = (5, 8, 10, 15)
    ddim_steps: tuple[int, ...] = (10, 25, 50)
    ddpm_steps: tuple[int, ...] = (50, 250, 1000)
    step_thresholds: tuple[str, ...] = ("clip", "dynamic")  # x-hat_0 thresholds of the step sweep
    sampler_scales: tuple[float, ...] = (2, 3, 5, 8, 12)
    compare_ddim_steps: int = 25            # the cheaper DDIM line of the samplers sweep
    compare_dpm_steps: int = 10             # DPM-Solver++ in the samplers sweep unless it is the default
    schedules: tuple = SCHEDULES
    schedule_scales: tuple[float, ...] = (1, 2, 3, 5, 8, 12, 20, 30)
    threshold_scales: tuple[float, ...] = (8, 12, 20)
    cfg_scales: tuple[float, ...] = (0, 0.5, 1, 2, 4)
    combined_scales: tuple[float, ...] = (0.5, 1, 2, 4)
    combined_cfg: float = 1.0

    def images(self, num_classes: int) -> int:
        """Images per class per setting for a checkpoint with num_classes classes."""
        return max(self.images_per_class, math.ceil(MIN_IMAGES / num_classes))

    def decision_images(self, num_classes: int) -> int:
        """Images per class per setting of the decision sweep."""
        return max(self.decision_images_per_class, self.images(num_classes))


BUDGETS = {
    # Checks the pipeline in seconds on tiny networks; its numbers mean nothing.
    "smoke": Budget("smoke", images_per_class=2, decision_images_per_class=4, n_real=200, resamples=20, reference_steps=4,
                    classifier_scales=(0, 2), dpm_steps=(2, 3), unipc_steps=(2, 3), ddim_steps=(2, 4), ddpm_steps=(4,),
                    sampler_scales=(2, 4), compare_ddim_steps=2, compare_dpm_steps=3, schedule_scales=(2, 4),
                    threshold_scales=(4,), cfg_scales=(0, 1), combined_scales=(1,)),
    # Within an hour on a 2-core CPU (python -m guidescope.evaluate --estimate tells for this machine).
    "cpu": Budget("cpu", images_per_class=10, decision_images_per_class=100, n_real=2000, classifier_scales=(0, 1, 2, 3, 5, 8, 12),
                  ddpm_steps=(50,), schedule_scales=(2, 5, 8, 12, 20), cfg_scales=(0, 1, 2, 4),
                  combined_scales=(1, 4)),
    # The full sweep, for one GPU.
    "gpu": Budget("gpu", images_per_class=500, decision_images_per_class=1000, n_real=10_000),
}


def timestep_interval(fractions: tuple[float, float] | None, num_timesteps: int) -> tuple[int, int] | None:
    """(0.2, 0.8) -> (200, 800) for T = 1000; the top end is at most T - 1."""
    if fractions is None:
        return None
    return tuple(min(round(f * num_timesteps), num_timesteps - 1) for f in fractions)


def plan(budget: Budget, sweep: str, chosen: Defaults | None, num_timesteps: int) -> list[Setting]:
    """The settings of one sweep, given the defaults chosen from the sweeps before it."""
    ref = budget.reference_steps
    if sweep == "classifier":
        return [Setting("ddim", ref, w) for w in budget.classifier_scales]
    if sweep == "cfg":
        return [Setting("ddim", ref, 0.0, w) for w in budget.cfg_scales]
    if sweep == "combined":
        return [Setting("ddim", ref, w, budget.combined_cfg) for w in budget.combined_scales]
    w, sampler, steps, threshold = chosen.scale, chosen.sampler, chosen.steps, chosen.threshold
    if sweep == "steps":
        runs = ([("dpm++2m", s) for s in budget.dpm_steps] + [("unipc", s) for s in budget.unipc_steps]
                + [("ddim", s) for s in sorted({*budget.ddim_steps, ref})] + [("ddpm", s) for s in budget.ddpm_steps])
        return [Setting(name, s, w, threshold=mode) for mode in budget.step_thresholds for name, s in runs]
    if sweep == "samplers":
        dpm = steps if sampler == "dpm++2m" else budget.compare_dpm_steps
        lines = [("ddim", ref), ("ddim", budget.compare_ddim_steps), ("dpm++2m", dpm)]
        lines += [(sampler, steps)] if sampler == "unipc" else []
        return [Setting(name, s, v, threshold=threshold) for v in budget.sampler_scales for name, s in lines]
    if sweep == "schedules":
        scales = sorted({*budget.schedule_scales, w})
        return [Setting(sampler, steps, v, None, shape, timestep_interval(part, num_timesteps), threshold)
                for shape, part in budget.schedules for v in (scales if shape == "constant" and part is None
                                                              else budget.schedule_scales)]
    if sweep == "thresholds":
        return [Setting(sampler, steps, v, threshold=mode) for v in budget.threshold_scales for mode in ("clip", "dynamic")]
    raise ValueError(f"unknown sweep {sweep!r}; choose one of {', '.join(SWEEPS)}")


@dataclass(frozen=True)
class RunInfo:
    """What an evaluation ran on; the report's header and the model card quote it."""
    command: str
    budget: str
    device: str                     # where it ran, e.g. "cpu, 2 threads"
    backend: str                    # what ran the UNet forward pass
    checkpoints: str
    class_names: tuple[str, ...]
    data: dict                      # the data's record (guidescope.training.data.DataRecord.to_json())
    images_per_class: int
    decision_images_per_class: int | None  # of the decision sweep (None: a results.json from before it)
    seed: int
    resamples: int
    reference_steps: int
    n_real: int                     # held-out images of the Frechet reference
    evaluator: str                  # the evaluator network, in words
    evaluator_test_acc: float       # on those held-out images
    fd_floor: float                 # Frechet distance of n_real training images to them
    classifier_acc: tuple[float, ...]  # guidance classifier accuracy on noisy held-out images, by quarter of T

    def resumable_from(self, other: "RunInfo") -> list[str]:
        """The fields that differ from other's and forbid continuing its results."""
        same = ("budget", "checkpoints", "class_names", "data", "images_per_class", "decision_images_per_class",
                "seed", "resamples",
                "reference_steps", "n_real")
        # A results.json from before the decision sweep holds none of it: its wide sweeps still count.
        return [name for name in same if getattr(self, name) != getattr(other, name)
                and not (name == "decision_images_per_class" and getattr(other, name) is None)]


@dataclass
class Results:
    """An evaluation's info and measurements, in the order measured; decisions are the decision
    sweep's, on its larger sample."""
    info: RunInfo
    measurements: list[Measurement]
    decisions: list[Measurement] = field(default_factory=list)

    def sweep(self, name: str) -> list[Measurement]:
        return [m for m in self.measurements if name in m.sweeps]

    def find(self, setting: Setting) -> int | None:
        return next((i for i, m in enumerate(self.measurements) if m.setting == setting), None)

    def decided(self, setting: Setting) -> Measurement | None:
        """The decision sweep's measurement of setting, if it has one."""
        return next((m for m in self.decisions if m.setting == setting), None)

    def save(self, path: Path, defaults: Defaults | None = None) -> None:
        """results.json, one measurement per line; written beside and renamed, so an interrupted
        run never leaves a cut-off file."""
        info = asdict(self.info)
        text = ('{\n"info": ' + json.dumps(info, indent=1) + ',\n"defaults": '
                + json.dumps(defaults.to_json(self.info.budget) if defaults else None, indent=1) + ',\n"rows": [\n'
                + ",\n".join(json.dumps(m.to_json()) for m in self.measurements) + '\n],\n"decision_rows": [\n'
                + ",\n".join(json.dumps(m.to_json()) for m in self.decisions) + "\n]}\n")
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        os.replace(partial, path)

    @classmethod
    def load(cls, path: Path) -> "Results":
        """Read results.json; ValueError when it is not one this code wrote."""
        try:
            record = json.loads(Path(path).read_text())
            info = record["info"]
            info = RunInfo(**{"decision_images_per_class": None, **info, "class_names": tuple(info["class_names"]),
                              "classifier_acc": tuple(info["classifier_acc"])})
            return cls(info, [Measurement.from_json(row) for row in record["rows"]],
                       [Measurement.from_json(row) for row in record.get("decision_rows", [])])
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not the results.json of this evaluation ({type(err).__name__}: {err}); "
                             "measure afresh (without --resume)") from None


def run(bundle: Bundle, budget: Budget, info: RunInfo, reference: RealReference, path: Path,
        previous: Results | None = None, batch_size: int | None = None,
        log: Callable[[str], None] = print, decision_reference: RealReference | None = None) -> Results:
    """Measure every sweep's settings (those of previous are kept, not redrawn), rewriting path
    (results.json) after each, and draw OUT/samples_classifier.png after the classifier sweep.
    decision_reference: the real side of the metrics for the decision sweep's sample size
    (default: reference)."""
    runner = _Runner(bundle, info, path, previous, batch_size, log, reference, decision_reference or reference)
    for sweep in SWEEPS:
        results = runner.results
        if sweep == DECISION:
            log(f"-- {sweep}: the settings the rules ask for, {info.decision_images_per_class * len(bundle.class_names)} "
                "images each")
            decide(results.measurements, budget.reference_steps, runner.decision)
            continue
        chosen = None if sweep == "classifier" else choose_defaults(
            results.measurements, budget.reference_steps, results.decisions)
        settings = plan(budget, sweep, chosen, bundle.num_timesteps)
        runner.wide_sweep(sweep, settings)
        if sweep == "classifier":
            runner.draw_classifier_samples(settings)
    return runner.results


class _Runner:
    """One evaluation run's state: the results so far, what a resumed run keeps, and how a setting
    is measured and logged."""

    def __init__(self, bundle: Bundle, info: RunInfo, path: Path, previous: Results | None, batch_size: int | None,
                 log: Callable[[str], None], reference: RealReference, decision_reference: RealReference):
        self.bundle, self.info, self.path, self.batch_size, self.log = bundle, info, path, batch_size, log
        self.reference, self.decision_reference = reference, decision_reference
        self.results = Results(info, [])
        self.kept = {m.setting: m for m in previous.measurements} if previous else {}
        self.kept_decisions = {m.setting: m for m in previous.decisions} if previous else {}
        self.started = time.perf_counter()

    def measured(self, setting: Setting, sweep: str, size: int, real: RealReference) -> Measurement:
        info = self.info
        m, _ = measure(self.bundle, setting, real, size, info.seed, info.resamples, self.batch_size, sweep)
        self.log(f"{setting.label()}{' (decision)' if sweep == DECISION else ''}: fidelity {m.show('fidelity')}, "
                 f"Frechet distance {m.show('fd')}, precision {m.show('precision')}, recall {m.show('recall')} "
                 f"({m.sample_seconds:.1f} s; {(time.perf_counter() - self.started) / 60:.1f} min so far)")
        return m

    def decision(self, setting: Setting) -> Measurement:
        """The setting's measurement on the decision sample: found, kept from a resumed run, or made."""
        found = self.results.decided(setting)
        if found is None:
            found = self.kept_decisions.get(setting) or self.measured(
                setting, DECISION, self.info.decision_images_per_class, self.decision_reference)
            self.results.decisions.append(found)
            self.results.save(self.path)
        return found

    def wide_sweep(self, sweep: str, settings: list[Setting]) -> None:
        """Every setting of one wide sweep: shared with an earlier sweep, kept, or measured."""
        results, n = self.results, self.info.images_per_class
        self.log(f"-- {sweep}: {len(settings)} settings of {n * len(self.bundle.class_names)} images")
        for setting in settings:
            index = results.find(setting)
            if index is not None:
                results.measurements[index] = results.measurements[index].with_sweep(sweep)
                continue
            if setting in self.kept:
                results.measurements.append(replace(self.kept[setting], sweeps=(sweep,)))
                self.log(f"{setting.label()}: kept from {self.path}")
            else:
                results.measurements.append(self.measured(setting, sweep, n, self.reference))
            results.save(self.path)

    def draw_classifier_samples(self, settings: list[Setting]) -> None:
        """OUT/samples_classifier.png: image 0 of each class at each scale, unless kept as it is."""
        picture = self.path.parent / "samples_classifier.png"
        if picture.exists() and all(s in self.kept for s in settings):
            return
        rows = [first_images(self.bundle, s, self.info.images_per_class, self.info.seed) for s in settings]
        grid(torch.cat(rows), ncols=len(self.bundle.class_names), upscale=2).save(picture)


def planned_settings(budget: Budget, chosen: Defaults, num_timesteps: int) -> list[Setting]:
    """Every distinct setting of every sweep, with `chosen` standing in for the defaults that the
    run chooses as it goes."""
    settings = {}
    for sweep in (s for s in SWEEPS if s != DECISION):
        settings.update(dict.fromkeys(plan(budget, sweep, None if sweep == "classifier" else chosen, num_timesteps)))
    return list(settings)


def _kind(setting: Setting) -> tuple[int, bool]:
    """(UNet passes per step, classifier gradient per step): what a step costs."""
    passes = 1 if setting.cfg_scale is None or setting.cfg_scale == 0 else 2
    return passes, setting.scale > 0


def estimate_seconds(bundle: Bundle, budget: Budget, chosen: Defaults, batch_size: int | None = None,
                     steps: int = 5) -> tuple[float, int, dict]:
    """Predicted seconds of a run of budget on this machine: every planned setting's image-steps
    times the cost of one image-step of its kind, timed here by sampling `steps` steps of each kind
    at the run's batch size; plus judging and bootstrapping each setting, and the real images'
    features. Returns (seconds, number of settings, {(UNet passes, guided): seconds per image-step})."""
    classes = len(bundle.class_names)
    n = budget.images(classes)
    settings = planned_settings(budget, chosen, bundle.num_timesteps)
    probes = {(1, False): Setting("ddim", steps, 0.0), (1, True): Setting("ddim", steps, 1.0),
              (2, False): Setting("ddim", steps, 0.0, 1.0), (2, True): Setting("ddim", steps, 1.0, 1.0)}
    draw(bundle, probes[(1, False)], n, 0, batch_size)  # warm-up: first calls allocate and tune
    cost = {}
    for kind, probe in probes.items():
        start = time.perf_counter()
        samples = draw(bundle, probe, n, 0, batch_size)
        cost[kind] = (time.perf_counter() - start) / (len(samples.images) * steps)
    start = time.perf_counter()
    features, _ = judge(bundle.evaluator, to_model_range(samples.images.numpy()))
    per_image = (time.perf_counter() - start) / len(features)
    start = time.perf_counter()
    bootstrap_scores(RealReference(features, features), features, torch.ones(len(features), dtype=torch.bool),
                     samples.labels, budget.resamples)
    per_setting = time.perf_counter() - start + per_image * n * classes
    sampling = sum(n * classes * s.steps * cost[_kind(s)] for s in settings)
    decisions = decision_guess(budget, chosen, bundle.num_timesteps)
    n_decide = budget.decision_images(classes)
    sampling += sum(n_decide * classes * s.steps * cost[_kind(s)] for s in decisions)
    # Bootstrapping grows with the sample about as fast as judging: scale the per-setting cost.
    per_setting_total = per_setting * len(settings) + per_setting * (n_decide / n) * len(decisions)
    # The real images: held-out and training features, and four noise levels of the classifier.
    real = 6 * budget.n_real * per_image
    return sampling + per_setting_total + real, len(settings) + len(decisions), cost


def decision_guess(budget: Budget, chosen: Defaults, num_timesteps: int) -> list[Setting]:
    """What the decision sweep is likely to measure when `chosen` is where it lands: the reference,
    every cheaper candidate of the step sweep (at most), the unguided setting and three scales."""
    ref = Setting("ddim", budget.reference_steps, chosen.scale)
    candidates = [s for s in plan(budget, "steps", chosen, num_timesteps) if s.steps < budget.reference_steps]
    ladder = [Setting(chosen.sampler, chosen.steps, w, threshold=chosen.threshold)
              for w in (0.0, chosen.scale, 2 * chosen.scale, 3 * chosen.scale)]
    return list(dict.fromkeys([ref, *candidates, *ladder]))
