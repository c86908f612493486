"""Choosing the app's defaults from the measurements, in three rules applied in turn:

1. Scale: the smallest classifier w (unconditional model, DDIM at the reference step count) whose
   fidelity is at least FIDELITY_TARGET and whose Frechet distance is at most FD_TARGET times the
   unguided one; failing that, the most faithful w within that distance.
2. Sampler and steps: at that w, the fewest network evaluations (one per step) whose fidelity and
   Frechet distance are within the measured noise of DDIM at the reference step count (neither
   paired difference significantly worse; compare.py); ties go to the lower Frechet distance.
3. Schedule: at that sampler and step count, the guidance schedules are compared with constant w at
   the fidelity constant w reaches at the chosen scale. A schedule is taken only when it is
   significantly better there (lower Frechet distance or higher recall, neither significantly
   worse), the one with the lowest Frechet distance among such; its w is the swept one whose
   fidelity lies closest to that level.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

from .compare import Difference, difference, matched_difference, not_worse, verdict
from .measure import Measurement, sampler_name

FIDELITY_TARGET = 0.9   # share of samples in the requested class at the default scale
FD_TARGET = 2.0         # Frechet distance at most this multiple of the unguided one
REFERENCE_SAMPLER = "ddim"


@dataclass(frozen=True)
class Defaults:
    """What the app starts with, and why (the reasons are quoted in the report)."""
    scale: float
    scale_reason: str
    sampler: str
    steps: int
    steps_reason: str
    schedule: str = "constant"
    interval: tuple[int, int] | None = None
    schedule_reason: str = ""

    def to_json(self, budget: str) -> dict:
        """defaults.json: what the app reads, the reasons, and the budget that measured them."""
        return {"scale": self.scale, "steps": self.steps, "sampler": self.sampler, "schedule": self.schedule,
                "interval": None if self.interval is None else list(self.interval), "budget": budget,
                "scale_reason": self.scale_reason, "steps_reason": self.steps_reason,
                "schedule_reason": self.schedule_reason}


def is_plain(m: Measurement) -> bool:
    """Classifier guidance on the unconditional model, constant over every step, x-hat_0 clipped."""
    s = m.setting
    return s.cfg_scale is None and s.schedule_name == "constant" and s.threshold == "clip"


def choose_scale(classifier: Sequence[Measurement]) -> tuple[float, str]:
    """Rule 1 on the classifier sweep (it must hold w = 0)."""
    base = next((m for m in classifier if m.setting.scale == 0), None)
    if base is None:
        raise ValueError("the classifier sweep needs w = 0, the unguided reference")
    guided = sorted((m for m in classifier if m.setting.scale > 0), key=lambda m: m.setting.scale)
    within = [m for m in guided if m.scores.fd <= FD_TARGET * base.scores.fd]
    good = [m for m in within if m.scores.fidelity >= FIDELITY_TARGET]
    if good:
        pick = good[0]
        return pick.setting.scale, (
            f"the smallest swept scale with fidelity >= {FIDELITY_TARGET:.0%} ({pick.show('fidelity')}) and "
            f"Frechet distance <= {FD_TARGET:g}x unguided ({pick.show('fd')} vs {base.show('fd')})")
    pick = max(within or guided or [base], key=lambda m: m.scores.fidelity)
    return pick.setting.scale, (
        f"no swept scale met both targets; this is the most faithful within {FD_TARGET:g}x the unguided "
        f"Frechet distance ({pick.show('fidelity')}, {pick.show('fd')} vs {base.show('fd')})")


def choose_sampler(steps: Sequence[Measurement], reference_steps: int) -> tuple[str, int, str]:
    """Rule 2 on the step sweep at the chosen scale (it must hold DDIM at reference_steps)."""
    reference = next((m for m in steps if m.setting.sampler == REFERENCE_SAMPLER
                      and m.setting.steps == reference_steps), None)
    if reference is None:
        raise ValueError(f"the step sweep needs {REFERENCE_SAMPLER.upper()} at {reference_steps} steps, the reference")
    candidates = [m for m in steps if not_worse(m, reference)]
    pick = min(candidates, key=lambda m: (m.setting.steps, m.scores.fd))
    name = f"{sampler_name(pick.setting.sampler)} at {pick.setting.steps} steps"
    ref = f"{REFERENCE_SAMPLER.upper()} at {reference_steps} steps"
    if pick is reference:
        return pick.setting.sampler, pick.setting.steps, (
            f"no setting with fewer network evaluations came within the measured noise of {ref}")
    fid, fd = difference(pick, reference, "fidelity"), difference(pick, reference, "fd")
    return pick.setting.sampler, pick.setting.steps, (
        f"{name} is the fewest network evaluations whose fidelity and Frechet distance are within the "
        f"measured noise of {ref} (fidelity {pick.show('fidelity')} vs {reference.show('fidelity')}, "
        f"difference {fid.text(1, percent=True)}; Frechet distance {pick.show('fd')} vs "
        f"{reference.show('fd')}, difference {fd.text(2)}; 95% paired bootstrap intervals)")


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


def choose_defaults(measurements: Sequence[Measurement], reference_steps: int) -> Defaults:
    """Rules 1 to 3 on whatever has been measured so far (the run calls this between sweeps)."""
    classifier = [m for m in measurements if "classifier" in m.sweeps]
    scale, scale_reason = choose_scale(classifier)
    steps = [m for m in measurements if "steps" in m.sweeps and is_plain(m) and m.setting.scale == scale]
    if any(m.setting.sampler == REFERENCE_SAMPLER and m.setting.steps == reference_steps for m in steps):
        sampler, n_steps, steps_reason = choose_sampler(steps, reference_steps)
    else:
        sampler, n_steps, steps_reason = REFERENCE_SAMPLER, reference_steps, "the step sweep has not run yet"
    schedules = [m for m in measurements if "schedules" in m.sweeps and m.setting.cfg_scale is None
                 and m.setting.threshold == "clip" and (m.setting.sampler, m.setting.steps) == (sampler, n_steps)]
    pick, schedule_reason = choose_schedule(schedules, scale)
    if pick is None:
        return Defaults(scale, scale_reason, sampler, n_steps, steps_reason, "constant", None, schedule_reason)
    scale_reason = (f"the {pick.setting.schedule_name} schedule's w nearest the fidelity of constant w = {scale:g}, "
                    f"which is {scale_reason}")
    return Defaults(pick.setting.scale, scale_reason, sampler, n_steps, steps_reason, pick.setting.schedule,
                    pick.setting.interval, schedule_reason)
