"""Choosing the app's defaults from the measurements.

The wide sweeps (100 images a setting on the cpu budget) only screen: they pick the settings
worth measuring again on at least 1000 images, and what the later sweeps are drawn at. The
decision is made on those larger measurements, by non-inferiority: a setting passes only when the
whole 95% interval lies on the right side of a stated margin, so a wider interval (fewer images)
makes it harder to pass, never easier.

Screening (wide sweeps):
  S1. Scale: the smallest classifier w (unconditional model, DDIM at the reference step count)
      whose fidelity is at least FIDELITY_GOAL and whose Frechet distance is at most FD_TARGET
      times the unguided one; failing that, the most faithful w within that distance.
  S2. Sampler, steps and x-hat_0 threshold: at that w, the fewest network evaluations within the
      measured noise of DDIM at the reference step count with the clip (compare.not_worse); this
      only orders the candidates. The step sweep measures every sampler and step count with each
      threshold of the budget (the clip, and dynamic thresholding), since how far a solver can cut
      the step count depends on what keeps its x-hat_0 in range.
Decision (DECISION sweep, on the larger sample):
  1. Sampler, steps and threshold: at the screened w, the candidates with fewer network
     evaluations than DDIM at the reference step count (with the clip), cheapest first; the first
     that is non-inferior to that reference wins: the fidelity difference's interval lies above
     -FIDELITY_MARGIN and the Frechet distance ratio's interval below 1 + FD_MARGIN. None: the
     reference itself.
  2. Scale: at that sampler and step count, the smallest w whose fidelity interval's lower end is
     at least FIDELITY_GOAL - FIDELITY_MARGIN and whose Frechet distance is at most FD_TARGET
     times the unguided one at the same steps. When no w gets there, the next larger step count
     of the same sampler and threshold is tried (then the reference), and the reason says so.
  3. Schedule: reported, not applied. The guidance schedules are compared with constant w at the
     fidelity constant w reaches (compare.matched_difference); the default stays constant w,
     since a schedule's w would not have been measured on the decision sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Iterable, NamedTuple, Sequence

from .compare import Difference, difference, matched_difference, not_worse, ratio, verdict
from .measure import Measurement, Setting, sampler_name

FIDELITY_GOAL = 0.95    # share of samples in the requested class at the default
FIDELITY_MARGIN = 0.015  # non-inferiority margin of fidelity (1.5 points)
FD_MARGIN = 0.10        # non-inferiority margin of the Frechet distance ratio (+10%)
FD_TARGET = 2.0         # Frechet distance at most this multiple of the unguided one
REFERENCE_SAMPLER = "ddim"
DECISION = "decision"   # the sweep name of the measurements on the larger sample


@dataclass(frozen=True)
class Defaults:
    """What the app starts with, and why (the reasons are quoted in the report)."""
    scale: float
    scale_reason: str
    sampler: str
    steps: int
    steps_reason: str
    threshold: str = "clip"         # guidescope.guide.THRESHOLDS: what the sampler does to each x-hat_0
    schedule: str = "constant"
    interval: tuple[int, int] | None = None
    schedule_reason: str = ""
    decision_images: int = 0        # images the default was decided on (0: screened on the wide sweeps only)
    fidelity: tuple[float, float, float] | None = None  # at the default on those images: (value, low, high)
    seconds_per_image: float | None = None  # the evaluation's sampling time per image at the default

    @property
    def setting(self) -> Setting:
        """The default as the evaluation's Setting (unconditional model, classifier guidance)."""
        return Setting(self.sampler, self.steps, self.scale, None, self.schedule, self.interval, self.threshold)

    def to_json(self, budget: str) -> dict:
        """defaults.json: what the app reads, the reasons, and the budget that measured them."""
        return {"scale": self.scale, "steps": self.steps, "sampler": self.sampler, "threshold": self.threshold,
                "schedule": self.schedule,
                "interval": None if self.interval is None else list(self.interval), "budget": budget,
                "decision_images": self.decision_images,
                "fidelity": None if self.fidelity is None else [round(v, 4) for v in self.fidelity],
                "seconds_per_image": None if self.seconds_per_image is None else round(self.seconds_per_image, 6),
                "scale_reason": self.scale_reason, "steps_reason": self.steps_reason,
                "schedule_reason": self.schedule_reason}


