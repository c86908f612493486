"""Measuring one guidance setting: draw its images through guidescope.generation, judge them with the
evaluator network, and bootstrap the scores (guidescope.metrics).

The evaluation's seeding rule: a setting draws n images of every class, one Request row per class,
and class c's row starts at first_image = c * n, so image j of class c is image c*n + j of the
seed's run (guidescope.noise). Class 0's images are then exactly those of `python -m guidescope.sample
--class 0 --n n --seed S` and of the app's generate with n images and seed S (byte for byte when the
batches match: one class per batch, --batch-size n). Every setting starts from the same noise, so
settings differ only by their guidance; and no two classes share an image, which k-NN recall
needs (at w = 0 on the unconditional model, classes started from the same noise would be copies).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from ..bundle import Bundle
from ..generation import Samples, generate
from ..guide import Schedule, Threshold, TrainingFree
from ..images import to_model_range
from ..metrics import CONFIDENCE, RealReference, Scores, bootstrap_scores
from ..parsing import interval_text
from ..request import SAMPLING_DEFAULTS, Request, Row
from ..samplers import sampler_title as sampler_name

BOOTSTRAP_SEED = 0      # the same resamples for every setting: differences are paired


@dataclass(frozen=True)
class Setting:
    """One guidance setting of the evaluation, applied to every class alike."""
    sampler: str = SAMPLING_DEFAULTS.sampler         # guidescope.samplers.SAMPLERS
    steps: int = SAMPLING_DEFAULTS.steps
    scale: float = 0.0                      # classifier guidance w
    cfg_scale: float | None = None          # None: the unconditional UNet; a number: the conditional
                                            # UNet with classifier-free w_cfg (0 = plain)
    schedule: str = "constant"              # guidescope.guide.SCHEDULE_SHAPES
    interval: tuple[int, int] | None = None # original timesteps guided (inclusive); None: all
    threshold: str = "clip"                 # guidescope.guide.THRESHOLDS, on x-hat_0
    guide: TrainingFree | None = None       # a clean classifier through x-hat_0 (scale is then 0)

    def __post_init__(self):
        if self.interval is not None:  # JSON gives a list
            object.__setattr__(self, "interval", tuple(int(t) for t in self.interval))
        if isinstance(self.guide, dict):  # JSON gives a dict
            object.__setattr__(self, "guide", TrainingFree(**self.guide))

    def row(self, class_label: int, first_image: int) -> Row:
        return Row(class_label, self.scale, self.cfg_scale, Schedule(self.schedule, self.interval),
                   Threshold(self.threshold), first_image, self.guide)

    @property
    def schedule_name(self) -> str:
        """'constant', or the shape and its interval: 'constant 0-500', 'ramp-up 0-999'."""
        if self.schedule == "constant" and self.interval is None:
            return "constant"
        return f"{self.schedule} {interval_text(self.interval)}"

    def label(self) -> str:
        cfg = "" if self.cfg_scale is None else f", w_cfg {self.cfg_scale:g}"
        strength = f"w {self.scale:g}" if self.guide is None else self.guide.describe()
        return (f"{sampler_name(self.sampler)} {self.steps}, {strength}{cfg}, {self.schedule_name}, "
                f"{self.threshold}")


def percentile_interval(values: np.ndarray) -> tuple[float, float]:
    """The central CONFIDENCE percentile interval of bootstrap replicates (NaN ones left out)."""
    if not np.isfinite(values).any():
        return math.nan, math.nan
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _json_number(value: float):
    return None if math.isnan(value) else round(value, 6)


@dataclass(frozen=True)
class Measurement:
    """The scores of one setting, with their bootstrap replicates."""
    setting: Setting
    sweeps: tuple[str, ...]         # the sweeps (tables of the report) this setting belongs to
    scores: Scores                  # on all images
    replicates: Scores              # each field: a tuple of bootstrap replicates (NaN: undefined)
    per_class: tuple[float, ...]    # fidelity of each class
    histogram: tuple[int, ...]      # images the evaluator assigns to each class
    images: int                     # images scored: classes x images per class
    sample_seconds: float           # wall time of the sampling

    def interval(self, metric: str) -> tuple[float, float]:
        """The central CONFIDENCE interval of the bootstrap replicates of metric."""
        return percentile_interval(np.asarray(getattr(self.replicates, metric), dtype=float))

    def half_width(self, metric: str) -> float:
        """Half the width of the bootstrap interval: the '±' of the report."""
        low, high = self.interval(metric)
        return (high - low) / 2

    def show(self, metric: str) -> str:
        """'93.3% ± 1.6' (fidelity), '3.49 ± 0.21' (Frechet distance), '0.860 ± 0.020' (others)."""
        value, half = getattr(self.scores, metric), self.half_width(metric)
        if metric == "fidelity":
            return f"{value:.1%} ± {100 * half:.1f}"
        digits = 2 if metric == "fd" else 3
        return f"{value:.{digits}f} ± {half:.{digits}f}"

    def with_sweep(self, sweep: str) -> "Measurement":
        return self if sweep in self.sweeps else replace(self, sweeps=(*self.sweeps, sweep))

    def to_json(self) -> dict:
        return {"setting": asdict(self.setting), "sweeps": list(self.sweeps),
                "scores": {m: _json_number(v) for m, v in self.scores._asdict().items()},
                "half_width": {m: _json_number(self.half_width(m)) for m in Scores._fields},
                "replicates": {m: [_json_number(v) for v in values] for m, values in self.replicates._asdict().items()},
                "per_class": [round(v, 6) for v in self.per_class], "histogram": list(self.histogram),
                "images": self.images, "sample_seconds": round(self.sample_seconds, 2)}

    @classmethod
    def from_json(cls, record: dict) -> "Measurement":
        """The inverse of to_json ("half_width" is derived, so it is not read)."""
        def numbers(values):
            return tuple(math.nan if v is None else float(v) for v in values)
        return cls(Setting(**record["setting"]), tuple(record["sweeps"]),
                   Scores(*numbers(record["scores"][m] for m in Scores._fields)),
                   Scores(*(numbers(record["replicates"][m]) for m in Scores._fields)),
                   tuple(record["per_class"]), tuple(record["histogram"]), record["images"],
                   record["sample_seconds"])


def request(setting: Setting, num_classes: int, n: int, seed: int, per_class: int | None = None) -> Request:
    """The images of each class under setting: class c's are images c*n, c*n + 1, ... of the seed,
    per_class of them (default n)."""
    rows = tuple(setting.row(c, c * n) for c in range(num_classes))
    return Request(rows, images_per_row=per_class or n, steps=setting.steps, sampler=setting.sampler, seed=seed)


def draw(bundle: Bundle, setting: Setting, n: int, seed: int, batch_size: int | None = None) -> Samples:
    """uint8 images (classes * n, C, H, W), class by class, and their labels; batch_size items at
    a time (default n: one class per batch, as `python -m guidescope.sample --batch-size n`)."""
    return generate(bundle, request(setting, len(bundle.class_names), n, seed), batch_size or n)


def first_images(bundle: Bundle, setting: Setting, n: int, seed: int) -> torch.Tensor:
    """Image 0 of every class as a measurement of n per class draws it, uint8 (classes, C, H, W)."""
    classes = len(bundle.class_names)
    return generate(bundle, request(setting, classes, n, seed, per_class=1), classes).images


@torch.no_grad()
def judge(evaluator, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluator features (N, D) and predicted classes (N,), on the evaluator's device, for images
    (N, C, H, W) in [-1, 1] (any device)."""
    device = next(evaluator.parameters()).device
    features, predictions = [], []
    for x in images.split(batch_size):
        f = evaluator.features(x.to(device)).float()
        features.append(f)
        predictions.append(evaluator.net.get_classifier()(f).argmax(1))
    return torch.cat(features), torch.cat(predictions)


