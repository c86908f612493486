"""Comparing two settings against the measured noise.

Every setting draws the same images' noise and is bootstrapped with the same resamples
(measure.BOOTSTRAP_SEED), so replicate r of setting A and replicate r of setting B come from the
same resample of the same seeds: the spread of A_r - B_r is the noise of the difference itself
(a paired bootstrap), narrower than two separate intervals would suggest.

Two settings differ "within noise" when the CONFIDENCE interval of each difference contains 0.
That reading describes; it never decides a default, since the smaller the sample, the wider the
interval and the easier "contains 0" becomes. Decisions use non-inferiority (defaults.py): the
whole interval must lie on the right side of a stated margin.
Curves (one setting swept over w) are compared at matched fidelity: each curve's metric is
interpolated linearly in fidelity, replicate by replicate.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from .measure import Measurement, percentile_interval

HIGHER_IS_BETTER = {"fidelity": True, "fd": False, "precision": True, "recall": True}


class Difference(NamedTuple):
    """A - B in one metric: on all images, and the bootstrap interval of the paired difference."""
    value: float
    low: float
    high: float

    def significant(self) -> int:
        """+1 when the interval lies above 0, -1 when below, 0 when it contains 0 (or is unknown)."""
        return 1 if self.low > 0 else -1 if self.high < 0 else 0

    def text(self, digits: int = 3, percent: bool = False) -> str:
        if math.isnan(self.value):
            return "–"
        scale, unit = (100, " pt") if percent else (1, "")
        return (f"{scale * self.value:+.{digits}f}{unit} [{scale * self.low:+.{digits}f}, "
                f"{scale * self.high:+.{digits}f}]")


def _replicates(m: Measurement, metric: str) -> np.ndarray:
    return np.asarray(getattr(m.replicates, metric), dtype=float)


def difference(a: Measurement, b: Measurement, metric: str) -> Difference:
    """A - B in metric, with the paired bootstrap interval (both must come from one run)."""
    if a.images != b.images or len(a.replicates.fidelity) != len(b.replicates.fidelity):
        raise ValueError("settings measured on different numbers of images or resamples cannot be paired")
    return Difference(getattr(a.scores, metric) - getattr(b.scores, metric),
                      *percentile_interval(_replicates(a, metric) - _replicates(b, metric)))


def ratio(a: Measurement, b: Measurement, metric: str) -> Difference:
    """A / B in metric, with the paired bootstrap interval of the replicates' ratios."""
    if a.images != b.images or len(a.replicates.fidelity) != len(b.replicates.fidelity):
        raise ValueError("settings measured on different numbers of images or resamples cannot be paired")
    return Difference(getattr(a.scores, metric) / getattr(b.scores, metric),
                      *percentile_interval(_replicates(a, metric) / _replicates(b, metric)))


def better(diff: Difference, metric: str) -> int:
    """+1: A is significantly better than B in metric; -1: significantly worse; 0: within noise."""
    sign = diff.significant()
    return sign if HIGHER_IS_BETTER[metric] else -sign


def verdict(diffs: dict[str, Difference]) -> str:
    """'better', 'worse', 'trade-off' (better in one metric, worse in another) or 'within noise',
    for A against B over the given metrics' differences."""
    signs = {better(d, m) for m, d in diffs.items()}
    if 1 in signs and -1 in signs:
        return "trade-off"
    return "better" if 1 in signs else "worse" if -1 in signs else "within noise"


def not_worse(a: Measurement, b: Measurement, metrics: Sequence[str] = ("fidelity", "fd")) -> bool:
    """Whether A is nowhere significantly worse than B in metrics."""
    return all(better(difference(a, b, m), m) >= 0 for m in metrics)


def _interpolate(fidelity: np.ndarray, values: np.ndarray, at: float) -> float:
    """values as a piecewise linear function of fidelity, at `at`; NaN outside the measured range."""
    keep = np.isfinite(fidelity) & np.isfinite(values)
    if not keep.any():
        return math.nan
    order = np.argsort(fidelity[keep], kind="stable")
    xs, ys = fidelity[keep][order], values[keep][order]
    if not xs[0] <= at <= xs[-1]:
        return math.nan
    return float(np.interp(at, xs, ys))


def at_fidelity(curve: Sequence[Measurement], fidelity: float, metric: str) -> tuple[float, np.ndarray]:
    """metric on the curve where its fidelity equals `fidelity`: (from all images, per replicate);
    NaN where the curve does not reach it."""
    points = _interpolate(np.array([m.scores.fidelity for m in curve]),
                          np.array([getattr(m.scores, metric) for m in curve]), fidelity)
    fid = np.stack([_replicates(m, "fidelity") for m in curve])     # (points, resamples)
    values = np.stack([_replicates(m, metric) for m in curve])
    per_replicate = np.array([_interpolate(fid[:, r], values[:, r], fidelity) for r in range(fid.shape[1])])
    return points, per_replicate


def matched_difference(curve: Sequence[Measurement], base: Sequence[Measurement], fidelity: float,
                       metric: str) -> Difference:
    """curve - base in metric at equal fidelity, with the paired bootstrap interval; NaN value
    when either curve does not reach that fidelity."""
    value_a, reps_a = at_fidelity(curve, fidelity, metric)
    value_b, reps_b = at_fidelity(base, fidelity, metric)
    if math.isnan(value_a) or math.isnan(value_b):
        return Difference(math.nan, math.nan, math.nan)
    return Difference(value_a - value_b, *percentile_interval(reps_a - reps_b))