def is_constant(m: Measurement) -> bool:
    """Classifier guidance on the unconditional model, constant over every step (any threshold)."""
    return m.setting.cfg_scale is None and m.setting.schedule_name == "constant"


def is_plain(m: Measurement) -> bool:
    """is_constant, with x-hat_0 clipped: the setting of the strength sweeps and of the reference."""
    return is_constant(m) and m.setting.threshold == "clip"


def choose_scale(classifier: Sequence[Measurement]) -> tuple[float, str]:
    """Rule 1 on the classifier sweep (it must hold w = 0)."""
    base = next((m for m in classifier if m.setting.scale == 0), None)
    if base is None:
        raise ValueError("the classifier sweep needs w = 0, the unguided reference")
    guided = sorted((m for m in classifier if m.setting.scale > 0), key=lambda m: m.setting.scale)
    within = [m for m in guided if m.scores.fd <= FD_TARGET * base.scores.fd]
    good = [m for m in within if m.scores.fidelity >= FIDELITY_GOAL]
    if good:
        pick = good[0]
        return pick.setting.scale, (
            f"the smallest swept scale with fidelity >= {FIDELITY_GOAL:.0%} ({pick.show('fidelity')}) and "
            f"Frechet distance <= {FD_TARGET:g}x unguided ({pick.show('fd')} vs {base.show('fd')})")
    pick = max(within or guided or [base], key=lambda m: m.scores.fidelity)
    return pick.setting.scale, (
        f"no swept scale met both targets; this is the most faithful within {FD_TARGET:g}x the unguided "
        f"Frechet distance ({pick.show('fidelity')}, {pick.show('fd')} vs {base.show('fd')})")


def _reference(steps: Sequence[Measurement], reference_steps: int) -> Measurement | None:
    """DDIM at reference_steps with the clip, among the step sweep's rows."""
    return next((m for m in steps if is_plain(m) and (m.setting.sampler, m.setting.steps)
                 == (REFERENCE_SAMPLER, reference_steps)), None)


def _screened(steps: Sequence[Measurement], reference: Measurement) -> list[Measurement]:
    """The step sweep's rows with fewer network evaluations than the reference and within its
    measured noise (compare.not_worse), cheapest first, then by Frechet distance."""
    return sorted((m for m in steps if m.setting.steps < reference.setting.steps and not_worse(m, reference)),
                  key=lambda m: (m.setting.steps, m.scores.fd))


def choose_sampler(steps: Sequence[Measurement], reference_steps: int) -> tuple[Setting, str]:
    """Screening rule S2 on the step sweep at the screened scale (it must hold DDIM at reference_steps
    with the clip): the picked setting (sampler, steps, threshold) and the reason."""
    reference = _reference(steps, reference_steps)
    if reference is None:
        raise ValueError(f"the step sweep needs {REFERENCE_SAMPLER.upper()} at {reference_steps} steps, the reference")
    pick = next(iter(_screened(steps, reference)), reference)
    name, ref = setting_name(pick.setting), setting_name(reference.setting)
    if pick is reference:
        return pick.setting, f"no setting with fewer network evaluations came within the measured noise of {ref}"
    fid, fd = difference(pick, reference, "fidelity"), difference(pick, reference, "fd")
    return pick.setting, (
        f"{name} is the fewest network evaluations whose fidelity and Frechet distance are within the "
        f"measured noise of {ref} (fidelity {pick.show('fidelity')} vs {reference.show('fidelity')}, "
        f"difference {fid.text(1, percent=True)}; Frechet distance {pick.show('fd')} vs "
        f"{reference.show('fd')}, difference {fd.text(2)}; 95% paired bootstrap intervals)")