def real_reference(features: torch.Tensor, pr_size: int, seed: int = 0) -> RealReference:
    """The Frechet reference of real features (M, D), with a seeded subset of pr_size of them (at
    most M) for precision and recall, which want as many real as generated images."""
    subset = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:pr_size]
    return RealReference(features, features[subset.to(features.device)])


def measure(bundle: Bundle, setting: Setting, reference: RealReference, n: int, seed: int, resamples: int,
            batch_size: int | None = None, sweep: str = "") -> tuple[Measurement, Samples]:
    """Draw n images per class under setting, judge them, bootstrap their scores."""
    start = time.perf_counter()
    samples = draw(bundle, setting, n, seed, batch_size)
    seconds = time.perf_counter() - start
    features, predictions = judge(bundle.evaluator, to_model_range(samples.images.numpy()))
    predictions, labels = predictions.cpu(), samples.labels
    correct = predictions == labels
    scores, replicates = bootstrap_scores(reference, features, correct, labels, resamples, BOOTSTRAP_SEED)
    classes = len(bundle.class_names)
    per_class = tuple(float(correct[labels == c].double().mean()) for c in range(classes))
    histogram = tuple(torch.bincount(predictions, minlength=classes).tolist())
    measurement = Measurement(setting, (sweep,) if sweep else (), scores, replicates, per_class, histogram,
                              len(labels), seconds)
    # Rounded as results.json keeps it, so the defaults and pages rebuilt from the file match this run's.
    return Measurement.from_json(measurement.to_json()), samples
