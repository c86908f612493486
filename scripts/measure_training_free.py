"""Measure training-free settings on the training-free search's decision sample, beside the
noise-aware default: the same images per class, seed, real references and bootstrap as
`python -m guidescope.evaluate --training-free` (guidescope.evaluation.search), so a setting the
search never tried can be set against the ones it measured.

    python scripts/measure_training_free.py --checkpoints DIR [--guide-classifier DIR] [--budget cpu]
        [--threads 1] '{"stop_at": 0.6}' '{"steps": 30, "iterations": 2, "mu": 16}' ...

Each argument is a JSON object of changes to the bundle's evaluated training-free setting
(defaults.json): "sampler", "steps", "threshold", "schedule" and "interval" ([lo, hi] or null) of
the run, any other name a field of the TrainingFree setting (guidescope.guide.TrainingFree: rho,
mu, gamma, recurrences, iterations, stop_at, their schedules). Prints, per setting, the fidelity and
the Frechet distance with their 95% intervals, the FD against the noise-aware default's, the
seconds per image and each class's fidelity. Nothing is written.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from guidescope.bundle import load_bundle  # noqa: E402
from guidescope.evaluation import search  # noqa: E402
from guidescope.evaluation.command import held_out, load_data  # noqa: E402
from guidescope.evaluation.measure import Measurement, Setting, judge, measure, real_reference  # noqa: E402
from guidescope.evaluation.sweeps import BUDGETS  # noqa: E402
from guidescope.guide import TrainingFree  # noqa: E402
from guidescope.training import data  # noqa: E402

RUN_FIELDS = ("sampler", "steps", "threshold", "schedule", "interval")
GUIDE_FIELDS = tuple(f.name for f in fields(TrainingFree))


def changed(base: Setting, text: str) -> Setting:
    """base with the changes that text (a JSON object) names; ValueError for anything else."""
    try:
        changes = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"a setting is a JSON object such as '{{\"stop_at\": 0.6}}'; got {text!r} ({err})") from None
    if not isinstance(changes, dict):
        raise ValueError(f"a setting is a JSON object such as '{{\"stop_at\": 0.6}}'; got {text!r}")
    unknown = sorted(set(changes) - {*RUN_FIELDS, *GUIDE_FIELDS})
    if unknown:
        raise ValueError(f"unknown names {', '.join(unknown)}; a setting changes {', '.join(RUN_FIELDS + GUIDE_FIELDS)}")
    run = {name: changes[name] for name in RUN_FIELDS if name in changes}  # Setting takes JSON's list as an interval
    guide = {name: changes[name] for name in GUIDE_FIELDS if name in changes}
    return replace(base, **run, guide=replace(base.guide, **guide))


def line(m: Measurement, noise_aware: Measurement) -> str:
    per_class = " ".join(f"{p:.2f}" for p in m.per_class)
    return (f"{m.setting.label()}: fidelity {m.show('fidelity')}, Frechet distance {m.show('fd')} "
            f"({m.scores.fd / noise_aware.scores.fd:.2f}x the noise-aware default's), "
            f"{m.sample_seconds / m.images:.4f} s per image; per class {per_class}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", required=True, help="a bundle with a training-free record in its defaults.json")
    p.add_argument("--guide-classifier", default=None, help="a folder whose clean classifier guides instead")
    p.add_argument("--budget", choices=tuple(BUDGETS), default="cpu", help="whose decision sample (default cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("settings", nargs="+", help="JSON objects of changes to the evaluated training-free setting")
    data.add_arguments(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.checkpoints, need_evaluator=True, guide_classifier_folder=args.guide_classifier)
    base = search.training_free_default(bundle.folder)
    if base is None:
        p.error(f"{args.checkpoints}/defaults.json has no training-free record: run the training-free search first")
    try:
        settings = [changed(base, text) for text in args.settings]
    except (ValueError, TypeError) as err:
        p.error(str(err))
    budget = BUDGETS[args.budget]
    _, test = load_data(args, bundle)
    features, _ = judge(bundle.evaluator, held_out(test, budget).images)
    n = budget.decision_images_per_class
    reference = real_reference(features, n * len(bundle.class_names))
    noise_aware, _ = measure(bundle, search.noise_aware_default(bundle.folder), reference, n, args.seed, budget.resamples)
    print(line(noise_aware, noise_aware), flush=True)
    for setting in settings:
        m, _ = measure(bundle, setting, reference, n, args.seed, budget.resamples)
        print(line(m, noise_aware), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