SCREEN = 0.10  # the scale ladder of the decision starts at the smallest w screened within this of the goal
Get = Callable[[Setting], Measurement]  # a setting's measurement on the decision sample


class Verdict(NamedTuple):
    """A candidate against the reference, by non-inferiority."""
    accepted: bool
    fidelity: Difference            # candidate - reference
    fd_ratio: Difference            # candidate / reference

    def text(self) -> str:
        r = self.fd_ratio
        return (f"fidelity difference {self.fidelity.text(1, percent=True)} (must lie above "
                f"-{100 * FIDELITY_MARGIN:g} pt), Frechet distance ratio {r.value:.3f} [{r.low:.3f}, {r.high:.3f}] "
                f"(must lie below {1 + FD_MARGIN:g})")


def non_inferior(candidate: Measurement, reference: Measurement) -> Verdict:
    """Whether the whole 95% interval of the fidelity difference lies above -FIDELITY_MARGIN and
    that of the Frechet distance ratio below 1 + FD_MARGIN (paired bootstrap, compare.py)."""
    fid, fd = difference(candidate, reference, "fidelity"), ratio(candidate, reference, "fd")
    return Verdict(fid.low > -FIDELITY_MARGIN and fd.high < 1 + FD_MARGIN, fid, fd)


def reaches_goal(m: Measurement, unguided: Measurement) -> bool:
    """Fidelity's interval starts at FIDELITY_GOAL - FIDELITY_MARGIN or above, and the Frechet
    distance is at most FD_TARGET times the unguided one."""
    return (m.interval("fidelity")[0] >= FIDELITY_GOAL - FIDELITY_MARGIN - 1e-9
            and m.scores.fd <= FD_TARGET * unguided.scores.fd)


def setting_name(setting: Setting) -> str:
    """'UniPC at 8 steps', '... with dynamic thresholding' when x-hat_0 is not clipped."""
    return f"{sampler_name(setting.sampler)} at {setting.steps} steps{_THRESHOLD_WORDS[setting.threshold]}"


_THRESHOLD_WORDS = {"clip": "", "dynamic": " with dynamic thresholding", "none": " without a threshold"}


def choose_steps(candidates: Iterable[Measurement], reference: Measurement) -> tuple[Setting, str]:
    """Decision rule 1: the first candidate (cheapest first) non-inferior to the reference. A
    generator of candidates is drawn only as far as the first that passes."""
    tried = []
    for m in candidates:
        verdict_ = non_inferior(m, reference)
        if verdict_.accepted:
            return m.setting, (
                f"{setting_name(m.setting)} is the fewest network evaluations non-inferior to {setting_name(reference.setting)} "
                f"at w = {reference.setting.scale:g} on {m.images} images: {verdict_.text()}"
                + (f"; refused before it: {'; '.join(tried)}" if tried else ""))
        tried.append(f"{setting_name(m.setting)} ({verdict_.text()})")
    return reference.setting, (
        f"no setting with fewer network evaluations was non-inferior to {setting_name(reference.setting)} at "
        f"w = {reference.setting.scale:g} on {reference.images} images"
        + (f": {'; '.join(tried)}" if tried else " (none passed the screening)"))


def choose_decided_scale(ladder: Iterable[Measurement], unguided: Measurement) -> Measurement | None:
    """Decision rule 2 at one sampler and step count: the first w of the ladder (in increasing w)
    that reaches the goal, drawing a generator only that far."""
    return next((m for m in ladder if reaches_goal(m, unguided)), None)


def _scale_reason(m: Measurement, unguided: Measurement) -> str:
    low, high = m.interval("fidelity")
    return (f"the smallest w at {setting_name(m.setting)} whose fidelity interval starts at "
            f"{FIDELITY_GOAL - FIDELITY_MARGIN:.1%} or above: {m.scores.fidelity:.1%} [{low:.1%}, {high:.1%}] on "
            f"{m.images} images, Frechet distance {m.show('fd')} <= {FD_TARGET:g}x unguided ({unguided.show('fd')})")


def decide(stage1: Sequence[Measurement], reference_steps: int, get: Get) -> Defaults:
    """Decision rules 1 and 2 (module docstring) on measurements that get() makes or looks up on
    the decision sample; stage1 are the wide sweeps (classifier and steps) that screen them."""
    classifier = [m for m in stage1 if "classifier" in m.sweeps]
    w, _ = choose_scale(classifier)
    steps = [m for m in stage1 if "steps" in m.sweeps and is_constant(m) and m.setting.scale == w]
    screen_ref = _reference(steps, reference_steps)
    reference = get(screen_ref.setting)
    chosen, steps_reason = choose_steps((get(m.setting) for m in _screened(steps, screen_ref)), reference)
    start = min((m.setting.scale for m in classifier if m.setting.scale > 0
                 and m.scores.fidelity >= FIDELITY_GOAL - SCREEN), default=w)
    ladder = sorted(m.setting.scale for m in classifier if m.setting.scale >= start)
    larger = sorted({m.setting.steps for m in steps if (m.setting.sampler, m.setting.threshold)
                     == (chosen.sampler, chosen.threshold) and m.setting.steps > chosen.steps})
    tries = [chosen] + [replace(chosen, steps=n) for n in larger] + [reference.setting]
    missed = []
    for setting in dict.fromkeys(tries):
        unguided = get(replace(setting, scale=0.0))
        pick = choose_decided_scale((get(replace(setting, scale=v)) for v in ladder), unguided)
        if pick is not None:
            note = (f"; no w up to {ladder[-1]:g} got there at {', '.join(missed)}, so more steps were taken"
                    if missed else "")
            reason = steps_reason if not missed else f"{steps_reason}. Then {setting_name(setting)}: more steps for fidelity"
            return Defaults(pick.setting.scale, _scale_reason(pick, unguided) + note, setting.sampler,
                            setting.steps, reason, setting.threshold, decision_images=pick.images,
                            fidelity=_fidelity(pick), seconds_per_image=pick.sample_seconds / pick.images)
        missed.append(setting_name(setting))
    best = max((get(replace(chosen, scale=v)) for v in ladder), key=lambda m: m.scores.fidelity)
    return Defaults(best.setting.scale, f"no w up to {ladder[-1]:g} reached the goal at {', '.join(missed)}; "
                    f"this is the most faithful at {setting_name(chosen)} ({best.show('fidelity')} on {best.images} images)",
                    chosen.sampler, chosen.steps, steps_reason, chosen.threshold, decision_images=best.images,
                    fidelity=_fidelity(best), seconds_per_image=best.sample_seconds / best.images)


def _fidelity(m: Measurement) -> tuple[float, float, float]:
    return (m.scores.fidelity, *m.interval("fidelity"))


class ScheduleComparison(NamedTuple):
    """A schedule's curve against constant w's, at one fidelity level."""
    schedule: str               # Setting.schedule_name
    fidelity: float             # the level compared at
    fd: Difference              # schedule - constant (negative: better)
    recall: Difference          # schedule - constant (positive: better)
    verdict: str                # compare.verdict over the two; 'not reached' when a curve misses the level


def schedule_curves(rows: Sequence[Measurement]) -> dict[str, list[Measurement]]:
    """The schedule sweep's rows by schedule name, each curve ordered by w."""
    curves: dict[str, list[Measurement]] = {}
    for m in sorted(rows, key=lambda m: m.setting.scale):
        curves.setdefault(m.setting.schedule_name, []).append(m)
    return curves


def compare_schedules(curves: dict[str, list[Measurement]], fidelity: float) -> list[ScheduleComparison]:
    """Every schedule but constant against constant, at the given fidelity."""
    base = curves["constant"]
    out = []
    for name, curve in curves.items():
        if name == "constant":
            continue
        diffs = {m: matched_difference(curve, base, fidelity, m) for m in ("fd", "recall")}
        reached = not any(math.isnan(d.value) for d in diffs.values())  # NaN: a curve misses the level
        out.append(ScheduleComparison(name, fidelity, diffs["fd"], diffs["recall"],
                                      verdict(diffs) if reached else "not reached"))
    return out


def choose_schedule(rows: Sequence[Measurement], scale: float) -> tuple[Measurement | None, str]:
    """Rule 3 on the schedule sweep at the chosen sampler and steps: the winning schedule's row
    nearest the matched fidelity, or None (keep constant w), with the reason."""
    curves = schedule_curves(rows)
    target = next((m for m in curves.get("constant", []) if m.setting.scale == scale), None)
    if target is None or len(curves) < 2:
        return None, "no schedule sweep was measured at the default scale"
    level = target.scores.fidelity
    comparisons = compare_schedules(curves, level)
    winners = [c for c in comparisons if c.verdict == "better"]
    if not winners:
        return None, (f"none is significantly better at the fidelity constant w = {scale:g} reaches "
                      f"({level:.1%}): " + "; ".join(f"{c.schedule} {c.verdict}" for c in comparisons))
    best = min(winners, key=lambda c: c.fd.value)
    pick = min(curves[best.schedule], key=lambda m: abs(m.scores.fidelity - level))
    return pick, (f"{best.schedule} beats constant w at the fidelity constant w = {scale:g} reaches ({level:.1%}): "
                  f"Frechet distance {best.fd.text(2)}, recall {best.recall.text(3)} against constant "
                  f"(95% paired bootstrap intervals); w = {pick.setting.scale:g} is its swept scale nearest "
                  f"that fidelity ({pick.show('fidelity')})")


def screen(measurements: Sequence[Measurement], reference_steps: int) -> Defaults:
    """Screening rules S1 and S2 on the wide sweeps measured so far."""
    classifier = [m for m in measurements if "classifier" in m.sweeps]
    scale, scale_reason = choose_scale(classifier)
    steps = [m for m in measurements if "steps" in m.sweeps and is_constant(m) and m.setting.scale == scale]
    if _reference(steps, reference_steps) is not None:
        pick, steps_reason = choose_sampler(steps, reference_steps)
    else:
        pick, steps_reason = Setting(REFERENCE_SAMPLER, reference_steps, scale), "the step sweep has not run yet"
    return Defaults(scale, "screened, not decided: " + scale_reason, pick.sampler, pick.steps,
                    "screened, not decided: " + steps_reason, pick.threshold)


def choose_defaults(measurements: Sequence[Measurement], reference_steps: int,
                    decisions: Sequence[Measurement] = ()) -> Defaults:
    """The decided defaults once the decision sweep holds every setting decide() asks for; until
    then the screened ones. The schedule comparison (rule 3) goes into the reason only."""
    chosen = screen(measurements, reference_steps)
    if decisions:
        found = {m.setting: m for m in decisions}
        try:
            chosen = decide(measurements, reference_steps, found.__getitem__)
        except KeyError:  # the decision sweep has not finished
            pass
    schedules = [m for m in measurements if "schedules" in m.sweeps and m.setting.cfg_scale is None
                 and (m.setting.sampler, m.setting.steps, m.setting.threshold)
                 == (chosen.sampler, chosen.steps, chosen.threshold)]
    pick, schedule_reason = choose_schedule(schedules, chosen.scale)
    if pick is not None:
        schedule_reason = "reported, not applied (its w was not measured on the decision sample): " + schedule_reason
    return replace(chosen, schedule_reason=schedule_reason)
